//! Active probes: a small GET to each worker on an interval. Its latency is the worker's
//! loop responsiveness measured from outside, so it works for backends that report nothing;
//! it also carries the worker's own lag report when there is one, and it is what readmits
//! an ejected worker (half-open).
//!
//! A probe is one short HTTP/1.1 request on a fresh connection, read only up to the end of
//! the response headers. The parsing is pure and tested; the I/O is in [`probe_once`].

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// Probes one worker once.
pub async fn probe_once(addr: &WorkerAddr, cfg: &ProbeConfig, lag_header: &str) -> ProbeOutcome {
    let start = Instant::now();
    let connected = match addr {
        WorkerAddr::Tcp(a) => tokio::time::timeout(cfg.timeout, TcpStream::connect(a))
            .await
            .map(|c| c.map(Probed::Tcp)),
        WorkerAddr::Unix(path) => tokio::time::timeout(cfg.timeout, UnixStream::connect(path))
            .await
            .map(|c| c.map(Probed::Unix)),
    };
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return match e.raw_os_error().and_then(LocalShortage::from_os_error) {
                Some(shortage) => ProbeOutcome::Local(shortage),
                None => ProbeOutcome::Answered(Err(())),
            }
        }
        Err(_) => return ProbeOutcome::Answered(Err(())),
    };
    let host = match addr {
        WorkerAddr::Tcp(a) => a.to_string(),
        WorkerAddr::Unix(_) => "localhost".to_string(),
    };
    let left = cfg.timeout.saturating_sub(start.elapsed());
    let attempt = async {
        match stream {
            Probed::Tcp(mut s) => {
                let _ = s.set_nodelay(true);
                ask(&mut s, &cfg.path, &host, lag_header).await
            }
            Probed::Unix(mut s) => ask(&mut s, &cfg.path, &host, lag_header).await,
        }
    };
    ProbeOutcome::Answered(match tokio::time::timeout(left, attempt).await {
        Ok(Ok(reply)) if (200..300).contains(&reply.status) => Ok((start.elapsed(), reply.lag)),
        _ => Err(()),
    })
}

/// A probe's connection, by the worker's kind of address.
enum Probed {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Sends the probe's GET on `stream` and reads the reply up to the end of its headers.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
    host: &str,
    lag_header: &str,
) -> Result<ProbeReply, ()> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: sloguard-probe\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.map_err(|_| ())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return parse_reply(&buf[..end + 4], lag_header).ok_or(());
        }
        if buf.len() > 16 * 1024 {
            return Err(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_lag_header_case_insensitively() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Loop-Lag-Ms: 251\r\n\r\n";
        assert_eq!(
            parse_reply(head, "x-loop-lag-ms"),
            Some(ProbeReply {
                status: 200,
                lag: Some(Duration::from_millis(251))
            })
        );
    }

    #[test]
    fn a_missing_or_bad_lag_header_is_no_lag_report() {
        let head = b"HTTP/1.1 503 Service Unavailable\r\nx-loop-lag-ms: soon\r\n\r\n";
        assert_eq!(
            parse_reply(head, "x-loop-lag-ms"),
            Some(ProbeReply {
                status: 503,
                lag: None
            })
        );
        let head = b"HTTP/1.0 204 No Content\r\n\r\n";
        assert_eq!(parse_reply(head, "x-loop-lag-ms").unwrap().lag, None);
    }

    #[test]
    fn garbage_is_not_a_reply() {
        assert_eq!(parse_reply(b"SSH-2.0-OpenSSH\r\n\r\n", "x"), None);
        assert_eq!(parse_reply(b"HTTP/1.1 abc\r\n\r\n", "x"), None);
        assert_eq!(parse_reply(&[0xff, 0xfe], "x"), None);
    }

    #[tokio::test]
    async fn a_closed_port_fails_the_probe_quickly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let r = probe_once(&port.into(), &ProbeConfig::default(), "x-loop-lag-ms").await;
        assert_eq!(r, ProbeOutcome::Answered(Err(())));
    }

    /// A worker on a Unix socket is probed like one on TCP: its status and lag are read,
    /// and a socket file nobody listens on fails the probe.
    #[tokio::test]
    async fn probes_a_unix_socket_worker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w1.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let served = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nx-loop-lag-ms: 7\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let addr: WorkerAddr = format!("unix:{}", path.display()).parse().unwrap();
        let r = probe_once(&addr, &ProbeConfig::default(), "x-loop-lag-ms").await;
        let ProbeOutcome::Answered(Ok((_, lag))) = r else {
            panic!("{r:?}");
        };
        assert_eq!(lag, Some(Duration::from_millis(7)));
        let request = served.await.unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\nhost: localhost\r\n"),
            "{request}"
        );

        let gone: WorkerAddr = format!("unix:{}", dir.path().join("none.sock").display())
            .parse()
            .unwrap();
        let r = probe_once(&gone, &ProbeConfig::default(), "x-loop-lag-ms").await;
        assert_eq!(r, ProbeOutcome::Answered(Err(())));
    }
}
