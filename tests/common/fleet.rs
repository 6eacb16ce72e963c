//! The workers a guard scenario runs on, either kind: the Rust backend in-process (answers
//! in microseconds, never misbehaves unless told) or the Python fleet (FastAPI on uvicorn,
//! one process per worker, with an interpreter's costs and noise). The guard's claims are
//! tested on both.

use std::net::SocketAddr;

use analytics_backend::pyfleet::{PyFleet, PyFleetConfig};
use analytics_backend::{Backend, BackendConfig, FaultSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetKind {
    Rust,
    Python,
    /// The Python fleet, with sloguard reaching each worker on its Unix socket.
    PythonUnix,
}

pub enum Fleet {
    Rust(Backend),
    Python(PyFleet),
}

impl Fleet {
    /// `workers` workers of `kind`; `faults` are `(1-based worker, spec)` in the syntax both
    /// take (`block=250ms,every=4`).
    pub fn start(kind: FleetKind, workers: usize, faults: &[(usize, &str)]) -> Fleet {
        match kind {
            FleetKind::Rust => Fleet::Rust(
                Backend::start(BackendConfig {
                    workers,
                    faults: faults
                        .iter()
                        .map(|(w, f)| (*w, f.parse::<FaultSpec>().expect("a valid fault")))
                        .collect(),
                    ..BackendConfig::default()
                })
                .expect("backend starts"),
            ),
            FleetKind::Python | FleetKind::PythonUnix => Fleet::Python(
                PyFleet::start(&PyFleetConfig {
                    workers,
                    faults: faults.iter().map(|(w, f)| (*w, f.to_string())).collect(),
                    unix: kind == FleetKind::PythonUnix,
                    ..PyFleetConfig::default()
                })
                .expect("the python fleet starts (python3 with venv, and PyPI, are needed)"),
            ),
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Fleet::Rust(b) => b.addrs(),
            Fleet::Python(f) => f.addrs().to_vec(),
        }
    }

    /// The workers as sloguard's policy names them: `unix:` paths for a fleet started with
    /// Unix sockets, TCP addresses otherwise.
    pub fn workers(&self) -> Vec<String> {
        match self {
            Fleet::Python(f) if !f.unix_paths().is_empty() => f
                .unix_paths()
                .iter()
                .map(|p| format!("unix:{}", p.display()))
                .collect(),
            _ => self.addrs().iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Events stored by every worker together.
    pub fn total_events(&self) -> u64 {
        match self {
            Fleet::Rust(b) => b.store().total_events(),
            Fleet::Python(f) => f.total_events().expect("the fleet answers /debug/stats"),
        }
    }
}
