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
use crate::stages::route::{Priority, Route, RouteId, RouteTable};
use crate::stages::Rejection;
use crate::workers::{GuardMode, SlotRule, Tried};

impl SloGuard {
    /// The queue budget of `route`: see [`RouteTable::queue_budget`].
    pub(super) fn queue_budget(policy: &Policy, route: &Route) -> Duration {
        RouteTable::queue_budget(
            route,
            policy.concurrency.worker_budget_share,
            policy.shedding.default_queue_budget,
        )
    }

    /// Which workers may take a request of `route` (index `id`) while a higher class waits:
    /// see [`crate::workers::Worker::has_slot`]. The work cap is the tightest latency target
    /// any route needs from a worker, so every class leaves room for the most demanding one;
    /// the priority's share applies once the fleet is full for a higher class
    /// ([`SlotRule::unreserved`] otherwise).
    pub(super) fn slot_rule(&self, policy: &Policy, id: RouteId, route: &Route) -> SlotRule {
        SlotRule {
            share: route.priority.limit_share(),
            cost: self.state.route_costs().get_named(id, &route.name),
            work_cap: policy.routes.tightest_worker_target(
                policy.concurrency.worker_budget_share,
                policy.shedding.default_queue_budget,
            ),
            ceiling: policy.concurrency.max_limit,
        }
    }

    /// Admission: take a worker slot now, or wait for one in priority order until the
    /// route's deadline, or be shed (`Err`, a 503 with `Retry-After`).
    pub(super) async fn admit(
        &self,
        ctx: &mut RequestCtx,
        priority: Priority,
        rule: SlotRule,
        budget: Duration,
    ) -> std::result::Result<(), Rejection> {
        let admission = &self.state.admission;
        let deadline = ctx.started + budget;
        let arrived = Instant::now();
        let mut woken = false;
        // Held while a woken request tries for its slot (see `WakeToken`).
        let mut claim = None;
        loop {
            if woken || !admission.must_queue() {
                let workers = self.state.workers();
                let listener = self.state.slot_listener();
                // Capacity is kept for higher classes only while some of them wait.
                let effective = if woken && admission.higher_waiting(priority) {
                    rule
                } else {
                    rule.unreserved()
                };
                let lease = workers.acquire(
                    GuardMode::Enforce,
                    Tried::NONE,
                    Some(&effective),
                    Some(listener),
                );
                // The woken request has tried for its slot: the claim is spent either way.
                drop(claim.take());
                if let Some(lease) = lease {
                    if !woken {
                        admission.on_admitted_directly(Instant::now());
                    }
                    // This request's slot is taken: pass the turn on while slots are free,
                    // so the queue empties into every free slot, not one per release.
                    admission.wake_one_if_idle(|r| workers.has_room(r));
                    ctx.lease = Some(lease);
                    if woken {
                        ctx.queued = arrived.elapsed();
                        self.state
                            .telemetry
                            .metrics()
                            .queue_wait
                            .record(ctx.queued.as_secs_f64());
                    }
                    return Ok(());
                }
            }
            let outcome = if woken {
                admission
                    .wait_again(priority, rule, budget, deadline, ctx.started)
                    .await
            } else {
                admission.wait(priority, rule, budget, deadline).await
            };
            match outcome {
                Wait::Woken(token) => {
                    woken = true;
                    claim = Some(token);
                }
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
        if ctx.policy.is_some() {
            self.state
                .telemetry
                .metrics()
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
        let metrics = self.state.telemetry.metrics();
        for (rule, result) in &verdict.results {
            metrics.record_rate(*rule, result);
        }
        ctx.rate_headers = verdict.headers;
        let rejection = verdict.outcome.rejection()?;
        ctx.limited_by = verdict.outcome.rule().map(std::sync::Arc::from);
        ctx.limited_key = verdict.outcome.key().map(str::to_string);
        Some(rejection)
    }
}
