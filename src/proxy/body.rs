//! The body checks of the request path: byte caps (413) and body read timeouts (408).
//!
//! A body that must be judged whole, or must never reach the backend cut short, is read
//! before a worker is chosen: a chunked body on a capped route, when its cap fits Pingora's
//! 64 KiB replay buffer. The backend then never sees a refused body at all; an accepted one
//! is replayed from the buffer. Any other body streams through and is counted on the way;
//! over its cap, the upstream request is aborted mid-body, so the backend sees a broken
//! request (never a shorter valid one) and the client gets the 413.

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::{RequestCtx, SloGuard};
use crate::stages::payload::{self, BodyCounter};
use crate::stages::Rejection;

/// Pingora replays a body read before proxying from a buffer of this size.
const REPLAY_BUFFER_BYTES: u64 = 64 * 1024;

impl SloGuard {
    /// Reads and checks the body up front when it has to be; `Some` when it is refused.
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
        let declared = super::declared_content_length(session.req_header());
        let bound = declared.or(route.max_body_bytes);
        let chunked_under_cap = declared.is_none() && route.max_body_bytes.is_some();
        if !chunked_under_cap
            || bound.is_none_or(|b| b > REPLAY_BUFFER_BYTES)
            || session.is_body_empty()
        {
            return Ok(None);
        }
        session.as_mut().enable_retry_buffering();
        let timeout = policy.limits.body_read_timeout;
        loop {
            let chunk = match tokio::time::timeout(timeout, session.read_request_body()).await {
                Err(_) => return Ok(Some(payload::body_timeout(&policy.limits))),
                Ok(read) => read?,
            };
            let Some(chunk) = chunk else { break };
            if let Err(rejection) = ctx.body.add(chunk.len()) {
                return Ok(Some(rejection));
            }
        }
        ctx.body_checked = true;
        Ok(None)
    }

    /// Counts a streamed body; over its cap, aborts the upstream request (the client gets
    /// the 413 from `fail_to_proxy`).
    pub(super) fn stream_body(
        &self,
        body: &mut Option<bytes::Bytes>,
        _end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.body_checked {
            return Ok(());
        }
        if let Some(chunk) = body {
            if let Err(rejection) = ctx.body.add(chunk.len()) {
                *body = None;
                let status = rejection.status;
                ctx.pending_rejection = Some(rejection);
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "request body over its cap",
                );
            }
        }
        Ok(())
    }
}
