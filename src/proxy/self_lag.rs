//! How far behind sloguard's own event loops run: the sidecar's backlog. A sidecar under a
//! Kubernetes CPU limit, or sharing its core with a busy application, is descheduled for
//! milliseconds at a time; every request that arrives meanwhile waits in the kernel before
//! we can even read it. Nothing on the request shows that wait, but a timer on the same
//! loop does: it fires late by about as long. Admission adds this lateness to a request's
//! predicted wait, so a starved sidecar sheds the excess at once instead of letting every
//! request age (`stages::admission::arrival`).
//!
//! One ticker per proxy runtime thread (Pingora runs one single-threaded runtime per
//! thread), started by the first connection that thread serves. Each keeps the worst
//! lateness of its last two 50 ms slots ([`LatenessWindow`], pure); the published value is
//! the worst over the threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stages::admission::Admission;

/// How often a ticker wants to wake.
pub const TICK: Duration = Duration::from_millis(5);
/// Lateness under this is timer granularity, not backlog: tokio rounds a deadline up to its
/// next millisecond, so every tick fires up to 1 ms late on an idle machine.
const NOISE: Duration = Duration::from_millis(1);
const SLOT: Duration = Duration::from_millis(50);
/// Most proxy threads measured (the policy allows 64).
const MAX_THREADS: usize = 64;

/// Worst lateness per 50 ms slot, the current and the previous one: a value that covers
/// the last 50-100 ms, so a request read just after a long deschedule still sees it.
#[derive(Debug, Clone)]
pub struct LatenessWindow {
    origin: Instant,
    slot: u64,
    current: Duration,
    previous: Duration,
}

impl LatenessWindow {
    pub fn new(origin: Instant) -> LatenessWindow {
        LatenessWindow {
            origin,
            slot: 0,
            current: Duration::ZERO,
            previous: Duration::ZERO,
        }
    }

    /// A tick due `lateness` ago fired at `now`.
    pub fn record(&mut self, now: Instant, lateness: Duration) {
        self.roll(now);
        let lateness = if lateness < NOISE {
            Duration::ZERO
        } else {
            lateness
        };
        self.current = self.current.max(lateness);
    }

    /// The worst lateness of the last 50-100 ms.
    pub fn worst(&mut self, now: Instant) -> Duration {
        self.roll(now);
        self.current.max(self.previous)
    }

    fn roll(&mut self, now: Instant) {
        let slot = (now.saturating_duration_since(self.origin).as_nanos() / SLOT.as_nanos()) as u64;
        if slot == self.slot {
            return;
        }
        self.previous = if slot == self.slot + 1 {
            self.current
        } else {
            Duration::ZERO
        };
        self.current = Duration::ZERO;
        self.slot = slot;
    }
}

static SLOTS: [AtomicU64; MAX_THREADS] = [const { AtomicU64::new(0) }; MAX_THREADS];
/// Each thread's lateness summed since it started, ns (see [`HeldUp`]).
static TOTALS: [AtomicU64; MAX_THREADS] = [const { AtomicU64::new(0) }; MAX_THREADS];
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STARTED: Cell<bool> = const { Cell::new(false) };
}

/// Starts this thread's ticker if it has none yet. Call from a task on a proxy runtime.
pub fn ensure_ticker(admission: &Arc<Admission>) {
    if STARTED.with(|s| s.replace(true)) {
        return;
    }
    let index = CLAIMED.fetch_add(1, Ordering::Relaxed);
    if index >= MAX_THREADS {
        return;
    }
    tokio::spawn(ticker(index, admission.clone()));
}

async fn ticker(index: usize, admission: Arc<Admission>) {
    let mut window = LatenessWindow::new(Instant::now());
    loop {
        let due = Instant::now() + TICK;
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        let lateness = now.saturating_duration_since(due);
        window.record(now, lateness);
        // The granularity is taken off every tick, not only ignored under it: a tick every
        // 5 ms that fires 1.2 ms late would otherwise count a fifth of the time as held up
        // on an idle machine (seen: 0.17 in the on-call test's quiet phase).
        let held = lateness.saturating_sub(NOISE);
        if !held.is_zero() {
            TOTALS[index].fetch_add(held.as_nanos() as u64, Ordering::Relaxed);
        }
        SLOTS[index].store(window.worst(now).as_nanos() as u64, Ordering::Relaxed);
        let threads = CLAIMED.load(Ordering::Relaxed).min(MAX_THREADS);
        let worst = SLOTS[..threads]
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        admission.set_own_delay(Duration::from_nanos(worst));
    }
}

/// How long each proxy thread has been kept from running since it started: the sum of its
/// ticker's lateness (`sloguard_loop_held_up_seconds_total`). Its rate is the share of the
/// time the thread could not run, which a single reading of the lateness gauge cannot give:
/// a sidecar throttled 80 ms of every 100 ms reads on time in one scrape of five.
pub fn held_up_totals() -> Vec<Duration> {
    let threads = CLAIMED.load(Ordering::Relaxed).min(MAX_THREADS);
    TOTALS[..threads]
        .iter()
        .map(|t| Duration::from_nanos(t.load(Ordering::Relaxed)))
        .collect()
}

/// How long the most held-up proxy thread was kept from running since the last reading. The
/// health ticker reads it every tick and excuses workers that long: an answer that arrived
/// while a thread was descheduled sat unread, so it is not the worker's silence.
#[derive(Debug, Default)]
pub struct HeldUp {
    seen: Vec<u64>,
}

impl HeldUp {
    pub fn since_last(&mut self) -> Duration {
        let threads = CLAIMED.load(Ordering::Relaxed).min(MAX_THREADS);
        self.seen.resize(threads, 0);
        let mut worst = 0;
        for (seen, total) in self.seen.iter_mut().zip(&TOTALS) {
            let total = total.load(Ordering::Relaxed);
            worst = worst.max(total.saturating_sub(*seen));
            *seen = total;
        }
        Duration::from_nanos(worst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_deschedule_is_seen_for_50_to_100_ms_then_forgotten() {
        let t0 = Instant::now();
        let mut w = LatenessWindow::new(t0);
        w.record(t0 + 5 * MS, Duration::from_micros(300));
        assert_eq!(w.worst(t0 + 5 * MS), Duration::ZERO, "timer noise");
        // Descheduled for 40 ms: the tick due at 10 ms fires at 50 ms.
        w.record(t0 + 50 * MS, 40 * MS);
        assert_eq!(w.worst(t0 + 60 * MS), 40 * MS);
        assert_eq!(w.worst(t0 + 99 * MS), 40 * MS);
        w.record(t0 + 105 * MS, Duration::ZERO);
        assert_eq!(w.worst(t0 + 140 * MS), 40 * MS);
        // Two slots later, gone.
        assert_eq!(w.worst(t0 + 150 * MS), Duration::ZERO);
    }

    #[test]
    fn an_idle_gap_clears_the_window() {
        let t0 = Instant::now();
        let mut w = LatenessWindow::new(t0);
        w.record(t0 + 10 * MS, 20 * MS);
        assert_eq!(w.worst(t0 + 10 * MS), 20 * MS);
        assert_eq!(w.worst(t0 + 2000 * MS), Duration::ZERO);
    }
}
