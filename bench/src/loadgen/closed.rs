//! Closed loop: N keep-alive connections, each sending its next request as soon as the
//! previous answer is read; for maximum throughput (and the CPU it took).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::{
    check_targets, histogram, micros, LoadError, Mix, Payloads, MAX_DURATION, MAX_REQUESTS,
};
use crate::sysinfo;

/// A closed-loop run: `connections` keep-alive connections, each sending its next request
/// as soon as the previous answer is read, for `warmup + duration`.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub mix: Mix,
}

/// What a closed-loop run saw (after the warm-up).
pub struct ClosedRun {
    pub completed: u64,
    /// 429 answers (rate limited): neither completed nor errors.
    pub limited: u64,
    pub errors: u64,
    pub rps: f64,
    /// 429 answers per second.
    pub limited_rps: f64,
    pub latency: Histogram<u64>,
    /// Busy share of each CPU over the measured stretch (0..1), from /proc/stat.
    pub cpu_busy: Vec<f64>,
}

/// Runs `cfg` against `targets` (connection `c` goes to `targets[c % len]`).
pub async fn closed_loop(targets: &[SocketAddr], cfg: &ClosedLoop) -> Result<ClosedRun, LoadError> {
    check_targets(targets)?;
    if cfg.duration > MAX_DURATION || cfg.connections == 0 || cfg.connections > 1024 {
        return Err(LoadError::Unbounded(format!("{cfg:?}")));
    }
    let start = Instant::now();
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let per_conn_cap = MAX_REQUESTS * 4 / cfg.connections as u64;
    let mut tasks = Vec::new();
    for c in 0..cfg.connections {
        let target = targets[c % targets.len()];
        let mix = cfg.mix;
        tasks.push(tokio::spawn(async move {
            connection_loop(target, mix, c as u64, warm_end, end, per_conn_cap).await
        }));
    }
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(warm_end)).await;
        let before = sysinfo::cpu_times();
        tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
        sysinfo::busy_shares(&before, &sysinfo::cpu_times())
    });
    let mut latency = histogram();
    let (mut completed, mut limited, mut errors) = (0, 0, 0);
    for t in tasks {
        if let Ok(c) = t.await {
            let _ = latency.add(&c.hist);
            completed += c.ok;
            limited += c.limited;
            errors += c.errors;
        }
    }
    Ok(ClosedRun {
        completed,
        limited,
        errors,
        rps: completed as f64 / cfg.duration.as_secs_f64(),
        limited_rps: limited as f64 / cfg.duration.as_secs_f64(),
        latency,
        cpu_busy: cpu.await.unwrap_or_default(),
    })
}

/// What one connection saw after the warm-up.
struct ConnCounts {
    /// Latencies of the 2xx answers.
    hist: Histogram<u64>,
    ok: u64,
    limited: u64,
    errors: u64,
}

/// One closed-loop connection (reconnecting after an error); returns its histogram and
/// counts of answers, 429s and errors started after `warm_end`.
async fn connection_loop(
    target: SocketAddr,
    mix: Mix,
    seed: u64,
    warm_end: Instant,
    end: Instant,
    cap: u64,
) -> ConnCounts {
    let payloads = Payloads::new();
    let host = target.to_string();
    let mut hist = histogram();
    let (mut ok, mut limited, mut errors, mut i) = (0u64, 0u64, 0u64, seed * 7919);
    let per_request = Duration::from_secs(2);
    'connect: while Instant::now() < end && ok + limited + errors < cap {
        let stream =
            match tokio::time::timeout(per_request, tokio::net::TcpStream::connect(target)).await {
                Ok(Ok(s)) => s,
                _ => {
                    errors += u64::from(Instant::now() >= warm_end);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        while ok + limited + errors < cap {
            let t0 = Instant::now();
            if t0 >= end {
                break 'connect;
            }
            i += 1;
            let req = payloads.request(mix, i, "", &host);
            let answer = tokio::time::timeout(per_request, async {
                let resp = sender.send_request(req).await.ok()?;
                let status = resp.status();
                let close = closes(resp.headers());
                resp.into_body().collect().await.ok()?;
                Some((status, close))
            })
            .await;
            let measured = t0 >= warm_end;
            let close = match answer {
                Ok(Some((s, close))) if s.is_success() => {
                    if measured {
                        ok += 1;
                        let _ = hist.record(micros(t0.elapsed()));
                    }
                    close
                }
                Ok(Some((s, close))) if s == http::StatusCode::TOO_MANY_REQUESTS => {
                    limited += u64::from(measured);
                    close
                }
                Ok(Some((_, close))) => {
                    errors += u64::from(measured);
                    close
                }
                _ => {
                    errors += u64::from(measured);
                    continue 'connect;
                }
            };
            // The server ends the connection (sloguard does after refusing a request whose
            // body it did not read): open a new one, as a client would; not an error.
            if close {
                continue 'connect;
            }
        }
    }
    ConnCounts {
        hist,
        ok,
        limited,
        errors,
    }
}

/// Whether an answer's `Connection` header closes the connection.
fn closes(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_close_is_seen_in_any_case_and_list() {
        let mut h = http::HeaderMap::new();
        assert!(!closes(&h));
        h.insert(http::header::CONNECTION, "keep-alive".parse().unwrap());
        assert!(!closes(&h));
        h.insert(
            http::header::CONNECTION,
            "Keep-Alive, Close".parse().unwrap(),
        );
        assert!(closes(&h));
    }
}
