//! The upstream workers: their config, their live state (health, latency, concurrency limit)
//! and the choice of one per request.
//!
//! A worker is one backend process with one event loop (one uvicorn worker). Its state lives
//! in [`WorkerSet`], which outlives policy snapshots while the worker list is unchanged.
//! Hot-path reads (state, limit, latency) are atomics refreshed under the worker's lock
//! whenever its health or limiter changes, so choosing a worker takes no lock.

pub mod ewma;
pub mod health;
#[cfg(test)]
mod health_props;
pub mod limiter;
mod pick;
pub mod probe;
pub mod signals;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use health::{EjectReason, HealthConfig, HealthState, Transition, WorkerHealth};
pub use limiter::{Algorithm, ConcurrencyLimiter, LimiterConfig, Sample};
pub use pick::{pick_least_loaded, pick_p2c};
pub use probe::ProbeConfig;

use crate::stages::admission::Admission;

/// `[upstream]`, validated (with its `health` and `probe` subsections).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub workers: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    pub keepalive_pool_size: usize,
    /// Response header carrying the worker's event-loop lag in ms. Default `x-loop-lag-ms`.
    pub lag_header: String,
    pub health: HealthConfig,
    /// At most this share of workers is ejected at once. Default 50.
    pub max_ejected_percent: u8,
    pub probe: Option<ProbeConfig>,
}

/// How the SLO guard acts (`[guard] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// Eject stalled workers, enforce concurrency limits, queue and shed.
    Enforce,
    /// Decide and count everything, act on nothing: traffic flows as with `Off`.
    Shadow,
    /// Fewest-in-flight balancing only (the foundation's behaviour).
    Off,
}

impl GuardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Enforce => "enforce",
            GuardMode::Shadow => "shadow",
            GuardMode::Off => "off",
        }
    }
}

/// Live state of one worker.
#[derive(Debug)]
pub struct Worker {
    pub addr: SocketAddr,
    /// 1-based worker number, as operators count them.
    pub id: usize,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    connect_failures: AtomicU64,
    /// Answers under 500 / answers of 500 and up (or broken off), since start.
    successes: AtomicU64,
    failures: AtomicU64,
    // Hot-path snapshot of `health` and `limiter`.
    state: AtomicU8,
    limit: AtomicU32,
    latency_ns: AtomicU64,
    /// A signal asked for an ejection; the next health tick decides (see `refresh`).
    ejection_pending: AtomicBool,
    /// Slow-start weight x 1000.
    weight_milli: AtomicU32,
    health: Mutex<WorkerHealth>,
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
    fn new(
        id: usize,
        addr: SocketAddr,
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

    /// Cost for the choice: latency estimate x (in flight + 1), over the slow-start weight.
    pub fn cost(&self) -> f64 {
        let w = f64::from(self.weight_milli.load(Ordering::Relaxed).max(1)) / 1000.0;
        self.latency_ns.load(Ordering::Relaxed) as f64 * (self.in_flight() as f64 + 1.0) / w
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

    pub fn on_probe(
        &self,
        cfg: &HealthConfig,
        result: Result<(Duration, Option<Duration>), ()>,
        now: Instant,
    ) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.on_probe(cfg, result, now);
        self.refresh(&h, cfg, now);
    }

    /// Runs the health state machine; returns what changed.
    pub fn evaluate(
        &self,
        cfg: &HealthConfig,
        may_eject: bool,
        now: Instant,
    ) -> Option<Transition> {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let t = h.evaluate(cfg, self.in_flight(), may_eject, now);
        self.refresh(&h, cfg, now);
        t
    }
}

/// All workers of the upstream, indexed by position in the policy's list.
#[derive(Debug)]
pub struct WorkerSet {
    workers: Vec<Arc<Worker>>,
}

impl WorkerSet {
    pub fn new(cfg: &UpstreamConfig, limits: &LimiterConfig) -> WorkerSet {
        let now = Instant::now();
        WorkerSet {
            workers: cfg
                .workers
                .iter()
                .enumerate()
                .map(|(i, a)| Arc::new(Worker::new(i + 1, *a, &cfg.health, limits, now)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Worker>> {
        self.workers.iter()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.addr).collect()
    }

    pub fn ejected(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.state() == HealthState::Ejected)
            .count()
    }

    /// Picks a worker and leases it; `None` when no worker may take the request now.
    ///
    /// `tried` has a bit per worker index this request already failed on. With the guard
    /// off (or in shadow), the choice is fewest in flight, ties at random. Enforced, it is
    /// power of two choices on [`Worker::cost`] among workers that are not ejected and are
    /// under `limit_share` of their concurrency limit (`None`: limits ignored, for retries;
    /// at least one slot of an idle worker is always usable).
    pub fn acquire(
        &self,
        mode: GuardMode,
        tried: u64,
        limit_share: Option<f64>,
        admission: Option<&Arc<Admission>>,
    ) -> Option<WorkerLease> {
        let entropy = rand::random::<u64>();
        let idx = match mode {
            GuardMode::Off | GuardMode::Shadow => {
                pick_least_loaded(self.workers.iter().map(|w| w.in_flight()), tried, entropy)?
            }
            GuardMode::Enforce => {
                let eligible = |i: usize, w: &Worker| {
                    (i >= 64 || tried & (1 << i) == 0)
                        && w.state() != HealthState::Ejected
                        && !w.ejection_pending.load(Ordering::Relaxed)
                        && limit_share.is_none_or(|share| {
                            let cap = ((f64::from(w.limit()) * share) as u32).max(1);
                            (w.in_flight() as u32) < cap
                        })
                };
                let mut costs = [(0usize, 0f64); 64];
                let mut n = 0;
                for (i, w) in self.workers.iter().enumerate().take(64) {
                    if eligible(i, w) {
                        costs[n] = (i, w.cost());
                        n += 1;
                    }
                }
                pick_p2c(&costs[..n], entropy)?
            }
        };
        Some(WorkerLease::new(
            idx,
            self.workers[idx].clone(),
            admission.cloned(),
        ))
    }

    /// Whether some worker could take a request now (for waking queued requests).
    pub fn has_room(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.state() != HealthState::Ejected && (w.in_flight() as u32) < w.limit())
    }
}

/// One request's hold on a worker's in-flight slot, released on drop: on success, on error
/// and when the client goes away, whichever path the request ends on. Releasing a slot wakes
/// the next queued request.
#[derive(Debug)]
pub struct WorkerLease {
    index: usize,
    worker: Arc<Worker>,
    /// In flight on the worker before this request.
    in_flight_before: usize,
    admission: Option<Arc<Admission>>,
}

impl WorkerLease {
    fn new(index: usize, worker: Arc<Worker>, admission: Option<Arc<Admission>>) -> WorkerLease {
        let before = worker.in_flight.fetch_add(1, Ordering::Relaxed);
        worker.requests.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            worker
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .on_dispatch(0, Instant::now());
        }
        WorkerLease {
            index,
            worker,
            in_flight_before: before,
            admission,
        }
    }

    /// Position of the worker in the policy's list (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    pub fn in_flight_before(&self) -> usize {
        self.in_flight_before
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(a) = &self.admission {
            a.on_release();
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
