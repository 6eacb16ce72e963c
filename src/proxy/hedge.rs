//! Hedged requests on the wire (the decision lives in `stages::hedge`): two attempts raced
//! over our own upstream connections, the first response header wins, and the winner's
//! response is relayed to the client. Pingora's proxy path drives one upstream at a time,
//! so a hedged request leaves it: `request_filter` answers it from here and returns.

use std::time::{Duration, Instant};

use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::{RequestCtx, SloGuard};
use crate::config::Policy;
use crate::stages::hedge::{self, HedgeTrigger};
use crate::stages::retry::{self, FailedAttempt};
use crate::workers::{GuardMode, Tried, WorkerLease};

/// How often a waiting hedged request looks at its worker's health: the monitor's tick.
const STALL_CHECK: Duration = Duration::from_millis(10);

/// One attempt: the worker slot it holds and where it went.
struct Attempt {
    lease: WorkerLease,
    peer: HttpPeer,
    dispatched: Instant,
}

impl Attempt {
    fn new(lease: WorkerLease, policy: &Policy, route: usize) -> Result<Attempt> {
        let peer = super::attempt_peer(&lease.worker().addr, policy, route)?;
        Ok(Attempt {
            lease,
            peer,
            dispatched: Instant::now(),
        })
    }
}

/// Sends `req` (no body; the peer is owned so the attempt can be dropped on its own) and reads the final response header. A pooled connection the
/// worker had closed meanwhile fails at once; that attempt is made again on a new one.
async fn send(connector: &Connector, peer: HttpPeer, req: &RequestHeader) -> Result<HttpSession> {
    let mut tries = 0;
    loop {
        tries += 1;
        let (mut up, reused) = connector.get_http_session(&peer).await?;
        // The connector leaves the session's timeouts unset; Pingora's proxy path copies
        // them from the peer before each request, and so must we (hedged requests once had
        // no read timeout at all, `per_try_timeout_ms` and `upstream.read_timeout_ms` both lost).
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;
        let sent = async {
            up.write_request_header(Box::new(req.clone())).await?;
            up.finish_body().await?;
            loop {
                up.read_response().await?;
                if !up
                    .resp_header()
                    .is_some_and(|h| h.status.is_informational())
                {
                    return Ok::<(), Box<Error>>(());
                }
            }
        }
        .await;
        match sent {
            Ok(()) => return Ok(up),
            Err(_) if reused && tries < 3 => continue,
            // The worker's side failed, as Pingora's proxy path marks it: a timeout is a 504.
            Err(e) => return Err(e.into_up()),
        }
    }
}

/// The losing attempt: its wait so far tells its worker's latency estimate it is slow.
fn abandon(attempt: &Attempt) {
    attempt
        .lease
        .worker()
        .on_abandoned(attempt.dispatched.elapsed(), Instant::now());
}

fn connect_failure(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectRefused | ErrorType::ConnectTimedout | ErrorType::ConnectError
    )
}

impl SloGuard {
    /// The hedge delay for this request, when it is to be hedged.
    pub(super) fn hedge_after(&self, session: &mut Session, ctx: &RequestCtx) -> Option<Duration> {
        let policy = ctx.policy.as_ref()?;
        let after = policy.routes.get(ctx.route).hedge_after;
        let has_body = !session.is_body_empty();
        let enforcing = policy.guard == GuardMode::Enforce;
        (enforcing && hedge::eligible(after, ctx.idempotent, has_body)).then_some(after?)
    }

    /// Proxies a hedged request and writes its answer; an `Err` goes to `fail_to_proxy`.
    pub(super) async fn proxy_hedged(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        hedge_after: Duration,
    ) -> Result<()> {
        let policy = ctx.policy.clone().expect("request_filter sets the policy");
        let workers = self.state.workers();
        let lease = match ctx.lease.take() {
            Some(lease) => lease,
            None => workers
                .acquire(
                    policy.guard,
                    Tried::NONE,
                    None,
                    Some(self.state.slot_listener()),
                )
                .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no worker"))?,
        };
        let mut req = session.req_header().clone();
        super::forward_headers(session, &mut req, ctx)?;

        let first = Attempt::new(lease, &policy, ctx.route)?;
        ctx.attempts += 1;
        let mut first_send = Box::pin(send(&self.connector, first.peer.clone(), &req));
        let hedge_at = tokio::time::Instant::from_std(first.dispatched + hedge_after);
        let mut check = tokio::time::interval(STALL_CHECK);
        let trigger = loop {
            tokio::select! {
                sent = &mut first_send => match sent {
                    Ok(up) => return self.relay(session, ctx, &policy, first, up).await,
                    Err(e) => {
                        self.note_failed(ctx, &first, &e);
                        break (HedgeTrigger::FirstFailed, Some(e));
                    }
                },
                _ = tokio::time::sleep_until(hedge_at) => {
                    break (HedgeTrigger::Timer, None);
                }
                _ = check.tick() => {
                    let waited = first.dispatched.elapsed();
                    if let Some(t) = hedge::due(waited, hedge_after, first.lease.worker().is_out()) {
                        break (t, None);
                    }
                }
            }
        };
        let (trigger, first_error) = trigger;

        let second = self.second_attempt(ctx, &policy, &first, first_error.as_deref());
        let Some(second) = second else {
            return match first_error {
                Some(e) => Err(e),
                None => match first_send.await {
                    Ok(up) => self.relay(session, ctx, &policy, first, up).await,
                    Err(e) => {
                        self.note_failed(ctx, &first, &e);
                        Err(e)
                    }
                },
            };
        };
        self.state.hedges.note_launched();
        ctx.attempts += 1;
        ctx.retries += 1;
        tracing::debug!(request_id = %ctx.request_id, ?trigger, first = first.lease.worker().id, second = second.lease.worker().id, "hedging");
        let mut second_send = Box::pin(send(&self.connector, second.peer.clone(), &req));
        if first_error.is_some() {
            return match second_send.await {
                Ok(up) => self.relay(session, ctx, &policy, second, up).await,
                Err(e) => {
                    self.note_failed(ctx, &second, &e);
                    Err(e)
                }
            };
        }
        tokio::select! {
            sent = &mut first_send => match sent {
                Ok(up) => {
                    drop(second_send);
                    abandon(&second);
                    self.relay(session, ctx, &policy, first, up).await
                }
                Err(e) => {
                    self.note_failed(ctx, &first, &e);
                    match second_send.await {
                        Ok(up) => {
                            self.state.hedges.note_won();
                            self.relay(session, ctx, &policy, second, up).await
                        }
                        Err(e) => {
                            self.note_failed(ctx, &second, &e);
                            Err(e)
                        }
                    }
                }
            },
            sent = &mut second_send => match sent {
                Ok(up) => {
                    // The first attempt is dropped: its connection closes and its worker
                    // slot is freed (the stall detector already knows about it).
                    drop(first_send);
                    abandon(&first);
                    self.state.hedges.note_won();
                    self.relay(session, ctx, &policy, second, up).await
                }
                Err(e) => {
                    self.note_failed(ctx, &second, &e);
                    match first_send.await {
                        Ok(up) => self.relay(session, ctx, &policy, first, up).await,
                        Err(e) => {
                            self.note_failed(ctx, &first, &e);
                            Err(e)
                        }
                    }
                }
            },
        }
    }

    /// A worker slot for the second attempt, if the hedge is allowed: another worker, the
    /// deadline still reachable, and a retry token (not needed after a refused connect,
    /// which reached no worker).
    fn second_attempt(
        &self,
        ctx: &RequestCtx,
        policy: &Policy,
        first: &Attempt,
        first_error: Option<&Error>,
    ) -> Option<Attempt> {
        let route = policy.routes.get(ctx.route);
        let check = FailedAttempt {
            idempotent: ctx.idempotent,
            retries: ctx.retries,
            response_started: false,
            body_not_replayable: false,
            elapsed: ctx.started.elapsed(),
            deadline: route.slo.and_then(|s| s.p99.or(s.p95)),
            expected_service: first.lease.worker().latency(),
        };
        if let Some(why) = retry::refusal(&check) {
            tracing::debug!(request_id = %ctx.request_id, why, "not hedging");
            return None;
        }
        // A refused connect reached no worker: trying another is free, as in `fail_to_connect`.
        let free = first_error.is_some_and(connect_failure);
        if !free && !self.state.retry_budget.try_withdraw() {
            tracing::debug!(request_id = %ctx.request_id, "not hedging: retry budget spent");
            return None;
        }
        let lease = self.state.workers().acquire(
            policy.guard,
            Tried::of(first.lease.index()),
            None,
            Some(self.state.slot_listener()),
        )?;
        Attempt::new(lease, policy, ctx.route).ok()
    }

    /// Records a failed attempt against its worker's health.
    fn note_failed(&self, ctx: &RequestCtx, attempt: &Attempt, e: &Error) {
        let Some(policy) = &ctx.policy else { return };
        if let Some(shortage) = crate::resources::LocalShortage::of(e) {
            crate::resources::record(shortage);
        } else if connect_failure(e) {
            attempt
                .lease
                .worker()
                .on_connect_failure(&policy.upstream.health);
        } else {
            let status = if matches!(e.etype(), ErrorType::ReadTimedout) {
                504
            } else {
                502
            };
            super::ctx::record_attempt(policy, &attempt.lease, attempt.dispatched, status, None);
        }
    }

    /// Relays the winning attempt's response to the client and pools its connection.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: &Policy,
        winner: Attempt,
        mut up: HttpSession,
    ) -> Result<()> {
        let mut resp: ResponseHeader = up
            .resp_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
        ctx.worker_id = Some(winner.lease.worker().id);
        ctx.dispatched = Some(winner.dispatched);
        ctx.lease = Some(winner.lease);
        let lag = super::lag_of(policy, &resp);
        ctx.record_outcome(resp.status.as_u16(), lag);
        super::decorate_response(&mut resp, ctx)?;
        session.write_response_header(Box::new(resp), false).await?;
        while let Some(chunk) = up.read_body_bytes().await.map_err(|e| e.into_up())? {
            session.write_response_body(Some(chunk), false).await?;
        }
        session.write_response_body(None, true).await?;
        self.connector
            .release_http_session(up, &winner.peer, Some(policy.upstream.idle_timeout))
            .await;
        Ok(())
    }
}
