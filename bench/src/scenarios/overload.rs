//! Scenario 3, overload: every worker blocks its loop 4 ms per event (capacity about 1000
//! events/s for four workers), and twice that is offered, ingest only. What counts: goodput
//! within the SLO, how much is shed (503) and how fast a shed answer comes back.

use serde::Serialize;

use super::{say, Contender, Env, MemSample, OpenResult, ProxyKind, SLOGUARD_ENFORCE};
use crate::configs::Balance;
use crate::loadgen::Mix;
use crate::stats::{self, OpenSummary};

/// Four workers, each handling at most 250 events/s.
pub const NOMINAL_CAPACITY: f64 = 1000.0;

/// `--fault` arguments: every worker blocks 4 ms per event.
pub fn faults() -> Vec<String> {
    (1..=4).map(|w| format!("{w}:block=4ms,every=1")).collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Overload {
    pub capacity_rps: f64,
    pub rate: f64,
    pub results: Vec<OpenResult>,
    pub skipped: Vec<String>,
    #[serde(skip)]
    pub memory: Vec<MemSample>,
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender {
            name: "sloguard (enforce)",
            proxy: Some(SLOGUARD_ENFORCE),
            only: None,
        },
        Contender {
            name: "nginx least_conn",
            proxy: Some(ProxyKind::Nginx(Balance::LeastConn)),
            only: None,
        },
        Contender {
            name: "HAProxy leastconn",
            proxy: Some(ProxyKind::Haproxy(Balance::LeastConn)),
            only: None,
        },
    ]
}

pub fn run(env: &Env) -> anyhow::Result<Overload> {
    let rate = 2.0 * NOMINAL_CAPACITY;
    let cfg = env.plan.open(
        rate,
        env.plan.overload_secs,
        Mix::Ingest,
        env.gen_cpu.is_some(),
    );
    let (list, skipped): (Vec<_>, Vec<_>) = contenders()
        .into_iter()
        .partition(|c| env.available(c.proxy));
    let mut rounds: Vec<Vec<OpenSummary>> = vec![Vec::new(); list.len()];
    let mut memory = Vec::new();
    for round in 0..env.plan.rounds {
        for (i, c) in list.iter().enumerate() {
            say(format!("overload: round {}, {}", round + 1, c.name));
            let backend = env.backend(4, &faults())?;
            let kind = c.proxy.expect("overload contenders are proxies");
            let proxy = env.proxy(kind, &backend.addrs)?;
            rounds[i].push(env.open(&[proxy.addr], &cfg)?);
            memory.push(MemSample::of("overload", c.name, &proxy));
        }
    }
    Ok(Overload {
        capacity_rps: NOMINAL_CAPACITY,
        rate,
        results: list
            .iter()
            .zip(rounds)
            .map(|(c, rounds)| OpenResult {
                contender: c.name.into(),
                median: stats::median_open(&rounds),
                rounds,
                ejections: Vec::new(),
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
    fn every_worker_gets_the_slow_handler() {
        assert_eq!(
            faults(),
            [
                "1:block=4ms,every=1",
                "2:block=4ms,every=1",
                "3:block=4ms,every=1",
                "4:block=4ms,every=1"
            ]
        );
    }
}
