//! `sloguard demo`: the incident on one machine. Starts the analytics backend as a child
//! process (4 workers, worker 3 blocking its loop 250 ms on 1 request in 4) and sloguard in
//! front of it with the given policy, prints what to try, and stops both on Ctrl-C.
//!
//! The sidecar carries no backend code: it runs the `analytics-backend` binary built beside it.

// The demo's driver: waits for the backend to listen, on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Policy;
use crate::workers::WorkerAddr;

/// The fault the demo injects: the incident's blocking ORM write on worker 3.
pub const DEMO_FAULT: &str = "3:block=250ms,every=4";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Policy(#[from] crate::PolicyError),
    #[error("cannot find the analytics-backend binary at {0}; build both with `cargo xtask demo` (or `cargo build --release -p sloguard -p analytics-backend`)")]
    BackendMissing(PathBuf),
    #[error("the demo starts the backend itself, so the policy's workers must be consecutive TCP ports on one address ({0})")]
    WorkersNotConsecutive(String),
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backend worker {0} did not start listening within 10 s (is the port taken?)")]
    BackendNotListening(SocketAddr),
    #[error(transparent)]
    Start(#[from] crate::server::StartError),
}

/// Kills the backend when the demo ends, whichever way it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Ctrl-C reaches the backend too (same process group) and it exits by itself;
        // give it a moment, then make sure.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn default_backend_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("analytics-backend")))
        .unwrap_or_else(|| PathBuf::from("analytics-backend"))
}

fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn run(config: &Path, backend: Option<PathBuf>) -> Result<(), DemoError> {
    let policy = Policy::load(config)?;
    // The demo's backend listens on TCP ports only.
    let tcp: Option<Vec<SocketAddr>> = policy
        .upstream
        .workers
        .iter()
        .map(|w| match w {
            WorkerAddr::Tcp(addr) => Some(*addr),
            WorkerAddr::Unix(_) => None,
        })
        .collect();
    let consecutive = |workers: &[SocketAddr]| {
        let first = workers[0];
        workers.iter().enumerate().all(|(i, w)| {
            w.ip() == first.ip() && usize::from(w.port()) == usize::from(first.port()) + i
        })
    };
    let Some(workers) = tcp.filter(|w| consecutive(w)) else {
        return Err(DemoError::WorkersNotConsecutive(worker_list(&policy)));
    };
    let first = workers[0];
    let backend = backend.unwrap_or_else(default_backend_path);
    if !backend.is_file() {
        return Err(DemoError::BackendMissing(backend));
    }
    let child = Command::new(&backend)
        .args(["--workers", &workers.len().to_string()])
        .args(["--base-port", &first.port().to_string()])
        .args(["--bind", &first.ip().to_string()])
        .args(["--fault", DEMO_FAULT])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| DemoError::Spawn {
            path: backend.clone(),
            source,
        })?;
    let _guard = KillOnDrop(child);
    for w in &workers {
        if !wait_listening(*w, Duration::from_secs(10)) {
            return Err(DemoError::BackendNotListening(*w));
        }
    }
    print_banner(&policy);
    crate::server::run(policy)?;
    Ok(())
}

/// The policy's workers as it names them, comma-separated.
fn worker_list(policy: &Policy) -> String {
    let names: Vec<String> = policy
        .upstream
        .workers
        .iter()
        .map(|w| w.to_string())
        .collect();
    names.join(", ")
}

fn print_banner(policy: &Policy) {
    let proxy = policy.listen.proxy;
    let admin = policy.listen.admin;
    let workers = worker_list(policy);
    println!(
        r#"
sloguard demo
  backend workers : {workers} (worker 3 blocks its event loop 250 ms on 1 request in 4)
  proxy           : http://{proxy}
  admin           : http://{admin}/status   http://{admin}/healthz
  policy          : {file} (version {version})

Try:
  curl -si -X POST http://{proxy}/v1/events -H 'content-type: application/json' \
    -d '{{"customer_id":"acme","event":"page_view","ts":'$(date +%s000)',"dimensions":{{"country":"fr"}},"value":12.5}}'
  curl -s 'http://{proxy}/v1/metrics?customer=acme&event=page_view&bucket=1m&group_by=country'
  for i in $(seq 8); do curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}s\n' -X POST http://{proxy}/v1/events \
    -H 'content-type: application/json' -d '{{"customer_id":"acme","event":"e","ts":1}}'; done
  curl -s http://{admin}/status

Ctrl-C stops both.
"#,
        file = policy.source.display(),
        version = policy.version,
    );
}
