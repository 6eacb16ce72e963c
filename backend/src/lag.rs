//! Event-loop lag: a timer that notes how late it fires, and a window that
//! answers "worst lag in the last second" cheaply.
//!
//! This is the signal the incident taught us to watch: when a handler blocks
//! the loop (a sync ORM write, a CPU-heavy normalisation), every timer on
//! that loop fires late by about as long as the block lasted. The pure part,
//! [`LagWindow`], takes `(now, lag)` samples and is tested without sleeping;
//! [`run`] is the small task that feeds it from a real timer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the lag timer wants to wake up.
pub const TICK: Duration = Duration::from_millis(10);

/// How far back "worst lag" looks.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Number of slots the window is cut into: the window is
/// `WINDOW` plus at most one slot (1.0 to 1.1 s) because slots are kept whole.
const SLOTS: usize = 10;

/// Worst observed lag per time slot, over a sliding window of about one second.
///
/// Memory and query cost are fixed (`SLOTS` entries) whatever the sample
/// rate. Besides recorded samples, the window knows when the next tick is
/// due: while the loop is blocked the timer cannot record anything, so
/// [`LagWindow::worst`] also counts how overdue that tick already is. That
/// makes a response written right after a 250 ms block already report
/// ~250 ms, instead of waiting for the timer to catch up.
#[derive(Debug, Clone)]
pub struct LagWindow {
    origin: Instant,
    slot_len: Duration,
    /// `(slot number since origin, worst lag seen in that slot)`.
    slots: [(u64, Duration); SLOTS],
    max_ever: Duration,
    next_expected: Option<Instant>,
}

impl LagWindow {
    /// A window whose slot numbers count from `origin` (any instant not
    /// later than the first sample).
    pub fn new(origin: Instant) -> Self {
        LagWindow {
            origin,
            slot_len: WINDOW / SLOTS as u32,
            slots: [(u64::MAX, Duration::ZERO); SLOTS],
            max_ever: Duration::ZERO,
            next_expected: None,
        }
    }

    fn slot_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        (since.as_nanos() / self.slot_len.as_nanos()) as u64
    }

    /// Records that a tick due `lag` ago fired at `now`.
    pub fn record(&mut self, now: Instant, lag: Duration) {
        let slot = self.slot_of(now);
        let entry = &mut self.slots[(slot % SLOTS as u64) as usize];
        if entry.0 != slot {
            *entry = (slot, Duration::ZERO);
        }
        entry.1 = entry.1.max(lag);
        self.max_ever = self.max_ever.max(lag);
    }

    /// Notes when the timer next expects to fire; see [`LagWindow::worst`].
    pub fn expect_tick(&mut self, at: Instant) {
        self.next_expected = Some(at);
    }

    /// Worst lag recorded in the last second, or how overdue the next tick
    /// already is at `now`, whichever is larger.
    pub fn worst(&self, now: Instant) -> Duration {
        let current = self.slot_of(now);
        let oldest = current.saturating_sub(SLOTS as u64 - 1);
        let recorded = self
            .slots
            .iter()
            .filter(|(slot, _)| *slot != u64::MAX && (oldest..=current).contains(slot))
            .map(|(_, lag)| *lag)
            .max()
            .unwrap_or(Duration::ZERO);
        let overdue = self
            .next_expected
            .map(|due| now.saturating_duration_since(due))
            .unwrap_or(Duration::ZERO);
        recorded.max(overdue)
    }

    /// Largest lag ever recorded (since the worker started).
    pub fn max_ever(&self) -> Duration {
        self.max_ever
    }
}

/// Locks a window even if a panicking thread poisoned it: lag figures are
/// best-effort and must never take a worker down.
pub(crate) fn lock(window: &Mutex<LagWindow>) -> std::sync::MutexGuard<'_, LagWindow> {
    window.lock().unwrap_or_else(|e| e.into_inner())
}

/// The per-worker timer task: wakes every [`TICK`] and records how late it
/// woke. Sleeps are scheduled from the actual wake-up time (the "delay"
/// policy), so one long block yields one large sample, not a burst of
/// catch-up ticks. Runs until its runtime is dropped.
pub(crate) async fn run(window: Arc<Mutex<LagWindow>>) {
    let mut due = Instant::now() + TICK;
    lock(&window).expect_tick(due);
    loop {
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        let lag = now.saturating_duration_since(due);
        due = now + TICK;
        let mut w = lock(&window);
        w.record(now, lag);
        w.expect_tick(due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn empty_window_reports_zero() {
        let t0 = Instant::now();
        let w = LagWindow::new(t0);
        assert_eq!(w.worst(t0 + ms(500)), Duration::ZERO);
        assert_eq!(w.max_ever(), Duration::ZERO);
    }

    #[test]
    fn worst_is_the_maximum_within_the_last_second() {
        let t0 = Instant::now();
        let mut w = LagWindow::new(t0);
        w.record(t0 + ms(100), ms(3));
        w.record(t0 + ms(400), ms(250));
        w.record(t0 + ms(700), ms(5));
        assert_eq!(w.worst(t0 + ms(800)), ms(250));
        // Still inside the window 0.9 s after the big sample.
        assert_eq!(w.worst(t0 + ms(1300)), ms(250));
    }

    #[test]
    fn old_samples_fall_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = LagWindow::new(t0);
        w.record(t0 + ms(100), ms(250));
        w.record(t0 + ms(1500), ms(2));
        assert_eq!(w.worst(t0 + ms(1600)), ms(2));
        assert_eq!(w.worst(t0 + ms(5000)), Duration::ZERO);
        assert_eq!(w.max_ever(), ms(250));
    }

    #[test]
    fn a_reused_slot_forgets_its_previous_lap() {
        let t0 = Instant::now();
        let mut w = LagWindow::new(t0);
        w.record(t0 + ms(50), ms(400));
        // Same slot index one lap (1 s) later: must start from zero.
        w.record(t0 + ms(1050), ms(1));
        assert_eq!(w.worst(t0 + ms(1060)), ms(1));
    }

    #[test]
    fn an_overdue_tick_counts_as_lag_before_it_fires() {
        let t0 = Instant::now();
        let mut w = LagWindow::new(t0);
        w.record(t0 + ms(10), ms(1));
        w.expect_tick(t0 + ms(20));
        // The loop is blocked: 230 ms past the due tick.
        assert_eq!(w.worst(t0 + ms(250)), ms(230));
        // Not yet due: recorded samples only.
        assert_eq!(w.worst(t0 + ms(15)), ms(1));
    }
}
