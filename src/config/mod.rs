//! Policy loading: the TOML mirror (`file`), the validated policy (`policy`) and its errors.
//! Each has a file per group of sections: `*_guard.rs` the SLO guard's (`[guard]`,
//! `[upstream.health]`, `[upstream.probe]`, `[concurrency]`, `[shedding]`),
//! `*_ratelimit.rs` `[ratelimit]`, `*_request.rs` `[limits]`, `[retry]` and `[log]`; the rest
//! (`[listen]`, `[upstream]`, routes) is in `file.rs` and `policy.rs`.
//!
//! Two layers, as in river: serde reads what the user wrote, then validation builds the
//! internal [`Policy`] with durations, resolved names and checked ranges. A policy that fails
//! validation is refused whole; nothing half-applies.

pub mod error;
pub mod file;
mod file_guard;
mod file_ratelimit;
mod file_request;
pub mod locate;
pub mod policy;

pub use crate::workers::MAX_WORKERS;
pub use error::{Location, PolicyError};
pub use policy::{Listen, Policy};
