//! An open-loop load generator for the acceptance tests: requests start at a fixed arrival
//! rate whatever the server does, and each latency is measured from the request's intended
//! start (so a stall cannot hide its victims: no coordinated omission). Bounded in requests
//! and in time; traffic goes to 127.0.0.1 only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ingest,
    Query,
}

/// One request's outcome: status 0 = transport error or generator timeout.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub kind: Kind,
    pub status: u16,
    pub latency: Duration,
    /// sloguard's `x-sloguard-reason`, when it answered itself.
    pub reason: Option<&'static str>,
}

/// The load: `rate` requests per second for `duration`, `ingest_share` of them POSTed
/// events, the rest metric queries.
pub struct Load {
    pub rate: f64,
    pub duration: Duration,
    pub ingest_share: f64,
}

/// Runs `load` against `base` (`http://127.0.0.1:port`); returns every outcome.
pub async fn run(base: &str, load: &Load) -> Vec<Outcome> {
    assert!(
        base.starts_with("http://127.0.0.1:"),
        "load goes to loopback only"
    );
    assert!(
        load.duration <= Duration::from_secs(30) && load.rate <= 20_000.0,
        "bounded load"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap();
    let total = (load.rate * load.duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / load.rate);
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total as usize);
    // Deterministic mix: ingest_share of every 100 requests are ingest.
    let per_100 = (load.ingest_share * 100.0).round() as u64;
    for i in 0..total {
        let intended = start + interval * i as u32;
        tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        let kind = if (i * 37) % 100 < per_100 {
            Kind::Ingest
        } else {
            Kind::Query
        };
        let (client, outcomes, base) = (client.clone(), outcomes.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let req = match kind {
                Kind::Ingest => {
                    client
                        .post(format!("{base}/v1/events"))
                        .json(&crate::common::event(
                            &format!("tenant-{}", i % 50),
                            "page_view",
                            1_700_000_000_000 + i,
                            (i % 100) as f64,
                        ))
                }
                Kind::Query => client.get(format!(
                    "{base}/v1/metrics?customer=tenant-{}&event=page_view&bucket=1m",
                    i % 50
                )),
            };
            let (status, reason) = match req.send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let reason = r
                        .headers()
                        .get("x-sloguard-reason")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| {
                            // Every reason sloguard may give, from its own vocabulary.
                            sloguard::stages::Reason::ALL
                                .iter()
                                .map(|r| r.as_str())
                                .find(|r| *r == v)
                        });
                    let _ = r.bytes().await;
                    (s, reason)
                }
                Err(_) => (0, None),
            };
            outcomes.lock().await.push(Outcome {
                kind,
                status,
                latency: intended.elapsed(),
                reason,
            });
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(outcomes).unwrap().into_inner()
}

/// Summary numbers of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub sent: usize,
    pub ok: usize,
    pub server_errors: usize,
    pub shed: usize,
    pub transport_errors: usize,
    /// Share of 2xx answers over their route's SLO (ingest 150 ms, query 250 ms).
    pub over_slo: f64,
    /// 2xx answers within SLO per second.
    pub goodput: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub ingest_success: f64,
    /// Latency of 503 answers, p50 and p99.
    pub shed_p50: Duration,
    pub shed_p99: Duration,
    /// 503 answers that took over 50 ms: shed after waiting in the queue (the target queue
    /// delay is 50 ms) rather than on arrival. Latency here runs from the intended send
    /// time, so a busy generator alone can add milliseconds; 50 ms separates the two.
    pub shed_late: usize,
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// How many answers carried each sloguard reason.
pub fn reasons(outcomes: &[Outcome]) -> std::collections::BTreeMap<&'static str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in outcomes.iter().filter_map(|o| o.reason) {
        *m.entry(r).or_insert(0) += 1;
    }
    m
}

pub fn report(outcomes: &[Outcome], duration: Duration) -> Report {
    let slo = |k: Kind| match k {
        Kind::Ingest => Duration::from_millis(150),
        Kind::Query => Duration::from_millis(250),
    };
    let ok: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| (200..300).contains(&o.status))
        .collect();
    let over = ok.iter().filter(|o| o.latency > slo(o.kind)).count();
    let mut lat: Vec<Duration> = ok.iter().map(|o| o.latency).collect();
    lat.sort();
    let mut shed_lat: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.status == 503)
        .map(|o| o.latency)
        .collect();
    shed_lat.sort();
    let ingest: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == Kind::Ingest).collect();
    let ingest_ok = ingest
        .iter()
        .filter(|o| (200..300).contains(&o.status))
        .count();
    Report {
        sent: outcomes.len(),
        ok: ok.len(),
        server_errors: outcomes
            .iter()
            .filter(|o| o.status >= 500 && o.status != 503)
            .count(),
        shed: shed_lat.len(),
        transport_errors: outcomes.iter().filter(|o| o.status == 0).count(),
        over_slo: if ok.is_empty() {
            1.0
        } else {
            over as f64 / ok.len() as f64
        },
        goodput: (ok.len() - over) as f64 / duration.as_secs_f64(),
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        p999: pct(&lat, 0.999),
        ingest_success: if ingest.is_empty() {
            1.0
        } else {
            ingest_ok as f64 / ingest.len() as f64
        },
        shed_p50: pct(&shed_lat, 0.5),
        shed_p99: pct(&shed_lat, 0.99),
        shed_late: shed_lat
            .iter()
            .filter(|d| **d > Duration::from_millis(50))
            .count(),
    }
}
