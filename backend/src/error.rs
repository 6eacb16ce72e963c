//! Errors of starting a [`crate::Backend`], with the worker and address they concern.

use std::net::SocketAddr;

/// Why [`crate::Backend::start`] failed. Nothing is left running when it does.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("a backend needs at least one worker")]
    NoWorkers,
    #[error("worker {worker}'s port would be past 65535 (base port {base_port})")]
    PortOverflow { worker: usize, base_port: u16 },
    #[error(
        "a fault names worker {worker}, but there are only {workers} workers (ids start at 1)"
    )]
    NoSuchWorker { worker: usize, workers: usize },
    #[error("worker {worker} could not listen on {addr}: {source}")]
    Bind {
        worker: usize,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {worker} could not start its event loop: {source}")]
    Start {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
}
