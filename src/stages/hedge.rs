//! Hedged requests: an idempotent request whose worker has not answered within the route's
//! `hedge_after_ms`, or whose worker is found stalled meanwhile, is sent to a second worker
//! as well, and the first answer wins (Envoy's `hedge_on_per_try_timeout`, plus a trigger
//! Envoy lacks: the stall signal, which fires before any timer would). The first attempt is
//! not abandoned, unlike a per-try-timeout retry: when it was only slow, its answer can
//! still win.
//!
//! Only requests without a body are hedged (GET, HEAD, or a `retry_idempotent` route's
//! bodiless requests): the second attempt needs the whole request in hand. A hedge is a
//! retry for the budget's sake (`stages::retry`): it takes a token, so hedging cannot
//! double the load on a fleet that is already slow everywhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why the second attempt went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeTrigger {
    /// The first worker had not answered within `hedge_after_ms`.
    Timer,
    /// The first worker was ejected (or about to be) while the request waited on it.
    WorkerStalled,
    /// The first attempt failed before any answer (refused, reset).
    FirstFailed,
}

/// Whether a request may be hedged at all: it is safe to send twice and carries no body.
pub fn eligible(hedge_after: Option<Duration>, idempotent: bool, has_body: bool) -> bool {
    hedge_after.is_some() && idempotent && !has_body
}

/// Whether the second attempt is due now, given how long the first has waited and whether
/// its worker is still taking traffic. The stall signal wins over the timer.
pub fn due(
    waited: Duration,
    hedge_after: Duration,
    first_worker_out: bool,
) -> Option<HedgeTrigger> {
    if first_worker_out {
        Some(HedgeTrigger::WorkerStalled)
    } else if waited >= hedge_after {
        Some(HedgeTrigger::Timer)
    } else {
        None
    }
}

/// Counts for the status page and `/metrics`.
#[derive(Debug, Default)]
pub struct HedgeStats {
    launched: AtomicU64,
    won: AtomicU64,
}

impl HedgeStats {
    /// A second attempt went out.
    pub fn note_launched(&self) {
        self.launched.fetch_add(1, Ordering::Relaxed);
    }

    /// The second attempt answered first.
    pub fn note_won(&self) {
        self.won.fetch_add(1, Ordering::Relaxed);
    }

    pub fn launched(&self) -> u64 {
        self.launched.load(Ordering::Relaxed)
    }

    pub fn won(&self) -> u64 {
        self.won.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_bodiless_idempotent_requests_of_a_hedging_route_are_eligible() {
        assert!(eligible(Some(30 * MS), true, false));
        assert!(!eligible(None, true, false), "route does not hedge");
        assert!(
            !eligible(Some(30 * MS), false, false),
            "a POST is never sent twice"
        );
        assert!(
            !eligible(Some(30 * MS), true, true),
            "a body cannot be replayed"
        );
    }

    #[test]
    fn the_timer_fires_at_hedge_after_and_not_before() {
        assert_eq!(due(29 * MS, 30 * MS, false), None);
        assert_eq!(due(30 * MS, 30 * MS, false), Some(HedgeTrigger::Timer));
        assert_eq!(due(500 * MS, 30 * MS, false), Some(HedgeTrigger::Timer));
    }

    #[test]
    fn a_stalled_first_worker_triggers_the_hedge_before_the_timer() {
        assert_eq!(
            due(Duration::ZERO, 30 * MS, true),
            Some(HedgeTrigger::WorkerStalled)
        );
        assert_eq!(
            due(40 * MS, 30 * MS, true),
            Some(HedgeTrigger::WorkerStalled)
        );
    }

    #[test]
    fn stats_count_launches_and_wins() {
        let s = HedgeStats::default();
        s.note_launched();
        s.note_launched();
        s.note_won();
        assert_eq!((s.launched(), s.won()), (2, 1));
    }
}
