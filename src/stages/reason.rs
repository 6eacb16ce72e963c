//! Why sloguard answered a request itself: one typed vocabulary for every stage, the
//! metrics, the access log and `/status`.
//!
//! A reason used to be a string that three lists (the metrics' shed, reject and connection
//! reasons) and two classifiers (the metrics' outcome, the access log's decision) had to
//! agree on by hand. They did not: `bad_chunked_body` and `bad_host` were in no list and never counted,
//! `rate_limit_unavailable` was an error in the metrics and "limited" in the access log,
//! `missing_rate_limit_key` "rejected" in one and "limited" in the other. Here each reason
//! carries its label, what kind of answer it is and whether it refuses a request or a whole
//! connection; everything else derives from that.

/// What kind of answer a reason is: the `outcome` label of the duration histogram and the
/// access log's `decision` both come from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonKind {
    /// Load shed by admission to keep the route's SLO (`sloguard_shed_total`).
    Shed,
    /// A tenant over its rate limit.
    Limited,
    /// The client's request broke a limit or the protocol (4xx).
    Rejected,
    /// sloguard could not get the request answered (5xx): a worker failed or was
    /// unreachable, a shortage of ours, a limit store down with the policy failing closed.
    Failed,
}

impl ReasonKind {
    /// The access log's `decision`.
    pub fn decision(self) -> &'static str {
        match self {
            ReasonKind::Shed => "shed",
            ReasonKind::Limited => "limited",
            ReasonKind::Rejected => "rejected",
            ReasonKind::Failed => "failed",
        }
    }
}

/// Every reason sloguard answers with. Request reasons come first, then the connection
/// reasons (refusals before any request was routed, counted with route `-`): the metrics
/// index their counters by the discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // Admission (503, `sloguard_shed_total`).
    DeadlineUnreachable,
    QueueTimeout,
    QueueFull,
    Evicted,
    Priority,
    // Payload and JSON limits.
    BodyTooLarge,
    UrlTooLong,
    HeadersTooLarge,
    BadChunkedBody,
    BadHost,
    BodyTimeout,
    InvalidJson,
    JsonLimit,
    // Rate limits.
    RateLimited,
    MissingRateLimitKey,
    RateLimitUnavailable,
    // Proxying.
    UpstreamUnavailable,
    LocalResources,
    UpstreamTimeout,
    UpstreamError,
    BadRequest,
    HttpError,
    InternalError,
    // Connections (route `-`).
    HeaderTimeout,
    TooManyConnections,
    BadProxyProtocol,
}

impl Reason {
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; 26] = [
        Reason::DeadlineUnreachable,
        Reason::QueueTimeout,
        Reason::QueueFull,
        Reason::Evicted,
        Reason::Priority,
        Reason::BodyTooLarge,
        Reason::UrlTooLong,
        Reason::HeadersTooLarge,
        Reason::BadChunkedBody,
        Reason::BadHost,
        Reason::BodyTimeout,
        Reason::InvalidJson,
        Reason::JsonLimit,
        Reason::RateLimited,
        Reason::MissingRateLimitKey,
        Reason::RateLimitUnavailable,
        Reason::UpstreamUnavailable,
        Reason::LocalResources,
        Reason::UpstreamTimeout,
        Reason::UpstreamError,
        Reason::BadRequest,
        Reason::HttpError,
        Reason::InternalError,
        Reason::HeaderTimeout,
        Reason::TooManyConnections,
        Reason::BadProxyProtocol,
    ];

    /// How many reasons refuse a routed request (the first ones of [`Reason::ALL`]).
    pub const REQUEST_COUNT: usize = 23;

    /// The reasons that refuse a routed request.
    pub fn request_reasons() -> &'static [Reason] {
        &Reason::ALL[..Reason::REQUEST_COUNT]
    }

    /// The reasons that refuse a connection before any request on it was routed.
    pub fn connection_reasons() -> &'static [Reason] {
        &Reason::ALL[Reason::REQUEST_COUNT..]
    }

    /// Whether this reason refuses a connection rather than a routed request.
    pub fn is_connection(self) -> bool {
        self as usize >= Reason::REQUEST_COUNT
    }

    /// The `reason` label, the JSON body's `reason`, the `x-sloguard-reason` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DeadlineUnreachable => "deadline_unreachable",
            Reason::QueueTimeout => "queue_timeout",
            Reason::QueueFull => "queue_full",
            Reason::Evicted => "evicted",
            Reason::Priority => "priority",
            Reason::BodyTooLarge => "body_too_large",
            Reason::UrlTooLong => "url_too_long",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::BadChunkedBody => "bad_chunked_body",
            Reason::BadHost => "bad_host",
            Reason::BodyTimeout => "body_timeout",
            Reason::InvalidJson => "invalid_json",
            Reason::JsonLimit => "json_limit",
            Reason::RateLimited => "rate_limited",
            Reason::MissingRateLimitKey => "missing_rate_limit_key",
            Reason::RateLimitUnavailable => "rate_limit_unavailable",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::LocalResources => "local_resources",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::BadRequest => "bad_request",
            Reason::HttpError => "http_error",
            Reason::InternalError => "internal_error",
            Reason::HeaderTimeout => "header_timeout",
            Reason::TooManyConnections => "too_many_connections",
            Reason::BadProxyProtocol => "bad_proxy_protocol",
        }
    }

    /// What kind of answer this is, given its status (only `http_error`, Pingora's own
    /// status for a request it could not handle, can be either a 4xx or a 5xx).
    pub fn kind(self, status: u16) -> ReasonKind {
        match self {
            Reason::DeadlineUnreachable
            | Reason::QueueTimeout
            | Reason::QueueFull
            | Reason::Evicted
            | Reason::Priority => ReasonKind::Shed,
            Reason::RateLimited => ReasonKind::Limited,
            // The policy fails closed while the limit store is down: not the tenant's doing.
            Reason::RateLimitUnavailable
            | Reason::UpstreamUnavailable
            | Reason::LocalResources
            | Reason::UpstreamTimeout
            | Reason::UpstreamError
            | Reason::InternalError => ReasonKind::Failed,
            Reason::HttpError if status >= 500 => ReasonKind::Failed,
            // A request without the key a rule needs is a malformed request for that rule.
            Reason::MissingRateLimitKey
            | Reason::BodyTooLarge
            | Reason::UrlTooLong
            | Reason::HeadersTooLarge
            | Reason::BadChunkedBody
            | Reason::BadHost
            | Reason::BodyTimeout
            | Reason::InvalidJson
            | Reason::JsonLimit
            | Reason::BadRequest
            | Reason::HttpError
            | Reason::HeaderTimeout
            | Reason::TooManyConnections
            | Reason::BadProxyProtocol => ReasonKind::Rejected,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn all_lists_every_reason_once_in_discriminant_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        let labels: HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len(), "labels are distinct");
    }

    #[test]
    fn connection_reasons_are_the_last_ones() {
        assert_eq!(
            Reason::connection_reasons(),
            [
                Reason::HeaderTimeout,
                Reason::TooManyConnections,
                Reason::BadProxyProtocol
            ]
        );
        assert!(Reason::request_reasons().iter().all(|r| !r.is_connection()));
        assert!(Reason::connection_reasons()
            .iter()
            .all(|r| r.is_connection()));
    }

    #[test]
    fn a_limit_store_down_is_a_failure_and_a_missing_key_a_rejection() {
        assert_eq!(Reason::RateLimited.kind(429), ReasonKind::Limited);
        assert_eq!(Reason::RateLimitUnavailable.kind(503), ReasonKind::Failed);
        assert_eq!(Reason::MissingRateLimitKey.kind(400), ReasonKind::Rejected);
        assert_eq!(Reason::HttpError.kind(400), ReasonKind::Rejected);
        assert_eq!(Reason::HttpError.kind(502), ReasonKind::Failed);
        assert_eq!(Reason::Priority.kind(503).decision(), "shed");
    }

    /// The runbook's table of reasons is the on-call's key to the access log: it must
    /// name every one.
    #[test]
    fn the_runbook_names_every_reason() {
        let runbook = include_str!("../../docs/runbook.md");
        for r in Reason::ALL {
            assert!(
                runbook.contains(&format!("`{r}`")),
                "{r} not in docs/runbook.md"
            );
        }
    }
}
