//! Open loop: requests start at a fixed arrival rate whatever the server does; each latency
//! runs from the request's intended send time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{
    check_targets, histogram, micros, LoadError, Mix, Outcome, Payloads, ERR_DROPPED, ERR_TIMEOUT,
    ERR_TRANSPORT, MAX_DURATION, MAX_REQUESTS,
};

/// An open-loop run: `rate` requests/s for `warmup + duration`; only requests intended
/// after the warm-up are recorded.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub mix: Mix,
    /// A request not answered this long after its intended start is recorded as
    /// [`ERR_TIMEOUT`] with this latency (a lower bound).
    pub timeout: Duration,
    /// Requests in flight beyond this are not sent ([`ERR_DROPPED`]).
    pub max_in_flight: usize,
    /// Spin (yield) for the last 2 ms before each send instead of relying on the 1 ms timer;
    /// only when the generator has a core of its own.
    pub precise: bool,
}

/// What an open-loop run saw.
pub struct OpenRun {
    pub outcomes: Vec<Outcome>,
    /// How late requests were sent after their intended time, µs (the generator's own lag;
    /// latencies already include it).
    pub send_lag: Histogram<u64>,
}

/// Runs `cfg` against `targets` (request `i` goes to `targets[i % len]`).
pub async fn open_loop(targets: &[SocketAddr], cfg: &OpenLoop) -> Result<OpenRun, LoadError> {
    check_targets(targets)?;
    let total = ((cfg.warmup + cfg.duration).as_secs_f64() * cfg.rate) as u64;
    if total > MAX_REQUESTS || cfg.duration > MAX_DURATION || cfg.rate <= 0.0 {
        return Err(LoadError::Unbounded(format!("{cfg:?}")));
    }
    let warm_n = (cfg.warmup.as_secs_f64() * cfg.rate) as u64;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let bases: Vec<(String, String)> = targets
        .iter()
        .map(|t| (format!("http://{t}"), t.to_string()))
        .collect();
    let payloads = Payloads::new();
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity((total - warm_n) as usize)));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut send_lag = histogram();
    let mut tasks = Vec::with_capacity(total as usize);
    let start = Instant::now() + Duration::from_millis(20);
    for i in 0..total {
        let intended = start + Duration::from_nanos((i as f64 * 1e9 / cfg.rate) as u64);
        wait_until(intended, cfg.precise).await;
        let _ = send_lag.record(micros(intended.elapsed()));
        let kind = cfg.mix.kind(i);
        let measured = i >= warm_n;
        if in_flight.load(Ordering::Relaxed) >= cfg.max_in_flight {
            if measured {
                lock(&outcomes).push(Outcome {
                    kind,
                    status: ERR_DROPPED,
                    latency: cfg.timeout,
                    reason: None,
                });
            }
            continue;
        }
        let (base, host) = &bases[(i % bases.len() as u64) as usize];
        let req = payloads.request(cfg.mix, i, base, host);
        let (client, outcomes, in_flight) = (client.clone(), outcomes.clone(), in_flight.clone());
        let deadline = tokio::time::Instant::from_std(intended + cfg.timeout);
        in_flight.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let (status, reason) = match tokio::time::timeout_at(deadline, send(&client, req)).await
            {
                Ok(Some(answer)) => answer,
                Ok(None) => (ERR_TRANSPORT, None),
                Err(_) => (ERR_TIMEOUT, None),
            };
            let latency = intended.elapsed();
            if measured {
                lock(&outcomes).push(Outcome {
                    kind,
                    status,
                    latency,
                    reason,
                });
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let outcomes = std::mem::take(&mut *lock(&outcomes));
    Ok(OpenRun { outcomes, send_lag })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request: its status and sloguard's reason, if it answered itself.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Option<(u16, Option<&'static str>)> {
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let reason = super::sloguard_reason(resp.headers());
    resp.into_body().collect().await.ok()?;
    Some((status, reason))
}

/// Waits until `t`: the timer for all but the last 2 ms, then (if `precise`) yields in a
/// loop so the send is not late by the timer's 1 ms granularity.
async fn wait_until(t: Instant, precise: bool) {
    let spin = if precise {
        Duration::from_millis(2)
    } else {
        Duration::ZERO
    };
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        if t - now > spin {
            tokio::time::sleep_until(tokio::time::Instant::from_std(t - spin)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}
