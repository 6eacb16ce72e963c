//! The circuit breaker in front of Redis. Closed: requests ask Redis. After
//! `failures_to_open` consecutive failures (timeouts, refused connections, errors) it opens:
//! requests go straight to the fallback without paying a timeout each, until a background
//! health check sees Redis answer again and closes it.
//!
//! With a 5 ms timeout and 3 failures, an outage costs at most ~15 ms of added latency
//! spread over the first three requests, then nothing. Lock-free: read on every request.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Debug)]
pub struct Breaker {
    open: AtomicBool,
    consecutive_failures: AtomicU32,
    failures_to_open: u32,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerChange {
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(failures_to_open: u32) -> Breaker {
        Breaker {
            open: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            failures_to_open: failures_to_open.max(1),
        }
    }

    /// Whether requests should skip Redis and use the fallback.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    pub fn on_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A Redis call failed; returns `Opened` when this failure opened the breaker.
    pub fn on_failure(&self) -> Option<BreakerChange> {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.failures_to_open && !self.open.swap(true, Ordering::AcqRel) {
            return Some(BreakerChange::Opened);
        }
        None
    }

    /// The background check's verdict while open; returns `Closed` when it closed it.
    pub fn on_health_check(&self, healthy: bool) -> Option<BreakerChange> {
        if healthy && self.open.swap(false, Ordering::AcqRel) {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return Some(BreakerChange::Closed);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3);
        assert_eq!(b.on_failure(), None);
        assert_eq!(b.on_failure(), None);
        b.on_success();
        assert_eq!(b.on_failure(), None);
        assert_eq!(b.on_failure(), None);
        assert!(!b.is_open());
        assert_eq!(b.on_failure(), Some(BreakerChange::Opened));
        assert!(b.is_open());
        assert_eq!(b.on_failure(), None, "opening is reported once");
    }

    #[test]
    fn only_a_healthy_check_closes_it() {
        let b = Breaker::new(1);
        b.on_failure();
        assert_eq!(b.on_health_check(false), None);
        assert!(b.is_open());
        assert_eq!(b.on_health_check(true), Some(BreakerChange::Closed));
        assert!(!b.is_open());
        assert_eq!(b.on_health_check(true), None);
        // Counting starts again from zero.
        assert_eq!(b.on_failure(), Some(BreakerChange::Opened));
    }
}
