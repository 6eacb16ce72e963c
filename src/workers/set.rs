//! The fleet: every worker of the policy's list, the choice of one per request, and the
//! lease a request holds on it until its answer is written.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::MAX_WORKERS;
use super::{
    pick_least_loaded, pick_p2c, since_epoch, wall_clock, GuardMode, HealthState, LimiterConfig,
    SlotListener, SlotRule, Tried, UpstreamConfig, Worker,
};

/// All workers of the upstream, indexed by position in the policy's list.
#[derive(Debug)]
pub struct WorkerSet {
    pub(super) workers: Vec<Arc<Worker>>,
}

impl WorkerSet {
    pub fn new(cfg: &UpstreamConfig, limits: &LimiterConfig) -> WorkerSet {
        let now = wall_clock();
        WorkerSet {
            workers: cfg
                .workers
                .iter()
                .enumerate()
                .map(|(i, a)| Arc::new(Worker::new(i + 1, a.clone(), &cfg.health, limits, now)))
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

    pub fn ejected(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.state() == HealthState::Ejected)
            .count()
    }

    /// Picks a worker and leases it; `None` when no worker may take the request now.
    ///
    /// `tried` holds the workers this request already failed on. With the guard
    /// off (or in shadow), the choice is fewest in flight, ties at random. Enforced, it is
    /// power of two choices on [`Worker::cost`] among workers that are not ejected and have
    /// a slot under `rule` (`None`: capacity ignored, for retries; at least one slot of an
    /// idle worker is always usable).
    pub fn acquire(
        &self,
        mode: GuardMode,
        tried: Tried,
        rule: Option<&SlotRule>,
        listener: Option<Arc<dyn SlotListener>>,
    ) -> Option<WorkerLease> {
        let entropy = rand::random::<u64>();
        let idx = match mode {
            GuardMode::Off | GuardMode::Shadow => {
                pick_least_loaded(self.workers.iter().map(|w| w.in_flight()), tried, entropy)?
            }
            GuardMode::Enforce => {
                let eligible = |i: usize, w: &Worker| {
                    !tried.contains(i)
                        && w.state() != HealthState::Ejected
                        && !w.ejection_pending.load(Ordering::Relaxed)
                        && rule.is_none_or(|r| w.has_slot(r))
                };
                let mut costs = [(0usize, 0f64); MAX_WORKERS];
                let mut n = 0;
                let now_ns = since_epoch(wall_clock());
                for (i, w) in self.workers.iter().enumerate().take(MAX_WORKERS) {
                    if eligible(i, w) {
                        costs[n] = (i, w.cost(now_ns));
                        n += 1;
                    }
                }
                pick_p2c(&costs[..n], entropy)?
            }
        };
        let cost = rule.and_then(|r| r.cost).unwrap_or_default();
        Some(WorkerLease::new(
            idx,
            self.workers[idx].clone(),
            cost,
            listener,
        ))
    }

    /// Whether some worker could take a request under `rule` now (for waking queued
    /// requests).
    pub fn has_room(&self, rule: &SlotRule) -> bool {
        self.workers
            .iter()
            .any(|w| w.state() != HealthState::Ejected && !w.is_out() && w.has_slot(rule))
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
    /// What this request adds to the worker's outstanding work, ns.
    cost_ns: u64,
    listener: Option<Arc<dyn SlotListener>>,
}

impl WorkerLease {
    fn new(
        index: usize,
        worker: Arc<Worker>,
        cost: Duration,
        listener: Option<Arc<dyn SlotListener>>,
    ) -> WorkerLease {
        let cost_ns = cost.as_nanos() as u64;
        worker.work_ns.fetch_add(cost_ns, Ordering::Relaxed);
        let before = worker.in_flight.fetch_add(1, Ordering::Relaxed);
        worker.requests.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            let now = wall_clock();
            worker.note_progress(now);
            worker
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .on_dispatch(0, now);
        }
        WorkerLease {
            index,
            worker,
            in_flight_before: before,
            cost_ns,
            listener,
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
        self.worker
            .work_ns
            .fetch_sub(self.cost_ns, Ordering::Relaxed);
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(l) = &self.listener {
            l.slot_freed(&self.worker);
        }
    }
}
