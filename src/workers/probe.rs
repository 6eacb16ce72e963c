//! Active probes: a small GET to each worker on an interval. Its latency is the worker's
//! loop responsiveness measured from outside, so it works for backends that report nothing;
//! it also carries the worker's own lag report when there is one, and it is what readmits
//! an ejected worker (half-open).
//!
//! A probe is one short HTTP/1.1 request. Its connection is kept for the next probe of the
//! same worker when the answer allows it (Envoy's `reuse_connection`, on by default there
//! too): at the default 50 ms interval a fresh connection per probe is 20 accepts a second
//! per worker, each a handshake, a TIME_WAIT socket and, for a Python worker, a connection
//! object built and torn down in the interpreter, on the core the workers and the proxy
//! share. A kept connection found closed by the worker before the probe is sent (its own
//! keep-alive timeout ran out first) is replaced by a fresh one, so it is never a failure;
//! anything that goes wrong once the probe is sent fails it and drops the connection. A
//! worker that can no longer accept new connections but still serves the ones it has is
//! noticed by the proxied requests' connect failures, not by the probe (as with Envoy). The
//! parsing is pure and tested; the I/O is in [`probe`].

// I/O edge: a probe times its round trip.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::WorkerAddr;

use crate::resources::LocalShortage;

/// `[upstream.probe]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Path probed. Default `/healthz`.
    pub path: String,
    /// Time between probes of one worker. Default 50 ms.
    pub interval: Duration,
    /// A probe slower than this failed. Default 500 ms.
    pub timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            path: "/healthz".into(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
        }
    }
}

/// What a probe learnt: status and the lag header, if present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReply {
    pub status: u16,
    pub lag: Option<Duration>,
}

/// Parses a lag header value (milliseconds, integer or decimal); `None` when it is not a
/// finite, non-negative number.
pub fn parse_lag_ms(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 3.6e6)
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
}

/// Parses response headers (`head` = bytes up to and including the blank line).
pub fn parse_reply(head: &[u8], lag_header: &str) -> Option<ProbeReply> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let lag = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(lag_header))
        .and_then(|(_, v)| parse_lag_ms(v));
    Some(ProbeReply { status, lag })
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeOutcome {
    /// `Ok((latency, lag))` on a 2xx within the timeout, else `Err`: the worker's record.
    Answered(Result<(Duration, Option<Duration>), ()>),
    /// The probe could not even open its connection for want of something of ours (file
    /// descriptors, say): nothing is known of the worker, and nothing is recorded for it.
    Local(LocalShortage),
}

/// How many body bytes follow a probe answer's `head` on a connection that may carry the
/// next probe; `None` when it may not: the worker closes it (`connection: close`, or an
/// HTTP/1.0 answer without keep-alive), or the body has no length given up front (chunked,
/// or read to the close) or a long one (more than 16 KiB is not a health answer).
pub fn kept_body_len(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut status_line = lines.next()?.splitn(3, ' ');
    let version = status_line.next()?;
    let status: u16 = status_line.next()?.parse().ok()?;
    let mut keep_alive = version == "HTTP/1.1";
    let mut length = None;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("connection") {
            let says = |token: &str| {
                value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            };
            if says("close") {
                return None;
            }
            keep_alive |= says("keep-alive");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        }
    }
    if !keep_alive {
        return None;
    }
    match (status, length) {
        (100..=199 | 204 | 304, _) => Some(0),
        (_, Some(n)) if n <= MAX_KEPT_BODY => Some(n),
        _ => None,
    }
}

/// Longest probe answer body read to keep its connection.
const MAX_KEPT_BODY: usize = 16 * 1024;

/// A probe connection kept between two probes of one worker.
#[derive(Debug)]
pub struct KeptConn {
    addr: WorkerAddr,
    stream: Probed,
}

/// Probes one worker once, on the connection `kept` from its last probe if there is one for
/// this address, and leaves in `kept` the connection for the next probe (or nothing).
pub async fn probe(
    addr: &WorkerAddr,
    cfg: &ProbeConfig,
    lag_header: &str,
    kept: &mut Option<KeptConn>,
) -> ProbeOutcome {
    let start = Instant::now();
    let host = match addr {
        WorkerAddr::Tcp(a) => a.to_string(),
        WorkerAddr::Unix(_) => "localhost".to_string(),
    };
    let reusable = kept
        .take()
        .filter(|c| &c.addr == addr && c.stream.still_open());
    let mut conn = match reusable {
        Some(conn) => conn,
        None => match Probed::connect(addr, cfg.timeout).await {
            Ok(stream) => KeptConn {
                addr: addr.clone(),
                stream,
            },
            Err(failed) => return failed,
        },
    };
    let left = cfg.timeout.saturating_sub(start.elapsed());
    let attempt = ask(&mut conn.stream, &cfg.path, &host, lag_header);
    match tokio::time::timeout(left, attempt).await {
        Ok(Ok((reply, reusable))) => {
            if reusable {
                *kept = Some(conn);
            }
            ProbeOutcome::Answered(if (200..300).contains(&reply.status) {
                Ok((start.elapsed(), reply.lag))
            } else {
                Err(())
            })
        }
        _ => ProbeOutcome::Answered(Err(())),
    }
}

/// A probe's connection, by the worker's kind of address.
#[derive(Debug)]
enum Probed {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Probed {
    /// A fresh connection to `addr` within `timeout` (TCP without Nagle's delay), or the
    /// probe's outcome when there is none: our own shortage (no descriptor, no local port)
    /// is not the worker's failure.
    async fn connect(addr: &WorkerAddr, timeout: Duration) -> Result<Probed, ProbeOutcome> {
        let connected = match addr {
            WorkerAddr::Tcp(a) => tokio::time::timeout(timeout, TcpStream::connect(a))
                .await
                .map(|c| c.map(Probed::Tcp)),
            WorkerAddr::Unix(path) => tokio::time::timeout(timeout, UnixStream::connect(path))
                .await
                .map(|c| c.map(Probed::Unix)),
        };
        match connected {
            Ok(Ok(stream)) => {
                if let Probed::Tcp(s) = &stream {
                    let _ = s.set_nodelay(true);
                }
                Ok(stream)
            }
            Ok(Err(e)) => Err(
                match e.raw_os_error().and_then(LocalShortage::from_os_error) {
                    Some(shortage) => ProbeOutcome::Local(shortage),
                    None => ProbeOutcome::Answered(Err(())),
                },
            ),
            Err(_) => Err(ProbeOutcome::Answered(Err(()))),
        }
    }

    /// Whether the connection is still open and quiet between two probes: not closed by
    /// the worker while it sat idle (its own keep-alive timeout), and nothing unasked
    /// waiting on it. Checked before a probe is sent on it, so that a worker that closes
    /// or resets a connection in answer to a probe still fails that probe.
    fn still_open(&self) -> bool {
        let mut byte = [0u8; 1];
        let read = match self {
            Probed::Tcp(s) => s.try_read(&mut byte),
            Probed::Unix(s) => s.try_read(&mut byte),
        };
        matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Probed::Tcp(s) => s.write_all(bytes).await,
            Probed::Unix(s) => s.write_all(bytes).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Probed::Tcp(s) => s.read(buf).await,
            Probed::Unix(s) => s.read(buf).await,
        }
    }
}

/// Sends the probe's GET on `stream` and reads the answer: its headers, and its body when
/// the connection may carry the next probe (`true` then).
async fn ask(
    stream: &mut Probed,
    path: &str,
    host: &str,
    lag_header: &str,
) -> Result<(ProbeReply, bool), ()> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: sloguard-probe\r\n\r\n");
    stream.write_all(req.as_bytes()).await.map_err(|_| ())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let (reply, head_len, body_len) = loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(()),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end + 4];
            let reply = parse_reply(head, lag_header).ok_or(())?;
            break (reply, end + 4, kept_body_len(head));
        }
        if buf.len() > 16 * 1024 {
            return Err(());
        }
    };
    let Some(body_len) = body_len else {
        return Ok((reply, false));
    };
    let whole = head_len + body_len;
    while buf.len() < whole {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok((reply, false)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // More than the answer: the worker sent something unasked; do not reuse.
    Ok((reply, buf.len() == whole))
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
