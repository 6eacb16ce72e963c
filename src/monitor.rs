//! The guard's background work: a ticker that runs every worker's health state machine
//! (so a stall is seen while it happens), estimates the drain rate for admission, and wakes
//! queued requests when slots free up by other means (a readmission, a raised limit); and
//! the active probes.

// The background loops: the edge that reads the clock for every decider it ticks.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::admin::metrics::ProcessStats;
use crate::resources;
use crate::state::State;
use crate::workers::health::{may_eject, outliers};
use crate::workers::probe::{probe, KeptConn, ProbeOutcome};
use crate::workers::{GuardMode, HealthState, Transition};

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

    async fn probe_loop(state: Arc<State>) {
        let mut slots: Vec<Arc<ProbeSlot>> = Vec::new();
        loop {
            let policy = state.policy();
            let Some(cfg) = policy.upstream.probe.clone() else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let workers = state.workers();
            slots.resize_with(workers.len(), Default::default);
            for (i, w) in workers.iter().enumerate() {
                // One probe per worker at a time: a stalled worker does not pile them up.
                if slots[i].busy.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let (w, slot, cfg, header, health) = (
                    w.clone(),
                    slots[i].clone(),
                    cfg.clone(),
                    policy.upstream.lag_header.clone(),
                    policy.upstream.health.clone(),
                );
                tokio::spawn(async move {
                    let held_at_send = w.held_up();
                    // The busy flag makes this task the slot's only user until it clears it.
                    let mut kept = slot.take_conn();
                    let outcome = probe(&w.addr, &cfg, &header, &mut kept).await;
                    slot.put_conn(kept);
                    match outcome {
                        ProbeOutcome::Answered(result) => {
                            w.on_probe_sent_at(&health, result, held_at_send, Instant::now())
                        }
                        // Our shortage, not the worker's: counted, never held against it.
                        ProbeOutcome::Local(shortage) => resources::record(shortage),
                    }
                    slot.busy.store(false, Ordering::Release);
                });
            }
            tokio::time::sleep(cfg.interval).await;
        }
    }

    /// Closes the Redis breaker when Redis is back (checked every 100 ms while open) and
    /// forgets replenished local keys every second.
    async fn ratelimit_loop(state: Arc<State>) {
        let mut n = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            state.ratelimiter().health_check().await;
            n += 1;
            if n.is_multiple_of(10) {
                state.ratelimiter().sweep();
            }
        }
    }

    /// Refreshes the gauges (worker state, in flight, limits, lag...) four times a second,
    /// and runs the exporter's upkeep so histogram memory stays flat without scrapes.
    async fn metrics_loop(state: Arc<State>) {
        let mut n = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let metrics = state.metrics.load();
            for (w, m) in state.workers().iter().zip(&metrics.worker) {
                let h = w.health();
                for (gauge, s) in m.state.iter().zip([
                    HealthState::Healthy,
                    HealthState::Suspect,
                    HealthState::Ejected,
                ]) {
                    gauge.set(if w.state() == s { 1.0 } else { 0.0 });
                }
                m.in_flight.set(w.in_flight() as f64);
                m.limit.set(f64::from(w.limit()));
                m.latency.set(h.latency().as_secs_f64());
                if let Some(lag) = h.last_lag() {
                    m.lag.set(lag.as_secs_f64());
                }
                if let Some(Ok(p)) = h.last_probe() {
                    m.probe.set(p.as_secs_f64());
                }
                m.ejections.absolute(h.ejections);
            }
            metrics.queue_depth.set(state.admission.waiting() as f64);
            metrics.set_process(&ProcessStats {
                local_failures: resources::counts(),
                accept_failures: crate::listener::failure_counts(),
                connections_open: state.connections.open(),
                connections_max: state.connection_cap(),
                log_lines_suppressed: crate::logging::suppressed_total(),
                loop_lateness: state.admission.own_delay().as_secs_f64(),
            });
            metrics.retries.absolute(state.retry_budget.granted());
            metrics.hedges_launched.absolute(state.hedges.launched());
            metrics.hedges_won.absolute(state.hedges.won());
            let limiter = state.ratelimiter();
            let stats = &limiter.stats;
            metrics.redis_errors.absolute(
                stats
                    .redis_errors
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            metrics
                .fallback_active
                .set(if state.ratelimiter().mode() == "fallback" {
                    1.0
                } else {
                    0.0
                });
            n += 1;
            if n.is_multiple_of(20) {
                metrics.upkeep();
            }
        }
    }

    /// Feeds the admission queue's drain-rate estimate every 50 ms.
    async fn drain_rate_loop(state: Arc<State>) {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            state.admission.on_tick(Instant::now());
        }
    }
}

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // These run until the server's runtimes stop (after the drain, see `shutdown`).
        tokio::spawn(Monitor::probe_loop(self.state.clone()));
        tokio::spawn(Monitor::drain_rate_loop(self.state.clone()));
        tokio::spawn(Monitor::ratelimit_loop(self.state.clone()));
        tokio::spawn(Monitor::metrics_loop(self.state.clone()));
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

/// One worker's place in the probe loop: whether a probe of it is in flight, and the
/// connection its last probe left open for the next one.
#[derive(Debug, Default)]
struct ProbeSlot {
    busy: AtomicBool,
    conn: std::sync::Mutex<Option<KeptConn>>,
}

impl ProbeSlot {
    fn take_conn(&self) -> Option<KeptConn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put_conn(&self, conn: Option<KeptConn>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }
}
