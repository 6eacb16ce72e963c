//! The scenarios and what they share: the plan (how long, how often), the contenders, and
//! the result types written to the report. Starting processes lives in [`env`].
//!
//! - [`overhead`]: a fast backend; added latency at a fixed rate, and max throughput.
//! - [`incident`]: one worker blocking its loop 250 ms on one event in four.
//! - [`overload`]: every worker slow, twice the capacity offered.
//! - [`ratelimit`]: what per-tenant rate limits cost, in Redis and in-process.
//! - [`profile`]: not a scenario; sustained load on one proxy for `perf`.
//! - [`soak`]: not part of `all`; minutes of load with a fault a minute.
//! - [`uds`]: the Python fleet reached over TCP and over Unix sockets.

pub mod conns;
mod env;
pub mod incident;
pub mod lifecycle;
pub mod overhead;
pub mod overload;
pub mod profile;
pub mod ratelimit;
pub mod soak;
pub mod starved;
pub mod uds;

pub use env::{Env, FleetKind, ProxyKind, Running};

use std::time::Duration;

use serde::Serialize;

use crate::loadgen::{Mix, OpenLoop};
use crate::stats::{ClosedSummary, OpenSummary};

/// CPU other processes may use during a measurement (in cores) before it counts as
/// disturbed: the overhead scenario then measures again; the others report it.
pub const DISTURBED: f64 = 0.1;

/// How long and how often.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub warmup: Duration,
    pub overhead_rate: f64,
    pub overhead_secs: u64,
    pub closed_secs: u64,
    pub closed_connections: usize,
    pub capacity_secs: u64,
    pub incident_secs: u64,
    pub overload_secs: u64,
    /// The generator gives up on a request this long after its intended start.
    pub timeout: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        Plan {
            quick,
            rounds: if quick { 1 } else { 3 },
            warmup: Duration::from_secs(1),
            overhead_rate: 2000.0,
            overhead_secs: if quick { 2 } else { 5 },
            closed_secs: if quick { 2 } else { 4 },
            closed_connections: 32,
            capacity_secs: if quick { 2 } else { 3 },
            incident_secs: if quick { 3 } else { 10 },
            overload_secs: if quick { 3 } else { 5 },
            timeout: Duration::from_secs(2),
        }
    }

    pub fn open(&self, rate: f64, secs: u64, mix: Mix, precise: bool) -> OpenLoop {
        OpenLoop {
            rate,
            warmup: self.warmup,
            duration: Duration::from_secs(secs),
            mix,
            timeout: self.timeout,
            max_in_flight: 6000,
            precise,
        }
    }
}

/// A contender: who the generator talks to.
#[derive(Debug, Clone)]
pub struct Contender {
    pub name: &'static str,
    /// `None`: direct to the workers, round-robin by the generator.
    pub proxy: Option<ProxyKind>,
    /// Only these workers (0-based), for the healthy-only ideal.
    pub only: Option<&'static [usize]>,
}

impl Contender {
    /// `proxy` in front of every worker.
    pub const fn through(name: &'static str, proxy: ProxyKind) -> Contender {
        Contender {
            name,
            proxy: Some(proxy),
            only: None,
        }
    }
}

pub const SLOGUARD_ENFORCE: ProxyKind = ProxyKind::Sloguard {
    mode: "enforce",
    fixed_limit: None,
};
pub const SLOGUARD_OFF: ProxyKind = ProxyKind::Sloguard {
    mode: "off",
    fixed_limit: None,
};

/// One contender's rounds and their median, open loop.
#[derive(Debug, Clone, Serialize)]
pub struct OpenResult {
    pub contender: String,
    pub rounds: Vec<OpenSummary>,
    pub median: OpenSummary,
    /// sloguard only: ejections per round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ejections: Vec<u64>,
}

/// One contender's rounds and their median, closed loop.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedResult {
    pub contender: String,
    pub rounds: Vec<ClosedSummary>,
    pub median: ClosedSummary,
}

/// Resident memory of a proxy: after start (idle) and at the end of a run, KiB.
#[derive(Debug, Clone, Serialize)]
pub struct MemSample {
    pub scenario: &'static str,
    pub contender: String,
    pub idle_kib: Option<u64>,
    pub end_kib: Option<u64>,
    /// VmHWM, summed like the RSS.
    pub peak_kib: Option<u64>,
}

impl MemSample {
    pub fn of(scenario: &'static str, contender: &str, r: &Running) -> MemSample {
        MemSample {
            scenario,
            contender: contender.into(),
            idle_kib: r.idle_rss_kib,
            end_kib: r.proc.rss_kib(),
            peak_kib: r.proc.peak_rss_kib(),
        }
    }
}

/// Prints a progress line (the harness's own log, on stderr).
pub fn say(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// `reason: count` of the 503s, most frequent first (from `x-sloguard-reason`).
pub fn shed_reasons(outcomes: &[crate::loadgen::Outcome]) -> String {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for o in outcomes.iter().filter(|o| o.status == 503) {
        let reason = o.reason.unwrap_or("-");
        match counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((reason, 1)),
        }
    }
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_plan_is_shorter() {
        let (q, f) = (Plan::new(true), Plan::new(false));
        assert!(q.rounds < f.rounds && q.incident_secs < f.incident_secs);
    }
}
