//! The run environment: binaries, CPU pinning, a temp dir for configs and logs, and starting
//! the backend and each proxy on free 127.0.0.1 ports (each held by a guard that stops it).

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use analytics_backend::pyfleet::{PyFleet, PyFleetConfig};
use serde::Serialize;

use super::Plan;
use crate::configs::{self, Balance, PolicyOverrides, RateLimitSpec};
use crate::foreign;
use crate::loadgen::{self, ClosedLoop, OpenLoop};
use crate::procs::{self, Proc};
use crate::redis::RedisServer;
use crate::stats::{self, ClosedSummary, OpenSummary};

/// Everything a scenario needs to start processes and load.
pub struct Env {
    pub sloguard: PathBuf,
    pub backend: PathBuf,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    /// `redis-server`, for the rate-limit scenario and the soak.
    pub redis: Option<PathBuf>,
    /// `config/sloguard.toml`, the policy every sloguard run starts from.
    pub policy_template: String,
    /// CPU of the system under test (backend and proxy) and of the generator, if pinned.
    pub sut_cpu: Option<usize>,
    pub gen_cpu: Option<usize>,
    pub dir: tempfile::TempDir,
    pub plan: Plan,
    pub rt: tokio::runtime::Runtime,
    seq: Cell<u32>,
    /// Start sloguard and bare Pingora with mimalloc returning freed pages at once
    /// (`MIMALLOC_PURGE_DELAY=0`), so that RSS follows live memory: for measures of a few
    /// KiB per connection that the allocator's cached pages would drown.
    pub live_rss: Cell<bool>,
}

impl Env {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sloguard: PathBuf,
        backend: PathBuf,
        nginx: Option<PathBuf>,
        haproxy: Option<PathBuf>,
        redis: Option<PathBuf>,
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
            redis,
            policy_template,
            sut_cpu: pin.map(|p| p.0),
            gen_cpu: pin.map(|p| p.1),
            dir: tempfile::Builder::new()
                .prefix("sloguard-bench-")
                .tempdir()?,
            plan,
            rt,
            seq: Cell::new(0),
            live_rss: Cell::new(false),
        })
    }

    /// The bare Pingora baseline, built beside sloguard (`--example bare_pingora`).
    /// See [`Env::live_rss`].
    fn set_allocator_env(&self, cmd: &mut Command) {
        if self.live_rss.get() {
            cmd.env("MIMALLOC_PURGE_DELAY", "0");
        }
    }

    fn bare_pingora(&self) -> PathBuf {
        self.sloguard
            .with_file_name("examples")
            .join("bare_pingora")
    }

    /// A fresh path in the run dir: `NNN-name`.
    pub fn path(&self, name: &str) -> PathBuf {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        self.dir.path().join(format!("{n:03}-{name}"))
    }

    /// Starts `analytics-backend` with `workers` workers on ephemeral ports and `faults`
    /// (`WORKER:SPEC`), and reads the address each worker prints.
    pub fn backend(&self, workers: usize, faults: &[String]) -> anyhow::Result<Backend> {
        self.backend_on(workers, faults, 0)
    }

    /// Like [`Env::backend`], with worker N on `base_port + N - 1` (0: ephemeral ports).
    pub fn backend_on(
        &self,
        workers: usize,
        faults: &[String],
        base_port: u16,
    ) -> anyhow::Result<Backend> {
        let mut cmd = Command::new(&self.backend);
        cmd.args(["--workers", &workers.to_string()])
            .args(["--base-port", &base_port.to_string()]);
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
        Ok(Backend {
            workers: Workers::Rust(proc),
            addrs,
        })
    }

    /// Starts a fleet of `workers` workers of `kind` with `faults` (`WORKER:SPEC`, the same
    /// spec for both fleets), pinned with the system under test.
    pub fn fleet(
        &self,
        kind: FleetKind,
        workers: usize,
        faults: &[String],
    ) -> anyhow::Result<Backend> {
        match kind {
            FleetKind::Rust => self.backend(workers, faults),
            FleetKind::Python => {
                let faults = faults
                    .iter()
                    .map(|f| {
                        let (w, spec) = f
                            .split_once(':')
                            .ok_or_else(|| anyhow::anyhow!("fault without a worker: {f}"))?;
                        Ok((w.parse()?, spec.to_string()))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let log_dir = self.path("pyfleet");
                std::fs::create_dir_all(&log_dir)?;
                let fleet = PyFleet::start(&PyFleetConfig {
                    workers,
                    faults,
                    cpu: self.sut_cpu,
                    log_dir: Some(log_dir),
                    ..PyFleetConfig::default()
                })?;
                let addrs = fleet.addrs().to_vec();
                Ok(Backend {
                    workers: Workers::Python(fleet),
                    addrs,
                })
            }
        }
    }

    /// The Python fleet with every worker also on a Unix socket (one loop serving both),
    /// pinned with the system under test: the fleet, and the sockets as policies name them.
    pub fn python_fleet_unix(&self, workers: usize) -> anyhow::Result<(Backend, Vec<String>)> {
        let log_dir = self.path("pyfleet");
        std::fs::create_dir_all(&log_dir)?;
        let fleet = PyFleet::start(&PyFleetConfig {
            workers,
            cpu: self.sut_cpu,
            log_dir: Some(log_dir),
            unix: true,
            ..PyFleetConfig::default()
        })?;
        let unix = fleet
            .unix_paths()
            .iter()
            .map(|p| format!("unix:{}", p.display()))
            .collect();
        let addrs = fleet.addrs().to_vec();
        Ok((
            Backend {
                workers: Workers::Python(fleet),
                addrs,
            },
            unix,
        ))
    }

    /// Starts a proxy in front of `workers`, retrying on new ports if one was taken.
    pub fn proxy(&self, kind: ProxyKind, workers: &[SocketAddr]) -> anyhow::Result<Running> {
        self.proxy_named(kind, &names(workers))
    }

    /// Like [`Env::proxy`], with the workers as the proxies' configs name them: `ip:port`
    /// or `unix:/path` (not for bare Pingora, which takes TCP workers only).
    pub fn proxy_named(&self, kind: ProxyKind, workers: &[String]) -> anyhow::Result<Running> {
        self.retrying(|| self.try_proxy(kind, workers, None, true))
    }

    /// Like [`Env::proxy`], but returns the moment the listeners accept: no settling time
    /// for probes and health checks (a cold start).
    pub fn proxy_cold(&self, kind: ProxyKind, workers: &[SocketAddr]) -> anyhow::Result<Running> {
        self.retrying(|| self.try_proxy(kind, &names(workers), None, false))
    }

    /// Starts sloguard (`mode`, one thread) in front of `workers` with a `[ratelimit]`
    /// section from `ratelimit`, retrying on new ports if one was taken.
    pub fn sloguard_limited(
        &self,
        mode: &'static str,
        workers: &[SocketAddr],
        ratelimit: Option<&RateLimitSpec>,
    ) -> anyhow::Result<Running> {
        let kind = ProxyKind::Sloguard {
            mode,
            fixed_limit: None,
        };
        self.retrying(|| self.try_proxy(kind, &names(workers), ratelimit, true))
    }

    fn retrying(&self, start: impl Fn() -> anyhow::Result<Running>) -> anyhow::Result<Running> {
        let mut last = None;
        for _ in 0..3 {
            match start() {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
    }

    /// Starts our own `redis-server`, pinned with the system under test: on the generator's
    /// core it would be starved by the open loop's busy wait before each send.
    /// `SLOGUARD_BENCH_REDIS_CORE=generator` pins it on the generator's core instead, the
    /// nearest this 2-core machine has to a Redis on a core (or node) of its own: the closed
    /// loop then measures sloguard's side of a Redis rule without Redis's own work on the
    /// proxy's core (the open loop's figures are the starved Redis's).
    pub fn redis_server(&self) -> anyhow::Result<RedisServer> {
        let bin = self
            .redis
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("redis-server is not installed"))?;
        let cpu = if redis_on_generator_core() {
            super::say(format!(
                "redis-server pinned on the generator's core ({:?}), SLOGUARD_BENCH_REDIS_CORE",
                self.gen_cpu
            ));
            self.gen_cpu
        } else {
            self.sut_cpu
        };
        RedisServer::start(bin, &self.path("redis"), cpu)
    }

    fn try_proxy(
        &self,
        kind: ProxyKind,
        workers: &[String],
        ratelimit: Option<&RateLimitSpec>,
        settle: bool,
    ) -> anyhow::Result<Running> {
        let listen = procs::free_addr()?;
        let mut policy_file = None;
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
                        ratelimit,
                    },
                )?;
                let file = self.path(&format!("sloguard-{mode}.toml"));
                std::fs::write(&file, policy)?;
                let mut cmd = Command::new(&self.sloguard);
                // SLOGUARD_BENCH_LOG overrides the filter, for a closer look at one run.
                let filter = std::env::var("SLOGUARD_BENCH_LOG").unwrap_or_else(|_| "warn".into());
                cmd.arg("run")
                    .arg("--config")
                    .arg(&file)
                    .env("RUST_LOG", filter);
                self.set_allocator_env(&mut cmd);
                let log = file.with_extension("log");
                let p = Proc::spawn("sloguard", cmd, self.sut_cpu, &log, libc::SIGINT)?;
                policy_file = Some(file);
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
            ProxyKind::BarePingora => {
                let mut cmd = Command::new(self.bare_pingora());
                cmd.arg(listen.to_string())
                    .args(workers)
                    .env("RUST_LOG", "warn");
                self.set_allocator_env(&mut cmd);
                let log = self.path("bare-pingora.log");
                (
                    Proc::spawn("bare-pingora", cmd, self.sut_cpu, &log, libc::SIGINT)?,
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
        if settle {
            // Let health checks and probes see every worker up before any load.
            std::thread::sleep(Duration::from_millis(300));
        }
        proc.check_alive()?;
        let idle_rss_kib = proc.rss_kib();
        Ok(Running {
            proc,
            addr: listen,
            admin,
            idle_rss_kib,
            policy_file,
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

    /// An open-loop run against `targets`: every outcome, and the CPU others used meanwhile.
    pub fn open_raw(
        &self,
        targets: &[SocketAddr],
        cfg: &OpenLoop,
    ) -> anyhow::Result<(loadgen::OpenRun, f64)> {
        let window = foreign::Window::open();
        let run = self.rt.block_on(loadgen::open_loop(targets, cfg))?;
        Ok((run, window.share()))
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
            Some(ProxyKind::BarePingora) => self.bare_pingora().is_file(),
            _ => true,
        }
    }
}

/// Workers as the proxies' configs name them.
pub fn names(workers: &[SocketAddr]) -> Vec<String> {
    workers.iter().map(|w| w.to_string()).collect()
}

/// `worker 3 listening on 127.0.0.1:40123` -> the address.
pub fn parse_worker_line(line: &str) -> Option<SocketAddr> {
    line.rsplit(' ').next()?.parse().ok()
}

/// Which workers serve the API: the Rust backend (one process, a thread per worker,
/// answers in microseconds) or the Python fleet (FastAPI on uvicorn, a process per worker,
/// with a real interpreter's costs and noise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FleetKind {
    Rust,
    Python,
}

impl FleetKind {
    pub fn name(self) -> &'static str {
        match self {
            FleetKind::Rust => "Rust workers",
            FleetKind::Python => "Python workers (FastAPI/uvicorn)",
        }
    }
}

enum Workers {
    Rust(Proc),
    Python(PyFleet),
}

/// A running backend (stopped on drop).
pub struct Backend {
    workers: Workers,
    pub addrs: Vec<SocketAddr>,
}

impl Backend {
    /// Kills the whole backend at once (SIGKILL): a crash.
    pub fn kill_now(&mut self) {
        match &mut self.workers {
            Workers::Rust(p) => p.kill_now(),
            Workers::Python(f) => (1..=self.addrs.len()).for_each(|w| f.kill_worker(w)),
        }
    }
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
    /// `examples/bare_pingora.rs`: Pingora with none of sloguard's logic, round-robin.
    BarePingora,
}

/// A running proxy (stopped on drop).
pub struct Running {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// sloguard's admin listener.
    pub admin: Option<SocketAddr>,
    pub idle_rss_kib: Option<u64>,
    /// sloguard's policy file (rewriting it makes sloguard reload, within a second).
    pub policy_file: Option<PathBuf>,
}

impl Running {
    /// Ejections sloguard made so far, from its `/status` (summed over workers).
    pub fn ejections(&self) -> Option<u64> {
        let (_, text) = http(self.admin?, "GET", "/status", "").ok()?;
        ejections_from_status(&text)
    }

    /// sloguard's `/status` JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (status, text) = http(self.admin?, "GET", "/status", "").ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&text[text.find("\r\n\r\n")? + 4..]).ok()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), 2 s at most: the
/// status and the whole answer (head and body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut text = String::new();
    // A read timeout after a complete answer is fine: the status line is what we need.
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer from {addr}{path}"))?;
    Ok((status, text))
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

/// Whether `SLOGUARD_BENCH_REDIS_CORE=generator` asks for Redis on the generator's core.
fn redis_on_generator_core() -> bool {
    std::env::var("SLOGUARD_BENCH_REDIS_CORE").is_ok_and(|v| v == "generator")
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
