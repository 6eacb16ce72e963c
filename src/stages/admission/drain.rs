//! How fast the admission queue drains when every worker is full: the rate that predicts a
//! newcomer's wait. Pure: the monitor's tick passes counters and time in.
//!
//! The completion rate is only the queue's drain rate while requests wait the whole time
//! (the fleet is saturated): at half load it is half the capacity, and after an idle minute
//! it is zero. Measured at those times it would predict long waits that never happen and
//! shed what the workers could serve. So:
//!
//! - a tick with requests waiting at its start and at its end is a measurement (the fleet
//!   was full): the estimate moves 30% of the way to it;
//! - any other tick only shows a lower bound: it may raise the estimate, never lower it;
//! - with no measurement yet (start, reload of an idle proxy) the rate is unknown, and an
//!   unknown rate predicts no wait: admit as a plain balancer would, the deadline still
//!   bounds the wait.
//!
//! Idle time changes nothing, so a burst after a quiet period meets the estimate the last
//! busy period left.
//!
//! The same estimate is kept per priority lane, fed by the requests served from that lane.
//! A lower class needs its own: higher classes that arrive after a request are served
//! before it, so its class drains at what they leave of the fleet (at four times the
//! capacity with critical traffic at 80% of it, normal requests drain at a fifth of the
//! queue's rate), which the queue's rate cannot show.

use std::time::{Duration, Instant};

/// Weight of a new measurement.
const ALPHA: f64 = 0.3;

#[derive(Debug, Clone)]
pub struct DrainEstimate {
    rate: Option<f64>,
    last_at: Instant,
    last_completions: u64,
    /// Requests were waiting at the last tick.
    waiting_at_last: bool,
}

impl DrainEstimate {
    pub fn new(now: Instant) -> DrainEstimate {
        DrainEstimate {
            rate: None,
            last_at: now,
            last_completions: 0,
            waiting_at_last: false,
        }
    }

    /// Requests per second the queue drains at when the fleet is full, once measured.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// One tick: the total so far of `completions` (slots released), and whether requests
    /// are waiting now.
    pub fn on_tick(&mut self, now: Instant, completions: u64, waiting: bool) {
        let dt = now.saturating_duration_since(self.last_at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let sample = completions.saturating_sub(self.last_completions) as f64 / dt;
        let saturated = self.waiting_at_last && waiting;
        self.rate = match (self.rate, saturated) {
            (None, true) => Some(sample),
            (Some(r), true) => Some(r + ALPHA * (sample - r)),
            (Some(r), false) if sample > r => Some(r + ALPHA * (sample - r)),
            (r, false) => r,
        };
        self.last_at = now;
        self.last_completions = completions;
        self.waiting_at_last = waiting;
    }
}

/// How long `n` waiters take to leave at `rate` per second. Zero with nobody waiting or
/// while the rate is unknown: no early verdict, the deadline still bounds the wait.
pub fn wait_at(n: usize, rate: Option<f64>) -> Duration {
    match rate {
        Some(r) if n > 0 && r > 0.0 => Duration::from_secs_f64(n as f64 / r),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(50);

    /// A queue seen by the ticker.
    struct Sim {
        d: DrainEstimate,
        t: Instant,
        done: u64,
    }

    impl Sim {
        fn new() -> Sim {
            let t = Instant::now();
            Sim {
                d: DrainEstimate::new(t),
                t,
                done: 0,
            }
        }

        /// `n` ticks with `per_tick` completions, requests waiting at each tick or not.
        fn run(&mut self, n: u32, per_tick: u64, waiting: bool) {
            for _ in 0..n {
                self.t += TICK;
                self.done += per_tick;
                self.d.on_tick(self.t, self.done, waiting);
            }
        }
    }

    #[test]
    fn half_load_and_idle_never_lower_the_estimate() {
        let mut s = Sim::new();
        // Half load, nobody waits: nothing measured, no wait predicted.
        s.run(20, 50, false);
        assert_eq!(s.d.rate(), None);
        // Saturated: 100 per 50 ms = 2000/s.
        s.run(30, 100, true);
        let busy = s.d.rate().unwrap();
        assert!((busy - 2000.0).abs() < 20.0, "{busy}");
        // An idle minute, then half load again: the estimate is what the busy time left.
        s.run(1200, 0, false);
        s.run(20, 50, false);
        assert_eq!(s.d.rate(), Some(busy));
    }

    #[test]
    fn a_queue_that_just_formed_or_just_emptied_is_no_measurement() {
        let mut s = Sim::new();
        // Waiting at one end of each tick only: a burst passing, not a full fleet.
        for _ in 0..10 {
            s.run(1, 10, true);
            s.run(1, 10, false);
        }
        assert_eq!(s.d.rate(), None);
    }

    #[test]
    fn a_faster_unsaturated_rate_raises_the_estimate() {
        let mut s = Sim::new();
        s.run(10, 50, true); // 1000/s
                             // Later the workers complete 3000/s without a queue: capacity is at least that.
        s.run(30, 150, false);
        assert!(s.d.rate().unwrap() > 2900.0, "{:?}", s.d.rate());
    }

    #[test]
    fn saturated_measurements_follow_a_drop_in_capacity() {
        let mut s = Sim::new();
        s.run(20, 100, true); // 2000/s
        s.run(10, 25, true); // 500/s
        assert!(s.d.rate().unwrap() < 550.0, "{:?}", s.d.rate());
    }

    #[test]
    fn a_wait_is_the_backlog_at_the_rate_or_nothing_while_unknown() {
        assert_eq!(wait_at(20, Some(1000.0)), Duration::from_millis(20));
        assert_eq!(wait_at(20, None), Duration::ZERO);
        assert_eq!(wait_at(0, Some(1000.0)), Duration::ZERO);
        assert_eq!(wait_at(5, Some(0.0)), Duration::ZERO);
    }
}
