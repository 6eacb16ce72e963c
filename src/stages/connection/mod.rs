//! Connection limits, decided before Pingora parses a request: a total deadline for reading
//! each request head (slowloris on headers) and a cap on open connections per client IP.
//! Pure: the I/O edge (`proxy::conn`) feeds bytes and addresses in and writes the answers.
//!
//! - [`head`]: where a request head ends, and whether one is being read (the deadline arms
//!   on a head's first byte, so an idle keep-alive connection is never a header timeout);
//! - [`clients`]: open connections per client IP, held by an RAII permit;
//! - [`proxy_header`]: the PROXY protocol header a load balancer sends first, naming the
//!   client (`[listen] proxy_protocol`).

pub mod clients;
pub mod head;
pub mod proxy_header;
pub mod total;

use std::net::IpAddr;
use std::time::Duration;

pub use clients::{ClientConnections, ClientPermit};
pub use head::{HeadEnd, HeadEvent, HeadWatch};
pub use total::{ConnectionPermit, OpenConnections};

use super::{Reason, Rejection};

/// The policy keys of `[limits]` that limit connections, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Longest time from the first byte of a request head to the empty line that ends it;
    /// then 408 and the connection is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// Most open connections from one client IP (the TCP peer); the next one is answered
    /// 429 and closed. 0 = no cap (the default).
    pub max_connections_per_client_ip: u32,
    /// How long a keep-alive connection may sit idle between requests before it is closed
    /// (nginx's `keepalive_timeout`, HAProxy's `timeout http-keep-alive`). Default 60 s.
    pub keepalive_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections_per_client_ip: 0,
            keepalive_timeout: Duration::from_secs(60),
        }
    }
}

/// Longest `header_read_timeout_ms` a policy may set (10 minutes): Pingora closes a head
/// that makes no progress for 60 s anyway, and deadlines must stay far from `Instant`'s range.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest `keepalive_timeout_ms` a policy may set (1 hour, Envoy's default idle timeout).
pub const MAX_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Most `max_connections_per_client_ip` a policy may set.
pub const MAX_CONNECTIONS_PER_CLIENT_IP: u32 = 1_000_000;

/// The answer when a request head did not arrive whole within the deadline.
pub fn header_timeout(limits: &ConnLimits) -> Rejection {
    let ms = limits.header_read_timeout.as_millis() as u64;
    Rejection {
        status: 408,
        reason: Reason::HeaderTimeout,
        message: format!("the request head did not arrive whole within {ms} ms"),
        limit: Some("limits.header_read_timeout_ms"),
        value: Some(ms),
        retry_after: None,
    }
}

/// The answer to a connection over the per-client cap; `open` counts the connections the
/// client already has.
pub fn too_many_connections(ip: IpAddr, open: u32, cap: u32) -> Rejection {
    Rejection {
        status: 429,
        reason: Reason::TooManyConnections,
        message: format!(
            "client {ip} already has {open} open connections; the limit per client IP is {cap}"
        ),
        limit: Some("limits.max_connections_per_client_ip"),
        value: Some(u64::from(open) + 1),
        retry_after: None,
    }
}

/// The answer to a connection over `[listen] max_connections`: a 503 (the proxy is full, not
/// the client at fault), to be retried shortly, likely on another replica.
pub fn proxy_full(open: u32, cap: u32) -> Rejection {
    Rejection {
        status: 503,
        reason: Reason::TooManyConnections,
        message: format!("sloguard already holds {open} client connections; its limit is {cap}"),
        limit: Some("listen.max_connections"),
        value: Some(u64::from(open) + 1),
        retry_after: Some(1),
    }
}

/// The answer to a connection on a `proxy_protocol` listener that did not start with a
/// valid PROXY header, or that came from a peer not in `listen.trusted_proxies` (only a
/// trusted balancer may name the client).
pub fn bad_proxy_header(why: &str) -> Rejection {
    Rejection {
        status: 400,
        reason: Reason::BadProxyProtocol,
        message: format!("this listener expects a PROXY protocol header: {why}"),
        limit: Some("listen.proxy_protocol"),
        value: None,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_limit_and_value() {
        let l = ConnLimits {
            header_read_timeout: Duration::from_millis(300),
            ..ConnLimits::default()
        };
        let r = header_timeout(&l);
        assert_eq!(
            (r.status, r.reason, r.limit, r.value),
            (
                408,
                Reason::HeaderTimeout,
                Some("limits.header_read_timeout_ms"),
                Some(300)
            )
        );
        let r = too_many_connections("10.0.0.1".parse().unwrap(), 2, 2);
        assert_eq!(
            (r.status, r.limit, r.value),
            (429, Some("limits.max_connections_per_client_ip"), Some(3))
        );
        assert!(r.message.contains("10.0.0.1"), "{}", r.message);
    }

    #[test]
    fn defaults_time_heads_and_cap_nothing() {
        let d = ConnLimits::default();
        assert_eq!(d.header_read_timeout, Duration::from_secs(10));
        assert_eq!(d.max_connections_per_client_ip, 0);
    }
}
