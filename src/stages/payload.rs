//! Payload caps: refuse a request whose declared body is over its route's cap, before any
//! byte of it is read or forwarded. Pure.

use super::route::Route;
use super::Rejection;

/// Decides on the declared `Content-Length` (None when absent, e.g. chunked bodies).
///
/// A length over the cap is answered 413 at once, as nginx's `client_max_body_size` does,
/// so a 50 MB upload costs neither the backend nor our memory anything.
pub fn check_declared_length(route: &Route, content_length: Option<u64>) -> Result<(), Rejection> {
    match (route.max_body_bytes, content_length) {
        (Some(cap), Some(len)) if len > cap => Err(Rejection {
            status: 413,
            reason: "body_too_large",
            message: format!("request body of {len} bytes is over the route's cap of {cap} bytes"),
            limit: Some("max_body_bytes"),
            value: Some(len),
            retry_after: None,
        }),
        _ => Ok(()),
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
}
