//! Adaptive concurrency limit for one worker: how many requests may be in flight on it.
//! Pure: samples and time are passed in; unit tests drive it with synthetic latency series.
//!
//! Gradient (default), after Netflix's Gradient2 and Envoy's adaptive concurrency:
//! every window, `gradient = clamp(tolerance * baseline / sample_rtt, 0.5, 1)` and
//! `limit = smooth(limit * gradient + headroom)`, where `headroom = sqrt(limit) * (2g - 1)`
//! only when the worker was actually using at least half its limit (an idle worker's limit
//! does not creep), fading to nothing at the strongest back-off.
//!
//! What we do differently, from their users' complaints:
//! - Envoy re-measures minRTT by pinning the limit to a minimum for a while (envoy #8337,
//!   #11579: traffic shed during the measurement). We never pin: the baseline is the
//!   no-queue latency, learnt continuously. The worker reports its event-loop lag, which is
//!   how long ready work waited for the loop, so `rtt - lag` is the latency without queueing,
//!   measurable under any load. Without a lag report, only requests sent to an idle worker
//!   (nothing else in flight) count as no-queue samples.
//! - Gradient2's long-term RTT average absorbs queueing under moderate overload, so its limit
//!   creeps up, and recovers slowly (concurrency-limits #134, #176). Our baseline never sees
//!   queueing samples (the lag is subtracted), so it cannot drift up with the queue; it follows
//!   a real change in service time within about a second (EWMA, 1 s time constant).
//!
//! AIMD is the simpler option: +1 per window when busy and not slow, x`backoff` when slow.

use std::time::{Duration, Instant};

/// `[concurrency]` limiter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterConfig {
    pub algorithm: Algorithm,
    /// Floor of the limit. Default 2: a worker always gets some work.
    pub min_limit: u32,
    /// Ceiling of the limit. Default 64.
    pub max_limit: u32,
    /// Starting limit. Default 8.
    pub initial_limit: u32,
    /// Latency over the no-queue baseline tolerated before backing off. Default 2.0.
    pub tolerance: f64,
    /// Weight of a new limit against the old one per window, 0..1. Default 0.2.
    pub smoothing: f64,
    /// Length of a sample window. Default 100 ms.
    pub window: Duration,
    /// Samples needed before a window may close. Default 8.
    pub min_samples: u32,
    /// Time constant of the baseline's EWMA. Default 1 s.
    pub baseline_decay: Duration,
    /// Reported lag up to this is timer noise, not queueing (workers report whole ms and a
    /// healthy loop shows 1-2 ms). Default 5 ms.
    pub lag_noise: Duration,
    /// Share of a request's latency target it may spend on its worker, queueing there
    /// included; the rest is the admission queue's. A worker takes requests beyond its
    /// learnt limit while its predicted latency stays within this share (see
    /// `Worker::capacity`). Default 1/3.
    pub worker_budget_share: f64,
}

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    Gradient,
    /// Multiplicative decrease factor when slow, e.g. 0.9.
    Aimd {
        backoff: f64,
    },
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            algorithm: Algorithm::Gradient,
            min_limit: 2,
            max_limit: 64,
            initial_limit: 8,
            tolerance: 2.0,
            smoothing: 0.2,
            window: Duration::from_millis(100),
            min_samples: 8,
            baseline_decay: Duration::from_secs(1),
            lag_noise: Duration::from_millis(5),
            worker_budget_share: 1.0 / 3.0,
        }
    }
}

/// One completed request as the limiter sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Time from dispatch to response headers.
    pub rtt: Duration,
    /// Requests in flight on the worker when this one was sent (not counting it).
    pub in_flight_before: usize,
    /// The worker's reported event-loop lag, if it reports one.
    pub lag: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    limit: f64,
    /// No-queue latency estimate, seconds; `None` until the first no-queue sample.
    baseline: Option<f64>,
    baseline_stamp: Instant,
    window_start: Instant,
    window_rtt_sum: f64,
    window_samples: u32,
    window_max_in_flight: usize,
}

impl ConcurrencyLimiter {
    pub fn new(cfg: &LimiterConfig, now: Instant) -> ConcurrencyLimiter {
        ConcurrencyLimiter {
            limit: f64::from(cfg.initial_limit.clamp(cfg.min_limit, cfg.max_limit)),
            baseline: None,
            baseline_stamp: now,
            window_start: now,
            window_rtt_sum: 0.0,
            window_samples: 0,
            window_max_in_flight: 0,
        }
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> u32 {
        self.limit.round() as u32
    }

    /// The no-queue latency baseline, once known.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(Duration::from_secs_f64)
    }

    /// Feeds one completed request; returns the new limit when a window closed.
    pub fn on_sample(&mut self, cfg: &LimiterConfig, s: Sample, now: Instant) -> Option<u32> {
        let rtt = s.rtt.as_secs_f64();
        let no_queue = match s.lag {
            Some(lag) => {
                let queueing = lag.saturating_sub(cfg.lag_noise).as_secs_f64();
                Some((rtt - queueing).max(rtt * 0.05))
            }
            None if s.in_flight_before == 0 => Some(rtt),
            None => None,
        };
        if let Some(nq) = no_queue {
            self.update_baseline(cfg, nq, now);
        }
        self.window_rtt_sum += rtt;
        self.window_samples += 1;
        self.window_max_in_flight = self.window_max_in_flight.max(s.in_flight_before + 1);
        if now.saturating_duration_since(self.window_start) >= cfg.window
            && self.window_samples >= cfg.min_samples
        {
            let mean = self.window_rtt_sum / f64::from(self.window_samples);
            let busy = self.window_max_in_flight as f64 >= self.limit / 2.0;
            self.update_limit(cfg, mean, busy);
            self.window_start = now;
            self.window_rtt_sum = 0.0;
            self.window_samples = 0;
            self.window_max_in_flight = 0;
            return Some(self.limit());
        }
        None
    }

    fn update_baseline(&mut self, cfg: &LimiterConfig, sample: f64, now: Instant) {
        self.baseline = Some(match self.baseline {
            None => sample,
            Some(b) => {
                let dt = now
                    .saturating_duration_since(self.baseline_stamp)
                    .as_secs_f64();
                // At least a small step per sample, so a burst of samples in one instant counts.
                let alpha =
                    (1.0 - (-dt / cfg.baseline_decay.as_secs_f64().max(1e-3)).exp()).max(0.01);
                b + alpha * (sample - b)
            }
        });
        self.baseline_stamp = now;
    }

    fn update_limit(&mut self, cfg: &LimiterConfig, sample_rtt: f64, busy: bool) {
        let Some(baseline) = self.baseline else {
            return;
        };
        let slow = sample_rtt > cfg.tolerance * baseline;
        let target = match cfg.algorithm {
            Algorithm::Gradient => {
                let gradient = (cfg.tolerance * baseline / sample_rtt).clamp(0.5, 1.0);
                // Headroom lets a busy worker probe for more; it fades as queueing grows
                // (none at the 0.5 floor), so a badly queueing worker really backs off.
                let headroom = if busy {
                    self.limit.sqrt() * (2.0 * gradient - 1.0)
                } else {
                    0.0
                };
                self.limit * gradient + headroom
            }
            Algorithm::Aimd { backoff } => {
                if slow {
                    self.limit * backoff
                } else if busy {
                    self.limit + 1.0
                } else {
                    self.limit
                }
            }
        };
        let smoothed = match cfg.algorithm {
            Algorithm::Gradient => self.limit * (1.0 - cfg.smoothing) + target * cfg.smoothing,
            Algorithm::Aimd { .. } => target,
        };
        self.limit = smoothed.clamp(f64::from(cfg.min_limit), f64::from(cfg.max_limit));
    }
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
