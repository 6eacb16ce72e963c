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

use super::{say, Contender, Env, ProxyKind, SLOGUARD_ENFORCE};
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

#[derive(Debug, Clone, Serialize)]
pub struct Conns {
    pub rows: Vec<ConnsRow>,
    /// Contender and count not measured, and why.
    pub skipped: Vec<String>,
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender {
            name: "sloguard (enforce)",
            proxy: Some(SLOGUARD_ENFORCE),
            only: None,
        },
        Contender {
            name: "Pingora (bare)",
            proxy: Some(ProxyKind::BarePingora),
            only: None,
        },
        Contender {
            name: "nginx least_conn",
            proxy: Some(ProxyKind::Nginx(Balance::LeastConn)),
            only: None,
        },
        Contender {
            name: "HAProxy leastconn",
            proxy: Some(ProxyKind::Haproxy(Balance::LeastConn)),
            only: None,
        },
    ]
}

pub fn run(env: &Env) -> anyhow::Result<Conns> {
    raise_fd_limit();
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
    Ok(Conns { rows, skipped })
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

/// Slices per second of the active stretch: every tenth of a second a tenth of the
/// connections each send one GET, then their answers are read.
const TICKS_PER_SEC: usize = 10;

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

/// Reads one answer with a `content-length` body.
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
            if !head.starts_with("http/1.1 200") {
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
