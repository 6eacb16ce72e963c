//! The process-wide state every request reads: the current policy snapshot, the workers and
//! the admission queue.
//!
//! Policy and workers sit behind `ArcSwap` so a reload replaces them whole while requests in
//! flight keep the snapshot they started with (a request loads the policy once, in
//! `request_filter`).

// Process state: stamps start and reload times.
#![allow(clippy::disallowed_methods)]

use crate::stages::hedge::HedgeStats;
use crate::stages::Reason;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::admin::access_log::AccessLog;
use crate::admin::metrics::Metrics;
use crate::config::{Listen, Policy};
use crate::reload::ReloadRecord;
use crate::stages::admission::Admission;
use crate::stages::connection::{ConnLimits, OpenConnections};
use crate::stages::ratelimit::{LimiterError, RateLimitConfig, RateLimiter};
use crate::stages::retry::RetryBudget;
use crate::workers::{RouteCosts, WorkerSet};

pub struct State {
    policy: ArcSwap<Policy>,
    workers: ArcSwap<WorkerSet>,
    pub admission: Arc<Admission>,
    /// Retries allowed after a worker was reached, shared by all requests.
    pub retry_budget: RetryBudget,
    /// Hedged requests: second attempts sent, and won.
    pub hedges: HedgeStats,
    ratelimiter: ArcSwap<RateLimiter>,
    /// What a request of each route costs a worker (see `workers::service`), by the route
    /// index of the policy in force; rebuilt by name when a reload changes the routes.
    route_costs: ArcSwap<RouteCosts>,
    /// The outcome of the last reload attempt, for the status page.
    pub last_reload: Mutex<Option<ReloadRecord>>,
    /// Prometheus handles for the current policy (rebound on reload).
    pub metrics: ArcSwap<Metrics>,
    /// sloguard's own refusals by (route, reason): bounded by routes x reasons.
    pub rejections: Mutex<HashMap<(Arc<str>, Reason), u64>>,
    /// Requests between `new_ctx` and the end of `logging` (held by [`InFlightRequest`]).
    in_flight: Arc<AtomicUsize>,
    pub access_log: AccessLog,
    /// Set at SIGTERM: the proxy's listener stops accepting and its keep-alive connections
    /// close after their current answer (see `shutdown::StopOnSignal`). Its receivers stand
    /// in for Pingora's shutdown watch on the proxy service, which fires only once the
    /// drain is over.
    stop: tokio::sync::watch::Sender<bool>,
    /// When this process started serving.
    pub started: Instant,
    /// Open client connections, against `[listen] max_connections`.
    pub connections: Arc<OpenConnections>,
    /// The connection cap when the policy sets none: from the open-file limit at start.
    pub default_connection_cap: u32,
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
        let metrics = ArcSwap::from_pointee(Metrics::new(&policy));
        let route_costs =
            RouteCosts::new(policy.routes.iter().map(|r| &r.name), None, Instant::now());
        State {
            route_costs: ArcSwap::from_pointee(route_costs),
            policy: ArcSwap::from_pointee(policy),
            workers: ArcSwap::from_pointee(workers),
            admission,
            retry_budget: RetryBudget::default(),
            hedges: HedgeStats::default(),
            metrics,
            ratelimiter: ArcSwap::from_pointee(ratelimiter),
            last_reload: Mutex::new(None),
            in_flight: Arc::new(AtomicUsize::new(0)),
            stop: tokio::sync::watch::Sender::new(false),
            access_log: AccessLog::default(),
            rejections: Mutex::new(HashMap::new()),
            started: Instant::now(),
            connections: OpenConnections::new(),
            default_connection_cap: crate::resources::default_max_connections(
                crate::resources::fd_limit(),
            ),
        }
    }

    /// SIGTERM: tells the proxy's listener and connections to stop (see
    /// [`State::stop_watch`]); from then on the process is draining, and not ready.
    pub fn stop_proxy(&self) {
        self.stop.send_replace(true);
    }

    /// SIGTERM received ([`State::stop_proxy`]): draining, not ready.
    pub fn draining(&self) -> bool {
        *self.stop.borrow()
    }

    /// A watch that turns true when the proxy must stop taking requests: what the proxy's
    /// accept loop and connections follow instead of Pingora's shutdown watch.
    pub fn stop_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// `[listen] max_connections` of the policy of now, else the cap derived at start.
    pub fn connection_cap(&self) -> u32 {
        self.policy
            .load()
            .listen
            .max_connections
            .unwrap_or(self.default_connection_cap)
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

    /// Counts a request in flight until the returned token drops.
    pub fn request_started(&self) -> InFlightRequest {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightRequest(self.in_flight.clone())
    }

    /// Requests in flight in sloguard (queued, proxying or being answered).
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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
                Ok(r) => self.ratelimiter.store(Arc::new(r)),
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
        self.metrics
            .store(Arc::new(self.metrics.load().rebound(&new)));
        self.policy.store(Arc::new(new));
        notes
    }

    /// Counts one refusal (a lock per refusal only, never per accepted request).
    pub fn count_rejection(&self, route: &Arc<str>, reason: Reason) {
        let mut m = self.rejections.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route.clone(), reason)).or_insert(0) += 1;
    }
}

/// One request's place in [`State::requests_in_flight`], released on drop.
#[derive(Debug)]
pub struct InFlightRequest(Arc<AtomicUsize>);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
