//! Small per-worker signals, each one pure type: the passive stall detector and a streak
//! counter (consecutive failures). The latency estimate is in `ewma`; the health state
//! machine in `health` combines them.

use std::time::{Duration, Instant};

/// Sees a stall while it happens: requests in flight and nothing completed (no response, no
/// probe) since the worker became busy or since its last completion, whichever is later.
#[derive(Debug, Clone)]
pub struct StallDetector {
    busy_since: Option<Instant>,
    last_completion: Instant,
}

impl StallDetector {
    pub fn new(now: Instant) -> StallDetector {
        StallDetector {
            busy_since: None,
            last_completion: now,
        }
    }

    /// A request was sent; `in_flight_before` is the count before it.
    pub fn on_dispatch(&mut self, in_flight_before: usize, now: Instant) {
        if in_flight_before == 0 {
            self.busy_since = Some(now);
        }
    }

    /// A response or a probe came back: the worker's loop is turning.
    pub fn on_completion(&mut self, now: Instant) {
        self.last_completion = self.last_completion.max(now);
    }

    /// sloguard itself was held up for `d` (descheduled, throttled by a CPU limit, or busy
    /// elsewhere), noticed at `now`: that time is not counted as the worker's silence. An
    /// answer that came meanwhile waits unread in the socket, so "nothing completed" only
    /// says something about time the proxy was running.
    pub fn excuse(&mut self, d: Duration, now: Instant) {
        self.last_completion = (self.last_completion + d).min(now);
        self.busy_since = self.busy_since.map(|since| (since + d).min(now));
    }

    /// How long the worker has been stalled (zero when it is not).
    pub fn stalled_for(&mut self, in_flight: usize, now: Instant) -> Duration {
        if in_flight == 0 {
            self.busy_since = None;
        }
        match self.busy_since {
            Some(since) => now.saturating_duration_since(since.max(self.last_completion)),
            None => Duration::ZERO,
        }
    }
}

/// Consecutive occurrences of something (5xx answers, connect failures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak(u32);

impl Streak {
    /// One more; returns the length of the streak.
    pub fn hit(&mut self) -> u32 {
        self.0 = self.0.saturating_add(1);
        self.0
    }

    pub fn reset(&mut self) {
        self.0 = 0;
    }

    pub fn len(self) -> u32 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn stall_counts_from_busy_or_last_completion_whichever_is_later() {
        let t0 = Instant::now();
        let mut s = StallDetector::new(t0);
        assert_eq!(
            s.stalled_for(0, t0 + 500 * MS),
            Duration::ZERO,
            "idle is not stalled"
        );
        s.on_dispatch(0, t0 + 100 * MS);
        assert_eq!(s.stalled_for(1, t0 + 150 * MS), 50 * MS);
        s.on_completion(t0 + 160 * MS);
        assert_eq!(s.stalled_for(1, t0 + 170 * MS), 10 * MS);
        // A later dispatch while busy does not restart the clock.
        s.on_dispatch(1, t0 + 180 * MS);
        assert_eq!(s.stalled_for(2, t0 + 260 * MS), 100 * MS);
        // Going idle clears it.
        assert_eq!(s.stalled_for(0, t0 + 300 * MS), Duration::ZERO);
        assert_eq!(
            s.stalled_for(1, t0 + 400 * MS),
            Duration::ZERO,
            "busy again only after a dispatch"
        );
    }

    #[test]
    fn time_the_proxy_was_held_up_is_not_the_workers_silence() {
        let t0 = Instant::now();
        let mut s = StallDetector::new(t0);
        s.on_dispatch(0, t0);
        // 144 ms without an answer, 60 ms of which the proxy itself was not running.
        s.excuse(60 * MS, t0 + 100 * MS);
        assert_eq!(s.stalled_for(1, t0 + 144 * MS), 84 * MS);
        // A hold-up longer than the silence so far leaves no stall, and none in credit.
        s.excuse(500 * MS, t0 + 150 * MS);
        assert_eq!(s.stalled_for(1, t0 + 150 * MS), Duration::ZERO);
        assert_eq!(s.stalled_for(1, t0 + 250 * MS), 100 * MS);
    }

    #[test]
    fn streaks_count_and_reset() {
        let mut s = Streak::default();
        assert!(s.is_empty());
        assert_eq!((s.hit(), s.hit(), s.hit()), (1, 2, 3));
        s.reset();
        assert_eq!(s.len(), 0);
    }
}
