//! The health ticker: every 10 ms it runs every worker's health state machine (so a stall
//! is seen while it happens), refills the retry budget, and wakes queued requests when slots
//! free up by other means (a readmission, a raised limit). It also starts the background
//! loops the other modules own: the probes (`workers::probe_loop`), the drain-rate ticks
//! (`Admission::tick_drain_rate`), the rate limiter's upkeep (`RateLimiter::keep_up`), the
//! exporter's upkeep (`Telemetry::keep_up`) and the policy watch (`reload::watch`).

// The background loops: the edge that reads the clock for every decider it ticks.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::stages::ratelimit::RateLimiter;
use crate::state::State;
use crate::workers::health::{may_eject, outliers};
use crate::workers::{probe_loop, GuardMode, HealthState, Transition};

/// How often health is evaluated: well under the default `stall_after` of 100 ms.
pub const TICK: Duration = Duration::from_millis(10);

/// A hold-up shorter than this is timer granularity.
const HELD_UP_NOISE: Duration = Duration::from_millis(1);

pub struct Monitor {
    state: Arc<State>,
    /// A shared (fleet-wide) signal was logged and has not cleared since.
    shared_noted: AtomicBool,
}

impl Monitor {
    pub fn new(state: Arc<State>) -> Monitor {
        Monitor {
            state,
            shared_noted: AtomicBool::new(false),
        }
    }

    /// One tick: evaluate every worker, bounded by `max_ejected_percent`. `held_up` is how
    /// long sloguard itself was kept from running since the last tick (this ticker late, or a
    /// proxy thread): every worker is excused that much silence first, so a starved or
    /// throttled sidecar does not eject the workers whose answers it could not read.
    pub fn tick(&self, now: Instant, held_up: Duration) {
        let policy = self.state.policy();
        let workers = self.state.workers();
        if held_up >= HELD_UP_NOISE {
            for w in workers.iter() {
                w.excuse_own_delay(held_up, now);
            }
        }
        let cfg = &policy.upstream;
        let mut ejected = workers.ejected();
        // A stall, a lag or a slow probe that the whole fleet shows is the host's or the
        // load's, not a worker's: only a worker that stands out is ejected for one.
        let serving: Vec<_> = workers
            .iter()
            .filter(|w| w.state() != HealthState::Ejected)
            .collect();
        let severities: Vec<f64> = serving
            .iter()
            .map(|w| w.severity(&cfg.health, now))
            .collect();
        let stands_out = outliers(&severities);
        let shared = severities
            .iter()
            .zip(&stands_out)
            .filter(|(s, out)| **s >= 1.0 && !**out)
            .count();
        if shared >= 2 && !self.shared_noted.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                workers = shared,
                serving = serving.len(),
                "several workers look stalled or late together: the host or the load, not a worker; not ejecting for it"
            );
        } else if shared < 2 {
            self.shared_noted.store(false, Ordering::Relaxed);
        }
        for w in workers.iter() {
            // Shadow decides as enforce does (what it would eject shows on the status page);
            // off still tracks health for operators but never ejects.
            let may = policy.guard != GuardMode::Off
                && may_eject(ejected, workers.len(), cfg.max_ejected_percent);
            let out = serving
                .iter()
                .position(|s| Arc::ptr_eq(s, w))
                .is_none_or(|i| stands_out[i]);
            match w.evaluate_in_fleet(&cfg.health, may, out, now) {
                Some(Transition::Ejected { reason, for_ }) => {
                    ejected += 1;
                    tracing::warn!(worker = w.id, addr = %w.addr, %reason, ejected_for_ms = for_.as_millis() as u64, mode = policy.guard.as_str(), "worker ejected");
                }
                Some(Transition::Readmitted) => {
                    ejected = ejected.saturating_sub(1);
                    tracing::info!(worker = w.id, addr = %w.addr, "worker readmitted on probation (slow start)");
                }
                Some(Transition::Recovered) => {
                    tracing::info!(worker = w.id, "worker healthy again")
                }
                None => {}
            }
        }
        // Slots may have freed by other means than a release (a readmission, a raised
        // limit, work draining): start the wake chain if a waiter fits somewhere.
        self.state
            .admission
            .wake_one_if_idle(|r| workers.has_room(r));
    }
}

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // These run until the server's runtimes stop (after the drain, see `shutdown`).
        let state = self.state.clone();
        tokio::spawn(probe_loop::run(move || {
            (state.workers(), state.policy().upstream.clone())
        }));
        let admission = self.state.admission.clone();
        tokio::spawn(async move { admission.tick_drain_rate().await });
        let state = self.state.clone();
        tokio::spawn(RateLimiter::keep_up(move || state.ratelimiter()));
        let state = self.state.clone();
        tokio::spawn(async move { state.telemetry.keep_up().await });
        tokio::spawn(crate::reload::watch(
            self.state.clone(),
            self.state.policy().source.clone(),
        ));
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut proxy_held_up = crate::proxy::HeldUp::default();
        let mut last_tick = Instant::now();
        // Pingora's shutdown watch fires once the proxy has drained: the guard keeps
        // ticking (ejections, wake-ups, limits) for the requests still in flight until then.
        while !*shutdown.borrow() {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = Instant::now();
                    let late = now.saturating_duration_since(last_tick).saturating_sub(TICK);
                    last_tick = now;
                    self.tick(now, late.max(proxy_held_up.since_last()));
                    self.state.retry_budget.refill(&self.state.policy().retry, TICK);
                }
                _ = shutdown.changed() => {}
            }
        }
    }
}
