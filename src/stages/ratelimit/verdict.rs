//! What the rate-limit stage says about one request: allowed or limited (and by which rule
//! and key), its `RateLimit` headers, and each rule's result for the metrics.

use std::sync::Arc;
use std::time::Duration;

use super::rules::{Limits, Rule};
use crate::stages::{Reason, Rejection};

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RateOutcome {
    #[default]
    Allow,
    /// Over an enforced rule's limit: 429.
    Limited {
        rule: Arc<str>,
        /// The key's value (a tenant, a client IP), for the access line.
        key: String,
        retry_after: Duration,
    },
    /// The rule's key could not be built and `missing_key = "deny"`: 400.
    MissingKey { rule: Arc<str>, part: String },
    /// Redis is down and `on_redis_error = "deny"`: 503.
    Unavailable { rule: Arc<str> },
}

impl RateOutcome {
    /// The answer for a refused request; `None` for `Allow`.
    pub fn rejection(&self) -> Option<Rejection> {
        let (status, reason, message, retry_after) = match self {
            RateOutcome::Allow => return None,
            RateOutcome::Limited {
                rule, retry_after, ..
            } => (
                429,
                Reason::RateLimited,
                format!("rate limit `{rule}` exceeded; retry in {} ms", retry_after.as_millis()),
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            ),
            RateOutcome::MissingKey { rule, part } => (
                400,
                Reason::MissingRateLimitKey,
                format!("rate limit `{rule}` needs the request's {part}"),
                None,
            ),
            RateOutcome::Unavailable { rule } => (
                503,
                Reason::RateLimitUnavailable,
                format!("rate limit `{rule}` cannot be checked (its store is down) and the policy refuses unchecked requests"),
                Some(1),
            ),
        };
        Some(Rejection {
            status,
            reason,
            message,
            limit: Some("ratelimit.rule"),
            value: None,
            retry_after,
        })
    }

    /// The key's value a 429 was for (a tenant, a client IP), for the access line.
    pub fn key(&self) -> Option<&str> {
        match self {
            RateOutcome::Limited { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The rule that refused, for the JSON body.
    pub fn rule(&self) -> Option<&str> {
        match self {
            RateOutcome::Allow => None,
            RateOutcome::Limited { rule, .. }
            | RateOutcome::MissingKey { rule, .. }
            | RateOutcome::Unavailable { rule } => Some(rule),
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` header values (draft-ietf-httpapi-ratelimit-headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateHeaders {
    pub policy: String,
    pub limit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateVerdict {
    pub outcome: RateOutcome,
    pub headers: Option<RateHeaders>,
    /// Per rule that judged the request: (its index in the policy, `allowed` / `limited` /
    /// `shadow_denied` / `near_limit`), for the metrics.
    pub results: Vec<(usize, &'static str)>,
}

pub(super) fn headers_for(
    rule: &Rule,
    limits: &Limits,
    remaining: u64,
    reset_us: u64,
) -> RateHeaders {
    RateHeaders {
        policy: format!(
            "\"{}\";q={};w={}",
            rule.name,
            limits.gcra.capacity(),
            rule.period.as_secs().max(1)
        ),
        limit: format!(
            "\"{}\";r={};t={}",
            rule.name,
            remaining,
            Duration::from_micros(reset_us).as_secs_f64().ceil() as u64
        ),
    }
}
