//! What sloguard tells about itself, written by the proxy and read by the admin listener
//! (which only serves and reads): Prometheus metrics, the refusal table behind both
//! `/metrics` and `/status`, the figures a scrape collects from their owners, the standard
//! process metrics and the access log.
//!
//! Each fact is counted once, where it is decided: the request path records into
//! [`Metrics`] (requests, durations, refusals, rate-limit results, queue waits, reloads);
//! retries, hedges, worker health, the queue and the rate limiter's Redis errors stay with
//! the modules that keep them and are read at scrape time ([`Collected`]). No loop copies one
//! counter into another.

pub mod access_log;
pub mod collected;
pub mod metrics;
pub mod process;
pub mod refusals;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use access_log::AccessLog;
pub use collected::{Collected, WorkerSample};
pub use metrics::{Metrics, Outcome};
pub use refusals::{RefusalCounts, RefusalRow, NO_ROUTE};

/// How often the exporter's histogram buffers are drained when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// What the handles are bound to: the policy's routes (with their latency targets), its
/// rate-limit rules, its worker count and its version. Built by `Policy::metrics_layout`, so
/// telemetry needs nothing of the config's types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsLayout {
    pub routes: Vec<RouteLayout>,
    /// Rate-limit rule names, in the policy's order.
    pub rules: Vec<Arc<str>>,
    pub workers: usize,
    pub version: String,
}

/// One route: its name and its p95 and p99 targets, where it sets them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteLayout {
    pub name: Arc<str>,
    pub slo: [Option<Duration>; 2],
}

/// The telemetry of one process: the metric handles of the policy in force (rebound by a
/// reload, counts kept) and the access log's sampler.
pub struct Telemetry {
    metrics: ArcSwap<Metrics>,
    pub access_log: AccessLog,
}

impl Telemetry {
    pub fn new(layout: &MetricsLayout) -> Telemetry {
        Telemetry {
            metrics: ArcSwap::from_pointee(Metrics::new(layout)),
            access_log: AccessLog::default(),
        }
    }

    /// The handles for the policy in force (borrowed: read on every request).
    pub fn metrics(&self) -> arc_swap::Guard<Arc<Metrics>> {
        self.metrics.load()
    }

    /// Binds the handles to a reloaded policy's layout; every count survives.
    pub fn rebind(&self, layout: &MetricsLayout) {
        self.metrics
            .store(Arc::new(self.metrics.load().rebound(layout)));
    }

    /// Runs the exporter's upkeep so histogram memory stays flat without scrapes; returns
    /// only with the runtime.
    pub async fn keep_up(&self) {
        loop {
            tokio::time::sleep(UPKEEP).await;
            self.metrics.load().upkeep();
        }
    }
}
