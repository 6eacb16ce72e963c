//! Scenario 3, overload, on each fleet: every request holds its worker's loop 4 ms (events
//! `block=4ms`, queries `query_block=4ms`: capacity about 1000/s for four workers, measured
//! first), and twice then four times that is offered: 20% events (critical), 80% queries
//! (normal), so at twice the capacity critical traffic is 40% of it. What counts: goodput
//! within the SLO, that critical requests keep succeeding while normal ones absorb the
//! shedding, and how fast a shed answer comes back.

use std::time::Duration;

use serde::Serialize;

use super::{say, Contender, Env, MemSample, ProxyKind, SLOGUARD_ENFORCE};
use crate::configs::Balance;
use crate::loadgen::{ClosedLoop, Kind, Mix};
use crate::scenarios::env::FleetKind;
use crate::stats::{self, ClosedSummary, OpenSummary};

/// `--fault` arguments: every worker holds its loop 4 ms per event and per query.
pub fn faults() -> Vec<String> {
    (1..=4)
        .map(|w| format!("{w}:block=4ms,every=1,query_block=4ms"))
        .collect()
}

/// How far over capacity the offered load goes.
pub const FACTORS: [f64; 2] = [2.0, 4.0];

/// One contender at one load, over the rounds: every request, the critical ones (events)
/// and the normal ones (queries).
#[derive(Debug, Clone, Serialize)]
pub struct OverloadResult {
    pub contender: String,
    pub factor: f64,
    pub all: OpenSummary,
    pub critical: OpenSummary,
    pub normal: OpenSummary,
    pub rounds: Vec<OpenSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetOverload {
    pub fleet: FleetKind,
    /// Closed-loop throughput of the slowed workers, direct, on the same mix.
    pub capacity_rps: f64,
    pub capacity: ClosedSummary,
    pub results: Vec<OverloadResult>,
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overload {
    pub fleets: Vec<FleetOverload>,
    #[serde(skip)]
    pub memory: Vec<MemSample>,
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender::through("sloguard (enforce)", SLOGUARD_ENFORCE),
        Contender::through("nginx least_conn", ProxyKind::Nginx(Balance::LeastConn)),
        Contender::through("HAProxy leastconn", ProxyKind::Haproxy(Balance::LeastConn)),
    ]
}

pub fn run(env: &Env, fleets: &[FleetKind]) -> anyhow::Result<Overload> {
    let mut out = Vec::new();
    let mut memory = Vec::new();
    for &fleet in fleets {
        out.push(run_fleet(env, fleet, &mut memory)?);
    }
    Ok(Overload {
        fleets: out,
        memory,
    })
}

fn run_fleet(
    env: &Env,
    fleet: FleetKind,
    memory: &mut Vec<MemSample>,
) -> anyhow::Result<FleetOverload> {
    say(format!(
        "overload, {}: measuring the slowed capacity (closed loop, direct)",
        fleet.name()
    ));
    let capacity = {
        let backend = env.fleet(fleet, 4, &faults())?;
        env.closed(
            &backend.addrs,
            &ClosedLoop {
                connections: 64,
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs(env.plan.capacity_secs),
                mix: Mix::Priority,
            },
        )?
    };
    let (list, skipped): (Vec<_>, Vec<_>) = contenders()
        .into_iter()
        .partition(|c| env.available(c.proxy));
    let mut results = Vec::new();
    for factor in FACTORS {
        let rate = (capacity.rps * factor / 100.0).round() * 100.0;
        let cfg = env.plan.open(
            rate,
            env.plan.overload_secs,
            Mix::Priority,
            env.gen_cpu.is_some(),
        );
        // [round][contender] -> (all, critical, normal)
        let mut per: Vec<Vec<[OpenSummary; 3]>> = vec![Vec::new(); list.len()];
        for round in 0..env.plan.rounds {
            for (i, c) in list.iter().enumerate() {
                say(format!(
                    "overload, {}: {factor}x ({rate:.0}/s), round {}, {}",
                    fleet.name(),
                    round + 1,
                    c.name
                ));
                let backend = env.fleet(fleet, 4, &faults())?;
                let kind = c.proxy.expect("overload contenders are proxies");
                let proxy = env.proxy(kind, &backend.addrs)?;
                let (run, foreign) = env.open_raw(&[proxy.addr], &cfg)?;
                let split = |k: Option<Kind>| {
                    let of: Vec<_> = run
                        .outcomes
                        .iter()
                        .filter(|o| k.is_none_or(|k| o.kind == k))
                        .copied()
                        .collect();
                    let mut s = stats::summarize_open(&of, cfg.duration, &run.send_lag);
                    s.foreign_cpu = foreign;
                    s
                };
                per[i].push([
                    split(None),
                    split(Some(Kind::Ingest)),
                    split(Some(Kind::Query)),
                ]);
                memory.push(MemSample::of("overload", c.name, &proxy));
            }
        }
        for (c, rounds) in list.iter().zip(per) {
            let pick = |j: usize| rounds.iter().map(|r| r[j].clone()).collect::<Vec<_>>();
            results.push(OverloadResult {
                contender: c.name.into(),
                factor,
                all: stats::median_open(&pick(0)),
                critical: stats::median_open(&pick(1)),
                normal: stats::median_open(&pick(2)),
                rounds: pick(0),
            });
        }
    }
    Ok(FleetOverload {
        fleet,
        capacity_rps: capacity.rps,
        capacity,
        results,
        skipped: skipped.iter().map(|c| c.name.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_gets_the_slow_handlers() {
        assert_eq!(faults().len(), 4);
        assert_eq!(faults()[2], "3:block=4ms,every=1,query_block=4ms");
    }
}
