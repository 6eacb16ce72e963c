//! An analytics API that behaves like the incident's service: several
//! workers, each its own single-threaded event loop on its own port, sharing
//! one in-process aggregate store, with a measured event-loop lag and fault
//! switches that reproduce the blocking handlers.
//!
//! Used as the `analytics-backend` binary (demo, benchmarks) and as a
//! library by sloguard's integration tests, which start it in-process on
//! port 0:
//!
//! ```no_run
//! use analytics_backend::{Backend, BackendConfig};
//! let backend = Backend::start(BackendConfig::default()).unwrap();
//! let worker_1 = backend.addrs()[0];
//! backend.set_fault(2, "block=250ms,every=4".parse().unwrap());
//! backend.kill_worker(3);
//! backend.shutdown();
//! # let _ = worker_1;
//! ```
//!
//! Where things are:
//! - [`worker`]: one OS thread + `current_thread` runtime per worker, the
//!   accept loop, stop and kill;
//! - [`api`]: routes, handlers, the error-to-status mapping, the headers
//!   every answer carries (`x-loop-lag-ms`, `x-worker-id`);
//! - [`event`] and [`query`]: request validation that names the bad field;
//! - [`store`]: 1 s aggregates with a mergeable quantile sketch;
//! - [`lag`]: the loop-lag timer and its window;
//! - [`fault`]: fault specs and the pure decision of who gets hit;
//! - `conn`: the connection faults' socket wrapper (trickle, reset, close
//!   after an answer);
//! - [`stats`]: per-worker counters and the Prometheus text;
//! - [`pyfleet`]: the same API in Python (FastAPI on uvicorn, one process per
//!   port), started for tests and benchmarks.

pub mod api;
mod conn;
mod error;
pub mod event;
pub mod fault;
pub mod lag;
pub mod pyfleet;
pub mod query;
mod stats;
mod stop;
pub mod store;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

pub use error::BackendError;
pub use event::Event;
pub use fault::{FaultParseError, FaultSpec};
pub use query::{Bucket, Query};
pub use store::{QueryResult, Store};

use worker::Worker;

/// How to start a [`Backend`].
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Number of workers, at least 1.
    pub workers: usize,
    /// Address every worker binds (default 127.0.0.1).
    pub bind: IpAddr,
    /// Worker `i` (1-based) listens on `base_port + i - 1`; 0 gives every
    /// worker its own ephemeral port (what tests want).
    pub base_port: u16,
    /// `(1-based worker id, fault)` applied from the start; a later entry
    /// for the same worker replaces an earlier one.
    pub faults: Vec<(usize, FaultSpec)>,
}

impl Default for BackendConfig {
    /// 4 workers on 127.0.0.1, ephemeral ports, no faults.
    fn default() -> Self {
        BackendConfig {
            workers: 4,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 0,
            faults: Vec::new(),
        }
    }
}

/// A running backend. Dropping it stops every worker.
#[derive(Debug)]
pub struct Backend {
    workers: Vec<Worker>,
    store: Arc<Store>,
}

impl Backend {
    /// Binds every listener, then starts one thread + event loop per
    /// worker. When it returns, every port accepts connections. On error
    /// nothing is left running.
    pub fn start(cfg: BackendConfig) -> Result<Backend, BackendError> {
        if cfg.workers == 0 {
            return Err(BackendError::NoWorkers);
        }
        let mut faults = vec![FaultSpec::default(); cfg.workers];
        for (worker, fault) in &cfg.faults {
            match worker.checked_sub(1).and_then(|i| faults.get_mut(i)) {
                Some(slot) => *slot = fault.clone(),
                None => {
                    return Err(BackendError::NoSuchWorker {
                        worker: *worker,
                        workers: cfg.workers,
                    })
                }
            }
        }
        let mut listeners = Vec::with_capacity(cfg.workers);
        for id in 1..=cfg.workers {
            let port = if cfg.base_port == 0 {
                0
            } else {
                u16::try_from(id - 1)
                    .ok()
                    .and_then(|offset| cfg.base_port.checked_add(offset))
                    .ok_or(BackendError::PortOverflow {
                        worker: id,
                        base_port: cfg.base_port,
                    })?
            };
            listeners.push(Worker::bind(id, SocketAddr::new(cfg.bind, port))?);
        }
        let store = Arc::new(Store::new());
        // Built up in place so that an error drops (and stops) the started ones.
        let mut backend = Backend {
            workers: Vec::with_capacity(cfg.workers),
            store,
        };
        for ((id, listener), fault) in (1..).zip(listeners).zip(faults) {
            let worker = Worker::spawn(id, listener, Arc::clone(&backend.store), fault)?;
            tracing::info!(worker = id, addr = %worker.shared.addr, "worker listening");
            backend.workers.push(worker);
        }
        Ok(backend)
    }

    /// Listening addresses in worker order (worker 1 first), killed workers included.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.shared.addr).collect()
    }

    /// The store all workers write to.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    fn worker(&self, worker: usize) -> &Worker {
        worker
            .checked_sub(1)
            .and_then(|i| self.workers.get(i))
            .unwrap_or_else(|| {
                panic!(
                    "no worker {worker}: ids run from 1 to {}",
                    self.workers.len()
                )
            })
    }

    /// Sets a worker's fault, exactly like `POST /admin/fault` on it (a
    /// stall in it starts now). No effect on a killed worker.
    ///
    /// # Panics
    /// If `worker` is not in `1..=workers`.
    pub fn set_fault(&self, worker: usize, fault: FaultSpec) {
        self.worker(worker).shared.set_fault(fault);
    }

    /// Simulates a crashed worker: stops its loop, closes its listener and
    /// every connection it had, even mid-fault. Returns once the port is
    /// closed (connecting to it is refused). Idempotent.
    ///
    /// # Panics
    /// If `worker` is not in `1..=workers`.
    pub fn kill_worker(&self, worker: usize) {
        self.worker(worker).stop();
    }

    /// Stops every worker and joins their threads.
    pub fn shutdown(self) {
        // Drop does the work.
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Flip every switch first so the workers wind down in parallel.
        for w in &self.workers {
            w.shared.stop.stop();
        }
        for w in &self.workers {
            w.stop();
        }
    }
}
