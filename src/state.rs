//! The process-wide state every request reads: the current policy snapshot, the workers and
//! the admission queue.
//!
//! Policy and workers sit behind `ArcSwap` so a reload replaces them whole while requests in
//! flight keep the snapshot they started with (a request loads the policy once, in
//! `request_filter`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::admin::metrics::Metrics;
use crate::config::Policy;
use crate::stages::admission::Admission;
use crate::stages::ratelimit::{RateLimitConfig, RateLimiter};
use crate::stages::retry::RetryBudget;
use crate::workers::WorkerSet;

pub struct State {
    policy: ArcSwap<Policy>,
    workers: ArcSwap<WorkerSet>,
    pub admission: Arc<Admission>,
    /// Retries allowed after a worker was reached, shared by all requests.
    pub retry_budget: RetryBudget,
    pub ratelimiter: RateLimiter,
    /// Prometheus handles for the current policy (rebound on reload).
    pub metrics: ArcSwap<Metrics>,
    /// sloguard's own refusals by (route, reason): bounded by routes x reasons.
    pub rejections: Mutex<HashMap<(Arc<str>, &'static str), u64>>,
    /// When this process started serving.
    pub started: Instant,
}

impl State {
    pub fn new(policy: Policy) -> State {
        let workers = WorkerSet::new(&policy.upstream, &policy.concurrency);
        let admission = Arc::new(Admission::new(policy.shedding.clone()));
        // The URL was checked when the policy was validated.
        let ratelimiter = RateLimiter::new(&policy.ratelimit).unwrap_or_else(|e| {
            tracing::error!(error = %e, "rate limits: cannot use the redis url; limiting in-process");
            RateLimiter::new(&RateLimitConfig::default()).expect("no url, no error")
        });
        let metrics = ArcSwap::from_pointee(Metrics::new(&policy));
        State {
            policy: ArcSwap::from_pointee(policy),
            workers: ArcSwap::from_pointee(workers),
            admission,
            retry_budget: RetryBudget::default(),
            metrics,
            ratelimiter,
            rejections: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// The policy in force now. Callers keep the returned snapshot for the whole request.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub fn workers(&self) -> Arc<WorkerSet> {
        self.workers.load_full()
    }

    /// Counts one refusal (a lock per refusal only, never per accepted request).
    pub fn count_rejection(&self, route: &Arc<str>, reason: &'static str) {
        let mut m = self.rejections.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.clone(), reason)).or_insert(0) += 1;
    }
}
