//! Test harness: real processes on free ports. A type per process, started with `spawn`,
//! stopped on `Drop`, so a failing test never leaves a server behind.
//!
//! - the analytics backend runs in-process (its library), each worker on `127.0.0.1:0`;
//! - sloguard runs as its own process (the real binary), on ports found free just before.
#![allow(dead_code)] // each test file uses a different part of the harness

/// A CPU limit on one process, as Kubernetes sets it: the bench's, shared.
#[path = "../../bench/src/cgroup.rs"]
pub mod cgroup;
pub mod dashboard;
pub mod fleet;
pub mod kubelet;
pub mod load;
pub mod prometheus;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use analytics_backend::{Backend, BackendConfig, FaultSpec};

/// A port that was free a moment ago. sloguard binds it itself; `Sloguard::spawn` retries
/// with new ports in the rare case another test took it in between.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sloguard_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sloguard"))
}

/// The repository root (for `config/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the analytics backend with `workers` workers on ephemeral ports.
pub fn backend(workers: usize) -> Backend {
    backend_with_faults(workers, vec![])
}

pub fn backend_with_faults(workers: usize, faults: Vec<(usize, FaultSpec)>) -> Backend {
    Backend::start(BackendConfig {
        workers,
        faults,
        ..BackendConfig::default()
    })
    .expect("backend starts")
}

/// `sloguard run` on `policy`, logging JSON at `filter` into `log`, no stdin or stdout.
pub fn sloguard_command(policy: &Path, log: std::fs::File, filter: &str) -> Command {
    let mut cmd = Command::new(sloguard_bin());
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(policy)
        .env("RUST_LOG", filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// A sloguard process serving a generated policy.
pub struct Sloguard {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub policy_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Policy text with the listeners and workers filled in, and `rest` (routes etc.) appended.
pub fn policy_text(
    proxy: SocketAddr,
    admin: SocketAddr,
    workers: &[SocketAddr],
    rest: &str,
) -> String {
    let named: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
    policy_text_named(proxy, admin, &named, rest)
}

/// [`policy_text`] with the workers as the policy names them (`unix:/path` or `ip:port`).
pub fn policy_text_named(
    proxy: SocketAddr,
    admin: SocketAddr,
    workers: &[String],
    rest: &str,
) -> String {
    let list: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
    format!(
        "[listen]\nproxy = \"{proxy}\"\nadmin = \"{admin}\"\ndrain_timeout_ms = 5000\n\n\
         [upstream]\nworkers = [{}]\nconnect_timeout_ms = 200\nread_timeout_ms = 10000\n\n{rest}\n",
        list.join(", ")
    )
}

impl Sloguard {
    /// Starts sloguard in front of `workers` with `rest` appended to the policy, and waits
    /// until both listeners answer.
    pub fn spawn(workers: &[SocketAddr], rest: &str) -> Sloguard {
        Sloguard::spawn_logging(workers, rest, "warn")
    }

    /// Like `spawn`, with JSON log lines at `filter` (a `RUST_LOG` value) in [`Sloguard::log`].
    pub fn spawn_logging(workers: &[SocketAddr], rest: &str, filter: &str) -> Sloguard {
        Sloguard::spawn_with_listen(workers, "", rest, filter)
    }

    /// Like `spawn_logging`, with `listen` (keys such as `trusted_proxies = [...]`) added
    /// to the policy's `[listen]` table.
    pub fn spawn_with_listen(
        workers: &[SocketAddr],
        listen: &str,
        rest: &str,
        filter: &str,
    ) -> Sloguard {
        Sloguard::spawn_with_env(workers, listen, rest, filter, &[])
    }

    /// Like `spawn_with_listen`, with environment variables `env` set for the process.
    pub fn spawn_with_env(
        workers: &[SocketAddr],
        listen: &str,
        rest: &str,
        filter: &str,
        env: &[(&str, &str)],
    ) -> Sloguard {
        Sloguard::spawn_limited(workers, listen, rest, filter, env, None)
    }

    /// Like `spawn_with_env`, with the process's open-file limit (soft and hard) at `nofile`.
    pub fn spawn_limited(
        workers: &[SocketAddr],
        listen: &str,
        rest: &str,
        filter: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Sloguard {
        let named: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
        Sloguard::spawn_full(&named, listen, rest, filter, env, nofile)
    }

    /// Like `spawn`, with the workers as the policy names them (`unix:/path` or `ip:port`).
    pub fn spawn_named(workers: &[String], rest: &str) -> Sloguard {
        Sloguard::spawn_full(workers, "", rest, "warn", &[], None)
    }

    fn spawn_full(
        workers: &[String],
        listen: &str,
        rest: &str,
        filter: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Sloguard {
        let mut last_err = String::new();
        for _ in 0..3 {
            match Sloguard::try_spawn(workers, listen, rest, filter, env, nofile) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("sloguard did not start: {last_err}");
    }

    fn try_spawn(
        workers: &[String],
        listen: &str,
        rest: &str,
        filter: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<Sloguard, String> {
        let dir = tempfile::tempdir().unwrap();
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let policy_path = dir.path().join("sloguard.toml");
        let text = policy_text_named(proxy, admin, workers, rest).replacen(
            "[upstream]",
            &format!("{listen}\n[upstream]"),
            1,
        );
        std::fs::write(&policy_path, text).unwrap();
        let log = std::fs::File::create(dir.path().join("sloguard.log")).unwrap();
        let mut cmd = sloguard_command(&policy_path, log, filter);
        cmd.envs(env.iter().copied());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|e| e.to_string())?;
        let mut s = Sloguard {
            child,
            proxy,
            admin,
            policy_path,
            _dir: dir,
        };
        s.wait_listening()?;
        Ok(s)
    }

    /// Waits up to 15 s until both listeners accept; an error with the log if the process
    /// exits or never listens.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}: {}", self.log()));
            }
            let up =
                |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(100)).is_ok();
            if up(&self.proxy) && up(&self.admin) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("not listening after 15 s: {}", self.log()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The admin listener's `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POSTs one event for `tenant` (also its `x-tenant` header); its status and how long
    /// the answer took.
    pub async fn post_event(
        &self,
        http: &reqwest::Client,
        tenant: &str,
        i: u64,
    ) -> (u16, Duration) {
        let t = Instant::now();
        let r = http
            .post(self.url("/v1/events"))
            .header("x-tenant", tenant)
            .json(&event("k", "e", i, 1.0))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), t.elapsed())
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to the sloguard process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process at once (SIGKILL, as the OOM killer or a crash would), without
    /// waiting out a drain. Its ports stay its own: [`Sloguard::start_again`] reuses them.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts sloguard again after [`Sloguard::crash`], as a container restart does: the same
    /// policy file and ports (logging at `warn`, no extra environment or limits), and waits
    /// until both listeners answer.
    pub fn start_again(&mut self) {
        assert!(
            self.child.try_wait().is_ok_and(|s| s.is_some()),
            "sloguard is still running"
        );
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join("sloguard.log"))
            .unwrap();
        self.child = sloguard_command(&self.policy_path, log, "warn")
            .spawn()
            .unwrap();
        if let Err(e) = self.wait_listening() {
            panic!("sloguard on restart: {e}");
        }
    }

    /// The process id (for a cgroup or a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What sloguard wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("sloguard.log")).unwrap_or_default()
    }
}

impl Drop for Sloguard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sloguard check` on files.
pub fn check(files: &[&Path]) -> Output {
    Command::new(sloguard_bin())
        .arg("check")
        .args(files)
        .output()
        .expect("sloguard check runs")
}

/// An HTTP client that never reuses a connection across tests and never waits forever.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

/// The default policy's routes: ingest (critical, SLO p95 150 ms) and query (p95 250 ms).
pub const ROUTES: &str = r#"
[[route]]
name = "ingest"
match = { method = "POST", path_prefix = "/v1/events" }
slo = { p95_ms = 150, p99_ms = 400 }
priority = "critical"
max_body_bytes = 4096

[[route]]
name = "query"
match = { method = "GET", path_prefix = "/v1/metrics" }
slo = { p95_ms = 250 }
priority = "normal"
"#;

/// A typical 1-2 KB ingestion event.
pub fn event(customer: &str, name: &str, ts_ms: u64, value: f64) -> serde_json::Value {
    serde_json::json!({
        "customer_id": customer,
        "event": name,
        "ts": ts_ms,
        "value": value,
        "dimensions": {"country": "fr", "device": "ios", "plan": "pro", "page": "/pricing"},
    })
}

/// A real `redis-server` on a free port, stopped on drop; `kill` and `restart` (same port)
/// let a test take Redis away under load and bring it back.
pub struct RedisServer {
    // Fields are set by RedisCluster too.
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn spawn() -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            let mut r = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
            };
            match r.start() {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn start(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // Tests make Redis slow on purpose with DEBUG SLEEP.
                "--enable-debug-command",
                "local",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (is it installed?): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err("not answering PING after 5 s".into())
    }

    /// Whether it answers PING.
    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many scripts (`EVALSHA` and `EVAL`) Redis ran, from `INFO commandstats`.
    pub fn script_calls(&self) -> u64 {
        script_calls_on(self.port)
    }

    /// Stops it at once (SIGKILL): the outage case.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (its data is gone, as after a crash without
    /// persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.start().expect("redis-server restarts on its port");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of `GET url`, as text (a scrape of a `/metrics`, mostly).
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A GET's body as JSON (`Null` if it is not JSON).
pub async fn get_json(url: &str) -> serde_json::Value {
    serde_json::from_str(&get_text(url).await).unwrap_or_default()
}

/// Times the event `e` of `customer` is in the backend's store.
pub fn stored(be: &Backend, customer: &str) -> u64 {
    be.store()
        .query(&analytics_backend::Query::new(customer, "e"))
        .series[0]
        .points
        .iter()
        .map(|p| p.count)
        .sum()
}

/// Sum of a sloguard metric over all its series (`name{...} value` and `name value`).
pub async fn metric_sum(sg: &Sloguard, name: &str) -> f64 {
    get_text(&sg.admin_url("/metrics"))
        .await
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests the backend's workers have answered (from their own Prometheus counters), not
/// counting scrapes and health probes: proof of what reached the backend.
pub async fn backend_seen(be: &Backend) -> u64 {
    let mut total = 0;
    for addr in be.addrs() {
        let text = get_text(&format!("http://{addr}/metrics")).await;
        total += text
            .lines()
            .filter(|l| l.starts_with("analytics_requests_total{"))
            .filter(|l| !l.contains("route=\"prometheus\"") && !l.contains("route=\"healthz\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// Sends raw bytes on a fresh connection and returns what came back until the server closed
/// the connection or `wait` passed.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

impl RedisServer {
    /// Sends one inline command (e.g. `DEBUG SLEEP 0.5`) without waiting for its answer.
    pub fn send(&self, command: &str) {
        use std::io::Write;
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200))
            .expect("redis reachable");
        s.write_all(format!("{command}\r\n").as_bytes()).unwrap();
        // Keep the connection open long enough for the command to be read.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            drop(s);
        });
    }
}

/// A three-node Redis Cluster (no replicas) on free ports, stopped on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn spawn() -> RedisCluster {
        // Each node also needs its cluster-bus port, port + 10000.
        let pick = || loop {
            let p = free_port();
            if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                return p;
            }
        };
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = pick();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(dir.path().join("nodes.conf"))
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            let node = RedisServer {
                child: Some(child),
                port,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !node.ping() {
                assert!(Instant::now() < deadline, "cluster node did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Wait until every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never reached state ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    /// `["redis://127.0.0.1:p1", ...]` as a TOML array.
    pub fn nodes_toml(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", list.join(", "))
    }

    /// Script calls (EVAL/EVALSHA) each node has served: the limits' keys spread over the
    /// slots, so every node should get some.
    pub fn script_calls_per_node(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| script_calls_on(n.port)).collect()
    }
}

/// Polls `cond` every 50 ms until it holds or `within` passes; how long it took.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scripts (`EVALSHA` and `EVAL`) run by the Redis on `port`, from `INFO commandstats`.
fn script_calls_on(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
