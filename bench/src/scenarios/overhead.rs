//! Scenario 1, overhead: four healthy workers, `GET /healthz`. Every contender is started
//! once and measured in turn, round after round: open loop at a fixed rate (added latency
//! against direct), then closed loop (max throughput).

use serde::Serialize;

use super::{
    say, ClosedResult, Contender, Env, MemSample, OpenResult, ProxyKind, Running, DISTURBED,
    SLOGUARD_OFF,
};
use crate::configs::Balance;
use crate::loadgen::{ClosedLoop, Mix};
use crate::stats;

/// What the overhead scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub rate: f64,
    pub open: Vec<OpenResult>,
    pub closed: Vec<ClosedResult>,
    pub connections: usize,
    /// Measurements run again because other processes took CPU meanwhile.
    pub reruns: u32,
    pub skipped: Vec<String>,
    #[serde(skip)]
    pub memory: Vec<MemSample>,
}

pub fn contenders() -> Vec<Contender> {
    vec![
        Contender {
            name: "direct",
            proxy: None,
            only: None,
        },
        Contender {
            name: "sloguard (enforce)",
            // Limits pinned high so the guard decides on every request but never queues.
            proxy: Some(ProxyKind::Sloguard {
                mode: "enforce",
                fixed_limit: Some(1024),
            }),
            only: None,
        },
        Contender::through("sloguard (off)", SLOGUARD_OFF),
        Contender::through("Pingora (bare)", ProxyKind::BarePingora),
        Contender::through("nginx round-robin", ProxyKind::Nginx(Balance::RoundRobin)),
        Contender::through("HAProxy leastconn", ProxyKind::Haproxy(Balance::LeastConn)),
    ]
}

pub fn run(env: &Env) -> anyhow::Result<Overhead> {
    let plan = &env.plan;
    say("overhead: starting the backend (4 workers, no fault) and every contender");
    let backend = env.backend(4, &[])?;
    let mut skipped = Vec::new();
    let mut live: Vec<(Contender, Option<Running>)> = Vec::new();
    for c in contenders() {
        if !env.available(c.proxy) {
            skipped.push(c.name.to_string());
            continue;
        }
        let running = match c.proxy {
            Some(kind) => Some(env.proxy(kind, &backend.addrs)?),
            None => None,
        };
        live.push((c, running));
    }
    let targets = |r: &Option<Running>| match r {
        Some(r) => vec![r.addr],
        None => backend.addrs.clone(),
    };

    let mut reruns = 0;
    let precise = env.gen_cpu.is_some();
    let open_cfg = plan.open(plan.overhead_rate, plan.overhead_secs, Mix::Health, precise);
    let mut open: Vec<Vec<stats::OpenSummary>> = vec![Vec::new(); live.len()];
    for round in 0..plan.rounds {
        for (i, (c, r)) in live.iter().enumerate() {
            say(format!(
                "overhead: open loop, round {}, {}",
                round + 1,
                c.name
            ));
            let what = format!("overhead, open loop, {}", c.name);
            let s = undisturbed(
                &mut reruns,
                &what,
                || env.open(&targets(r), &open_cfg),
                |s| s.foreign_cpu,
            )?;
            open[i].push(s);
        }
    }

    let closed_cfg = ClosedLoop {
        connections: plan.closed_connections,
        warmup: std::time::Duration::from_millis(500),
        duration: std::time::Duration::from_secs(plan.closed_secs),
        mix: Mix::Health,
    };
    let mut closed: Vec<Vec<stats::ClosedSummary>> = vec![Vec::new(); live.len()];
    for round in 0..plan.rounds {
        for (i, (c, r)) in live.iter().enumerate() {
            say(format!(
                "overhead: closed loop, round {}, {}",
                round + 1,
                c.name
            ));
            let what = format!("overhead, closed loop, {}", c.name);
            let s = undisturbed(
                &mut reruns,
                &what,
                || env.closed(&targets(r), &closed_cfg),
                |s| s.foreign_cpu,
            )?;
            closed[i].push(s);
        }
    }

    let memory = live
        .iter()
        .filter_map(|(c, r)| Some(MemSample::of("overhead", c.name, r.as_ref()?)))
        .collect();
    Ok(Overhead {
        rate: plan.overhead_rate,
        open: live
            .iter()
            .zip(open)
            .map(|((c, _), rounds)| OpenResult {
                contender: c.name.into(),
                median: stats::median_open(&rounds),
                rounds,
                ejections: Vec::new(),
            })
            .collect(),
        closed: live
            .iter()
            .zip(closed)
            .map(|((c, _), rounds)| ClosedResult {
                contender: c.name.into(),
                median: stats::median_closed(&rounds),
                rounds,
            })
            .collect(),
        connections: plan.closed_connections,
        reruns,
        skipped,
        memory,
    })
}

/// Runs a measurement again (twice at most) while other processes used more than
/// [`DISTURBED`] of a core during it; counts the reruns.
pub(super) fn undisturbed<T>(
    reruns: &mut u32,
    what: &str,
    mut measure: impl FnMut() -> anyhow::Result<T>,
    foreign: impl Fn(&T) -> f64,
) -> anyhow::Result<T> {
    let mut s = measure()?;
    for _ in 0..2 {
        if foreign(&s) <= DISTURBED {
            break;
        }
        say(format!(
            "{what}: other processes used {:.0}% of a core meanwhile; measuring again",
            foreign(&s) * 100.0
        ));
        *reruns += 1;
        s = measure()?;
    }
    Ok(s)
}
