//! Payload caps and request-shape limits, answered before the backend sees a byte. Pure.
//!
//! - the request head: URL length (414) and total header bytes (431), as nginx's
//!   `large_client_header_buffers` and Envoy's `max_request_headers_kb` do;
//! - the body: a declared `Content-Length` over the route's cap is answered 413 at once
//!   (nginx's `client_max_body_size`), and a chunked body is counted as it arrives
//!   ([`BodyCounter`]), so no cap can be dodged by leaving the length out.

use std::time::Duration;

use super::route::Route;
use super::{Reason, Rejection};

/// `[limits]`: global request-shape limits, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request target (path and query), bytes. Default 8192.
    pub max_url_bytes: usize,
    /// Most header bytes (names, values and separators), bytes. Default 32768.
    pub max_header_bytes: usize,
    /// Longest wait for the next piece of a request body; then 408. Default 10 s.
    pub body_read_timeout: Duration,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_url_bytes: 8192,
            max_header_bytes: 32 * 1024,
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

/// The request head against [`HeadLimits`].
pub fn check_head(
    limits: &HeadLimits,
    url_bytes: usize,
    header_bytes: usize,
) -> Result<(), Rejection> {
    if url_bytes > limits.max_url_bytes {
        return Err(reject(
            414,
            Reason::UrlTooLong,
            format!(
                "request target of {url_bytes} bytes is over the limit of {}",
                limits.max_url_bytes
            ),
            "limits.max_url_bytes",
            url_bytes as u64,
        ));
    }
    if header_bytes > limits.max_header_bytes {
        return Err(reject(
            431,
            Reason::HeadersTooLarge,
            format!(
                "request headers of {header_bytes} bytes are over the limit of {}",
                limits.max_header_bytes
            ),
            "limits.max_header_bytes",
            header_bytes as u64,
        ));
    }
    Ok(())
}

/// The `Host` header against RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one,
/// any request at most one (400 otherwise, as nginx answers). `hosts` counts its lines.
/// Without it the worker would guess which site was meant; with two, sloguard and the
/// worker could each pick a different one.
pub fn check_host(version: http::Version, hosts: usize) -> Result<(), Rejection> {
    let (message, value) = match hosts {
        0 if version == http::Version::HTTP_11 => {
            ("an HTTP/1.1 request must carry a Host header", 0)
        }
        0 | 1 => return Ok(()),
        n => ("a request must not carry more than one Host header", n),
    };
    Err(reject(
        400,
        Reason::BadHost,
        message.to_string(),
        "rfc9112.host",
        value as u64,
    ))
}

/// The answer to a chunked body whose framing is broken: a chunk size that is not
/// hexadecimal or does not fit 64 bits (`FFFFFFFFFFFFFFFFFF`), a missing CRLF (RFC 9112
/// section 7.1). The client's fault, so a 400, not a 500.
pub fn bad_chunked_body() -> Rejection {
    Rejection {
        status: 400,
        reason: Reason::BadChunkedBody,
        message: "the request's chunked body is malformed (a chunk size that is not \
                  hexadecimal or does not fit 64 bits, or a chunk not ended by CRLF)"
            .to_string(),
        limit: Some("rfc9112.chunked"),
        value: None,
        retry_after: None,
    }
}

/// The answer when a body did not arrive in time.
pub fn body_timeout(limits: &HeadLimits) -> Rejection {
    Rejection {
        status: 408,
        reason: Reason::BodyTimeout,
        message: format!(
            "the request body stalled for over {} ms",
            limits.body_read_timeout.as_millis()
        ),
        limit: Some("limits.body_read_timeout_ms"),
        value: Some(limits.body_read_timeout.as_millis() as u64),
        retry_after: None,
    }
}

fn reject(
    status: u16,
    reason: Reason,
    message: String,
    limit: &'static str,
    value: u64,
) -> Rejection {
    Rejection {
        status,
        reason,
        message,
        limit: Some(limit),
        value: Some(value),
        retry_after: None,
    }
}

fn too_large(len: u64, cap: u64) -> Rejection {
    reject(
        413,
        Reason::BodyTooLarge,
        format!("request body of {len} bytes is over the route's cap of {cap} bytes"),
        "max_body_bytes",
        len,
    )
}

/// Decides on the declared `Content-Length` (None when absent, e.g. chunked bodies).
///
/// A length over the cap is answered 413 at once, so a 50 MB upload costs neither the
/// backend nor our memory anything.
pub fn check_declared_length(route: &Route, content_length: Option<u64>) -> Result<(), Rejection> {
    match (route.max_body_bytes, content_length) {
        (Some(cap), Some(len)) if len > cap => Err(too_large(len, cap)),
        _ => Ok(()),
    }
}

/// Counts body bytes as they arrive against the route's cap.
#[derive(Debug, Clone, Copy)]
pub struct BodyCounter {
    cap: Option<u64>,
    seen: u64,
}

impl BodyCounter {
    pub fn new(cap: Option<u64>) -> BodyCounter {
        BodyCounter { cap, seen: 0 }
    }

    /// Adds a chunk; `Err` (413) as soon as the total passes the cap.
    pub fn add(&mut self, n: usize) -> Result<(), Rejection> {
        self.seen += n as u64;
        match self.cap {
            Some(cap) if self.seen > cap => Err(too_large(self.seen, cap)),
            _ => Ok(()),
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(cap: Option<u64>) -> Route {
        Route {
            max_body_bytes: cap,
            ..Route::implicit_default()
        }
    }

    #[test]
    fn host_is_required_once_on_http11_and_at_most_once_on_http10() {
        use http::Version;
        let r = check_host(Version::HTTP_11, 0).unwrap_err();
        assert_eq!(
            (r.status, r.reason, r.limit),
            (400, Reason::BadHost, Some("rfc9112.host"))
        );
        assert!(check_host(Version::HTTP_11, 1).is_ok());
        assert_eq!(check_host(Version::HTTP_11, 2).unwrap_err().value, Some(2));
        assert!(check_host(Version::HTTP_10, 0).is_ok());
        assert!(check_host(Version::HTTP_10, 2).is_err());
    }

    #[test]
    fn over_cap_is_413_naming_the_limit() {
        let r = check_declared_length(&capped(Some(100)), Some(101)).unwrap_err();
        assert_eq!(
            (r.status, r.limit, r.value),
            (413, Some("max_body_bytes"), Some(101))
        );
    }

    #[test]
    fn at_cap_unknown_length_or_no_cap_pass() {
        assert!(check_declared_length(&capped(Some(100)), Some(100)).is_ok());
        assert!(check_declared_length(&capped(Some(100)), None).is_ok());
        assert!(check_declared_length(&capped(None), Some(u64::MAX)).is_ok());
    }

    #[test]
    fn a_streamed_body_is_refused_as_soon_as_it_passes_the_cap() {
        let mut c = BodyCounter::new(Some(10));
        assert!(c.add(6).is_ok());
        assert!(c.add(4).is_ok());
        let r = c.add(1).unwrap_err();
        assert_eq!((r.status, r.value), (413, Some(11)));
        let mut unlimited = BodyCounter::new(None);
        assert!(unlimited.add(usize::MAX / 2).is_ok());
        assert_eq!(unlimited.seen(), (usize::MAX / 2) as u64);
    }

    #[test]
    fn long_urls_and_big_headers_get_414_and_431() {
        let l = HeadLimits::default();
        assert!(check_head(&l, 8192, 32 * 1024).is_ok());
        let r = check_head(&l, 8193, 10).unwrap_err();
        assert_eq!((r.status, r.limit), (414, Some("limits.max_url_bytes")));
        let r = check_head(&l, 10, 40_000).unwrap_err();
        assert_eq!(
            (r.status, r.reason, r.value),
            (431, Reason::HeadersTooLarge, Some(40_000))
        );
        assert_eq!(body_timeout(&l).status, 408);
    }
}
