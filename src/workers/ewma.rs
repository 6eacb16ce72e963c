//! Peak-EWMA latency estimate (as in Finagle and linkerd2-proxy): it jumps to a slow sample
//! at once, so a worker that just turned slow looks slow on the very next choice, and it
//! decays back over a time window rather than a sample count, so a quiet worker's estimate
//! still ages. Pure: time is passed in.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// Time constant of the decay: after `decay`, an old peak weighs e^-1 (~37%).
    decay: Duration,
    /// Current estimate, nanoseconds.
    estimate_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// Starts at `initial` (a guess, e.g. 1 ms) so a new worker is neither favoured nor shunned.
    pub fn new(decay: Duration, initial: Duration, now: Instant) -> PeakEwma {
        PeakEwma {
            decay,
            estimate_ns: initial.as_nanos() as f64,
            stamp: now,
        }
    }

    /// Feeds one observed latency.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        if rtt_ns > self.estimate_ns {
            // Peak: take the bad news at once.
            self.estimate_ns = rtt_ns;
        } else {
            let w = self.weight(now);
            self.estimate_ns = self.estimate_ns * w + rtt_ns * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }

    /// The estimate now.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.estimate_ns as u64)
    }

    /// How much the old estimate still counts after the time since the last update.
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        let tau = self.decay.as_secs_f64().max(1e-6);
        (-elapsed / tau).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slow_sample_is_taken_at_once() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_secs(1), MS, t0);
        e.observe(250 * MS, t0 + MS);
        assert_eq!(e.estimate(), 250 * MS);
    }

    #[test]
    fn fast_samples_pull_a_peak_down_over_the_decay_window() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(500), MS, t0);
        e.observe(250 * MS, t0);
        // One fast sample right after barely moves it...
        e.observe(MS, t0 + MS);
        assert!(e.estimate() > 240 * MS, "{:?}", e.estimate());
        // ...but fast samples over two decay windows bring it near the fast level.
        let mut t = t0;
        for _ in 0..100 {
            t += 10 * MS;
            e.observe(MS, t);
        }
        assert!(e.estimate() < 40 * MS, "{:?}", e.estimate());
    }

    #[test]
    fn steady_samples_converge_to_their_value() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_secs(1), 100 * MS, t0);
        let mut t = t0;
        for _ in 0..1000 {
            t += 10 * MS;
            e.observe(5 * MS, t);
        }
        let est = e.estimate().as_secs_f64() * 1e3;
        assert!((est - 5.0).abs() < 0.1, "{est}");
    }
}
