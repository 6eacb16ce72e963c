//! The process-wide state every request reads, one field per concern: the policy in force,
//! the workers (and what each route costs them), admission (the queue, the retry budget,
//! hedge counts), the rate limiter, telemetry, and the process's lifecycle.
//!
//! Policy, workers, route costs and the rate limiter sit behind `ArcSwap` so a reload
//! replaces them whole while requests in flight keep the snapshot they started with (a
//! request loads the policy once, in `request_filter`). [`State::apply`] is the one place a
//! reload touches them all.

// Process state: stamps reload times.
#![allow(clippy::disallowed_methods)]

mod lifecycle;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

pub use lifecycle::{InFlightRequest, Lifecycle, ReloadApplied, ReloadRecord};

use crate::config::{Listen, Policy};
use crate::stages::admission::Admission;
use crate::stages::connection::ConnLimits;
use crate::stages::hedge::HedgeStats;
use crate::stages::ratelimit::{LimiterError, RateLimitConfig, RateLimiter};
use crate::stages::retry::RetryBudget;
use crate::telemetry::Telemetry;
use crate::workers::{RouteCosts, WorkerSet};

pub struct State {
    /// The policy in force.
    policy: ArcSwap<Policy>,
    /// The workers of the policy in force, with their health, limits and leases.
    workers: ArcSwap<WorkerSet>,
    /// What a request of each route costs a worker (see `workers::service`), by the route
    /// index of the policy in force; rebuilt by name when a reload changes the routes.
    route_costs: ArcSwap<RouteCosts>,
    /// The admission queue and its estimates.
    pub admission: Arc<Admission>,
    /// Retries allowed after a worker was reached, shared by all requests.
    pub retry_budget: RetryBudget,
    /// Hedged requests: second attempts sent, and won.
    pub hedges: HedgeStats,
    /// The rate limiter of the Redis settings in force.
    ratelimiter: ArcSwap<RateLimiter>,
    /// Metrics, refusal counts and the access log's sampler.
    pub telemetry: Telemetry,
    /// Start, stop (SIGTERM), requests and connections held, last reload.
    pub lifecycle: Lifecycle,
}

impl State {
    pub fn new(policy: Policy) -> State {
        let workers = WorkerSet::new(&policy.upstream, &policy.concurrency);
        let admission = Arc::new(Admission::new(policy.shedding.clone()));
        // The URL was checked when the policy was validated.
        let ratelimiter = RateLimiter::new(&policy.ratelimit).unwrap_or_else(|e| {
            tracing::error!(error = %e, "rate limits: cannot use the redis settings; limiting in-process");
            RateLimiter::new(&RateLimitConfig::default()).expect("no url, no error")
        });
        let telemetry = Telemetry::new(&policy.metrics_layout());
        let route_costs =
            RouteCosts::new(policy.routes.iter().map(|r| &r.name), None, Instant::now());
        State {
            route_costs: ArcSwap::from_pointee(route_costs),
            policy: ArcSwap::from_pointee(policy),
            workers: ArcSwap::from_pointee(workers),
            admission,
            retry_budget: RetryBudget::default(),
            hedges: HedgeStats::default(),
            telemetry,
            ratelimiter: ArcSwap::from_pointee(ratelimiter),
            lifecycle: Lifecycle::default(),
        }
    }

    /// `[listen] max_connections` of the policy of now, else the cap derived at start.
    pub fn connection_cap(&self) -> u32 {
        self.policy
            .load()
            .listen
            .max_connections
            .unwrap_or(self.lifecycle.default_connection_cap)
    }

    /// The policy in force now. Callers keep the returned snapshot for the whole request.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The connection limits of the policy in force now. Read per connection and per
    /// request head, so it borrows the snapshot (no reference-count traffic shared by
    /// every core) instead of cloning it as [`State::policy`] does.
    pub fn conn_limits(&self) -> ConnLimits {
        self.policy.load().conn
    }

    pub fn workers(&self) -> Arc<WorkerSet> {
        self.workers.load_full()
    }

    pub fn ratelimiter(&self) -> Arc<RateLimiter> {
        self.ratelimiter.load_full()
    }

    /// Who is told when a worker slot frees: the admission queue.
    pub fn slot_listener(&self) -> Arc<dyn crate::workers::SlotListener> {
        self.admission.clone()
    }

    /// Route costs for the policy in force (borrowed: read on every request).
    pub fn route_costs(&self) -> arc_swap::Guard<Arc<RouteCosts>> {
        self.route_costs.load()
    }

    /// Swaps in a validated policy. Requests in flight keep the snapshot they started with.
    /// Per-worker state (health, limits, latency) survives when the worker list is the same;
    /// rate-limit state survives when the Redis settings are. Listeners cannot move while
    /// serving: a changed `[listen]` is kept as it was, and the returned notes say so.
    pub fn apply(&self, mut new: Policy) -> Vec<String> {
        let old = self.policy();
        let mut notes = Vec::new();
        // `trusted_proxies` is read per request, so it applies now; the rest of `[listen]`
        // is the sockets themselves.
        let mut listeners = new.listen.clone();
        listeners.trusted_proxies = old.listen.trusted_proxies.clone();
        if listeners != old.listen {
            notes.push(
                "[listen] changes take effect at the next restart; the listeners stay as they are"
                    .to_string(),
            );
            new.listen = Listen {
                trusted_proxies: new.listen.trusted_proxies.clone(),
                ..old.listen.clone()
            };
        }
        if new.upstream.workers != old.upstream.workers {
            self.workers
                .store(Arc::new(WorkerSet::new(&new.upstream, &new.concurrency)));
            notes.push("the worker list changed: per-worker state starts afresh".to_string());
        }
        // The credentials are read again on every reload, so a rotated Secret (same file,
        // new password) is taken up by `POST /reload` or SIGHUP.
        let credentials = new.ratelimit.redis_auth.resolve();
        let redis_same = new.ratelimit.redis_url == old.ratelimit.redis_url
            && new.ratelimit.redis_cluster_nodes == old.ratelimit.redis_cluster_nodes
            && new.ratelimit.timeout == old.ratelimit.timeout
            && new.ratelimit.failures_to_open == old.ratelimit.failures_to_open
            && new.ratelimit.batch_calls == old.ratelimit.batch_calls
            && new.ratelimit.redis_auth == old.ratelimit.redis_auth
            && credentials.as_ref().ok() == Some(self.ratelimiter().credentials());
        if !redis_same {
            match credentials
                .map_err(LimiterError::from)
                .and_then(|c| RateLimiter::with_credentials(&new.ratelimit, c))
            {
                Ok(r) => self
                    .ratelimiter
                    .store(Arc::new(r.carrying_counts_from(&self.ratelimiter()))),
                Err(e) => notes.push(format!(
                    "rate limits: cannot use the new redis settings ({e}); keeping the old ones"
                )),
            }
        }
        let costs = self.route_costs.load();
        if !costs.same_routes(new.routes.iter().map(|r| &r.name)) {
            let rebuilt = RouteCosts::new(
                new.routes.iter().map(|r| &r.name),
                Some(&costs),
                Instant::now(),
            );
            self.route_costs.store(Arc::new(rebuilt));
        }
        self.admission.reconfigure(new.shedding.clone());
        self.telemetry.rebind(&new.metrics_layout());
        self.policy.store(Arc::new(new));
        notes
    }
}
