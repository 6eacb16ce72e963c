//! The process-wide state every request reads: the current policy snapshot and the workers.
//!
//! Both sit behind `ArcSwap` so a reload replaces them whole while requests in flight keep
//! the snapshot they started with (a request loads the policy once, in `request_filter`).

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::Policy;
use crate::workers::WorkerSet;

pub struct State {
    policy: ArcSwap<Policy>,
    workers: ArcSwap<WorkerSet>,
    /// When this process started serving.
    pub started: Instant,
}

impl State {
    pub fn new(policy: Policy) -> State {
        let workers = WorkerSet::new(&policy.upstream.workers);
        State {
            policy: ArcSwap::from_pointee(policy),
            workers: ArcSwap::from_pointee(workers),
            started: Instant::now(),
        }
    }

    /// The policy in force now. Callers keep the returned snapshot for the whole request.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub fn workers(&self) -> Arc<WorkerSet> {
        self.workers.load_full()
    }
}
