//! One worker's live state: its leases in flight, its answers and failures, and behind a
//! lock its health state machine and its concurrency limiter. What a request reads to choose
//! a worker (state, limit, latency, outstanding work) is kept in atomics refreshed under
//! that lock whenever health or limiter change, so choosing takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    since_epoch, wall_clock, ConcurrencyLimiter, HealthConfig, HealthState, LimiterConfig, Sample,
    SlotRule, Transition, UpstreamConfig, WorkerAddr, WorkerHealth,
};

/// Live state of one worker.
#[derive(Debug)]
pub struct Worker {
    pub addr: WorkerAddr,
    /// 1-based worker number, as operators count them.
    pub id: usize,
    pub(super) in_flight: AtomicUsize,
    pub(super) requests: AtomicU64,
    connect_failures: AtomicU64,
    /// Answers under 500 / answers of 500 and up (or broken off), since start.
    successes: AtomicU64,
    failures: AtomicU64,
    // Hot-path snapshot of `health` and `limiter`.
    state: AtomicU8,
    limit: AtomicU32,
    latency_ns: AtomicU64,
    /// A signal asked for an ejection; the next health tick decides (see `refresh`).
    pub(super) ejection_pending: AtomicBool,
    /// Slow-start weight x 1000.
    weight_milli: AtomicU32,
    /// Outstanding work: the summed cost of the requests in flight whose route cost is
    /// known, ns (see [`Worker::work`]).
    pub(super) work_ns: AtomicU64,
    /// Since when (ns after [`epoch`]) the worker has been silent: the later of its last
    /// completion (answer or good probe) and the moment it became busy. With requests in
    /// flight, `now - quiet_from` is how long it has been stalled so far.
    quiet_from_ns: AtomicU64,
    pub(super) health: Mutex<WorkerHealth>,
    limiter: Mutex<ConcurrencyLimiter>,
}

fn state_code(s: HealthState) -> u8 {
    match s {
        HealthState::Healthy => 0,
        HealthState::Suspect => 1,
        HealthState::Ejected => 2,
    }
}

impl Worker {
    pub(super) fn new(
        id: usize,
        addr: WorkerAddr,
        health: &HealthConfig,
        limits: &LimiterConfig,
        now: Instant,
    ) -> Worker {
        let limiter = ConcurrencyLimiter::new(limits, now);
        Worker {
            addr,
            id,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            state: AtomicU8::new(0),
            limit: AtomicU32::new(limiter.limit()),
            latency_ns: AtomicU64::new(1_000_000),
            ejection_pending: AtomicBool::new(false),
            weight_milli: AtomicU32::new(1000),
            work_ns: AtomicU64::new(0),
            quiet_from_ns: AtomicU64::new(since_epoch(now)),
            health: Mutex::new(WorkerHealth::new(health, now)),
            limiter: Mutex::new(limiter),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> HealthState {
        match self.state.load(Ordering::Relaxed) {
            0 => HealthState::Healthy,
            1 => HealthState::Suspect,
            _ => HealthState::Ejected,
        }
    }

    /// Ejected, or found stalled and about to be: new requests avoid it, and a hedged
    /// request waiting on it sends its second attempt at once.
    pub fn is_out(&self) -> bool {
        self.state() == HealthState::Ejected || self.ejection_pending.load(Ordering::Relaxed)
    }

    /// Concurrency limit now, scaled by slow start.
    pub fn limit(&self) -> u32 {
        let w = self.weight_milli.load(Ordering::Relaxed);
        ((u64::from(self.limit.load(Ordering::Relaxed)) * u64::from(w)) / 1000).max(1) as u32
    }

    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed))
    }

    /// Outstanding work: how long the requests in flight on it will keep its loop busy,
    /// from their routes' costs (requests of a route with no known cost count nothing).
    pub fn work(&self) -> Duration {
        Duration::from_nanos(self.work_ns.load(Ordering::Relaxed))
    }

    /// Whether the worker may take one more request under `rule`:
    /// - an idle worker always takes one;
    /// - under its learnt concurrency limit (the priority's share of it): the limit finds
    ///   the knee of a worker whose requests overlap (they await I/O), where counting work
    ///   would understate what it can hold;
    /// - beyond it, up to the ceiling, while the request would still be served in time, so
    ///   a learnt limit never refuses work the SLO allows:
    ///   - its cost known, while the work already there lets it start within the rule's
    ///     cap: dear requests (a 25 ms aggregation) count for what they cost, so a lower
    ///     class cannot fill a loop with work a critical request would then wait behind.
    ///     Starting within the cap, rather than finishing within it, always leaves a
    ///     request ready behind the one running when requests are dear compared to the
    ///     cap: the loop never idles for a round trip between two of them. And only while
    ///     the worker answers within the cap: a route's cost is learnt from requests that
    ///     find their worker idle, so when every worker slows down at the moment an
    ///     overload begins, none is ever idle and the cost learnt before stays; the work
    ///     check alone then admitted each worker up to the ceiling (2 s answers at a 150 ms
    ///     target, docs/oncall.md) while its answers said it was late;
    ///   - its cost not known yet (at start, a new route, a reload that renamed one), while
    ///     the worker's latency outlook (`Worker::outlook`) is within the cap: no evidence
    ///     is not bad evidence, so a fresh proxy admits as least-connections would until
    ///     answers say the worker is slow, instead of holding every worker to the initial
    ///     limit until the first request finds one idle and prices its route.
    pub fn has_slot(&self, rule: &SlotRule) -> bool {
        let in_flight = self.in_flight();
        if in_flight == 0 {
            return true;
        }
        let allowed = ((f64::from(self.limit()) * rule.share) as usize).max(1);
        if in_flight < allowed {
            return true;
        }
        if in_flight >= rule.ceiling as usize {
            return false;
        }
        let weight = f64::from(self.weight_milli.load(Ordering::Relaxed)) / 1000.0;
        let cap = rule.work_cap.mul_f64(weight * rule.share);
        let answering_in_time = || self.outlook(since_epoch(wall_clock())) < cap;
        match rule.cost {
            Some(_) => self.work() < cap && answering_in_time(),
            None => answering_in_time(),
        }
    }

    /// How slow the worker is now: its latency estimate (peak-EWMA of its answers and
    /// probes), or, if longer, how long it has been busy without answering.
    pub(super) fn outlook(&self, now_ns: u64) -> Duration {
        let stalled = if self.in_flight() > 0 {
            now_ns.saturating_sub(self.quiet_from_ns.load(Ordering::Relaxed))
        } else {
            0
        };
        Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed).max(stalled))
    }

    /// Cost for the choice: latency estimate x (in flight + 1), over the slow-start weight.
    /// The latency estimate is at least how long the worker has been stalled so far (busy,
    /// and nothing completed): peak-EWMA only learns of a blocked loop when its answers
    /// finally come, but a worker silent for 20 ms is at least 20 ms slow now, so it stops
    /// getting requests within milliseconds, long before the stall ejects it.
    pub fn cost(&self, now_ns: u64) -> f64 {
        let w = f64::from(self.weight_milli.load(Ordering::Relaxed).max(1)) / 1000.0;
        self.outlook(now_ns).as_nanos() as f64 * (self.in_flight() as f64 + 1.0) / w
    }

    /// The worker's loop turned now (an answer or a good probe), or it became busy.
    pub(super) fn note_progress(&self, now: Instant) {
        self.quiet_from_ns
            .fetch_max(since_epoch(now), Ordering::Relaxed);
    }

    /// Reads the health record (for status pages and tests).
    pub fn health(&self) -> WorkerHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn limiter(&self) -> ConcurrencyLimiter {
        self.limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn refresh(&self, h: &WorkerHealth, cfg: &HealthConfig, now: Instant) {
        self.state.store(state_code(h.state()), Ordering::Relaxed);
        // Between a signal that asks for an ejection (say a 5th 5xx in a row) and the next
        // tick that decides it, new requests stay away: at 1 ms a request that is ten more.
        self.ejection_pending
            .store(h.ejection_pending(), Ordering::Relaxed);
        self.latency_ns
            .store(h.latency().as_nanos() as u64, Ordering::Relaxed);
        self.weight_milli
            .store((h.weight(cfg, now) * 1000.0) as u32, Ordering::Relaxed);
    }

    /// A response header arrived from this worker.
    pub fn on_response(
        &self,
        cfg: &UpstreamConfig,
        limits: &LimiterConfig,
        status: u16,
        sample: Sample,
        now: Instant,
    ) {
        let counter = if status < 500 {
            &self.successes
        } else {
            &self.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.note_progress(now);
        {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            h.on_response(&cfg.health, status, sample.rtt, sample.lag, now);
            self.refresh(&h, &cfg.health, now);
        }
        if status < 500 {
            let mut l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(limit) = l.on_sample(limits, sample, now) {
                self.limit.store(limit, Ordering::Relaxed);
            }
        }
    }

    /// An attempt given up unanswered after `waited` (see `WorkerHealth::on_abandoned`).
    pub fn on_abandoned(&self, waited: Duration, now: Instant) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.on_abandoned(waited, now);
    }

    pub fn on_connect_failure(&self, cfg: &HealthConfig) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.on_connect_failure(cfg);
        self.ejection_pending
            .store(h.ejection_pending(), Ordering::Relaxed);
    }

    /// sloguard itself was held up for `d`, noticed at `now`: the worker's silence
    /// meanwhile is not evidence against it (see [`StallDetector::excuse`]), neither for
    /// ejection nor for the choice of worker.
    ///
    /// [`StallDetector::excuse`]: super::signals::StallDetector::excuse
    pub fn excuse_own_delay(&self, d: Duration, now: Instant) {
        let cap = since_epoch(now);
        let d_ns = d.as_nanos() as u64;
        let _ = self
            .quiet_from_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_add(d_ns).min(cap).max(q))
            });
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.excuse_own_delay(d, now);
    }

    pub fn on_probe(
        &self,
        cfg: &HealthConfig,
        result: Result<(Duration, Option<Duration>), ()>,
        now: Instant,
    ) {
        let held_at_send = self.held_up();
        self.on_probe_sent_at(cfg, result, held_at_send, now);
    }

    /// How long sloguard has been held up so far, by this worker's clock (see
    /// [`WorkerHealth::held_up`]): read when a probe is sent.
    pub fn held_up(&self) -> Duration {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held_up()
    }

    /// A probe's answer; `held_at_send` is [`Worker::held_up`] when it was sent, so the
    /// time sloguard itself was held up meanwhile is not counted against the worker.
    pub fn on_probe_sent_at(
        &self,
        cfg: &HealthConfig,
        result: Result<(Duration, Option<Duration>), ()>,
        held_at_send: Duration,
        now: Instant,
    ) {
        if result.is_ok() {
            self.note_progress(now);
        }
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.on_probe_sent_at(cfg, result, held_at_send, now);
        self.refresh(&h, cfg, now);
    }

    /// Runs the health state machine; returns what changed.
    pub fn evaluate(
        &self,
        cfg: &HealthConfig,
        may_eject: bool,
        now: Instant,
    ) -> Option<Transition> {
        self.evaluate_in_fleet(cfg, may_eject, false, now)
    }

    /// [`Worker::evaluate`], knowing whether the worker stands out from the fleet (see
    /// [`super::health::outliers`]).
    pub fn evaluate_in_fleet(
        &self,
        cfg: &HealthConfig,
        may_eject: bool,
        stands_out: bool,
        now: Instant,
    ) -> Option<Transition> {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let t = h.evaluate_in_fleet(cfg, self.in_flight(), may_eject, stands_out, now);
        self.refresh(&h, cfg, now);
        t
    }

    /// How badly its host-sensitive signals look now (see [`WorkerHealth::severity`]).
    pub fn severity(&self, cfg: &HealthConfig, now: Instant) -> f64 {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.severity(cfg, self.in_flight(), now)
    }
}
