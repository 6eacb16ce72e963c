//! Scenario 2, the incident: four workers, worker 3 blocking its event loop 250 ms on one
//! event in four; 80% ingest / 20% queries, open loop at about half the healthy capacity
//! (measured first, closed loop, direct). Each contender gets a fresh backend and proxy per
//! round; "healthy only" (sloguard, guard off, in front of workers 1, 2 and 4) is the ideal.

use std::time::Duration;

use serde::Serialize;

use super::{
    say, Contender, Env, MemSample, OpenResult, ProxyKind, SLOGUARD_ENFORCE, SLOGUARD_OFF,
};
use crate::configs::Balance;
use crate::loadgen::{ClosedLoop, Mix};
use crate::stats::{self, ClosedSummary, OpenSummary};

/// The incident's fault, as `analytics-backend --fault` takes it.
pub const FAULT: &str = "3:block=250ms,every=4";

/// What the incident scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// Closed-loop throughput of the healthy backend on the same mix, direct.
    pub capacity_rps: f64,
    /// That measurement in full (CPU shares show whether the generator was the limit).
    pub capacity: ClosedSummary,
    pub rate: f64,
    pub results: Vec<OpenResult>,
    pub skipped: Vec<String>,
    #[serde(skip)]
    pub memory: Vec<MemSample>,
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender {
            name: "direct (round-robin)",
            proxy: None,
            only: None,
        },
        Contender::through("sloguard (enforce)", SLOGUARD_ENFORCE),
        Contender::through("sloguard (off)", SLOGUARD_OFF),
        Contender::through("nginx round-robin", ProxyKind::Nginx(Balance::RoundRobin)),
        Contender::through("nginx least_conn", ProxyKind::Nginx(Balance::LeastConn)),
        Contender::through("HAProxy leastconn", ProxyKind::Haproxy(Balance::LeastConn)),
        Contender {
            name: "healthy only (1,2,4)",
            proxy: Some(SLOGUARD_OFF),
            only: Some(&[0, 1, 3]),
        },
    ]
}

/// Half the measured capacity, in steps of 100, between 200 and 2000 requests/s (the
/// incident's steady traffic was 2-3k/s per pod).
pub fn rate_for(capacity_rps: f64) -> f64 {
    ((capacity_rps * 0.5 / 100.0).floor() * 100.0).clamp(200.0, 2000.0)
}

fn measure_capacity(env: &Env) -> anyhow::Result<ClosedSummary> {
    say("incident: measuring the healthy capacity (closed loop, direct, 80/20 mix)");
    let backend = env.backend(4, &[])?;
    let cfg = ClosedLoop {
        connections: 64,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(env.plan.capacity_secs),
        mix: Mix::Incident,
    };
    env.closed(&backend.addrs, &cfg)
}

pub fn run(env: &Env) -> anyhow::Result<Incident> {
    let capacity = measure_capacity(env)?;
    let capacity_rps = capacity.rps;
    let rate = rate_for(capacity_rps);
    say(format!(
        "incident: healthy capacity {capacity_rps:.0} req/s, offering {rate:.0} req/s"
    ));
    let cfg = env.plan.open(
        rate,
        env.plan.incident_secs,
        Mix::Incident,
        env.gen_cpu.is_some(),
    );
    let (list, skipped): (Vec<_>, Vec<_>) = contenders()
        .into_iter()
        .partition(|c| env.available(c.proxy));
    let mut rounds: Vec<Vec<OpenSummary>> = vec![Vec::new(); list.len()];
    let mut ejections: Vec<Vec<u64>> = vec![Vec::new(); list.len()];
    let mut memory = Vec::new();
    for round in 0..env.plan.rounds {
        for (i, c) in list.iter().enumerate() {
            say(format!("incident: round {}, {}", round + 1, c.name));
            let backend = env.backend(4, &[FAULT.to_string()])?;
            let workers: Vec<_> = match c.only {
                Some(idx) => idx.iter().map(|&j| backend.addrs[j]).collect(),
                None => backend.addrs.clone(),
            };
            match c.proxy {
                None => rounds[i].push(env.open(&workers, &cfg)?),
                Some(kind) => {
                    let proxy = env.proxy(kind, &workers)?;
                    rounds[i].push(env.open(&[proxy.addr], &cfg)?);
                    if let Some(n) = proxy.ejections() {
                        ejections[i].push(n);
                    }
                    memory.push(MemSample::of("incident", c.name, &proxy));
                }
            }
        }
    }
    Ok(Incident {
        capacity_rps,
        capacity,
        rate,
        results: list
            .iter()
            .zip(rounds.into_iter().zip(ejections))
            .map(|(c, (rounds, ejections))| OpenResult {
                contender: c.name.into(),
                median: stats::median_open(&rounds),
                rounds,
                ejections,
            })
            .collect(),
        skipped: skipped.iter().map(|c| c.name.to_string()).collect(),
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_half_capacity_rounded_down_and_bounded() {
        assert_eq!(rate_for(3000.0), 1500.0);
        assert_eq!(rate_for(3190.0), 1500.0);
        assert_eq!(rate_for(100.0), 200.0);
        assert_eq!(rate_for(50_000.0), 2000.0);
    }
}
