//! The Python fleet: the same analytics API as FastAPI (`backend/python/app.py`), served by
//! one uvicorn process per port, as the incident's service ran. The Rust workers answer in
//! microseconds and never misbehave the way a Python worker does (GC pauses, the GIL, JSON
//! and pydantic cost, slow accepts); this fleet does, so the guard is proven on it too.
//!
//! [`PyFleet::start`] creates the venv on first use (`target/pyfleet-venv`, keyed by a hash of
//! `requirements.txt`, built under a file lock so parallel tests build it once), binds each
//! worker's socket itself on `127.0.0.1:0` and hands it to uvicorn as fd 3 (`serve.py`), so no
//! port is ever guessed, and waits until every worker answers `/healthz`. Dropping the fleet stops
//! every process (SIGTERM, then SIGKILL).

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the app and its requirements live.
pub fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum PyFleetError {
    #[error("python3 with venv is needed for the Python fleet (Debian: apt-get install python3-venv): {0}")]
    NoPython(String),
    #[error("pip could not install backend/python/requirements.txt into {venv}: {output}")]
    Pip { venv: PathBuf, output: String },
    #[error("python fleet: {0}")]
    Io(#[from] std::io::Error),
    #[error("uvicorn worker {worker} did not answer /healthz within {secs} s; its log:\n{log}")]
    NotReady {
        worker: usize,
        secs: u64,
        log: String,
    },
}

/// How to start a [`PyFleet`].
#[derive(Debug, Clone, Default)]
pub struct PyFleetConfig {
    /// Number of uvicorn processes, at least 1.
    pub workers: usize,
    /// `(1-based worker, FLEET_FAULT spec)`, e.g. `(3, "block=250ms,every=4")`.
    pub faults: Vec<(usize, String)>,
    /// Leave out the `x-loop-lag-ms` header (a service that reports nothing).
    pub no_lag_header: bool,
    /// Pin every worker to this CPU (the benchmark's system-under-test core).
    pub cpu: Option<usize>,
    /// Where worker logs go (`pyworker-N.log`); a temp dir of the fleet's own if `None`.
    pub log_dir: Option<PathBuf>,
    /// Each worker also listens on a Unix socket, `wN.sock` in the log dir (see
    /// [`PyFleet::unix_paths`]), served by the same loop as its TCP port.
    pub unix: bool,
}

/// Running uvicorn workers, stopped on drop.
pub struct PyFleet {
    children: Vec<Child>,
    addrs: Vec<SocketAddr>,
    unix_paths: Vec<PathBuf>,
    log_dir: PathBuf,
    _own_logs: Option<TempLogDir>,
}

struct TempLogDir(PathBuf);

impl Drop for TempLogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl PyFleet {
    /// Starts the fleet (creating the venv first if needed) and waits until every worker
    /// answers `/healthz`.
    pub fn start(cfg: &PyFleetConfig) -> Result<PyFleet, PyFleetError> {
        let venv = ensure_venv()?;
        let (log_dir, own) = match &cfg.log_dir {
            Some(d) => (d.clone(), None),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "pyfleet-{}-{}",
                    std::process::id(),
                    unique()
                ));
                std::fs::create_dir_all(&d)?;
                (d.clone(), Some(TempLogDir(d)))
            }
        };
        let mut fleet = PyFleet {
            children: Vec::new(),
            addrs: Vec::new(),
            unix_paths: Vec::new(),
            log_dir,
            _own_logs: own,
        };
        for id in 1..=cfg.workers.max(1) {
            let fault = cfg
                .faults
                .iter()
                .rev()
                .find(|(w, _)| *w == id)
                .map(|(_, f)| f.as_str())
                .unwrap_or("");
            let (child, addr, unix_path) = fleet.spawn_worker(&venv, id, fault, cfg)?;
            fleet.children.push(child);
            fleet.addrs.push(addr);
            fleet.unix_paths.extend(unix_path);
        }
        for (i, addr) in fleet.addrs.clone().into_iter().enumerate() {
            fleet.wait_ready(i + 1, addr, Duration::from_secs(30))?;
        }
        Ok(fleet)
    }

    fn spawn_worker(
        &self,
        venv: &Path,
        id: usize,
        fault: &str,
        cfg: &PyFleetConfig,
    ) -> Result<(Child, SocketAddr, Option<PathBuf>), PyFleetError> {
        // uvicorn's own backlog (2048), so a burst of new connections is not refused by us.
        let listener = bind_with_backlog(2048)?;
        let addr = listener.local_addr()?;
        let unix = if cfg.unix {
            let path = self.log_dir.join(format!("w{id}.sock"));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            // SAFETY: listen(2) again on our own bound socket only changes its backlog.
            if unsafe { libc::listen(listener.as_raw_fd(), 2048) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Some((listener, path))
        } else {
            None
        };
        let log = File::create(self.log_dir.join(format!("pyworker-{id}.log")))?;
        let mut cmd = Command::new(venv.join("bin").join("python"));
        cmd.arg("serve.py")
            .current_dir(app_dir())
            .env("FLEET_WORKER_ID", id.to_string())
            .env("FLEET_FAULT", fault)
            .env(
                "FLEET_LAG_HEADER",
                if cfg.no_lag_header { "0" } else { "1" },
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if unix.is_some() {
            cmd.env("FLEET_UNIX_FD", "4");
        }
        // Both sockets are moved above the fds the child gets them on, so that placing one
        // never closes the other.
        let tcp_fd = dup_above(listener.as_raw_fd(), 10)?;
        let unix_fd = match &unix {
            Some((l, _)) => Some(dup_above(l.as_raw_fd(), 10)?),
            None => None,
        };
        let (tcp_raw, unix_raw) = (tcp_fd.as_raw_fd(), unix_fd.as_ref().map(|f| f.as_raw_fd()));
        let cpu = cfg.cpu;
        // SAFETY: between fork and exec only async-signal-safe calls: dup2 (which also
        // clears close-on-exec on fds 3 and 4), sched_setaffinity and prctl.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(tcp_raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = unix_raw {
                    if libc::dup2(fd, 4) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The fleet dies with the test or bench that started it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(cpu) = cpu {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_ZERO(&mut set);
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // The child holds its copies on fds 3 and 4; ours close here.
        drop((listener, tcp_fd, unix_fd));
        Ok((child, addr, unix.map(|(_, path)| path)))
    }

    fn wait_ready(
        &mut self,
        worker: usize,
        addr: SocketAddr,
        within: Duration,
    ) -> Result<(), PyFleetError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.children[worker - 1].try_wait() {
                break;
            }
            if http_get(addr, "/healthz").is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(PyFleetError::NotReady {
            worker,
            secs: within.as_secs(),
            log: self.log(worker),
        })
    }

    /// Each worker's address, worker 1 first.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Each worker's Unix socket, worker 1 first (empty unless started with `unix`).
    pub fn unix_paths(&self) -> &[PathBuf] {
        &self.unix_paths
    }

    /// Worker `worker`'s (1-based) log so far.
    pub fn log(&self, worker: usize) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("pyworker-{worker}.log")))
            .unwrap_or_default()
    }

    /// Sets worker `worker`'s fault at run time (`POST /admin/fault`); `"{}"` clears it.
    pub fn set_fault(&self, worker: usize, json: &str) -> std::io::Result<()> {
        let (status, body) = http_post(self.addrs[worker - 1], "/admin/fault", json)?;
        if status != 200 {
            return Err(std::io::Error::other(format!(
                "worker {worker} refused the fault: {status} {body}"
            )));
        }
        Ok(())
    }

    /// Events stored by the whole fleet (each worker counts its own).
    pub fn total_events(&self) -> std::io::Result<u64> {
        let mut total = 0;
        for w in 1..=self.addrs.len() {
            total += self.counter(w, "events")?;
        }
        Ok(total)
    }

    /// One of worker `worker`'s counters from `/debug/stats`: `events` stored, `requests`
    /// seen, `faults` fired (blocks or CPU burns).
    pub fn counter(&self, worker: usize, name: &str) -> std::io::Result<u64> {
        let (_, body) = http_get(self.addrs[worker - 1], "/debug/stats")?;
        let doc: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| std::io::Error::other(format!("stats: {e}: {body}")))?;
        doc[name]
            .as_u64()
            .ok_or_else(|| std::io::Error::other(format!("no counter {name} in {body}")))
    }

    /// Kills worker `worker` (SIGKILL): its port refuses connections from now on.
    pub fn kill_worker(&mut self, worker: usize) {
        let child = &mut self.children[worker - 1];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The process ids, worker 1 first (for CPU and memory readings).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for PyFleet {
    fn drop(&mut self) {
        for c in &self.children {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
fn dup_above(fd: i32, min: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own returns a new fd that only we own.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// A listener on `127.0.0.1:0` with `backlog` (std's `bind` listens with 128).
fn bind_with_backlog(backlog: i32) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // SAFETY: listen(2) again on our own bound socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(listener)
}

/// The venv with the pinned requirements, created once (under a lock) and reused while
/// `requirements.txt` is unchanged. `SLOGUARD_PYFLEET_VENV` overrides where it lives.
pub fn ensure_venv() -> Result<PathBuf, PyFleetError> {
    let requirements = app_dir().join("requirements.txt");
    let text = std::fs::read_to_string(&requirements)?;
    let venv = match std::env::var_os("SLOGUARD_PYFLEET_VENV") {
        Some(v) => PathBuf::from(v),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("pyfleet-venv"),
    };
    let parent = venv.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let lock = File::create(parent.join("pyfleet-venv.lock"))?;
    lock.lock()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let stamp_text = format!("{:016x}\n", h.finish());
    let stamp = venv.join(".requirements-hash");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        return Ok(venv);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| PyFleetError::NoPython(e.to_string()))?;
    if !out.status.success() {
        return Err(PyFleetError::NoPython(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let out = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .output()?;
    if !out.status.success() {
        return Err(PyFleetError::Pip {
            venv,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    std::fs::write(&stamp, stamp_text)?;
    Ok(venv)
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
    )
}

fn http_post(addr: SocketAddr, path: &str, json: &str) -> std::io::Result<(u16, String)> {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{json}",
            json.len()
        ),
    )
}

/// One request on a fresh connection, read to the close (the admin calls only).
fn http(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
