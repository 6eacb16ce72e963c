//! The access log: one line per request (`[log] access = "off" | "sampled" | "all"`), and
//! always one for a request sloguard refused, shed or limited, up to a rate cap, so an
//! on-call engineer can answer "why was this request shed?" from one line without a flood
//! during an incident. Lines go through `tracing` (target `sloguard::access`), so
//! `--log-format json` makes them JSON lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stages::ReasonKind;

/// `[log]`, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLogConfig {
    pub mode: AccessMode,
    /// Share of ordinary requests logged in `sampled` mode, 0..1. Default 0.01.
    pub sample: f64,
    /// Most refusal lines per second. Default 100.
    pub refusals_per_second: u64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            mode: AccessMode::Sampled,
            sample: 0.01,
            refusals_per_second: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    Off,
    Sampled,
    All,
}

/// Decides which requests get a line. Lock-free.
#[derive(Debug)]
pub struct AccessLog {
    epoch: Instant,
    /// The current one-second window and the refusal lines written in it.
    window: AtomicU64,
    in_window: AtomicU64,
    /// Refusal lines dropped by the cap since the last line that said so.
    dropped: AtomicU64,
}

impl Default for AccessLog {
    // The windows count from the sampler's creation; every decision takes `now`.
    #[allow(clippy::disallowed_methods)]
    fn default() -> Self {
        AccessLog {
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl AccessLog {
    /// Whether to write a line; `refused` for sloguard's own answers. `roll` is a uniform
    /// random number in 0..1 (passed in so the decision is testable).
    pub fn should_log(
        &self,
        cfg: &AccessLogConfig,
        refused: bool,
        roll: f64,
        now: Instant,
    ) -> bool {
        if refused {
            return self.take_refusal_slot(cfg, now);
        }
        match cfg.mode {
            AccessMode::Off => false,
            AccessMode::All => true,
            AccessMode::Sampled => roll < cfg.sample,
        }
    }

    fn take_refusal_slot(&self, cfg: &AccessLogConfig, now: Instant) -> bool {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        if self.window.swap(second, Ordering::Relaxed) != second {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < cfg.refusals_per_second {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Refusal lines the cap dropped since last asked (reported on the next line written).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// What became of a request, for the `decision` field.
pub fn decision(refusal: Option<ReasonKind>, queued: Duration) -> &'static str {
    match refusal {
        Some(kind) => kind.decision(),
        None if queued > Duration::from_micros(100) => "queued",
        None => "admitted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::Reason;

    #[test]
    fn modes_and_sampling() {
        let log = AccessLog::default();
        let now = Instant::now();
        let mut cfg = AccessLogConfig::default();
        assert!(log.should_log(&cfg, false, 0.005, now));
        assert!(!log.should_log(&cfg, false, 0.5, now));
        cfg.mode = AccessMode::All;
        assert!(log.should_log(&cfg, false, 0.99, now));
        cfg.mode = AccessMode::Off;
        assert!(!log.should_log(&cfg, false, 0.0, now));
    }

    #[test]
    fn refusals_are_always_logged_up_to_the_cap_per_second() {
        let log = AccessLog::default();
        let cfg = AccessLogConfig {
            mode: AccessMode::Off,
            refusals_per_second: 3,
            ..AccessLogConfig::default()
        };
        let t0 = Instant::now();
        let logged = (0..10)
            .filter(|_| log.should_log(&cfg, true, 0.9, t0))
            .count();
        assert_eq!(logged, 3);
        assert_eq!(log.take_dropped(), 7);
        assert!(
            log.should_log(&cfg, true, 0.9, t0 + Duration::from_millis(1100)),
            "a new second"
        );
    }

    #[test]
    fn decisions_name_what_happened() {
        let kind = |r: Reason, status| Some(r.kind(status));
        assert_eq!(
            decision(kind(Reason::QueueTimeout, 503), Duration::ZERO),
            "shed"
        );
        assert_eq!(
            decision(kind(Reason::RateLimited, 429), Duration::ZERO),
            "limited"
        );
        assert_eq!(
            decision(kind(Reason::BodyTooLarge, 413), Duration::ZERO),
            "rejected"
        );
        assert_eq!(
            decision(kind(Reason::UpstreamTimeout, 504), Duration::ZERO),
            "failed"
        );
        assert_eq!(decision(None, Duration::from_millis(3)), "queued");
        assert_eq!(decision(None, Duration::ZERO), "admitted");
    }
}
