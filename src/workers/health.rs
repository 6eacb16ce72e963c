//! One worker's health: `healthy`, `suspect` (on probation after an ejection, ramping up)
//! or `ejected` (no new requests). Pure: every input carries its `now`, and
//! [`WorkerHealth::evaluate`] is called by a ticker, so a stall is seen while it happens,
//! not when the slow request finally ends.
//!
//! Signals, each cheap and each able to eject on its own:
//! - passive stall: requests in flight and nothing completed (no response, no probe) for
//!   `stall_after`. An async worker awaiting a slow database still answers probes, so it is
//!   not taken for stalled; a blocked event loop answers nothing. Time sloguard itself was
//!   held up is excused ([`WorkerHealth::excuse_own_delay`]): an answer meanwhile sat unread.
//! - reported loop lag (`x-loop-lag-ms` on responses and probes) over `lag_eject`;
//! - a probe slower than `lag_eject` or failing;
//! - consecutive connect failures or 5xx answers (Envoy's consecutive-5xx outlier rule).
//!
//! Why one file of ~550 lines: this is one state machine. Every signal above reads and
//! writes the same fields (the stall clock, the pending ejection, probation, the excused
//! delay), and `evaluate` is where they meet; split by signal, each part would change fields
//! whose meaning lives in another. Its tests are in `health_tests.rs` and `health_props.rs`.

use std::time::{Duration, Instant};

use super::ewma::PeakEwma;
use super::signals::{StallDetector, Streak};

/// Detection and ejection settings (`[upstream.health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// In flight with no completion for this long = stalled. Default 100 ms.
    pub stall_after: Duration,
    /// Reported loop lag or probe latency at or over this ejects. Default 75 ms.
    pub lag_eject: Duration,
    /// Consecutive connect failures or 5xx that eject. Default 5.
    pub consecutive_failures: u32,
    /// First ejection lasts this; each repeat doubles it. Default 1 s.
    pub base_ejection: Duration,
    /// Cap on the ejection time. Default 30 s.
    pub max_ejection: Duration,
    /// After a readmission, the worker's share ramps from 10% to 100% over this. Default 3 s.
    pub slow_start: Duration,
    /// Each stretch this long without an ejection forgives one past ejection. Default 30 s.
    pub forgive_after: Duration,
    /// Peak-EWMA decay window for the latency estimate. Default 1 s.
    pub latency_decay: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            stall_after: Duration::from_millis(100),
            lag_eject: Duration::from_millis(75),
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            slow_start: Duration::from_secs(3),
            forgive_after: Duration::from_secs(30),
            latency_decay: Duration::from_secs(1),
        }
    }
}

/// The three states operators see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    Healthy,
    Suspect,
    Ejected,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Suspect => "suspect",
            HealthState::Ejected => "ejected",
        }
    }
}

/// Why a worker was ejected, for the status page and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectReason {
    /// In flight, nothing completed for this long.
    Stalled(Duration),
    /// The worker reported this loop lag.
    LoopLag(Duration),
    /// A probe took this long.
    SlowProbe(Duration),
    ProbeFailed,
    ConnectFailures(u32),
    ServerErrors(u32),
}

impl EjectReason {
    /// A signal every worker shows at once when the host, not a worker, is the trouble: a
    /// CPU-starved pod makes every loop late, every probe slow and every worker look
    /// stalled. Errors and refused connections are the worker's own.
    pub fn host_sensitive(self) -> bool {
        matches!(
            self,
            EjectReason::Stalled(_)
                | EjectReason::LoopLag(_)
                | EjectReason::SlowProbe(_)
                | EjectReason::ProbeFailed
        )
    }
}

impl std::fmt::Display for EjectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EjectReason::Stalled(d) => write!(
                f,
                "stalled: requests in flight, nothing completed for {} ms",
                d.as_millis()
            ),
            EjectReason::LoopLag(d) => write!(f, "event-loop lag {} ms reported", d.as_millis()),
            EjectReason::SlowProbe(d) => write!(f, "probe took {} ms", d.as_millis()),
            EjectReason::ProbeFailed => write!(f, "probe failed"),
            EjectReason::ConnectFailures(n) => write!(f, "{n} consecutive connect failures"),
            EjectReason::ServerErrors(n) => write!(f, "{n} consecutive 5xx answers"),
        }
    }
}

/// What an input or an evaluation changed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Ejected {
        reason: EjectReason,
        for_: Duration,
    },
    /// Back on probation (half-open), with slow start.
    Readmitted,
    /// Probation ended cleanly.
    Recovered,
}

/// One worker's health record. Guarded by a mutex in [`super::Worker`].
#[derive(Debug, Clone)]
pub struct WorkerHealth {
    state: HealthState,
    last_reason: Option<EjectReason>,
    ejected_until: Instant,
    /// Ejections not yet forgiven; sets the next ejection's length.
    strikes: u32,
    last_strike_at: Instant,
    /// Total ejections, for metrics.
    pub ejections: u64,
    /// When probation (slow start) began.
    readmitted_at: Option<Instant>,
    stall: StallDetector,
    connect_failures: Streak,
    server_errors: Streak,
    latency: PeakEwma,
    last_lag: Option<Duration>,
    last_probe: Option<Result<Duration, ()>>,
    /// The latency of the last probe that succeeded (a gauge keeps it through failures).
    last_probe_ok: Option<Duration>,
    /// A successful, fast probe completed after the ejection began: the gate to readmission.
    probe_ok_since_ejection: bool,
    /// Set by an input that should eject; applied by `evaluate` (which knows the neighbours).
    pending: Option<EjectReason>,
    /// How long sloguard itself was held up, summed over its life (see
    /// [`WorkerHealth::excuse_own_delay`]): the clock a probe's own share is read from.
    held_up: Duration,
    /// The last slow probe, until the next evaluation: its latency and [`Self::held_up`]
    /// when it was sent. A hold noticed after its answer was read (the ticker that measures
    /// it can run after the probe's task) is taken off it then.
    slow_probe: Option<SlowProbe>,
}

/// A probe over `lag_eject`, kept until the evaluation that may eject for it.
#[derive(Debug, Clone, Copy)]
struct SlowProbe {
    latency: Duration,
    held_at_send: Duration,
    lag_eject: Duration,
}

impl WorkerHealth {
    pub fn new(cfg: &HealthConfig, now: Instant) -> WorkerHealth {
        WorkerHealth {
            state: HealthState::Healthy,
            last_reason: None,
            ejected_until: now,
            strikes: 0,
            last_strike_at: now,
            ejections: 0,
            readmitted_at: None,
            stall: StallDetector::new(now),
            connect_failures: Streak::default(),
            server_errors: Streak::default(),
            latency: PeakEwma::new(cfg.latency_decay, Duration::from_millis(1), now),
            last_lag: None,
            last_probe: None,
            last_probe_ok: None,
            probe_ok_since_ejection: false,
            pending: None,
            held_up: Duration::ZERO,
            slow_probe: None,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    /// A signal asked for an ejection that the next evaluation will decide on.
    ///
    /// Only the worker's own failures (5xx, refused connections) count: the next tick
    /// decides on host-sensitive signals with the whole fleet in view, and a lagging loop
    /// already costs more in the choice (its latency estimate), so it is not taken out of
    /// the choice on one report that may be the host's.
    pub fn ejection_pending(&self) -> bool {
        self.pending.is_some_and(|r| !r.host_sensitive())
    }

    pub fn last_reason(&self) -> Option<EjectReason> {
        self.last_reason
    }

    pub fn latency(&self) -> Duration {
        self.latency.estimate()
    }

    pub fn last_lag(&self) -> Option<Duration> {
        self.last_lag
    }

    pub fn last_probe(&self) -> Option<Result<Duration, ()>> {
        self.last_probe
    }

    /// The latency of the last probe that succeeded.
    pub fn last_probe_ok(&self) -> Option<Duration> {
        self.last_probe_ok
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        (self.state == HealthState::Ejected).then_some(self.ejected_until)
    }

    /// Share of traffic this worker should take now: 1.0, or ramping from 0.1 during slow
    /// start, 0.0 when ejected.
    pub fn weight(&self, cfg: &HealthConfig, now: Instant) -> f64 {
        match (self.state, self.readmitted_at) {
            (HealthState::Ejected, _) => 0.0,
            (HealthState::Suspect, Some(at)) => {
                let ramp = now.saturating_duration_since(at).as_secs_f64()
                    / cfg.slow_start.as_secs_f64().max(1e-3);
                ramp.clamp(0.1, 1.0)
            }
            _ => 1.0,
        }
    }

    /// A request was sent; `in_flight_before` is the count before it.
    pub fn on_dispatch(&mut self, in_flight_before: usize, now: Instant) {
        self.stall.on_dispatch(in_flight_before, now);
    }

    /// sloguard was held up for `d` (see [`StallDetector::excuse`]): not the worker's
    /// silence, and not its probe's latency either. A sidecar throttled at its CPU limit reads
    /// a probe's answer up to a period late; counted against the worker, that ejected every
    /// worker in turn (docs/oncall.md, the starved phase).
    pub fn excuse_own_delay(&mut self, d: Duration, now: Instant) {
        self.stall.excuse(d, now);
        self.held_up += d;
        if let Some(probe) = self.slow_probe {
            let own = probe
                .latency
                .saturating_sub(self.held_up.saturating_sub(probe.held_at_send));
            self.last_probe = Some(Ok(own));
            self.last_probe_ok = Some(own);
            if own < probe.lag_eject {
                self.slow_probe = None;
                if matches!(self.pending, Some(EjectReason::SlowProbe(_))) {
                    self.pending = None;
                }
            }
        }
    }

    /// How long sloguard has been held up so far: read when a probe is sent, given back
    /// with its answer ([`WorkerHealth::on_probe_sent_at`]).
    pub fn held_up(&self) -> Duration {
        self.held_up
    }

    /// A response arrived: its status, time to response headers and reported loop lag.
    pub fn on_response(
        &mut self,
        cfg: &HealthConfig,
        status: u16,
        rtt: Duration,
        lag: Option<Duration>,
        now: Instant,
    ) {
        self.stall.on_completion(now);
        self.connect_failures.reset();
        self.latency.observe(rtt, now);
        if status >= 500 {
            let n = self.server_errors.hit();
            if n >= cfg.consecutive_failures {
                self.pending.get_or_insert(EjectReason::ServerErrors(n));
            }
        } else {
            self.server_errors.reset();
        }
        if let Some(lag) = lag {
            self.note_lag(cfg, lag);
        }
    }

    /// An attempt given up unanswered after `waited` (a hedge answered first): a lower
    /// bound of the worker's latency, which peak-EWMA takes at once. Not a completion, so
    /// the stall detector still counts it as outstanding until now.
    pub fn on_abandoned(&mut self, waited: Duration, now: Instant) {
        self.latency.observe(waited, now);
    }

    pub fn on_connect_failure(&mut self, cfg: &HealthConfig) {
        let n = self.connect_failures.hit();
        if n >= cfg.consecutive_failures {
            self.pending.get_or_insert(EjectReason::ConnectFailures(n));
        }
    }

    /// A probe finished: `Ok((latency, reported lag))` or `Err(())` (refused, timed out, non-2xx).
    pub fn on_probe(
        &mut self,
        cfg: &HealthConfig,
        result: Result<(Duration, Option<Duration>), ()>,
        now: Instant,
    ) {
        self.on_probe_sent_at(cfg, result, self.held_up, now);
    }

    /// A probe's answer, sent when [`WorkerHealth::held_up`] read `held_at_send`: the time
    /// sloguard was held up since is taken off its latency, now and as later ticks notice
    /// more of it.
    pub fn on_probe_sent_at(
        &mut self,
        cfg: &HealthConfig,
        result: Result<(Duration, Option<Duration>), ()>,
        held_at_send: Duration,
        now: Instant,
    ) {
        match result {
            Ok((measured, lag)) => {
                let latency = measured.saturating_sub(self.held_up.saturating_sub(held_at_send));
                self.stall.on_completion(now);
                // A probe is a request too: its latency keeps the estimate of an idle or
                // ejected worker current, so a recovered worker is not shunned forever.
                self.latency.observe(latency, now);
                self.last_probe = Some(Ok(latency));
                self.last_probe_ok = Some(latency);
                let lag_ok = lag.is_none_or(|l| l < cfg.lag_eject);
                if let Some(lag) = lag {
                    self.note_lag(cfg, lag);
                }
                if latency >= cfg.lag_eject {
                    self.probe_ok_since_ejection = false;
                    self.pending.get_or_insert(EjectReason::SlowProbe(latency));
                    self.slow_probe = Some(SlowProbe {
                        latency: measured,
                        held_at_send,
                        lag_eject: cfg.lag_eject,
                    });
                } else if lag_ok {
                    self.probe_ok_since_ejection = true;
                    self.connect_failures.reset();
                }
            }
            Err(()) => {
                self.last_probe = Some(Err(()));
                self.probe_ok_since_ejection = false;
                self.pending.get_or_insert(EjectReason::ProbeFailed);
            }
        }
    }

    fn note_lag(&mut self, cfg: &HealthConfig, lag: Duration) {
        self.last_lag = Some(lag);
        if lag >= cfg.lag_eject {
            self.probe_ok_since_ejection = false;
            self.pending.get_or_insert(EjectReason::LoopLag(lag));
        }
    }

    /// What the signals ask for now, without acting on it: a stall of `stall_after` or
    /// more, or a reason an input left pending.
    pub fn ejection_signal(
        &mut self,
        cfg: &HealthConfig,
        in_flight: usize,
        now: Instant,
    ) -> Option<EjectReason> {
        let stalled_for = self.stall.stalled_for(in_flight, now);
        if stalled_for >= cfg.stall_after {
            Some(EjectReason::Stalled(stalled_for))
        } else {
            self.pending
        }
    }

    /// Applies what the signals say. `may_eject` says whether ejecting one more worker stays
    /// within `max_ejected_percent`; when it does not, the worker stays in (and is counted
    /// as suspect so the choice avoids it), and shedding protects the SLO instead.
    pub fn evaluate(
        &mut self,
        cfg: &HealthConfig,
        in_flight: usize,
        may_eject: bool,
        now: Instant,
    ) -> Option<Transition> {
        self.evaluate_in_fleet(cfg, in_flight, may_eject, true, now)
    }

    /// How badly the host-sensitive signals look now, in units of their thresholds: the
    /// stall over `stall_after`, the last reported lag and the last probe over
    /// `lag_eject` (a failed probe counts 10). At 1 or more the worker signals.
    pub fn severity(&mut self, cfg: &HealthConfig, in_flight: usize, now: Instant) -> f64 {
        let ratio = |d: Duration, of: Duration| d.as_secs_f64() / of.as_secs_f64().max(1e-6);
        let stall = ratio(self.stall.stalled_for(in_flight, now), cfg.stall_after);
        let lag = self.last_lag.map_or(0.0, |l| ratio(l, cfg.lag_eject));
        let probe = match self.last_probe {
            Some(Ok(d)) => ratio(d, cfg.lag_eject),
            Some(Err(())) => 10.0,
            None => 0.0,
        };
        stall.max(lag).max(probe)
    }

    /// [`WorkerHealth::evaluate`], knowing whether this worker stands out from the fleet
    /// (see [`outliers`]): a host-sensitive signal it shares with the others is the host's
    /// or the load's (every loop lags behind the work it was sent), and ejecting a worker
    /// for it would only take capacity away, so it is set aside.
    pub fn evaluate_in_fleet(
        &mut self,
        cfg: &HealthConfig,
        in_flight: usize,
        may_eject: bool,
        stands_out: bool,
        now: Instant,
    ) -> Option<Transition> {
        let stalled_for = self.stall.stalled_for(in_flight, now);
        let reason = self
            .ejection_signal(cfg, in_flight, now)
            .filter(|r| stands_out || !r.host_sensitive());
        self.pending = None;
        self.slow_probe = None;

        match (self.state, reason) {
            (HealthState::Ejected, _) => {
                if now >= self.ejected_until
                    && self.probe_ok_since_ejection
                    && stalled_for < cfg.stall_after
                {
                    self.state = HealthState::Suspect;
                    self.readmitted_at = Some(now);
                    self.server_errors.reset();
                    self.connect_failures.reset();
                    return Some(Transition::Readmitted);
                }
                None
            }
            (_, Some(reason)) if may_eject => Some(self.eject(cfg, reason, now)),
            (HealthState::Healthy, Some(reason)) => {
                // Over max_ejected_percent: keep serving from it, but as suspect.
                self.last_reason = Some(reason);
                self.state = HealthState::Suspect;
                self.readmitted_at = Some(now);
                None
            }
            (HealthState::Suspect, None) => {
                let since = self.readmitted_at.unwrap_or(now);
                if now.saturating_duration_since(since) >= cfg.slow_start {
                    self.state = HealthState::Healthy;
                    self.readmitted_at = None;
                    return Some(Transition::Recovered);
                }
                None
            }
            (HealthState::Healthy, None) => {
                // A long clean run forgives one past ejection, so a worker that misbehaved
                // once last week is not ejected for 30 s at its next hiccup.
                if self.strikes > 0
                    && now.saturating_duration_since(self.last_strike_at) >= cfg.forgive_after
                {
                    self.strikes -= 1;
                    self.last_strike_at = now;
                }
                None
            }
            _ => None,
        }
    }

    fn eject(&mut self, cfg: &HealthConfig, reason: EjectReason, now: Instant) -> Transition {
        let factor = 1u32 << self.strikes.min(16);
        let for_ = cfg
            .base_ejection
            .saturating_mul(factor)
            .min(cfg.max_ejection);
        self.strikes += 1;
        self.last_strike_at = now;
        self.ejections += 1;
        self.state = HealthState::Ejected;
        self.last_reason = Some(reason);
        self.ejected_until = now + for_;
        self.readmitted_at = None;
        self.probe_ok_since_ejection = false;
        Transition::Ejected { reason, for_ }
    }
}

/// Which serving workers stand out from the others by the [`WorkerHealth::severity`] of their
/// host-sensitive signals: at least [`OUTLIER_FACTOR`] times the median of the other
/// workers' (which counts at least 0.1). One blocked loop among four healthy ones (250 ms of
/// lag against 2 ms) stands out; four loops that all lag behind their own queue of dear
/// requests, or a CPU-starved pod, do not. A lone worker always stands out.
pub fn outliers(severities: &[f64]) -> Vec<bool> {
    (0..severities.len())
        .map(|i| {
            let mut others: Vec<f64> = severities
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| *s)
                .collect();
            if others.is_empty() {
                return true;
            }
            others.sort_by(f64::total_cmp);
            let median = others[others.len() / 2].max(0.1);
            severities[i] >= OUTLIER_FACTOR * median
        })
        .collect()
}

/// How far a worker's signals must exceed the fleet's to be its own.
pub const OUTLIER_FACTOR: f64 = 3.0;

/// Whether one more worker may be ejected: at most `max_percent`% of `total` are out at once.
pub fn may_eject(already_ejected: usize, total: usize, max_percent: u8) -> bool {
    (already_ejected + 1) * 100 <= total * usize::from(max_percent)
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
