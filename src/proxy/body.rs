//! The body checks of the request path: byte caps (413), JSON shape (400/422) and body read
//! timeouts (408).
//!
//! A body that must be judged whole (a route with a JSON scan) or must never reach the backend
//! cut short (a chunked body on a capped route) is read before a worker is chosen when it
//! fits Pingora's 64 KiB replay buffer: the backend then never sees a refused body at all, and
//! an accepted one is replayed intact. Any other body streams through and is checked on the
//! way; when it breaks a limit, the upstream request is aborted mid-body, so the backend sees
//! a broken request (never a shorter valid one) and the client gets the refusal.

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::{RequestCtx, SloGuard};
use crate::stages::json_scan::{JsonScanner, JsonVerdict};
use crate::stages::payload::{self, BodyCounter};
use crate::stages::Rejection;

/// Pingora replays a body read before proxying from a buffer of this size.
const REPLAY_BUFFER_BYTES: u64 = 64 * 1024;

impl SloGuard {
    /// Sets up the body checks, and reads and checks the body up front when it has to be;
    /// `Some` when it is refused.
    pub(super) async fn check_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Rejection>> {
        let Some(policy) = ctx.policy.clone() else {
            return Ok(None);
        };
        let route = policy.routes.get(ctx.route);
        ctx.body = BodyCounter::new(route.max_body_bytes);
        if session.is_body_empty() {
            return Ok(None);
        }
        ctx.json = route.json.map(JsonScanner::new);
        let declared = super::declared_content_length(session.req_header());
        let bound = declared.or(route.max_body_bytes);
        let chunked_under_cap = declared.is_none() && route.max_body_bytes.is_some();
        let whole = ctx.json.is_some() || chunked_under_cap;
        if !whole || bound.is_none_or(|b| b > REPLAY_BUFFER_BYTES) {
            return Ok(None); // checked as it streams, in `stream_body`
        }
        session.as_mut().enable_retry_buffering();
        let timeout = policy.limits.body_read_timeout;
        loop {
            let chunk = match tokio::time::timeout(timeout, session.read_request_body()).await {
                Err(_) => return Ok(Some(payload::body_timeout(&policy.limits))),
                Ok(read) => read?,
            };
            let Some(chunk) = chunk else { break };
            if let Some(rejection) = check_chunk(ctx, &chunk) {
                return Ok(Some(rejection));
            }
        }
        if let Some(rejection) = finish_json(ctx) {
            return Ok(Some(rejection));
        }
        ctx.body_checked = true;
        Ok(None)
    }

    /// Checks a streamed body chunk by chunk; on a refusal, aborts the upstream request
    /// (the client gets the answer from `fail_to_proxy`).
    pub(super) fn stream_body(
        &self,
        body: &mut Option<bytes::Bytes>,
        end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.body_checked {
            return Ok(());
        }
        let mut refusal = body.as_ref().and_then(|chunk| check_chunk(ctx, chunk));
        if refusal.is_none() && end {
            refusal = finish_json(ctx);
        }
        match refusal {
            None => Ok(()),
            Some(rejection) => {
                *body = None;
                let status = rejection.status;
                ctx.pending_rejection = Some(rejection);
                Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "request body refused mid-stream",
                )
            }
        }
    }
}

/// One more chunk against the cap and the JSON scanner.
fn check_chunk(ctx: &mut RequestCtx, chunk: &[u8]) -> Option<Rejection> {
    if let Err(rejection) = ctx.body.add(chunk.len()) {
        return Some(rejection);
    }
    match ctx.json.as_mut().map(|s| s.feed(chunk)) {
        Some(verdict @ (JsonVerdict::Invalid { .. } | JsonVerdict::OverLimit { .. })) => {
            verdict.rejection()
        }
        _ => None,
    }
}

/// End of body: the JSON document must be complete.
fn finish_json(ctx: &mut RequestCtx) -> Option<Rejection> {
    ctx.json
        .as_mut()
        .and_then(|s| s.finish().err())
        .and_then(|v| v.rejection())
}
