//! The stages of the request path, in the order a request meets them. Each stage decides;
//! the Pingora phases in `proxy` only sequence stages and write their answers.
//!
//! - [`connection`]: before any request: a deadline on reading each request head, and a cap
//!   on open connections per client IP.
//! - [`client_ip`]: who the client is, through trusted proxies (`X-Forwarded-For`).
//! - [`route`]: which route (SLO, priority, caps) a request belongs to.
//! - [`payload`]: URL, header and body-size limits, answered before the backend sees a byte.
//! - [`json_scan`]: a streaming JSON scan with shape limits (depth, keys, array length,
//!   string bytes), no DOM.
//! - [`ratelimit`]: per-tenant limits shared through Redis, with a local fallback.
//! - [`admission`]: wait for a worker slot within the route's deadline, or be shed.
//! - [`retry`]: whether a failed attempt goes to another worker, within a budget.
//! - [`hedge`]: when a slow or stalled attempt gets a second one, first answer wins.

pub mod admission;
pub mod client_ip;
pub mod connection;
pub mod hedge;
pub mod json_scan;
pub mod payload;
pub mod ratelimit;
pub mod reason;
pub mod retry;
pub mod route;

pub use reason::{Reason, ReasonKind};

/// A stage refused the request. `proxy::respond` turns it into a JSON 4xx/5xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status to answer.
    pub status: u16,
    /// Why: the JSON body's `reason`, the metric label, the access log's decision.
    pub reason: Reason,
    /// Human-readable explanation.
    pub message: String,
    /// The policy limit that was hit, as written in the policy (e.g. `max_body_bytes`).
    pub limit: Option<&'static str>,
    /// The value that broke the limit, when there is one.
    pub value: Option<u64>,
    /// `Retry-After` seconds, for answers that invite a retry (503 shed).
    pub retry_after: Option<u64>,
}

impl Rejection {
    /// What kind of answer this is (shed, limited, rejected, failed).
    pub fn kind(&self) -> ReasonKind {
        self.reason.kind(self.status)
    }
}
