//! Per-request state carried through the Pingora phases.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Policy;
use crate::stages::client_ip::ClientIp;
use crate::stages::json_scan::JsonScanner;
use crate::stages::payload::BodyCounter;
use crate::stages::ratelimit::RateHeaders;
use crate::stages::route::RouteId;
use crate::stages::Rejection;
use crate::state::InFlightRequest;
use crate::workers::{Sample, Tried, WorkerLease};

/// What one request has learned and holds. Dropped when the request ends, which releases the
/// worker lease whatever path the request ended on.
pub struct RequestCtx {
    /// The policy snapshot this request runs under, loaded once so a reload mid-request
    /// never mixes two policies.
    pub policy: Option<Arc<Policy>>,
    pub route: RouteId,
    /// The client's `x-request-id`, or one we generated.
    pub request_id: String,
    /// Who the client is (the TCP peer, or through trusted proxies `X-Forwarded-For`).
    pub client: Option<ClientIp>,
    pub started: Instant,
    /// The worker currently holding this request.
    pub lease: Option<WorkerLease>,
    /// Bit per worker index this request failed to connect to, so a retry goes elsewhere.
    pub tried: Tried,
    /// Upstream attempts made (1 = no retry).
    pub attempts: u32,
    /// Set when a stage answered the request itself.
    pub rejection: Option<Rejection>,
    /// Worker number that answered, for logs once the lease is gone.
    pub worker_id: Option<usize>,
    /// When the current attempt was sent to its worker.
    pub dispatched: Option<Instant>,
    /// Time spent waiting in the admission queue.
    pub queued: std::time::Duration,
    /// A response header came back from the worker (its outcome is recorded).
    pub response_seen: bool,
    /// The request may be repeated (GET, HEAD, or a `retry_idempotent` route).
    pub idempotent: bool,
    /// Retries made after a worker was reached (timeouts, broken answers).
    pub retries: u32,
    /// `RateLimit-Policy` / `RateLimit` values for the response.
    pub rate_headers: Option<RateHeaders>,
    /// The rate-limit rule that refused the request.
    pub limited_by: Option<std::sync::Arc<str>>,
    /// The value of the key it refused (a tenant, a client IP).
    pub limited_key: Option<String>,
    /// Body bytes seen so far against the route's cap (streamed bodies).
    pub body: BodyCounter,
    /// The route's JSON scan of this request's body.
    pub json: Option<JsonScanner>,
    /// The body was read and checked whole before proxying (Pingora replays it).
    pub body_checked: bool,
    /// A refusal decided mid-stream (body over its cap): `fail_to_proxy` writes it.
    pub pending_rejection: Option<Rejection>,
    /// Counts this request in flight for graceful drain; released with the context.
    pub in_flight: Option<InFlightRequest>,
    /// The answer's time when the request was sent to an idle worker: a clean measure of
    /// its route's cost, fed to the route costs when the request ends.
    pub idle_rtt: Option<std::time::Duration>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            policy: None,
            route: 0,
            request_id: String::new(),
            client: None,
            started: Instant::now(),
            lease: None,
            tried: Tried::NONE,
            attempts: 0,
            rejection: None,
            worker_id: None,
            dispatched: None,
            queued: std::time::Duration::ZERO,
            response_seen: false,
            idempotent: false,
            retries: 0,
            rate_headers: None,
            limited_by: None,
            limited_key: None,
            body: BodyCounter::new(None),
            body_checked: false,
            json: None,
            pending_rejection: None,
            in_flight: None,
            idle_rtt: None,
        }
    }

    /// Name of the matched route, or `-` before routing happened.
    pub fn route_name(&self) -> &str {
        self.policy
            .as_ref()
            .map(|p| &*p.routes.get(self.route).name)
            .unwrap_or("-")
    }
}

impl RequestCtx {
    /// Feeds the answering worker's health and limiter with this attempt's outcome: its
    /// status, time from dispatch to now, and reported loop lag. A worker that failed
    /// mid-request without answering is recorded as a slow 502, so its health sees it.
    pub fn record_outcome(&mut self, status: u16, lag: Option<std::time::Duration>) {
        let (Some(policy), Some(lease), Some(sent)) = (&self.policy, &self.lease, self.dispatched)
        else {
            return;
        };
        let rtt = record_attempt(policy, lease, sent, status, lag);
        if lease.in_flight_before() == 0 && status < 500 {
            self.idle_rtt = Some(rtt);
        }
        self.response_seen = true;
    }
}

/// Feeds one attempt's answer (or failure, as a 5xx) to its worker's signals and limiter;
/// returns its time from dispatch.
pub fn record_attempt(
    policy: &Policy,
    lease: &WorkerLease,
    sent: Instant,
    status: u16,
    lag: Option<std::time::Duration>,
) -> std::time::Duration {
    let now = Instant::now();
    let sample = Sample {
        rtt: now.saturating_duration_since(sent),
        in_flight_before: lease.in_flight_before(),
        lag,
    };
    lease
        .worker()
        .on_response(&policy.upstream, &policy.concurrency, status, sample, now);
    sample.rtt
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx::new()
    }
}
