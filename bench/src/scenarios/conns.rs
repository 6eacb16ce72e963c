//! Scenario: memory per idle keep-alive client connection. Ingress controllers and meshes
//! keep pools of connections open to a sidecar, and its memory limit is paid by every pod.
//! Each proxy (started afresh) gets N client connections, each sending one GET and then
//! staying open and idle; RSS is read before and after (one second after the last answer),
//! and again after a hold, to see that idle connections do not grow. Then every connection
//! sends one GET a second for a while (the 1 request/s of a pool kept warm), and the highest
//! RSS seen meanwhile is the active figure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{say, Contender, Env, ProxyKind, SLOGUARD_ENFORCE, SLOGUARD_OFF};
use crate::configs::Balance;

/// Connection counts measured, in one run per proxy each.
pub const COUNTS: [usize; 2] = [2000, 10_000];

#[derive(Debug, Clone, Serialize)]
pub struct ConnsRow {
    pub contender: String,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_idle_kib: u64,
    /// RSS after the connections were held idle for `hold_secs` more.
    pub rss_held_kib: u64,
    pub hold_secs: u64,
    /// Highest RSS while every connection sent one request a second, for `active_secs`.
    pub rss_active_kib: u64,
    pub active_secs: u64,
    /// Answers that failed or did not come during the active stretch.
    pub active_failures: u64,
}

impl ConnsRow {
    /// KiB per connection, from the RSS before they opened to the RSS with them idle.
    pub fn per_connection_kib(&self) -> f64 {
        (self.rss_idle_kib as f64 - self.rss_before_kib as f64) / self.connections as f64
    }

    /// KiB per connection while active at one request a second.
    pub fn active_per_connection_kib(&self) -> f64 {
        (self.rss_active_kib as f64 - self.rss_before_kib as f64) / self.connections as f64
    }
}

/// Concurrent requests sent to fill each proxy's pool of idle upstream connections, under
/// the [`crate::configs::UPSTREAM_POOL`] every proxy here may keep.
pub const POOL_FILL: usize = 1000;

/// Rounds of the pooled-connections measure per proxy (each a fresh proxy); the figure is
/// their median.
pub const POOL_ROUNDS: usize = 5;

/// One round of idle upstream connections kept in a proxy's pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolRow {
    pub contender: String,
    /// Requests in flight at once, each on its own client connection.
    pub concurrent: usize,
    /// Established connections from the proxy to the workers one second after the last
    /// answer of the second fill, the client connections closed (less those left open
    /// after the first): the pooled ones.
    pub pooled: usize,
    /// After a first fill whose upstream connections the workers closed (nothing pooled).
    pub rss_before_kib: u64,
    pub rss_pooled_kib: u64,
}

impl PoolRow {
    pub fn per_pooled_kib(&self) -> Option<f64> {
        (self.pooled > 0)
            .then(|| (self.rss_pooled_kib as f64 - self.rss_before_kib as f64) / self.pooled as f64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Conns {
    pub rows: Vec<ConnsRow>,
    /// Idle pooled upstream connections, [`POOL_ROUNDS`] rounds per proxy.
    pub pools: Vec<PoolRow>,
    /// Contender and count not measured, and why.
    pub skipped: Vec<String>,
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender::through("sloguard (enforce)", SLOGUARD_ENFORCE),
        Contender::through("Pingora (bare)", ProxyKind::BarePingora),
        Contender::through("nginx least_conn", ProxyKind::Nginx(Balance::LeastConn)),
        Contender::through("HAProxy leastconn", ProxyKind::Haproxy(Balance::LeastConn)),
    ]
}

pub fn run(env: &Env) -> anyhow::Result<Conns> {
    raise_fd_limit();
    // For a closer look at the pool alone (its rounds are short; the rest takes minutes).
    if std::env::var_os("SLOGUARD_BENCH_POOLS_ONLY").is_some() {
        let mut skipped = Vec::new();
        let pools = measure_pools(env, &mut skipped)?;
        return Ok(Conns {
            rows: Vec::new(),
            pools,
            skipped,
        });
    }
    let hold = Duration::from_secs(if env.plan.quick { 5 } else { 60 });
    let active = Duration::from_secs(if env.plan.quick { 3 } else { 10 });
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for c in contenders() {
        let Some(kind) = c.proxy else { continue };
        if !env.available(Some(kind)) {
            say(format!("conns: {} not installed; skipped", c.name));
            continue;
        }
        for n in COUNTS {
            say(format!(
                "conns: {} with {n} idle keep-alive connections",
                c.name
            ));
            let backend = env.backend(4, &[])?;
            let proxy = env.proxy(kind, &backend.addrs)?;
            let rss = || proxy.proc.rss_kib().unwrap_or(0);
            let before = rss();
            let held = match open_idle(proxy.addr, n) {
                Ok(held) => held,
                Err(e) => {
                    // HAProxy's maxconn (8000 here: it needs two descriptors per connection
                    // under the machine's hard limit) refuses the rest, say.
                    say(format!("conns: {} at {n}: {e}; not measured", c.name));
                    skipped.push(format!("{} at {n}: {e}", c.name));
                    continue;
                }
            };
            std::thread::sleep(Duration::from_secs(1));
            let idle = rss();
            std::thread::sleep(hold);
            let after_hold = rss();
            let mut held = held;
            let (rss_active, failures) = keep_active(&mut held, active, &rss);
            drop(held);
            rows.push(ConnsRow {
                contender: c.name.into(),
                connections: n,
                rss_before_kib: before,
                rss_idle_kib: idle,
                rss_held_kib: after_hold,
                hold_secs: hold.as_secs(),
                rss_active_kib: rss_active,
                active_secs: active.as_secs(),
                active_failures: failures,
            });
        }
    }
    let pools = measure_pools(env, &mut skipped)?;
    Ok(Conns {
        rows,
        pools,
        skipped,
    })
}

/// Pooled idle upstream connections: every worker trickles its `/v1/*` answers (20 ms a
/// byte, about 4 s an answer, without blocking its loop), so [`POOL_FILL`] requests sent at
/// once each hold an upstream connection of their own, and all are sent before the first
/// answer ends (a connection a worker closes after its answer is never reused by a request
/// of the same fill); once answered, those connections go back to the proxy's pool. Two such fills on one proxy: in the first the
/// workers close each connection after its answer (nothing is pooled), so the second, where
/// they keep them, finds the allocator already holding what as many requests in flight cost;
/// the RSS between the two (the client connections closed, one second after the last
/// answer) is what the pool holds. The proxy's connections to the workers are counted in
/// `/proc/net/tcp`.
fn measure_pools(env: &Env, skipped: &mut Vec<String>) -> anyhow::Result<Vec<PoolRow>> {
    let faults: Vec<String> = (1..=4)
        .map(|w| format!("{w}:trickle=20ms,close_keepalive=1"))
        .collect();
    let mut rows = Vec::new();
    // With the allocator's default purge delay, sloguard's and bare Pingora's RSS after a
    // thousand requests moved by +-13 MiB between rounds: more than the pool holds.
    env.live_rss.set(true);
    for c in contenders() {
        let Some(kind) = c.proxy else { continue };
        if !env.available(Some(kind)) {
            continue;
        }
        // The guard would see trickled answers as stalled workers and queue the fill; the
        // pool's memory does not depend on the mode.
        let (kind, name) = match kind {
            ProxyKind::Sloguard { .. } => (SLOGUARD_OFF, "sloguard (off)"),
            other => (other, c.name),
        };
        for round in 1..=POOL_ROUNDS {
            say(format!(
                "conns: {name}, {POOL_FILL} pooled upstream connections, round {round}"
            ));
            let backend = env.backend(4, &faults)?;
            let proxy = env.proxy(kind, &backend.addrs)?;
            let rss = || proxy.proc.rss_kib().unwrap_or(0);
            match fill_pool(name, proxy.addr, &backend.addrs, &rss) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    say(format!(
                        "conns: {name} pool round {round}: {e}; not measured"
                    ));
                    skipped.push(format!("{name}, pooled upstream connections: {e}"));
                    break;
                }
            }
        }
    }
    env.live_rss.set(false);
    Ok(rows)
}

/// The two fills of [`measure_pools`] (the workers start closing after each answer).
fn fill_pool(
    contender: &str,
    addr: SocketAddr,
    workers: &[SocketAddr],
    rss: &dyn Fn() -> u64,
) -> anyhow::Result<PoolRow> {
    let ports: Vec<u16> = workers.iter().map(|a| a.port()).collect();
    concurrent_events(addr)?;
    std::thread::sleep(Duration::from_secs(1));
    let before = rss();
    let left_open = established_to(&ports)?;
    for w in workers {
        set_fault(*w, r#"{"trickle_ms":20}"#)?;
    }
    concurrent_events(addr)?;
    std::thread::sleep(Duration::from_secs(1));
    let after = rss();
    let pooled = established_to(&ports)?;
    Ok(PoolRow {
        contender: contender.into(),
        concurrent: POOL_FILL,
        pooled: pooled.saturating_sub(left_open),
        rss_before_kib: before,
        rss_pooled_kib: after,
    })
}

/// [`POOL_FILL`] `POST /v1/events` sent at once, each on a client connection of its own,
/// all answered; the client connections are closed.
fn concurrent_events(addr: SocketAddr) -> anyhow::Result<()> {
    // An event (the critical route: a query would be hedged after 50 ms, two connections).
    let body = r#"{"customer_id":"pool","event":"page_view","ts":1700000000000,"value":1.0}"#;
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conns = Vec::with_capacity(POOL_FILL);
    for _ in 0..POOL_FILL {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        read_answer(s).map_err(|e| anyhow::anyhow!("concurrent request {i}: {e}"))?;
    }
    Ok(())
}

/// Sets a worker's fault (`POST /admin/fault` on the worker itself).
fn set_fault(worker: SocketAddr, json: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&worker, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = format!(
        "POST /admin/fault HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    );
    s.write_all(request.as_bytes())?;
    read_answer(&mut s).map_err(|e| anyhow::anyhow!("fault on worker {worker}: {e}"))
}

/// Established IPv4 TCP connections whose remote port is one of `ports` (on this machine,
/// only a proxy connects to the workers; the workers' own ends have them as local ports).
fn established_to(ports: &[u16]) -> anyhow::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            f.get(3) == Some(&"01") && remote_port.is_some_and(|p| ports.contains(&p))
        })
        .count())
}

/// Opens `n` connections to `addr`, one after the other, each sending one GET and reading
/// its whole answer; returns them open.
fn open_idle(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    let request = b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n";
    // A connection left in the listen backlog (a cap reached) shows as a read timeout.
    for i in 0..n {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request)?;
        read_answer(&mut s).map_err(|e| anyhow::anyhow!("connection {i}: {e}"))?;
        conns.push(s);
    }
    Ok(conns)
}

/// Slices per second of the active stretch: every 10 ms a hundredth of the connections each
/// send one GET, then their answers are read. (In tenths, the 1000 requests a tick of the
/// 10 000 connections arrived as one burst, which a one-thread sloguard on the backend's core
/// answered in part with 503s: the stretch measured sheds, not connections.)
const TICKS_PER_SEC: usize = 100;

/// Every connection sends one request a second for `secs`; the highest RSS read (after
/// each second's last tick) and how many answers failed. A failed connection is not used
/// again.
fn keep_active(conns: &mut [TcpStream], secs: Duration, rss: &dyn Fn() -> u64) -> (u64, u64) {
    let request = b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n";
    let mut alive = vec![true; conns.len()];
    let mut failures = 0u64;
    let mut highest = 0;
    let start = Instant::now();
    let tick = Duration::from_secs(1) / TICKS_PER_SEC as u32;
    let ticks = secs.as_secs() as usize * TICKS_PER_SEC;
    let slice = conns.len().div_ceil(TICKS_PER_SEC);
    for t in 0..ticks {
        let due = start + tick * t as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let from = (t % TICKS_PER_SEC) * slice;
        let to = (from + slice).min(conns.len());
        for i in from..to {
            if alive[i] && conns[i].write_all(request).is_err() {
                alive[i] = false;
                failures += 1;
            }
        }
        for i in from..to {
            if alive[i] && read_answer(&mut conns[i]).is_err() {
                alive[i] = false;
                failures += 1;
            }
        }
        if t % TICKS_PER_SEC == TICKS_PER_SEC - 1 {
            highest = highest.max(rss());
        }
    }
    (highest, failures)
}

/// Reads one 2xx answer with a `content-length` body.
fn read_answer(s: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 2") {
                return Err(std::io::Error::other(format!(
                    "answer {:?}",
                    head.lines().next()
                )));
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

/// The generator holds up to 10 000 sockets, and the proxies it starts inherit its limit
/// (sloguard derives its default connection cap from it: half of it). As root both limits
/// go to 65 536; otherwise the soft one goes to the hard one.
fn raise_fd_limit() {
    const WANTED: libc::rlim_t = 65_536;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one `rlimit` through valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: WANTED.max(lim.rlim_cur),
            rlim_max: WANTED.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
