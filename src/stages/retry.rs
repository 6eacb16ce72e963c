//! Retries after a request reached a worker: when, and how many in all.
//!
//! A connect failure is always retried elsewhere (nothing reached the worker; see
//! `proxy::fail_to_connect`). After that, only an idempotent request (GET, HEAD, or a route
//! marked `retry_idempotent`) that timed out or failed before any response byte came back is
//! retried, once, on another worker, and only if its deadline still allows and the retry
//! budget has a token. A POST that may have reached the backend is never retried: the
//! backend could have stored it, and a retry would store it twice.
//!
//! The budget (as in Finagle and linkerd2-proxy) keeps retries from amplifying an overload:
//! every request deposits `budget_percent / 100` of a token, every retry takes a whole one,
//! and `min_per_second` tokens a second keep retries possible at low traffic.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// `[retry]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries allowed as a share of requests, percent. Default 10.
    pub budget_percent: f64,
    /// Retries allowed per second whatever the traffic. Default 10.
    pub min_per_second: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            budget_percent: 10.0,
            min_per_second: 10.0,
        }
    }
}

/// What is known about a failed attempt when deciding whether to retry it.
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt {
    /// GET/HEAD, or the route allows retrying its requests.
    pub idempotent: bool,
    /// Retries already made after a worker was reached.
    pub retries: u32,
    /// Some of the response already went to the client.
    pub response_started: bool,
    /// The request body was too large to keep for a replay.
    pub body_not_replayable: bool,
    /// Time since the request arrived.
    pub elapsed: Duration,
    /// The route's latency target, if any.
    pub deadline: Option<Duration>,
    /// Expected time a fresh attempt takes.
    pub expected_service: Duration,
}

/// Why a failed attempt is not retried (`None` = retry it, budget permitting).
pub fn refusal(a: &FailedAttempt) -> Option<&'static str> {
    if !a.idempotent {
        Some("not idempotent")
    } else if a.retries >= 1 {
        Some("already retried")
    } else if a.response_started {
        Some("response already started")
    } else if a.body_not_replayable {
        Some("body not replayable")
    } else if a
        .deadline
        .is_some_and(|d| a.elapsed + a.expected_service > d)
    {
        Some("deadline passed")
    } else {
        None
    }
}

/// The shared retry budget, in thousandths of a token (lock-free: touched per request).
#[derive(Debug)]
pub struct RetryBudget {
    milli_tokens: AtomicI64,
    /// Retries granted so far (for the status page).
    granted: AtomicI64,
}

/// Most tokens the budget holds: a burst of failures may use this many retries at once.
const MAX_MILLI_TOKENS: i64 = 100_000;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            milli_tokens: AtomicI64::new(10_000),
            granted: AtomicI64::new(0),
        }
    }
}

impl RetryBudget {
    /// A request arrived: deposit its share.
    pub fn deposit(&self, cfg: &RetryConfig) {
        self.add((cfg.budget_percent * 10.0) as i64);
    }

    /// Time passed: deposit the floor's share of `elapsed`.
    pub fn refill(&self, cfg: &RetryConfig, elapsed: Duration) {
        self.add((cfg.min_per_second * 1000.0 * elapsed.as_secs_f64()) as i64);
    }

    fn add(&self, milli: i64) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + milli).min(MAX_MILLI_TOKENS))
            });
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let ok = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok();
        if ok {
            self.granted.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Retries granted since start.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed) as u64
    }

    /// Whole tokens left.
    pub fn tokens(&self) -> f64 {
        self.milli_tokens.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn attempt() -> FailedAttempt {
        FailedAttempt {
            idempotent: true,
            retries: 0,
            response_started: false,
            body_not_replayable: false,
            elapsed: 100 * MS,
            deadline: Some(250 * MS),
            expected_service: 5 * MS,
        }
    }

    #[test]
    fn an_idempotent_request_in_time_is_retried_once() {
        assert_eq!(refusal(&attempt()), None);
        assert_eq!(
            refusal(&FailedAttempt {
                retries: 1,
                ..attempt()
            }),
            Some("already retried")
        );
    }

    #[test]
    fn posts_started_responses_and_late_requests_are_not_retried() {
        assert_eq!(
            refusal(&FailedAttempt {
                idempotent: false,
                ..attempt()
            }),
            Some("not idempotent")
        );
        assert_eq!(
            refusal(&FailedAttempt {
                response_started: true,
                ..attempt()
            }),
            Some("response already started")
        );
        assert_eq!(
            refusal(&FailedAttempt {
                body_not_replayable: true,
                ..attempt()
            }),
            Some("body not replayable")
        );
        assert_eq!(
            refusal(&FailedAttempt {
                elapsed: 248 * MS,
                ..attempt()
            }),
            Some("deadline passed")
        );
        assert_eq!(
            refusal(&FailedAttempt {
                deadline: None,
                elapsed: 10 * 1000 * MS,
                ..attempt()
            }),
            None
        );
    }

    #[test]
    fn the_budget_allows_its_share_of_requests_and_no_more() {
        let cfg = RetryConfig::default();
        let b = RetryBudget::default();
        // Spend the starting balance.
        while b.try_withdraw() {}
        // 1000 requests at 10% buy 100 retries.
        for _ in 0..1000 {
            b.deposit(&cfg);
        }
        let mut retries = 0;
        while b.try_withdraw() {
            retries += 1;
        }
        assert_eq!(retries, 100);
    }

    #[test]
    fn the_floor_refills_with_time_and_the_balance_is_capped() {
        let cfg = RetryConfig::default();
        let b = RetryBudget::default();
        while b.try_withdraw() {}
        b.refill(&cfg, Duration::from_millis(500));
        assert!((b.tokens() - 5.0).abs() < 1e-9);
        b.refill(&cfg, Duration::from_secs(3600));
        assert_eq!(b.tokens(), 100.0);
    }
}
