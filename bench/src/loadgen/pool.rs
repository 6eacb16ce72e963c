//! Open loop over a fixed set of client connections, as an ingress or a fleet of clients
//! holds them: request `i` goes to connection `i % connections`, each connection opens when
//! its first request is due (a cold start sees them all arrive within the first
//! `connections / rate` seconds) and stays open, and the rate follows a schedule of
//! stretches (steady, idle, steady again). Latency runs from each
//! request's intended send time, so a request that waits for its connection to be free
//! counts that wait (no coordinated omission).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::{
    check_targets, LoadError, Mix, Payloads, ERR_TIMEOUT, ERR_TRANSPORT, MAX_DURATION, MAX_REQUESTS,
};

/// One stretch of the schedule: `rate` requests/s (0 = idle) for `secs`.
#[derive(Debug, Clone, Copy)]
pub struct Stretch {
    pub rate: f64,
    pub secs: f64,
}

/// A pooled open-loop run.
#[derive(Debug, Clone)]
pub struct PoolLoop {
    pub connections: usize,
    pub schedule: Vec<Stretch>,
    pub mix: Mix,
    /// A request not answered this long after its intended start is a timeout (and its
    /// connection is replaced).
    pub timeout: Duration,
}

/// One request's outcome, with when it was meant to start (from the run's start).
#[derive(Debug, Clone, Copy)]
pub struct TimedOutcome {
    pub at: Duration,
    pub outcome: super::Outcome,
}

impl PoolLoop {
    /// The intended start of every request, from the run's start.
    pub fn arrivals(&self) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut t0 = 0.0;
        for s in &self.schedule {
            if s.rate > 0.0 {
                let n = (s.rate * s.secs) as u64;
                out.extend((0..n).map(|k| Duration::from_secs_f64(t0 + k as f64 / s.rate)));
            }
            t0 += s.secs;
        }
        out
    }

    pub fn total_secs(&self) -> f64 {
        self.schedule.iter().map(|s| s.secs).sum()
    }
}

type Job = (u64, Instant, Duration);

/// Runs `cfg` against `target`; every outcome, in no particular order.
pub async fn pool_loop(target: SocketAddr, cfg: &PoolLoop) -> Result<Vec<TimedOutcome>, LoadError> {
    check_targets(&[target])?;
    let arrivals = cfg.arrivals();
    if arrivals.len() as u64 > MAX_REQUESTS
        || cfg.total_secs() > MAX_DURATION.as_secs_f64()
        || cfg.connections == 0
        || cfg.connections > 4096
    {
        return Err(LoadError::Unbounded(format!(
            "{} requests over {} s on {} connections",
            arrivals.len(),
            cfg.total_secs(),
            cfg.connections
        )));
    }
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(arrivals.len())));
    let start = Instant::now() + Duration::from_millis(5);
    let mut senders = Vec::with_capacity(cfg.connections);
    let mut tasks = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        senders.push(tx);
        let (outcomes, mix, timeout) = (outcomes.clone(), cfg.mix, cfg.timeout);
        tasks.push(tokio::spawn(connection(target, rx, mix, timeout, outcomes)));
    }
    for (i, at) in arrivals.into_iter().enumerate() {
        let intended = start + at;
        let now = Instant::now();
        if intended > now {
            tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        }
        let _ = senders[i % senders.len()].send((i as u64, intended, at));
    }
    drop(senders);
    for t in tasks {
        let _ = t.await;
    }
    let out = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(out)
}

/// One client connection: sends its requests in order, reconnecting after an error.
async fn connection(
    target: SocketAddr,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mix: Mix,
    timeout: Duration,
    outcomes: Arc<Mutex<Vec<TimedOutcome>>>,
) {
    let payloads = Payloads::new();
    let host = target.to_string();
    let record = |at: Duration, i: u64, status: u16, reason, intended: Instant| {
        let o = TimedOutcome {
            at,
            outcome: super::Outcome {
                kind: mix.kind(i),
                status,
                latency: intended.elapsed(),
                reason,
            },
        };
        outcomes.lock().unwrap_or_else(|e| e.into_inner()).push(o);
    };
    let mut sender = None;
    while let Some((i, intended, at)) = jobs.recv().await {
        let deadline = tokio::time::Instant::from_std(intended + timeout);
        let result = tokio::time::timeout_at(deadline, async {
            // A connection the server closed while idle (a reload, a keep-alive timeout) is
            // replaced before sending, as every client's pool does.
            if sender.as_ref().is_none_or(SendRequest::is_closed) {
                sender = open(target, timeout).await;
            }
            let s = sender.as_mut()?;
            let req = payloads.request(mix, i, "", &host);
            let resp = s.send_request(req).await.ok()?;
            let status = resp.status().as_u16();
            let reason = super::sloguard_reason(resp.headers());
            let close = resp
                .headers()
                .get(http::header::CONNECTION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            resp.into_body().collect().await.ok()?;
            Some((status, reason, close))
        })
        .await;
        match result {
            Ok(Some((status, reason, close))) => {
                if close {
                    sender = None;
                }
                record(at, i, status, reason, intended);
            }
            Ok(None) => {
                sender = None;
                record(at, i, ERR_TRANSPORT, None, intended);
            }
            Err(_) => {
                sender = None;
                record(at, i, ERR_TIMEOUT, None, intended);
            }
        }
    }
}

async fn open(
    target: SocketAddr,
    timeout: Duration,
) -> Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_the_schedule_with_idle_gaps() {
        let cfg = PoolLoop {
            connections: 4,
            schedule: vec![
                Stretch {
                    rate: 10.0,
                    secs: 1.0,
                },
                Stretch {
                    rate: 0.0,
                    secs: 2.0,
                },
                Stretch {
                    rate: 5.0,
                    secs: 1.0,
                },
            ],
            mix: Mix::Incident,
            timeout: Duration::from_secs(1),
        };
        let a = cfg.arrivals();
        assert_eq!(a.len(), 15);
        assert_eq!(a[0], Duration::ZERO);
        assert_eq!(a[9], Duration::from_millis(900));
        assert_eq!(a[10], Duration::from_secs(3));
        assert_eq!(a[14], Duration::from_millis(3800));
        assert_eq!(cfg.total_secs(), 4.0);
    }
}
