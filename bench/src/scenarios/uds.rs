//! Scenario: workers on Unix-domain sockets against TCP. In a pod, uvicorn can listen on a
//! socket file the sidecar shares (`--uds`), which skips the TCP stack on both sides of every
//! request. The Python fleet (4 uvicorn workers, each serving its TCP port and its socket
//! file from one loop) runs once; each proxy is started in front of it over TCP, then over
//! the sockets, every round: the closed-loop maximum on the incident's mix (all on the
//! system-under-test core, uvicorn included: the workers' side of the saving counts), and
//! the latency of an open loop at a fixed rate well under it.

use std::time::Duration;

use serde::Serialize;

use super::{say, Contender, Env, ProxyKind, SLOGUARD_ENFORCE};
use crate::configs::Balance;
use crate::loadgen::{ClosedLoop, Mix, OpenLoop};
use crate::stats::{median, ClosedSummary, OpenSummary};

/// Requests/s of the open-loop stretch: a third to a half of what the fleet serves through
/// a proxy on one shared core (2000-3000/s closed-loop on the machine of BENCHMARKS.md).
pub const OPEN_RATE: f64 = 1000.0;

/// One contender over one transport, one round.
#[derive(Debug, Clone, Serialize)]
pub struct UdsRound {
    pub contender: String,
    /// `tcp` or `unix`.
    pub transport: &'static str,
    pub closed: ClosedSummary,
    pub open: OpenSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Uds {
    pub rounds: Vec<UdsRound>,
    /// Rounds per contender and transport.
    pub round_count: usize,
    pub open_rate: f64,
    pub closed_secs: u64,
    pub open_secs: u64,
}

impl Uds {
    /// Median closed-loop requests/s and open-loop p50 / p99 (ms) of a contender over a
    /// transport; `None` if it did not run.
    pub fn medians(&self, contender: &str, transport: &str) -> Option<(f64, f64, f64)> {
        let r: Vec<&UdsRound> = self
            .rounds
            .iter()
            .filter(|r| r.contender == contender && r.transport == transport)
            .collect();
        if r.is_empty() {
            return None;
        }
        let m = |f: fn(&UdsRound) -> f64| median(&r.iter().map(|x| f(x)).collect::<Vec<_>>());
        Some((
            m(|x| x.closed.rps),
            m(|x| x.open.p50_ms),
            m(|x| x.open.p99_ms),
        ))
    }

    /// Failed answers over every round of a contender and transport (closed and open
    /// loop: errors, timeouts and sheds).
    pub fn failures(&self, contender: &str, transport: &str) -> u64 {
        self.rounds
            .iter()
            .filter(|r| r.contender == contender && r.transport == transport)
            .map(|r| r.closed.errors + r.open.errors + r.open.shed)
            .sum()
    }

    /// Contender names in run order.
    pub fn contenders(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rounds {
            if !names.contains(&r.contender.as_str()) {
                names.push(&r.contender);
            }
        }
        names
    }
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender::through("sloguard (enforce)", SLOGUARD_ENFORCE),
        Contender::through("nginx least_conn", ProxyKind::Nginx(Balance::LeastConn)),
        Contender::through("HAProxy leastconn", ProxyKind::Haproxy(Balance::LeastConn)),
    ]
}

pub fn run(env: &Env) -> anyhow::Result<Uds> {
    let plan = &env.plan;
    let fleet = env.python_fleet_unix(4)?;
    let tcp: Vec<String> = fleet.0.addrs.iter().map(|a| a.to_string()).collect();
    let unix = fleet.1.clone();
    let closed_cfg = ClosedLoop {
        connections: plan.closed_connections,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(plan.closed_secs),
        mix: Mix::Incident,
    };
    let open_cfg = OpenLoop {
        rate: OPEN_RATE,
        warmup: plan.warmup,
        duration: Duration::from_secs(plan.overhead_secs),
        mix: Mix::Incident,
        timeout: plan.timeout,
        max_in_flight: 2000,
        precise: env.gen_cpu.is_some(),
    };
    let mut rounds = Vec::new();
    for round in 1..=plan.rounds {
        for c in contenders() {
            let Some(kind) = c.proxy else { continue };
            if !env.available(Some(kind)) {
                if round == 1 {
                    say(format!("uds: {} not installed; skipped", c.name));
                }
                continue;
            }
            for (transport, workers) in [("tcp", &tcp), ("unix", &unix)] {
                say(format!("uds: {} over {transport}, round {round}", c.name));
                let proxy = env.proxy_named(kind, workers)?;
                let closed = env.closed(&[proxy.addr], &closed_cfg)?;
                let open = env.open(&[proxy.addr], &open_cfg)?;
                drop(proxy);
                rounds.push(UdsRound {
                    contender: c.name.into(),
                    transport,
                    closed,
                    open,
                });
            }
        }
    }
    Ok(Uds {
        rounds,
        round_count: plan.rounds,
        open_rate: OPEN_RATE,
        closed_secs: plan.closed_secs,
        open_secs: plan.overhead_secs,
    })
}
