//! Process guards: every process the harness starts is held by a [`Proc`] that stops it by
//! pid when dropped (also on an error or a panic), plus CPU pinning, free ports and RSS.
//!
//! Children are started from the main thread with a parent-death signal, so even a harness
//! killed outright takes its servers with it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a process could not be started or stopped working.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{name} exited early ({status}); last log lines:\n{log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("{name} not ready after {secs} s; last log lines:\n{log}")]
    NotReady {
        name: String,
        secs: u64,
        log: String,
    },
    #[error("{name}: {message}")]
    Output { name: String, message: String },
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `127.0.0.1:port` on a port that was free a moment ago.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Pins the calling thread (and the threads it creates afterwards) to `cpu`, like
/// `taskset -c CPU`. Call it before building the runtime.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    set_affinity(cpu)
}

fn set_affinity(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity(0, ..) reads it and affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the harness runs as root (nginx then gets `user root;`, apt-get can install).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A running child process, stopped on drop: `stop_signal` first, SIGKILL after 5 s.
pub struct Proc {
    pub name: String,
    child: Child,
    stop_signal: i32,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`, pinned to `cpu` if given.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        cpu: Option<usize>,
        log: &Path,
        stop_signal: i32,
    ) -> Result<Proc, ProcError> {
        let err = |source| ProcError::Spawn {
            name: name.into(),
            program: format!("{:?}", cmd_program(&cmd)),
            source,
        };
        let out = File::create(log).map_err(err)?;
        let out2 = out.try_clone().map_err(err)?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(out2);
        Self::spawn_configured(name, cmd, cpu, log, stop_signal)
    }

    /// Like [`Proc::spawn`] but leaves stdout to the caller (piped for [`Proc::read_lines`]).
    pub fn spawn_piped(
        name: &str,
        mut cmd: Command,
        cpu: Option<usize>,
        log: &Path,
        stop_signal: i32,
    ) -> Result<Proc, ProcError> {
        let out = File::create(log).map_err(|source| ProcError::Spawn {
            name: name.into(),
            program: format!("{:?}", cmd_program(&cmd)),
            source,
        })?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(out);
        Self::spawn_configured(name, cmd, cpu, log, stop_signal)
    }

    fn spawn_configured(
        name: &str,
        mut cmd: Command,
        cpu: Option<usize>,
        log: &Path,
        stop_signal: i32,
    ) -> Result<Proc, ProcError> {
        // SAFETY: the closure runs between fork and exec and only makes two syscalls
        // (prctl, sched_setaffinity), which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if let Some(cpu) = cpu {
                    set_affinity(cpu)?;
                }
                Ok(())
            });
        }
        let program = format!("{:?}", cmd_program(&cmd));
        let child = cmd.spawn().map_err(|source| ProcError::Spawn {
            name: name.into(),
            program,
            source,
        })?;
        Ok(Proc {
            name: name.into(),
            child,
            stop_signal,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// An error if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), ProcError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ProcError::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(),
            }),
            _ => Ok(()),
        }
    }

    /// Waits until every address accepts a TCP connection (the process stays alive).
    pub fn wait_listening(&mut self, addrs: &[SocketAddr]) -> Result<(), ProcError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.check_alive()?;
            let up = |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(100));
            if addrs.iter().all(|a| up(a).is_ok()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ProcError::NotReady {
                    name: self.name.clone(),
                    secs: 15,
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Reads stdout lines until `want` of them match `keep` (15 s at most); stdout is then
    /// drained in the background so the child never blocks on a full pipe.
    pub fn read_lines(
        &mut self,
        want: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ProcError> {
        let Some(stdout) = self.child.stdout.take() else {
            return Err(ProcError::Output {
                name: self.name.clone(),
                message: "stdout was not piped".into(),
            });
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The receiver is gone once the lines we wanted arrived: keep draining.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut lines = Vec::new();
        while lines.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) if keep(&line) => lines.push(line),
                Ok(_) => {}
                Err(_) => {
                    self.check_alive()?;
                    return Err(ProcError::NotReady {
                        name: self.name.clone(),
                        secs: 15,
                        log: self.log_tail(),
                    });
                }
            }
        }
        Ok(lines)
    }

    /// Stops the process at once (SIGKILL) and reaps it: a crash, not a shutdown.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Open file descriptors of the process (the entries of /proc/PID/fd).
    pub fn open_fds(&self) -> Option<u64> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok()?;
        Some(dir.filter(|e| e.is_ok()).count() as u64)
    }

    /// Resident memory (VmRSS) of the process and its direct children (nginx's worker), KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.tree_sum("VmRSS")
    }

    /// Peak resident memory (VmHWM) of the process plus that of its direct children, KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.tree_sum("VmHWM")
    }

    /// The process and its direct children (nginx's workers under its master), for tools
    /// that attach by pid.
    pub fn tree_pids(&self) -> Vec<u32> {
        let pid = self.pid();
        let mut pids = vec![pid];
        pids.extend(children(pid));
        pids
    }

    fn tree_sum(&self, field: &str) -> Option<u64> {
        let pid = self.pid();
        let own = vm_field(pid, field)?;
        let kids: u64 = children(pid)
            .into_iter()
            .filter_map(|c| vm_field(c, field))
            .sum();
        Some(own + kids)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory preconditions; `pid` is our own un-reaped child.
            unsafe {
                libc::kill(pid, self.stop_signal);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cmd_program(cmd: &Command) -> &std::ffi::OsStr {
    cmd.get_program()
}

/// A `Vm*` field of /proc/PID/status, KiB.
fn vm_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, field)
}

/// Parses `VmRSS:   1234 kB` out of a /proc/PID/status text.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Pids whose parent is `pid` (scans /proc).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
                == Some(pid)
        })
        .collect()
}

/// The parent pid from a /proc/PID/stat line (the field after the `(comm)`).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let s = "Name:\tsloguard\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn parses_ppid_even_with_spaces_in_comm() {
        assert_eq!(parse_ppid("123 (nginx: worker) S 77 123 123 0"), Some(77));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn counts_our_own_fds_and_kills_at_once() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let log = std::env::temp_dir().join(format!("bench-procs-{}.log", std::process::id()));
        let mut p = Proc::spawn("sleep", cmd, None, &log, libc::SIGTERM).unwrap();
        // stdin, stdout and stderr at least.
        assert!(p.open_fds().unwrap() >= 3);
        let t = Instant::now();
        p.kill_now();
        assert!(p.check_alive().is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
        let _ = std::fs::remove_file(log);
    }

    #[test]
    fn free_ports_are_on_loopback() {
        let a = free_addr().unwrap();
        assert!(a.ip().is_loopback() && a.port() != 0);
    }
}
