//! Scenario: a starved sidecar. sloguard runs under a CPU limit of half a core (a CFS quota
//! of 50 ms per 100 ms period, as a Kubernetes limit of `500m` sets it) in front of healthy
//! workers, at half and at twice their capacity, 80% events / 20% queries. With the guard
//! off every request waits its turn for the proxy's CPU; with it on, sloguard sees its own
//! backlog (its loop's lateness) and sheds the excess at once. What counts: no sheds at
//! half load beyond what the quota forces, and at twice the capacity at least the guard-off
//! SLO-goodput with fast 503s.

use serde::Serialize;

use super::{say, Contender, Env, SLOGUARD_ENFORCE, SLOGUARD_OFF};
use crate::cgroup::CpuLimit;
use crate::loadgen::Mix;
use crate::scenarios::env::FleetKind;
use crate::scenarios::lifecycle::measure_capacity;
use crate::stats::{self, OpenSummary};

/// The proxy's CPU limit, in cores.
pub const QUOTA: f64 = 0.5;

/// Offered load, as a share of the healthy capacity.
pub const LOADS: [f64; 2] = [0.5, 2.0];

#[derive(Debug, Clone, Serialize)]
pub struct StarvedResult {
    pub contender: String,
    pub load: f64,
    pub median: OpenSummary,
    pub rounds: Vec<OpenSummary>,
    /// CFS periods throttled, and time throttled (ms), per round.
    pub throttled: Vec<(u64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetStarved {
    pub fleet: FleetKind,
    pub capacity_rps: f64,
    pub results: Vec<StarvedResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Starved {
    pub quota_cores: f64,
    pub fleets: Vec<FleetStarved>,
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender::through("sloguard (enforce)", SLOGUARD_ENFORCE),
        Contender::through("sloguard (off)", SLOGUARD_OFF),
    ]
}

pub fn run(env: &Env, fleets: &[FleetKind]) -> anyhow::Result<Starved> {
    let mut out = Vec::new();
    for &fleet in fleets {
        let capacity = measure_capacity(env, fleet)?.rps;
        let mut results = Vec::new();
        for load in LOADS {
            let rate = (capacity * load / 100.0).round() * 100.0;
            let cfg = env.plan.open(
                rate,
                env.plan.overload_secs,
                Mix::Incident,
                env.gen_cpu.is_some(),
            );
            for c in contenders() {
                let mut rounds = Vec::new();
                let mut throttled = Vec::new();
                for round in 0..env.plan.rounds {
                    say(format!(
                        "starved, {}: {:.0}% of capacity ({rate:.0}/s), round {}, {}",
                        fleet.name(),
                        load * 100.0,
                        round + 1,
                        c.name
                    ));
                    let backend = env.fleet(fleet, 4, &[])?;
                    let kind = c.proxy.expect("starved contenders are proxies");
                    let proxy = env.proxy(kind, &backend.addrs)?;
                    let limit = CpuLimit::apply(proxy.proc.pid(), QUOTA)?;
                    let before = limit.throttled().unwrap_or_default();
                    let (run, foreign) = env.open_raw(&[proxy.addr], &cfg)?;
                    let mut summary =
                        stats::summarize_open(&run.outcomes, cfg.duration, &run.send_lag);
                    summary.foreign_cpu = foreign;
                    if summary.shed > 0 {
                        say(format!(
                            "  shed by reason: {}",
                            super::shed_reasons(&run.outcomes)
                        ));
                    }
                    rounds.push(summary);
                    let after = limit.throttled().unwrap_or_default();
                    throttled.push((after.0 - before.0, after.1 - before.1));
                }
                out_push(&mut results, c.name, load, rounds, throttled);
            }
        }
        out.push(FleetStarved {
            fleet,
            capacity_rps: capacity,
            results,
        });
    }
    Ok(Starved {
        quota_cores: QUOTA,
        fleets: out,
    })
}

fn out_push(
    results: &mut Vec<StarvedResult>,
    name: &str,
    load: f64,
    rounds: Vec<OpenSummary>,
    throttled: Vec<(u64, f64)>,
) {
    results.push(StarvedResult {
        contender: name.to_string(),
        load,
        median: stats::median_open(&rounds),
        rounds,
        throttled,
    });
}
