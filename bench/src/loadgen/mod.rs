//! The load generator. Open loop: requests start at a fixed arrival rate whatever the server
//! does, and each latency is measured from the request's intended send time, so a stall
//! cannot hide its victims (no coordinated omission). Closed loop: N keep-alive connections
//! send back to back, for maximum throughput. Loopback only; every loop is bounded in
//! requests and in time.

mod closed;
mod open;
mod pool;

pub use closed::{closed_loop, ClosedLoop, ClosedRun};
pub use open::{open_loop, OpenLoop, OpenRun};
pub use pool::{pool_loop, PoolLoop, Stretch, TimedOutcome};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Method, Request};
use http_body_util::Full;
use serde::Serialize;

/// Status recorded for a connection or protocol error.
pub const ERR_TRANSPORT: u16 = 0;
/// Status recorded for a request with no answer within the generator's timeout.
pub const ERR_TIMEOUT: u16 = 1;
/// Status recorded for a request not sent because too many were already in flight.
pub const ERR_DROPPED: u16 = 2;

/// Most requests one run may send, and its longest measured stretch.
pub(crate) const MAX_REQUESTS: u64 = 2_000_000;
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("load goes to 127.0.0.1 only, not {0}")]
    NotLoopback(SocketAddr),
    #[error("no target")]
    NoTarget,
    #[error("run out of bounds: {0}")]
    Unbounded(String),
}

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Health,
    Ingest,
    Query,
}

impl Kind {
    /// The route's latency objective (p95 target of the shipped policy), if any.
    pub fn slo(self) -> Option<Duration> {
        match self {
            Kind::Health => None,
            Kind::Ingest => Some(Duration::from_millis(150)),
            Kind::Query => Some(Duration::from_millis(250)),
        }
    }
}

/// The header that names a request's tenant in the tenant mixes (the rate-limit key).
pub const TENANT_HEADER: &str = "x-tenant-id";

/// Tenants the requests are spread over.
pub const TENANTS: u64 = 50;

/// The request mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mix {
    /// `GET /healthz` only.
    Health,
    /// 80% `POST /v1/events`, 20% `GET /v1/metrics`, interleaved deterministically.
    Incident,
    /// `POST /v1/events` naming its tenant in [`TENANT_HEADER`], the 50 tenants in turn.
    TenantIngest,
    /// Like [`Mix::TenantIngest`], but `tenant-0` sends every other request (half the
    /// traffic) and the other 49 share the rest evenly: one tenant far over its limit.
    HotTenant,
    /// The incident mix with [`TENANT_HEADER`] on every request, the 50 tenants in turn.
    TenantIncident,
    /// 20% `POST /v1/events` (the critical route), 80% `GET /v1/metrics` (normal): at twice
    /// the capacity, critical traffic is 40% of what the workers can serve.
    Priority,
}

impl Mix {
    pub fn kind(self, i: u64) -> Kind {
        match self {
            Mix::Health => Kind::Health,
            Mix::TenantIngest | Mix::HotTenant => Kind::Ingest,
            Mix::Incident | Mix::TenantIncident if (i * 37) % 100 < 80 => Kind::Ingest,
            Mix::Incident | Mix::TenantIncident => Kind::Query,
            Mix::Priority if (i * 37) % 100 < 20 => Kind::Ingest,
            Mix::Priority => Kind::Query,
        }
    }

    /// The tenant of request `i` (0..50).
    pub fn tenant(self, i: u64) -> u64 {
        match self {
            Mix::HotTenant if i.is_multiple_of(2) => 0,
            Mix::HotTenant => 1 + (i / 2) % (TENANTS - 1),
            _ => i % TENANTS,
        }
    }

    /// Whether requests carry [`TENANT_HEADER`].
    pub fn names_tenant(self) -> bool {
        matches!(
            self,
            Mix::TenantIngest | Mix::HotTenant | Mix::TenantIncident
        )
    }
}

/// One request's outcome: an HTTP status, or one of the `ERR_*` codes.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub kind: Kind,
    pub status: u16,
    pub latency: Duration,
    /// The reason sloguard gave when it answered itself (`x-sloguard-reason`).
    pub reason: Option<&'static str>,
}

/// The reasons kept from `x-sloguard-reason` (so an outcome stays `Copy`).
const REASONS: [&str; 6] = [
    "deadline_unreachable",
    "queue_timeout",
    "queue_full",
    "evicted",
    "priority",
    "upstream_unavailable",
];

/// The `x-sloguard-reason` of an answer, when it is one of [`REASONS`].
pub(crate) fn sloguard_reason(headers: &http::HeaderMap) -> Option<&'static str> {
    let v = headers.get("x-sloguard-reason")?.to_str().ok()?;
    REASONS.iter().find(|r| **r == v).copied()
}

/// Request bodies and paths, made once (50 tenants, like the tests).
pub(crate) struct Payloads {
    events: Vec<Bytes>,
}

impl Payloads {
    pub(crate) fn new() -> Payloads {
        let events = (0..50)
            .map(|t| {
                Bytes::from(format!(
                    "{{\"customer_id\":\"tenant-{t}\",\"event\":\"page_view\",\"ts\":{},\
                     \"value\":{t}.5,\"dimensions\":{{\"country\":\"fr\",\"device\":\"ios\",\
                     \"plan\":\"pro\",\"page\":\"/pricing\"}}}}",
                    1_700_000_000_000u64 + t
                ))
            })
            .collect();
        Payloads { events }
    }

    /// The request number `i` of `mix`; `base` is `http://addr` (legacy client) or empty (a
    /// raw connection, with `host` set).
    pub(crate) fn request(&self, mix: Mix, i: u64, base: &str, host: &str) -> Request<Full<Bytes>> {
        let kind = mix.kind(i);
        let tenant = mix.tenant(i);
        let (method, uri, body) = match kind {
            Kind::Health => (Method::GET, format!("{base}/healthz"), Bytes::new()),
            Kind::Ingest => (
                Method::POST,
                format!("{base}/v1/events"),
                self.events[tenant as usize].clone(),
            ),
            Kind::Query => (
                Method::GET,
                format!("{base}/v1/metrics?customer=tenant-{tenant}&event=page_view&bucket=1m"),
                Bytes::new(),
            ),
        };
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, host);
        if kind == Kind::Ingest {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        if mix.names_tenant() && kind != Kind::Health {
            b = b.header(TENANT_HEADER, format!("tenant-{tenant}"));
        }
        b.body(Full::new(body))
            .expect("static request parts are valid")
    }
}

pub(crate) fn check_targets(targets: &[SocketAddr]) -> Result<(), LoadError> {
    if targets.is_empty() {
        return Err(LoadError::NoTarget);
    }
    match targets.iter().find(|t| !t.ip().is_loopback()) {
        Some(t) => Err(LoadError::NotLoopback(*t)),
        None => Ok(()),
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incident_mix_is_80_20_in_every_hundred() {
        let ingest = (0..100)
            .filter(|i| Mix::Incident.kind(*i) == Kind::Ingest)
            .count();
        assert_eq!(ingest, 80);
        assert!((0..1000).all(|i| Mix::TenantIngest.kind(i) == Kind::Ingest));
    }

    #[test]
    fn priority_mix_is_20_80() {
        let ingest = (0..100)
            .filter(|i| Mix::Priority.kind(*i) == Kind::Ingest)
            .count();
        assert_eq!(ingest, 20);
    }

    #[test]
    fn requests_are_well_formed() {
        let p = Payloads::new();
        let r = p.request(Mix::Incident, 0, "http://127.0.0.1:1", "127.0.0.1:1");
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "http://127.0.0.1:1/v1/events");
        assert!(r.headers().get(TENANT_HEADER).is_none());
        // The first query of the incident mix.
        let i = (0..1000)
            .find(|i| Mix::Incident.kind(*i) == Kind::Query)
            .unwrap();
        let q = p.request(Mix::Incident, i, "", "127.0.0.1:1");
        assert_eq!(q.uri().path(), "/v1/metrics");
        let customer = format!("customer=tenant-{}&", i % 50);
        assert!(q.uri().query().unwrap().contains(&customer));
        let body: serde_json::Value = serde_json::from_slice(&p.events[7]).unwrap();
        assert_eq!(body["customer_id"], "tenant-7");
        assert_eq!(body["dimensions"]["country"], "fr");
    }

    #[test]
    fn tenant_mixes_name_their_tenant() {
        let p = Payloads::new();
        let r = p.request(Mix::TenantIngest, 57, "", "h");
        assert_eq!(r.headers()[TENANT_HEADER], "tenant-7");
        let i = (0..1000)
            .find(|i| Mix::TenantIncident.kind(*i) == Kind::Query)
            .unwrap();
        let q = p.request(Mix::TenantIncident, i, "", "h");
        assert_eq!(
            q.headers()[TENANT_HEADER],
            format!("tenant-{}", i % 50).as_str()
        );
        let ingest = (0..100)
            .filter(|i| Mix::TenantIncident.kind(*i) == Kind::Ingest)
            .count();
        assert_eq!(ingest, 80);
    }

    #[test]
    fn the_hot_tenant_sends_half_and_the_others_share_the_rest_evenly() {
        let mut counts = [0u64; 50];
        for i in 0..49 * 2 * 10 {
            counts[Mix::HotTenant.tenant(i) as usize] += 1;
        }
        assert_eq!(counts[0], 490);
        assert!(counts[1..].iter().all(|&c| c == 10), "{counts:?}");
        assert!((0..50).all(|i| Mix::TenantIngest.tenant(i) == i));
    }

    #[test]
    fn refuses_non_loopback_targets() {
        let far = SocketAddr::from(([10, 0, 0, 1], 80));
        assert!(matches!(
            check_targets(&[far]),
            Err(LoadError::NotLoopback(_))
        ));
        assert!(matches!(check_targets(&[]), Err(LoadError::NoTarget)));
    }

    #[test]
    fn slos_follow_the_shipped_policy() {
        assert_eq!(Kind::Ingest.slo(), Some(Duration::from_millis(150)));
        assert_eq!(Kind::Query.slo(), Some(Duration::from_millis(250)));
        assert_eq!(Kind::Health.slo(), None);
    }
}
