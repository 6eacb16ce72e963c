//! The Pingora phases. They sequence the stages and write their answers; they decide nothing
//! themselves (see `stages` and `workers` for the decisions).
//!
//! Before any of them, `listener` accepts the connection and [`ConnectionApp`] (in `conn`) runs
//! it: the connection caps at accept and the deadline on reading each request head
//! (`head_io`).
//!
//! Request path: `request_filter` (request id, client IP, route, payload caps, rate limits,
//! the body's JSON scan, admission: a worker slot or a wait in the queue or a 503; a hedged
//! request is answered from `hedge` here) → `upstream_peer` (the admitted worker, its peer
//! from `attempt_peer`; on a retry another worker) → `upstream_request_filter` (forwarding
//! headers) → `fail_to_connect` (retry elsewhere) → `upstream_response_filter` (latency, lag
//! and status feed the worker's health and limiter) → `error_while_proxy` / `fail_to_proxy`
//! (retry, or our JSON answer via `respond`) → `logging` (metrics by [`crate::stages::Reason`],
//! the access line, lease released).
//!
//! Why one file of ~570 lines: Pingora's `ProxyHttp` is one trait, implemented in one block,
//! and its phases are read in order; what each phase does beyond sequencing lives in the
//! sibling modules (`admit`, `body`, `hedge`, `respond`, `conn`).

// The request path's I/O edge: it reads the clock for the deciders it calls.
#![allow(clippy::disallowed_methods)]

mod admit;
mod body;
mod conn;
mod ctx;
mod head_io;
mod hedge;
mod respond;
mod self_lag;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use conn::ConnectionApp;
pub use ctx::RequestCtx;
pub use respond::rejection_body;
pub use self_lag::{held_up_totals, HeldUp};

use crate::config::Policy;
use crate::resources::{self, LocalShortage};
use crate::stages::retry::{self, FailedAttempt};
use crate::stages::{client_ip, payload, Rejection};
use crate::state::State;
use crate::telemetry::{access_log, Outcome};
use crate::workers::probe::parse_lag_ms;
use crate::workers::{GuardMode, WorkerAddr};

/// The sloguard proxy: one per process, shared by every request.
pub struct SloGuard {
    state: Arc<State>,
    /// Upstream connections of hedged requests, which leave Pingora's proxy path (a pool of
    /// their own).
    connector: pingora::connectors::http::v1::Connector,
}

impl SloGuard {
    pub fn new(state: Arc<State>) -> SloGuard {
        SloGuard {
            state,
            connector: pingora::connectors::http::v1::Connector::new(None),
        }
    }
}

/// Longest client-supplied request id we keep; longer ones are replaced (log hygiene).
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's request id when it is sane, else a fresh UUID.
fn request_id_of(req: &RequestHeader) -> String {
    req.headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

pub(super) fn declared_content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[async_trait]
impl ProxyHttp for SloGuard {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.in_flight = Some(self.state.lifecycle.request_started());
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        let policy = self.state.policy();
        ctx.client = resolve_client(session, &policy);
        let req = session.req_header();
        ctx.request_id = request_id_of(req);
        ctx.route = policy.routes.match_request(&req.method, req.uri.path());
        let route = policy.routes.get(ctx.route);
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        let url_bytes = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        let hosts = req.headers.get_all(header::HOST).iter().count();
        let verdict = payload::check_head(&policy.limits, url_bytes, header_bytes)
            .and_then(|()| payload::check_host(req.version, hosts))
            .and_then(|()| payload::check_declared_length(route, declared_content_length(req)));
        let priority = route.priority;
        ctx.idempotent =
            route.retry_idempotent || matches!(req.method, http::Method::GET | http::Method::HEAD);
        self.state.retry_budget.deposit(&policy.retry);
        let mode = policy.guard;
        ctx.policy = Some(policy);
        if let Err(rejection) = verdict {
            self.reject(session, ctx, rejection).await?;
            return Ok(true);
        }
        if let Some(rejection) = self.rate_limit(session, ctx).await {
            self.reject(session, ctx, rejection).await?;
            return Ok(true);
        }
        // Slow clients: every read of the body must make progress within this.
        if let Some(policy) = &ctx.policy {
            session
                .as_mut()
                .set_read_timeout(Some(policy.limits.body_read_timeout));
        }
        if let Some(rejection) = self.check_body(session, ctx).await? {
            self.reject(session, ctx, rejection).await?;
            return Ok(true);
        }
        match mode {
            GuardMode::Enforce => {
                // Only the enforcing guard queues, so only it needs the queue budget.
                let (rule, budget) = match &ctx.policy {
                    Some(p) => {
                        let route = p.routes.get(ctx.route);
                        (
                            self.slot_rule(p, ctx.route, route),
                            Self::queue_budget(p, route),
                        )
                    }
                    None => return Ok(false),
                };
                if let Err(rejection) = self.admit(ctx, priority, rule, budget).await {
                    self.reject(session, ctx, rejection).await?;
                    return Ok(true);
                }
            }
            GuardMode::Shadow => {
                // Shadow: note that enforce would have made this request wait (and perhaps
                // shed it), then let it through.
                let rule = ctx
                    .policy
                    .as_ref()
                    .map(|p| self.slot_rule(p, ctx.route, p.routes.get(ctx.route)));
                if rule.is_some_and(|r| !self.state.workers().has_room(&r)) {
                    self.state.admission.note_shadow_queued();
                    tracing::debug!(request_id = %ctx.request_id, route = ctx.route_name(), "shadow: no worker under its limit; enforce would queue or shed");
                }
            }
            GuardMode::Off => {}
        }
        if let Some(after) = self.hedge_after(session, ctx) {
            self.proxy_hedged(session, ctx, after).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let policy = ctx.policy.clone().expect("request_filter sets the policy");
        // The first attempt uses the slot admission granted; a retry takes any worker not
        // yet tried, limits aside (it already waited its turn).
        let lease = match ctx.lease.take() {
            Some(lease) if ctx.attempts == 0 => lease,
            _ => {
                let workers = self.state.workers();
                workers
                    .acquire(
                        policy.guard,
                        ctx.tried,
                        None,
                        Some(self.state.slot_listener()),
                    )
                    .ok_or_else(|| {
                        Error::explain(
                            ErrorType::ConnectNoRoute,
                            "every worker failed to accept the connection",
                        )
                    })?
            }
        };
        let peer = attempt_peer(&lease.worker().addr, &policy, ctx.route)?;
        ctx.attempts += 1;
        ctx.worker_id = Some(lease.worker().id);
        ctx.dispatched = Some(Instant::now());
        ctx.response_seen = false;
        ctx.lease = Some(lease);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Out of something of ours (file descriptors, local ports): not the worker's fault,
        // and another worker would fail the same way. Answered as ours (503 `local_resources`).
        if let Some(shortage) = LocalShortage::of(&e) {
            resources::record(shortage);
            tracing::warn!(cause = shortage.as_str(), error = %e, "cannot connect to a worker: out of a local resource");
            ctx.lease = None;
            e.set_retry(false);
            return e;
        }
        // Nothing reached the worker, so any request, POST included, may go to another one.
        if let Some(lease) = ctx.lease.take() {
            if let Some(policy) = &ctx.policy {
                lease.worker().on_connect_failure(&policy.upstream.health);
            }
            ctx.tried.insert(lease.index());
        }
        e.set_retry(!ctx.tried.covers(self.state.workers().len()));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("worker {peer}"));
        // We cut the request off ourselves (its body broke a limit): never retry it.
        if ctx.pending_rejection.is_some() {
            e.set_retry(false);
            return e;
        }
        // A stale pooled connection that broke at once: the request never reached the
        // worker, so an idempotent one may go again on a fresh connection (Pingora's rule).
        if matches!(e.retry, pingora::RetryType::ReusedOnly) && client_reused && ctx.idempotent {
            e.set_retry(true);
            return e;
        }
        let Some(policy) = ctx.policy.clone() else {
            e.set_retry(false);
            return e;
        };
        let route = policy.routes.get(ctx.route);
        let attempt = FailedAttempt {
            idempotent: ctx.idempotent,
            retries: ctx.retries,
            response_started: session.response_written().is_some(),
            body_not_replayable: session.as_ref().retry_buffer_truncated(),
            elapsed: ctx.started.elapsed(),
            deadline: route.slo.and_then(|s| s.p99.or(s.p95)),
            expected_service: ctx
                .lease
                .as_ref()
                .map(|l| l.worker().latency())
                .unwrap_or_default(),
        };
        let retry = worker_failed(&e)
            && retry::refusal(&attempt).is_none()
            && self.state.retry_budget.try_withdraw();
        if !ctx.response_seen && worker_failed(&e) {
            let status = if matches!(e.etype(), ErrorType::ReadTimedout) {
                504
            } else {
                502
            };
            ctx.record_outcome(status, None);
        }
        if retry {
            ctx.retries += 1;
            if let Some(lease) = &ctx.lease {
                ctx.tried.insert(lease.index());
            }
            tracing::debug!(request_id = %ctx.request_id, error = %e, "retrying on another worker");
        }
        e.set_retry(retry);
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.stream_body(body, end_of_stream, ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward_headers(session, upstream, ctx)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if response.status.is_informational() {
            return Ok(());
        }
        let lag = ctx.policy.as_ref().and_then(|p| lag_of(p, response));
        ctx.record_outcome(response.status.as_u16(), lag);
        ctx.response_seen = true;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        decorate_response(response, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Part of an answer already went out (a relay that broke mid-body): a second one
        // would corrupt the stream; closing the connection is all that is left.
        if let Some(sent) = session.response_written() {
            return FailToProxy {
                error_code: sent.status.as_u16(),
                can_reuse_downstream: false,
            };
        }
        let rejection = ctx
            .pending_rejection
            .take()
            .or_else(|| respond::upstream_failure(e));
        // The connection closes after this answer (`can_reuse_downstream: false` below):
        // say so in it, or a client reusing the connection meanwhile gets a reset.
        session.set_keepalive(None);
        let code = match rejection {
            Some(r) => {
                let status = r.status;
                if let Err(write_err) = self.reject(session, ctx, r).await {
                    tracing::debug!(error = %write_err, "could not write the error response");
                }
                status
            }
            None => 0, // the client is gone; nothing to answer
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // A worker that failed mid-request (timeout, reset) without any answer: record it as
        // a failed, slow response so its health and latency see it.
        if e.is_some_and(worker_failed) && !ctx.response_seen {
            ctx.record_outcome(502, None);
        }
        ctx.lease = None;
        if let (Some(rtt), Some(policy)) = (ctx.idle_rtt, &ctx.policy) {
            let name = &policy.routes.get(ctx.route).name;
            self.state
                .route_costs()
                .observe(ctx.route, name, rtt, Instant::now());
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let refusal = ctx.rejection.as_ref().map(Rejection::kind);
        let outcome = match (refusal, status) {
            (Some(kind), _) => Outcome::from(kind),
            (None, s) if s >= 500 || s == 0 || e.is_some() => Outcome::Error,
            (None, _) => Outcome::Ok,
        };
        // The worker label is the worker that answered; "none" when sloguard did.
        let worker = ctx.worker_id.filter(|_| ctx.response_seen);
        self.state.telemetry.metrics().record_request(
            ctx.route,
            status,
            worker,
            outcome,
            ctx.started.elapsed().as_secs_f64(),
        );
        let refused = ctx.rejection.is_some();
        let Some(policy) = ctx.policy.clone() else {
            return;
        };
        let log = &self.state.telemetry.access_log;
        if !log.should_log(
            &policy.access_log,
            refused,
            rand::random::<f64>(),
            Instant::now(),
        ) {
            return;
        }
        let req = session.req_header();
        let reason = ctx.rejection.as_ref().map(|r| r.reason.as_str());
        let dropped = log.take_dropped();
        let upstream = ctx
            .worker_id
            .and_then(|w| policy.upstream.workers.get(w.checked_sub(1)?));
        // The W3C trace context as the client sent it (55 characters when well formed; a
        // longer value is not a trace id and is left out rather than copied into every line).
        let traceparent = req
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|t| t.len() <= 64);
        tracing::info!(
            target: "sloguard::access",
            request_id = %ctx.request_id,
            traceparent,
            method = %req.method,
            path = %req.uri.path(),
            route = ctx.route_name(),
            client_ip = ctx.client.as_ref().map(|c| c.ip.to_string()),
            decision = access_log::decision(refusal, ctx.queued),
            reason,
            rule = ctx.limited_by.as_deref(),
            key = ctx.limited_key.as_deref(),
            worker = ctx.worker_id,
            upstream = upstream.map(tracing::field::display),
            bytes_in = session.body_bytes_read(),
            bytes_out = session.body_bytes_sent(),
            attempts = ctx.attempts,
            retries = ctx.retries,
            status,
            queue_ms = ctx.queued.as_secs_f64() * 1e3,
            upstream_ms = ctx.dispatched.map(|d| d.elapsed().as_secs_f64() * 1e3),
            total_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
            error = e.map(|e| e.to_string()),
            refusal_lines_dropped = (dropped > 0).then_some(dropped),
            "access"
        );
    }
}

/// Whether a failed attempt is the worker's failure, to count against its health (and to
/// be worth a retry): only errors on the worker's side (a timeout, a reset, a broken
/// answer). A client that left, stalled or sent a broken request (`Downstream`), or a body
/// sloguard cut off itself, says nothing about the worker: charging those as 5xx let a few
/// aborting clients eject healthy workers.
fn worker_failed(e: &Error) -> bool {
    matches!(e.esource(), ErrorSource::Upstream)
}

/// A random (version 4) UUID for a request that came without an id. From the thread-local
/// generator, not `Uuid::new_v4`, which asks the kernel (`getrandom`) on every call: one
/// syscall per request on the hot path.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Headers every upstream request gets: the request id, and in `X-Forwarded-For` the
/// resolved client then the trusted proxies it came through (`stages::client_ip`): what an
/// untrusted client wrote there is dropped, so a worker reading it cannot be fooled.
fn forward_headers(
    _session: &Session,
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    if !upstream.headers.contains_key("x-request-id") {
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
    }
    if let Some(client) = &ctx.client {
        upstream.insert_header("x-forwarded-for", client.forwarded_for())?;
    }
    Ok(())
}

/// The request's client (see `stages::client_ip`), from its TCP peer and, when the peer is a
/// trusted proxy, its `X-Forwarded-For`.
fn resolve_client(session: &Session, policy: &Policy) -> Option<client_ip::ClientIp> {
    let peer = session.client_addr()?.as_inet()?.ip();
    let forwarded = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .into_iter()
        .filter_map(|v| v.to_str().ok());
    Some(client_ip::resolve(
        peer,
        forwarded,
        &policy.listen.trusted_proxies,
    ))
}

/// The peer for one attempt at the worker at `addr`: the upstream timeouts, with the read
/// timeout capped by the route's `per_try_timeout_ms`. The main path, its retries and both
/// attempts of a hedged request build their peers here (hedges once built their own and lost
/// the per-try timeout).
///
/// A Unix-socket worker's path was checked when the policy was loaded; `Err` only if the
/// system refuses it all the same.
pub(super) fn attempt_peer(addr: &WorkerAddr, policy: &Policy, route: usize) -> Result<HttpPeer> {
    let up = &policy.upstream;
    let mut peer = match addr {
        WorkerAddr::Tcp(addr) => HttpPeer::new(*addr, false, String::new()),
        WorkerAddr::Unix(path) => HttpPeer::new_uds(path, false, String::new())?,
    };
    peer.options.connection_timeout = Some(up.connect_timeout);
    peer.options.read_timeout = Some(
        policy
            .routes
            .get(route)
            .per_try_timeout
            .map_or(up.read_timeout, |t| t.min(up.read_timeout)),
    );
    peer.options.write_timeout = Some(up.write_timeout);
    peer.options.idle_timeout = Some(up.idle_timeout);
    Ok(peer)
}

/// The worker's reported event-loop lag, from the policy's lag header.
fn lag_of(policy: &Policy, response: &ResponseHeader) -> Option<Duration> {
    let value = response.headers.get(policy.upstream.lag_header.as_str())?;
    parse_lag_ms(value.to_str().ok()?)
}

/// Headers every answer relayed from a worker gets: the request id, and the rate-limit
/// headers when a rule applied.
fn decorate_response(response: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if !response.headers.contains_key("x-request-id") {
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
    }
    if let Some(h) = &ctx.rate_headers {
        response.insert_header("ratelimit-policy", h.policy.as_str())?;
        response.insert_header("ratelimit", h.limit.as_str())?;
    }
    Ok(())
}
