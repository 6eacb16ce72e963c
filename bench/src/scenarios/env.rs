//! The run environment: binaries, CPU pinning, a temp dir for configs and logs, and starting
//! the backend and each proxy on free 127.0.0.1 ports (each held by a guard that stops it).

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::Plan;
use crate::configs::{self, Balance, PolicyOverrides};
use crate::foreign;
use crate::loadgen::{self, ClosedLoop, OpenLoop};
use crate::procs::{self, Proc};
use crate::stats::{self, ClosedSummary, OpenSummary};

/// Everything a scenario needs to start processes and load.
pub struct Env {
    pub sloguard: PathBuf,
    pub backend: PathBuf,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    /// `config/sloguard.toml`, the policy every sloguard run starts from.
    pub policy_template: String,
    /// CPU of the system under test (backend and proxy) and of the generator, if pinned.
    pub sut_cpu: Option<usize>,
    pub gen_cpu: Option<usize>,
    pub dir: tempfile::TempDir,
    pub plan: Plan,
    pub rt: tokio::runtime::Runtime,
    seq: Cell<u32>,
}

impl Env {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sloguard: PathBuf,
        backend: PathBuf,
        nginx: Option<PathBuf>,
        haproxy: Option<PathBuf>,
        policy_template: String,
        pin: Option<(usize, usize)>,
        plan: Plan,
        rt: tokio::runtime::Runtime,
    ) -> std::io::Result<Env> {
        Ok(Env {
            sloguard,
            backend,
            nginx,
            haproxy,
            policy_template,
            sut_cpu: pin.map(|p| p.0),
            gen_cpu: pin.map(|p| p.1),
            dir: tempfile::Builder::new()
                .prefix("sloguard-bench-")
                .tempdir()?,
            plan,
            rt,
            seq: Cell::new(0),
        })
    }

    /// A fresh path in the run dir: `NNN-name`.
    fn path(&self, name: &str) -> PathBuf {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        self.dir.path().join(format!("{n:03}-{name}"))
    }

    /// Starts `analytics-backend` with `workers` workers on ephemeral ports and `faults`
    /// (`WORKER:SPEC`), and reads the address each worker prints.
    pub fn backend(&self, workers: usize, faults: &[String]) -> anyhow::Result<Backend> {
        let mut cmd = Command::new(&self.backend);
        cmd.args(["--workers", &workers.to_string(), "--base-port", "0"]);
        for f in faults {
            cmd.args(["--fault", f]);
        }
        let log = self.path("backend.log");
        let mut proc =
            Proc::spawn_piped("analytics-backend", cmd, self.sut_cpu, &log, libc::SIGINT)?;
        let lines = proc.read_lines(workers, |l| l.starts_with("worker "))?;
        let addrs = lines
            .iter()
            .map(|l| parse_worker_line(l))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow::anyhow!("unexpected backend output: {lines:?}"))?;
        proc.wait_listening(&addrs)?;
        Ok(Backend { _proc: proc, addrs })
    }

    /// Starts a proxy in front of `workers`, retrying on new ports if one was taken.
    pub fn proxy(&self, kind: ProxyKind, workers: &[SocketAddr]) -> anyhow::Result<Running> {
        let mut last = None;
        for _ in 0..3 {
            match self.try_proxy(kind, workers) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
    }

    fn try_proxy(&self, kind: ProxyKind, workers: &[SocketAddr]) -> anyhow::Result<Running> {
        let listen = procs::free_addr()?;
        let (mut proc, admin) = match kind {
            ProxyKind::Sloguard { mode, fixed_limit } => {
                let admin = procs::free_addr()?;
                let policy = configs::sloguard_policy(
                    &self.policy_template,
                    &PolicyOverrides {
                        proxy: listen,
                        admin,
                        workers,
                        mode,
                        threads: 1,
                        fixed_limit,
                    },
                )?;
                let file = self.path(&format!("sloguard-{mode}.toml"));
                std::fs::write(&file, policy)?;
                let mut cmd = Command::new(&self.sloguard);
                cmd.arg("run")
                    .arg("--config")
                    .arg(&file)
                    .env("RUST_LOG", "warn");
                let log = file.with_extension("log");
                let p = Proc::spawn("sloguard", cmd, self.sut_cpu, &log, libc::SIGINT)?;
                (p, Some(admin))
            }
            ProxyKind::Nginx(balance) => {
                let bin = self
                    .nginx
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("nginx is not installed"))?;
                let prefix = self.path("nginx");
                std::fs::create_dir_all(&prefix)?;
                let conf = prefix.join("nginx.conf");
                let text = configs::nginx_conf(listen, workers, balance, &prefix, procs::is_root());
                std::fs::write(&conf, text)?;
                let mut cmd = Command::new(bin);
                cmd.arg("-g")
                    .arg("daemon off;")
                    .arg("-c")
                    .arg(&conf)
                    .arg("-p")
                    .arg(&prefix);
                cmd.arg("-e").arg(prefix.join("error.log"));
                let log = prefix.join("stderr.log");
                (
                    Proc::spawn("nginx", cmd, self.sut_cpu, &log, libc::SIGTERM)?,
                    None,
                )
            }
            ProxyKind::Haproxy(balance) => {
                let bin = self
                    .haproxy
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("haproxy is not installed"))?;
                let conf = self.path("haproxy.cfg");
                std::fs::write(&conf, configs::haproxy_conf(listen, workers, balance))?;
                let mut cmd = Command::new(bin);
                cmd.arg("-f").arg(&conf).arg("-db");
                let log = conf.with_extension("log");
                (
                    Proc::spawn("haproxy", cmd, self.sut_cpu, &log, libc::SIGTERM)?,
                    None,
                )
            }
        };
        let mut wait_for = vec![listen];
        wait_for.extend(admin);
        proc.wait_listening(&wait_for)?;
        // Let health checks and probes see every worker up before any load.
        std::thread::sleep(Duration::from_millis(300));
        proc.check_alive()?;
        let idle_rss_kib = proc.rss_kib();
        Ok(Running {
            proc,
            addr: listen,
            admin,
            idle_rss_kib,
        })
    }

    /// An open-loop run against `targets`, summarised (with the CPU others used meanwhile).
    pub fn open(&self, targets: &[SocketAddr], cfg: &OpenLoop) -> anyhow::Result<OpenSummary> {
        let window = foreign::Window::open();
        let run = self.rt.block_on(loadgen::open_loop(targets, cfg))?;
        let mut s = stats::summarize_open(&run.outcomes, cfg.duration, &run.send_lag);
        s.foreign_cpu = window.share();
        Ok(s)
    }

    /// A closed-loop run against `targets`, summarised (with the CPU others used meanwhile).
    pub fn closed(
        &self,
        targets: &[SocketAddr],
        cfg: &ClosedLoop,
    ) -> anyhow::Result<ClosedSummary> {
        let window = foreign::Window::open();
        let run = self.rt.block_on(loadgen::closed_loop(targets, cfg))?;
        let mut s = stats::summarize_closed(&run, self.sut_cpu, self.gen_cpu);
        s.foreign_cpu = window.share();
        Ok(s)
    }

    /// Whether a contender can run here (its proxy is installed).
    pub fn available(&self, kind: Option<ProxyKind>) -> bool {
        match kind {
            Some(ProxyKind::Nginx(_)) => self.nginx.is_some(),
            Some(ProxyKind::Haproxy(_)) => self.haproxy.is_some(),
            _ => true,
        }
    }
}

/// `worker 3 listening on 127.0.0.1:40123` -> the address.
pub fn parse_worker_line(line: &str) -> Option<SocketAddr> {
    line.rsplit(' ').next()?.parse().ok()
}

/// A running backend (stopped on drop).
pub struct Backend {
    _proc: Proc,
    pub addrs: Vec<SocketAddr>,
}

/// Which proxy, configured how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Sloguard {
        mode: &'static str,
        fixed_limit: Option<u32>,
    },
    Nginx(Balance),
    Haproxy(Balance),
}

/// A running proxy (stopped on drop).
pub struct Running {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// sloguard's admin listener.
    pub admin: Option<SocketAddr>,
    pub idle_rss_kib: Option<u64>,
}

impl Running {
    /// Ejections sloguard made so far, from its `/status` (summed over workers).
    pub fn ejections(&self) -> Option<u64> {
        let admin = self.admin?;
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /status HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        ejections_from_status(&text)
    }
}

/// Sums `workers[].ejections` in an HTTP answer carrying sloguard's status JSON.
pub fn ejections_from_status(http: &str) -> Option<u64> {
    let body = &http[http.find("\r\n\r\n")? + 4..];
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["workers"]
        .as_array()?
        .iter()
        .map(|w| w["ejections"].as_u64())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_worker_lines() {
        assert_eq!(
            parse_worker_line("worker 3 listening on 127.0.0.1:40123"),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(parse_worker_line("worker 3 starting"), None);
    }

    #[test]
    fn sums_ejections_from_status() {
        let http = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n\
                    {\"workers\":[{\"ejections\":2},{\"ejections\":0},{\"ejections\":3}]}";
        assert_eq!(ejections_from_status(http), Some(5));
        assert_eq!(ejections_from_status("HTTP/1.1 500 x\r\n\r\nnope"), None);
    }
}
