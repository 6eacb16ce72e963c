//! The Markdown of the guard scenarios that run on both fleets: overload (twice and four
//! times the capacity, with priorities) and the lifecycle (cold start, steady, reload,
//! after idle).

use crate::report::{ms, pct, table};
use crate::scenarios::lifecycle::{FleetLifecycle, Lifecycle, CONNECTIONS, FAULT, PHASES};
use crate::scenarios::overload::{FleetOverload, Overload};
use crate::scenarios::starved::Starved;

pub fn starved(st: &Starved) -> String {
    let mut s = format!(
        "sloguard under a CPU limit of {} core (CFS quota, 100 ms period, as Kubernetes sets \
         it), pinned with the workers, in front of four healthy workers; open loop, 80% events \
         / 20% queries, at half and at twice the capacity measured direct. Medians of the \
         rounds.\n",
        st.quota_cores
    );
    for f in &st.fleets {
        s += &format!(
            "\n**{}**: capacity {:.0} requests/s.\n\n",
            f.fleet.name(),
            f.capacity_rps
        );
        let rows: Vec<Vec<String>> = f
            .results
            .iter()
            .map(|r| {
                let m = &r.median;
                let throttled_ms: Vec<f64> = r.throttled.iter().map(|t| t.1).collect();
                vec![
                    r.contender.clone(),
                    format!("{:.0}%", r.load * 100.0),
                    format!("{:.0}", m.goodput_rps),
                    pct(m.over_slo),
                    pct(m.shed_share),
                    ms(m.shed_p99_ms),
                    format!("{} ({})", m.errors, pct(m.error_share)),
                    ms(m.p50_ms),
                    ms(m.p99_ms),
                    format!("{:.0}", crate::stats::median(&throttled_ms)),
                ]
            })
            .collect();
        s += &table(
            &[
                "contender",
                "load",
                "SLO-goodput (req/s)",
                "over SLO",
                "shed (503)",
                "shed p99 (ms)",
                "errors, timeouts",
                "p50 (ms)",
                "p99 (ms)",
                "throttled (ms)",
            ],
            &rows,
        );
    }
    s
}

pub fn overload(o: &Overload) -> String {
    let mut s = String::from(
        "Every request holds its worker's loop 4 ms (`block=4ms,every=1,query_block=4ms` on \
         every worker); open loop at twice and four times the capacity measured direct \
         (closed loop, same mix): 20% events (critical, SLO 150 ms), 80% queries (normal, SLO \
         250 ms), so at 2x critical traffic is 40% of the capacity. SLO-goodput: 2xx answers \
         within their SLO per second. The generator gives up after 2 s (counted as errors). \
         Medians of the rounds.\n",
    );
    for f in &o.fleets {
        s += &overload_fleet(f);
    }
    s
}

fn overload_fleet(f: &FleetOverload) -> String {
    let mut s = format!(
        "\n**{}**: capacity {:.0} requests/s.\n\n",
        f.fleet.name(),
        f.capacity_rps
    );
    let rows: Vec<Vec<String>> = f
        .results
        .iter()
        .map(|r| {
            let share = |x: &crate::stats::OpenSummary| {
                if x.sent == 0 {
                    "-".to_string()
                } else {
                    pct(x.ok as f64 / x.sent as f64)
                }
            };
            vec![
                r.contender.clone(),
                format!("{}x", r.factor),
                format!("{:.0}", r.all.goodput_rps),
                pct(r.all.goodput_rps / f.capacity_rps.max(1.0)),
                share(&r.critical),
                share(&r.normal),
                pct(r.all.shed_share),
                ms(r.all.shed_p50_ms),
                ms(r.all.shed_p99_ms),
                format!("{} ({})", r.all.errors, pct(r.all.error_share)),
                ms(r.critical.p99_ms),
            ]
        })
        .collect();
    s += &table(
        &[
            "contender",
            "load",
            "SLO-goodput (req/s)",
            "of capacity",
            "critical 2xx",
            "normal 2xx",
            "shed (503)",
            "shed p50 (ms)",
            "shed p99 (ms)",
            "errors, timeouts",
            "critical p99 (ms)",
        ],
        &rows,
    );
    if !f.skipped.is_empty() {
        s += &format!(
            "\nNot run (proxy not installed): {}.\n",
            f.skipped.join(", ")
        );
    }
    s
}

pub fn lifecycle(l: &Lifecycle) -> String {
    let mut s = format!(
        "Worker 3 blocks its loop (`{FAULT}`); 80% events / 20% queries at half the healthy \
         capacity on {CONNECTIONS} client connections opened the instant the proxy accepts; \
         phases: cold start 0-3 s, steady 3-11 s, reload at 11 s (11-14 s; nginx gets SIGHUP, \
         HAProxy is not reloaded), 8 s idle, then the same load again (after idle, 22-27 s). \
         Medians of the rounds; latency from the intended send time.\n"
    );
    for f in &l.fleets {
        s += &fleet(f);
    }
    s
}

fn fleet(f: &FleetLifecycle) -> String {
    let mut s = format!(
        "\n**{}**: healthy capacity {:.0} requests/s (closed loop, direct), offered {:.0}/s.\n\n",
        f.fleet.name(),
        f.capacity_rps,
        f.rate
    );
    let rows: Vec<Vec<String>> = f
        .results
        .iter()
        .map(|r| {
            let m = &r.median;
            vec![
                r.contender.clone(),
                r.phase.to_string(),
                m.sent.to_string(),
                m.shed.to_string(),
                m.errors.to_string(),
                pct(m.over_slo),
                ms(m.p50_ms),
                ms(m.p99_ms),
                ms(m.p999_ms),
            ]
        })
        .collect();
    s += &table(
        &[
            "contender",
            "phase",
            "requests",
            "shed (503)",
            "errors",
            "over SLO",
            "p50 (ms)",
            "p99 (ms)",
            "p99.9 (ms)",
        ],
        &rows,
    );
    debug_assert_eq!(f.results.len() % PHASES.len(), 0);
    if !f.cpu.is_empty() {
        s += "\nCPU per second of load (medians of the rounds): the proxy's own, and how busy \
              the core it shares with the workers was (proxy, workers and everything else on it):\n\n";
        let share = |v: Option<f64>| v.map_or("-".to_string(), pct);
        let rows: Vec<Vec<String>> = f
            .cpu
            .iter()
            .map(|c| {
                vec![
                    c.contender.clone(),
                    share(c.proxy_share),
                    share(c.sut_core_busy),
                ]
            })
            .collect();
        s += &table(&["contender", "proxy CPU", "shared core busy"], &rows);
    }
    if !f.skipped.is_empty() {
        s += &format!(
            "\nNot run (proxy not installed): {}.\n",
            f.skipped.join(", ")
        );
    }
    s
}
