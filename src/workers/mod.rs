//! The upstream workers: their config, their live state (health, latency, concurrency limit)
//! and the choice of one per request.
//!
//! A worker is one backend process with one event loop (one uvicorn worker). Its state
//! ([`Worker`], `worker.rs`) lives in [`WorkerSet`] (`set.rs`, with the lease a request
//! holds), which outlives policy snapshots while the worker list is unchanged. Hot-path
//! reads (state, limit, latency) are atomics refreshed under the worker's lock whenever its
//! health or limiter changes, so choosing a worker takes no lock.

mod addr;
pub mod ewma;
pub mod health;
#[cfg(test)]
mod health_props;
pub mod limiter;
mod pick;
pub mod probe;
pub mod probe_loop;
pub mod service;
mod set;
pub mod signals;
mod worker;

use std::time::{Duration, Instant};

pub use addr::{WorkerAddr, WorkerAddrError, MAX_UNIX_PATH};
pub use health::{EjectReason, HealthConfig, HealthState, Transition, WorkerHealth};
pub use limiter::{Algorithm, ConcurrencyLimiter, LimiterConfig, Sample};
pub use pick::{pick_least_loaded, pick_p2c, Tried};
pub use probe::ProbeConfig;
pub use service::{RouteCosts, ServiceTime};
pub use set::{WorkerLease, WorkerSet};
pub use worker::Worker;

/// Most workers one sidecar guards: a request's tried workers are one bit each ([`Tried`]).
pub const MAX_WORKERS: usize = 64;

/// `[upstream]`, validated (with its `health` and `probe` subsections).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub workers: Vec<WorkerAddr>,
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

/// Told when a lease releases a worker slot (the admission queue wakes a waiter that can
/// use it). A trait so this layer does not know who listens.
pub trait SlotListener: Send + Sync + std::fmt::Debug {
    fn slot_freed(&self, worker: &Worker);
}

/// Which workers may take a request now (see [`Worker::has_slot`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotRule {
    /// Share of a worker's learnt limit and work cap the request may fill: its priority's
    /// share (`Priority::limit_share`) while a higher class waits for a slot, all of it
    /// otherwise ([`SlotRule::unreserved`]).
    pub share: f64,
    /// What the request costs a worker, once its route's cost is known.
    pub cost: Option<Duration>,
    /// Outstanding work past which a worker takes no more: the tightest latency target any
    /// route needs from a worker.
    pub work_cap: Duration,
    /// Most requests one worker holds however cheap they are (`[concurrency] max_limit`):
    /// each holds an upstream connection.
    pub ceiling: u32,
}

impl SlotRule {
    /// The rule with nothing reserved for higher classes: no higher-priority request waits,
    /// so the fleet is not full for them and this one may use any free capacity.
    pub fn unreserved(self) -> SlotRule {
        SlotRule { share: 1.0, ..self }
    }
}

/// The wall clock, read where a request or the ticker meets a worker's state (its deciders,
/// `health`, `limiter`, `ewma` and `service`, take `now`). `Worker::has_slot` reads it too:
/// it runs inside the admission queue's wake-up closures, which pass no time.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Instant {
    Instant::now()
}

/// Nanoseconds from a process-wide origin to `t`, for instants kept in atomics.
fn since_epoch(t: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| t.checked_sub(Duration::from_secs(1)).unwrap_or(t));
    t.saturating_duration_since(epoch).as_nanos() as u64
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
