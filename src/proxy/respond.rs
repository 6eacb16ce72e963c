//! The one place where sloguard's own answers (rejections, upstream failures) are written.
//!
//! Every answer is JSON naming the limit and the route, so a client or an on-call engineer
//! can tell a sloguard refusal from a backend error without reading our logs.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::date::get_cached_date;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
use serde_json::json;

use crate::stages::ratelimit::RateHeaders;
use crate::stages::{Reason, Rejection};

/// What a rejection says beyond its status and reason: the route, the request id, and for
/// rate limits the rule and the `RateLimit` headers.
pub struct Context<'a> {
    pub route: &'a str,
    pub request_id: &'a str,
    pub rule: Option<&'a str>,
    pub rate_headers: Option<&'a RateHeaders>,
}

/// The JSON body of a rejection.
pub fn rejection_body(rejection: &Rejection, cx: &Context<'_>) -> Bytes {
    let mut body = json!({
        "error": rejection.message,
        "reason": rejection.reason,
        "route": cx.route,
        "request_id": cx.request_id,
    });
    if let Some(limit) = rejection.limit {
        body["limit"] = json!(limit);
    }
    if let Some(value) = rejection.value {
        body["value"] = json!(value);
    }
    if let Some(rule) = cx.rule {
        body["rule"] = json!(rule);
    }
    if let Some(secs) = rejection.retry_after {
        body["retry_after_s"] = json!(secs);
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Writes `rejection` as the whole response. The connection is closed afterwards when a
/// request body may be left unread, since the next request on it could not be framed.
pub async fn write_rejection(
    session: &mut Session,
    rejection: &Rejection,
    cx: &Context<'_>,
) -> Result<()> {
    let body = rejection_body(rejection, cx);
    let mut header = ResponseHeader::build(rejection.status, Some(6))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("x-request-id", cx.request_id)?;
    header.insert_header("x-sloguard-reason", rejection.reason.as_str())?;
    if let Some(secs) = rejection.retry_after {
        header.insert_header("retry-after", secs.to_string())?;
    }
    if let Some(h) = cx.rate_headers {
        header.insert_header("ratelimit-policy", h.policy.as_str())?;
        header.insert_header("ratelimit", h.limit.as_str())?;
    }
    // Close the connection after any 400 (the client's framing cannot be trusted) and when
    // a request body is left unread (the next request on it could not be framed). A small
    // body behind a 429 or 503 is read and dropped instead (nginx's discard_request_body),
    // so a limited or shed client keeps its connection: reconnecting after every refusal
    // costs both sides a handshake, at the moment the proxy is busiest.
    let body_settled = session.is_body_empty()
        || session.is_body_done()
        || (matches!(rejection.status, 429 | 503) && discard_small_body(session).await);
    if rejection.status == 400 || !body_settled {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Largest declared body read and dropped to keep a refused client's connection.
const DISCARD_MAX_BYTES: u64 = 64 * 1024;

/// Longest time spent reading and dropping it.
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Reads and drops a request body declared small (`Content-Length` up to
/// [`DISCARD_MAX_BYTES`]); whether it was all read in [`DISCARD_TIMEOUT`].
async fn discard_small_body(session: &mut Session) -> bool {
    let small = super::declared_content_length(session.req_header())
        .is_some_and(|n| n <= DISCARD_MAX_BYTES);
    small
        && matches!(
            tokio::time::timeout(DISCARD_TIMEOUT, session.as_mut().drain_request_body()).await,
            Ok(Ok(()))
        )
}

/// A whole HTTP/1.1 response for a refusal made before Pingora read a request (a connection
/// refused at accept, a head that timed out): the same JSON body and headers as
/// [`write_rejection`], and `connection: close`, since the connection ends after it.
pub fn raw_rejection(rejection: &Rejection, cx: &Context<'_>) -> Vec<u8> {
    use std::io::Write;
    let body = rejection_body(rejection, cx);
    let phrase = http::StatusCode::from_u16(rejection.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = Vec::with_capacity(256 + body.len());
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {}\r\nx-sloguard-reason: {}\r\n",
        rejection.status,
        body.len(),
        cx.request_id,
        rejection.reason
    );
    if let Some(secs) = rejection.retry_after {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(get_cached_date().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

/// Maps a proxy failure to our JSON answer; `None` when the client side is gone.
pub(super) fn upstream_failure(e: &Error) -> Option<Rejection> {
    // Pingora's chunked-body parser fails with this type and no source; the client sent it.
    if matches!(e.etype(), ErrorType::Custom(name) if *name == "InvalidChunk") {
        return Some(crate::stages::payload::bad_chunked_body());
    }
    if let Some(shortage) = crate::resources::LocalShortage::of(e) {
        return Some(Rejection {
            status: 503,
            reason: Reason::LocalResources,
            message: format!(
                "sloguard could not open a connection to a worker: out of {} (its own, not the worker's)",
                shortage.as_str().replace('_', " ")
            ),
            limit: None,
            value: None,
            retry_after: Some(1),
        });
    }
    let (status, reason, message) = match (e.esource(), e.etype()) {
        (_, ErrorType::HTTPStatus(code)) => (
            *code,
            Reason::HttpError,
            format!("request failed with status {code}"),
        ),
        (
            ErrorSource::Downstream,
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
        ) => return None,
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => (
            408,
            Reason::BodyTimeout,
            "the request body stalled past the body read timeout".to_string(),
        ),
        (ErrorSource::Downstream, _) => (
            400,
            Reason::BadRequest,
            "the request could not be read".to_string(),
        ),
        (
            _,
            ErrorType::ConnectNoRoute
            | ErrorType::ConnectRefused
            | ErrorType::ConnectTimedout
            | ErrorType::ConnectError,
        ) => (
            502,
            Reason::UpstreamUnavailable,
            "no worker accepted the connection".to_string(),
        ),
        (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => (
            504,
            Reason::UpstreamTimeout,
            "the worker did not answer in time".to_string(),
        ),
        (ErrorSource::Upstream, _) => (
            502,
            Reason::UpstreamError,
            "the worker's answer failed mid-way".to_string(),
        ),
        _ => (
            500,
            Reason::InternalError,
            "sloguard failed to proxy the request".to_string(),
        ),
    };
    Some(Rejection {
        status,
        reason,
        message,
        limit: None,
        value: None,
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_names_reason_limit_value_and_route() {
        let r = Rejection {
            status: 413,
            reason: Reason::BodyTooLarge,
            message: "too big".into(),
            limit: Some("max_body_bytes"),
            value: Some(70000),
            retry_after: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&rejection_body(
            &r,
            &Context {
                route: "ingest",
                request_id: "abc",
                rule: Some("per-tenant"),
                rate_headers: None,
            },
        ))
        .unwrap();
        assert_eq!(v["limit"], "max_body_bytes");
        assert_eq!(v["value"], 70000);
        assert_eq!(v["route"], "ingest");
        assert_eq!(v["reason"], "body_too_large");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["rule"], "per-tenant");
    }

    #[test]
    fn a_raw_refusal_is_a_whole_response_that_closes_the_connection() {
        let r = crate::stages::connection::header_timeout(&Default::default());
        let cx = Context {
            route: "-",
            request_id: "abc",
            rule: None,
            rate_headers: None,
        };
        let raw = String::from_utf8(raw_rejection(&r, &cx)).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains("\r\nx-sloguard-reason: header_timeout"),
            "{head}"
        );
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["limit"], "limits.header_read_timeout_ms");
        assert_eq!(v["value"], 10_000);
        assert_eq!(v["route"], "-");
    }
}
