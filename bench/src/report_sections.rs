//! The Markdown of each scenario: its tables (medians over rounds) and a headline line
//! computed from the same numbers.

use crate::report::{added_us, find_result, ms, pct, table};
use crate::scenarios::incident::{Incident, FAULT};
use crate::scenarios::overhead::Overhead;
use crate::scenarios::OpenResult;

const SG: &str = "sloguard (enforce)";

fn skipped(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("\nNot run (proxy not installed): {}.\n", names.join(", "))
    }
}

fn ejections(r: &OpenResult) -> String {
    if r.ejections.is_empty() {
        "-".into()
    } else {
        r.ejections
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn overhead(o: &Overhead) -> String {
    let direct = find_result(&o.open, "direct").map(|d| d.median.clone());
    let rows: Vec<Vec<String>> = o
        .open
        .iter()
        .map(|r| {
            let m = &r.median;
            let (a50, a99) = match &direct {
                Some(d) if r.contender != "direct" => {
                    (added_us(m.p50_ms - d.p50_ms), added_us(m.p99_ms - d.p99_ms))
                }
                _ => ("-".into(), "-".into()),
            };
            vec![
                r.contender.clone(),
                ms(m.p50_ms),
                ms(m.p99_ms),
                ms(m.p999_ms),
                a50,
                a99,
                m.errors.to_string(),
                ms(m.send_lag_p99_ms),
            ]
        })
        .collect();
    let mut s = format!(
        "Open loop, `GET /healthz`, {:.0} requests/s, latency from the intended send time \
         (medians of the rounds):\n\n",
        o.rate
    );
    s += &table(
        &[
            "contender",
            "p50 (ms)",
            "p99 (ms)",
            "p99.9 (ms)",
            "added p50",
            "added p99",
            "errors",
            "generator lag p99 (ms)",
        ],
        &rows,
    );
    let nginx_rps = o
        .closed
        .iter()
        .find(|c| c.contender.starts_with("nginx"))
        .map(|c| c.median.rps);
    let core = |v: Option<f64>| v.map_or("-".into(), pct);
    let rows: Vec<Vec<String>> = o
        .closed
        .iter()
        .map(|c| {
            let m = &c.median;
            vec![
                c.contender.clone(),
                format!("{:.0}", m.rps),
                nginx_rps.map_or("-".into(), |n| format!("{:.2}x", m.rps / n)),
                ms(m.p50_ms),
                ms(m.p99_ms),
                core(m.cpu_sut),
                core(m.cpu_gen),
                m.errors.to_string(),
            ]
        })
        .collect();
    s += &format!(
        "\nClosed loop (max throughput), `GET /healthz`, {} keep-alive connections:\n\n",
        o.connections
    );
    s += &table(
        &[
            "contender",
            "requests/s",
            "vs nginx",
            "p50 (ms)",
            "p99 (ms)",
            "backend+proxy core busy",
            "generator core busy",
            "errors",
        ],
        &rows,
    );
    let sg_open = find_result(&o.open, SG);
    let sg_closed = o.closed.iter().find(|c| c.contender == SG);
    if let (Some(d), Some(sg), Some(cl), Some(n)) = (&direct, sg_open, sg_closed, nginx_rps) {
        s += &format!(
            "\n**Headline**: sloguard (guard enforcing) adds {} at p50 and {} at p99 over direct \
             at {:.0} requests/s; its max throughput is {:.0} requests/s, {:.2}x nginx's {:.0}.\n",
            added_us(sg.median.p50_ms - d.p50_ms),
            added_us(sg.median.p99_ms - d.p99_ms),
            o.rate,
            cl.median.rps,
            cl.median.rps / n,
            n
        );
    }
    s + &skipped(&o.skipped)
}

pub fn incident(i: &Incident) -> String {
    let rows: Vec<Vec<String>> = i
        .results
        .iter()
        .map(|r| {
            let m = &r.median;
            vec![
                r.contender.clone(),
                ms(m.p50_ms),
                ms(m.p95_ms),
                ms(m.p99_ms),
                ms(m.p999_ms),
                format!(
                    "{} ({})",
                    m.errors + m.shed,
                    pct(m.error_share + m.shed_share)
                ),
                pct(m.over_slo),
                format!("{:.0}", m.goodput_rps),
                ejections(r),
            ]
        })
        .collect();
    let gen_busy = i
        .capacity
        .cpu_gen
        .map(|g| format!(", generator core {} busy", pct(g)))
        .unwrap_or_default();
    let mut s = format!(
        "`--fault {FAULT}`; 80% `POST /v1/events`, 20% `GET /v1/metrics`, open loop at {:.0} \
         requests/s: half the healthy capacity measured first (closed loop, direct: {:.0} \
         requests/s{gen_busy}), capped at 2000. Latency over every request, failures \
         included; SLO: ingest 150 ms, query 250 ms (medians of the rounds):\n\n",
        i.rate, i.capacity_rps
    );
    s += &table(
        &[
            "contender",
            "p50 (ms)",
            "p95 (ms)",
            "p99 (ms)",
            "p99.9 (ms)",
            "errors + 503",
            "over SLO",
            "goodput in SLO (req/s)",
            "ejections per round",
        ],
        &rows,
    );
    let over = |n: &str| find_result(&i.results, n).map(|r| pct(r.median.over_slo));
    if let (Some(on), Some(off), Some(ideal)) = (
        over(SG),
        over("sloguard (off)"),
        over("healthy only (1,2,4)"),
    ) {
        let others: Vec<String> = i
            .results
            .iter()
            .filter(|r| !r.contender.starts_with("sloguard") && !r.contender.starts_with("healthy"))
            .map(|r| format!("{} {}", r.contender, pct(r.median.over_slo)))
            .collect();
        s += &format!(
            "\n**Headline**: requests over their SLO: sloguard enforcing {on}, the healthy \
             workers alone {ideal}, sloguard with the guard off {off}; {}.\n",
            others.join(", ")
        );
    }
    s + &skipped(&i.skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::ClosedResult;
    use crate::stats::{ClosedSummary, OpenSummary};

    fn open(name: &str, p50: f64, p99: f64) -> OpenResult {
        let m = OpenSummary {
            p50_ms: p50,
            p99_ms: p99,
            ..Default::default()
        };
        OpenResult {
            contender: name.into(),
            rounds: vec![m.clone()],
            median: m,
            ejections: vec![],
        }
    }

    fn closed(name: &str, rps: f64) -> ClosedResult {
        let m = ClosedSummary {
            rps,
            ..Default::default()
        };
        ClosedResult {
            contender: name.into(),
            rounds: vec![m.clone()],
            median: m,
        }
    }

    #[test]
    fn overhead_reports_added_latency_and_throughput_ratio() {
        let o = Overhead {
            rate: 2000.0,
            open: vec![
                open("direct", 0.100, 0.200),
                open(SG, 0.150, 0.300),
                open("nginx round-robin", 0.120, 0.250),
            ],
            closed: vec![
                closed("direct", 30000.0),
                closed(SG, 12000.0),
                closed("nginx round-robin", 10000.0),
            ],
            connections: 32,
            reruns: 0,
            skipped: vec!["HAProxy leastconn".into()],
            memory: vec![],
        };
        let s = overhead(&o);
        assert!(s.contains("| sloguard (enforce) | 0.150 | 0.300 |"), "{s}");
        assert!(s.contains("+50 µs | +100 µs"), "{s}");
        assert!(s.contains("| sloguard (enforce) | 12000 | 1.20x |"), "{s}");
        assert!(s.contains("adds +50 µs at p50 and +100 µs at p99"), "{s}");
        assert!(s.contains("1.20x nginx's 10000"), "{s}");
        assert!(
            s.contains("Not run (proxy not installed): HAProxy leastconn."),
            "{s}"
        );
    }
}
