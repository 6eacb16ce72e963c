//! The admission step of `request_filter`: a worker slot now, a wait in priority order until
//! the route's deadline, or a 503 with `Retry-After` (the decisions are in
//! `stages::admission`; this only sequences them and keeps the request's bookkeeping).

use std::time::{Duration, Instant};

use pingora::proxy::Session;
use pingora::Result;

use super::{respond, RequestCtx, SloGuard};
use crate::config::Policy;
use crate::stages::admission::Wait;
use crate::stages::ratelimit::KeySource;
use crate::stages::route::{Priority, Route, RouteTable};
use crate::stages::Rejection;
use crate::workers::{GuardMode, HealthState};

impl SloGuard {
    /// The queue budget of `route` now: see [`RouteTable::queue_budget`]. The expected
    /// service time is the slowest serving worker's latency estimate (conservative: the
    /// request may land on it).
    pub(super) fn queue_budget(&self, policy: &Policy, route: &Route) -> Duration {
        let expected = self
            .state
            .workers()
            .iter()
            .filter(|w| w.state() != HealthState::Ejected)
            .map(|w| w.latency())
            .max()
            .unwrap_or_default();
        RouteTable::queue_budget(route, expected, policy.shedding.default_queue_budget)
    }

    /// Admission: take a worker slot now, or wait for one in priority order until the
    /// route's deadline, or be shed (`Err`, a 503 with `Retry-After`).
    pub(super) async fn admit(
        &self,
        ctx: &mut RequestCtx,
        priority: Priority,
        budget: Duration,
    ) -> std::result::Result<(), Rejection> {
        let admission = &self.state.admission;
        let deadline = ctx.started + budget;
        let arrived = Instant::now();
        let mut woken = false;
        loop {
            if woken || !admission.must_queue() {
                let workers = self.state.workers();
                if let Some(lease) = workers.acquire(
                    GuardMode::Enforce,
                    0,
                    Some(priority.limit_share()),
                    Some(admission),
                ) {
                    if !woken {
                        admission.on_admitted_directly(Instant::now());
                    }
                    ctx.lease = Some(lease);
                    if woken {
                        ctx.queued = arrived.elapsed();
                        self.state
                            .metrics
                            .load()
                            .queue_wait
                            .record(ctx.queued.as_secs_f64());
                    }
                    return Ok(());
                }
            }
            let outcome = if woken {
                admission
                    .wait_again(priority, budget, deadline, ctx.started)
                    .await
            } else {
                admission.wait(priority, budget, deadline).await
            };
            match outcome {
                Wait::Woken { .. } => woken = true,
                Wait::Shed(reason) => {
                    ctx.queued = arrived.elapsed();
                    let mut rejection = reason.rejection(budget);
                    rejection.retry_after = Some(admission.retry_after_secs());
                    return Err(rejection);
                }
            }
        }
    }

    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rejection: Rejection,
    ) -> Result<()> {
        let cx = respond::Context {
            route: ctx.route_name(),
            request_id: &ctx.request_id,
            rule: ctx.limited_by.as_deref(),
            rate_headers: ctx.rate_headers.as_ref(),
        };
        if let Some(policy) = &ctx.policy {
            self.state
                .count_rejection(&policy.routes.get(ctx.route).name, rejection.reason);
            self.state
                .metrics
                .load()
                .record_refusal(ctx.route, rejection.reason);
        }
        respond::write_rejection(session, &rejection, &cx).await?;
        ctx.rejection = Some(rejection);
        Ok(())
    }

    /// The rate-limit stage: `Some(rejection)` when a rule refuses the request. Allowed
    /// requests keep their `RateLimit` headers for the response.
    pub(super) async fn rate_limit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Option<Rejection> {
        let policy = ctx.policy.clone()?;
        if policy.ratelimit.rules.is_empty() {
            return None;
        }
        let req = session.req_header();
        let src = KeySource {
            route: &policy.routes.get(ctx.route).name,
            client_ip: ctx.client.as_ref().map(|c| c.ip),
            headers: &req.headers,
        };
        let verdict = self
            .state
            .ratelimiter()
            .check(&policy.ratelimit, &src)
            .await;
        let metrics = self.state.metrics.load();
        for (rule, result) in &verdict.results {
            metrics.record_rate(*rule, result);
        }
        ctx.rate_headers = verdict.headers;
        let rejection = verdict.outcome.rejection()?;
        ctx.limited_by = verdict.outcome.rule().map(std::sync::Arc::from);
        Some(rejection)
    }
}
