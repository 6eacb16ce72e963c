//! The report: every result of a run (written as JSON), its Markdown tables, and filling
//! them into BENCHMARKS.md between `<!-- bench:NAME -->` / `<!-- /bench:NAME -->` markers,
//! so the prose around them stays as written and every number comes from the run.

use serde::Serialize;

use crate::micro::Micro;
use crate::scenarios::incident::Incident;
use crate::scenarios::lifecycle::Lifecycle;
use crate::scenarios::overhead::Overhead;
use crate::scenarios::overload::Overload;
use crate::scenarios::ratelimit::RateLimits;
use crate::scenarios::{MemSample, OpenResult, Plan, DISTURBED};
use crate::stats::median;
use crate::sysinfo::Machine;

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub generated_at: String,
    pub command: String,
    pub plan: Plan,
    pub pinning: String,
    pub machine: Machine,
    /// CPU busy share of the whole machine in the second before the scenarios (others'
    /// work: nothing of ours runs then).
    pub busy_before: f64,
    pub total_secs: f64,
    pub overhead: Option<Overhead>,
    pub incident: Option<Incident>,
    pub overload: Option<Overload>,
    pub lifecycle: Option<Lifecycle>,
    pub starved: Option<crate::scenarios::starved::Starved>,
    pub ratelimit: Option<RateLimits>,
    pub conns: Option<crate::scenarios::conns::Conns>,
    pub uds: Option<crate::scenarios::uds::Uds>,
    pub memory: Vec<MemSample>,
    pub micro: Vec<Micro>,
    /// Parts that failed, and why.
    pub failures: Vec<String>,
}

/// Used when BENCHMARKS.md does not exist yet: headings and markers only.
pub const SKELETON: &str = "# Benchmarks\n\n## Run\n\n<!-- bench:run -->\n<!-- /bench:run -->\n\n\
## 1. Overhead\n\n<!-- bench:overhead -->\n<!-- /bench:overhead -->\n\n\
## 2. Stalled worker\n\n<!-- bench:incident -->\n<!-- /bench:incident -->\n\n\
## 3. Overload\n\n<!-- bench:overload -->\n<!-- /bench:overload -->\n\n\
## 3b. Lifecycle\n\n<!-- bench:lifecycle -->\n<!-- /bench:lifecycle -->\n\n\
## 3c. Starved sidecar\n\n<!-- bench:starved -->\n<!-- /bench:starved -->\n\n\
## 4. Rate limits\n\n<!-- bench:ratelimit -->\n<!-- /bench:ratelimit -->\n\n\
## 4b. Workers on Unix sockets\n\n<!-- bench:uds -->\n<!-- /bench:uds -->\n\n\
## 5. Memory\n\n<!-- bench:memory -->\n<!-- /bench:memory -->\n\n\
<!-- bench:conns -->\n<!-- /bench:conns -->\n\n\
## 6. Soak\n\n<!-- bench:soak -->\n<!-- /bench:soak -->\n\n\
## Micro-benchmarks\n\n<!-- bench:micro -->\n<!-- /bench:micro -->\n";

/// Replaces what is between the markers of section `name`; `None` if they are missing.
pub fn fill(doc: &str, name: &str, body: &str) -> Option<String> {
    let open = format!("<!-- bench:{name} -->");
    let close = format!("<!-- /bench:{name} -->");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&close)?;
    Some(format!(
        "{}\n{}\n{}",
        &doc[..start],
        body.trim_end(),
        &doc[end..]
    ))
}

/// A Markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", headers.join(" | "));
    s.push_str(&" --- |".repeat(headers.len()));
    s.push('\n');
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// Milliseconds, with precision that fits their size.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A share as a percentage.
pub fn pct(v: f64) -> String {
    if v == 0.0 {
        "0%".into()
    } else if v < 0.01 {
        format!("{:.2}%", v * 100.0)
    } else {
        format!("{:.1}%", v * 100.0)
    }
}

/// A difference in ms, shown in µs with its sign.
pub fn added_us(v: f64) -> String {
    format!("{:+.0} µs", v * 1000.0)
}

/// The sections to fill, by marker name, in report order.
pub fn sections(r: &Results) -> Vec<(&'static str, String)> {
    let mut m = vec![("run", run_section(r))];
    if let Some(o) = &r.overhead {
        m.push(("overhead", crate::report_sections::overhead(o)));
    }
    if let Some(i) = &r.incident {
        m.push(("incident", crate::report_sections::incident(i)));
    }
    if let Some(o) = &r.overload {
        m.push(("overload", crate::report_guard::overload(o)));
    }
    if let Some(l) = &r.lifecycle {
        m.push(("lifecycle", crate::report_guard::lifecycle(l)));
    }
    if let Some(s) = &r.starved {
        m.push(("starved", crate::report_guard::starved(s)));
    }
    if let Some(rl) = &r.ratelimit {
        m.push(("ratelimit", crate::report_ratelimit::section(rl)));
    }
    if let Some(c) = &r.conns {
        m.push(("conns", conns_section(c)));
    }
    if let Some(u) = &r.uds {
        m.push(("uds", uds_section(u)));
    }
    if !r.memory.is_empty() {
        m.push(("memory", memory_section(&r.memory)));
    }
    if !r.micro.is_empty() {
        m.push(("micro", micro_section(&r.micro)));
    }
    m
}

fn conns_section(c: &crate::scenarios::conns::Conns) -> String {
    let mut out = String::from(
        "Each proxy started afresh in front of the Rust backend (4 workers); N client connections \
         opened one after the other, each sending one `GET /healthz` and then left open and idle; \
         then each sending one `GET /healthz` a second (active):\n\n\
         | proxy | connections | RSS before (MiB) | RSS idle (MiB) | idle, per connection (KiB) | RSS after holding them (MiB) | RSS active, highest (MiB) | active, per connection (KiB) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in &c.rows {
        let failed = if r.active_failures > 0 {
            format!(" ({} answers failed)", r.active_failures)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.1} (after {} s) | {:.1} (over {} s){failed} | {:.2} |\n",
            r.contender,
            r.connections,
            r.rss_before_kib as f64 / 1024.0,
            r.rss_idle_kib as f64 / 1024.0,
            r.per_connection_kib(),
            r.rss_held_kib as f64 / 1024.0,
            r.hold_secs,
            r.rss_active_kib as f64 / 1024.0,
            r.active_secs,
            r.active_per_connection_kib(),
        ));
    }
    out.push_str(
        "\nRSS is VmRSS (nginx: master plus worker), one second after the last connection's answer; \
         per connection = (idle − before) / N; active: the highest RSS read once a second while \
         every connection sent one request a second (a hundredth of them every 10 ms), per connection \
         = (active − before) / N.",
    );
    if !c.pools.is_empty() {
        out.push_str(&pools_table(&c.pools));
    }
    for s in &c.skipped {
        out.push_str(&format!("\n\n**Not measured**: {s}."));
    }
    out
}

fn uds_section(u: &crate::scenarios::uds::Uds) -> String {
    let rounds = u.round_count;
    let mut out = format!(
        "The Python fleet (4 uvicorn workers, each serving its TCP port and a socket file from \
         one loop) with each proxy in front, over TCP, then over the sockets; medians of {rounds} \
         round(s). Closed loop: {} s on the incident's mix (80% `POST /v1/events`, 20% `GET \
         /v1/metrics`), workers and proxy on one core. Open loop: {:.0} requests/s of the same \
         mix for {} s, latency from the intended send time.\n\n\
         | proxy | TCP: max requests/s | Unix: max requests/s | Unix vs TCP | TCP: p50 / p99 (ms) | Unix: p50 / p99 (ms) | failed answers (TCP, Unix) |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        u.closed_secs, u.open_rate, u.open_secs,
    );
    for name in u.contenders() {
        let (Some(t), Some(x)) = (u.medians(name, "tcp"), u.medians(name, "unix")) else {
            continue;
        };
        out.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.2}x | {:.3} / {:.2} | {:.3} / {:.2} | {}, {} |\n",
            t.0,
            x.0,
            x.0 / t.0,
            t.1,
            t.2,
            x.1,
            x.2,
            u.failures(name, "tcp"),
            u.failures(name, "unix"),
        ));
    }
    out
}

/// Pooled idle upstream connections: per proxy, the median of its rounds.
fn pools_table(pools: &[crate::scenarios::conns::PoolRow]) -> String {
    let mut out = format!(
        "\n\nPooled idle upstream connections: each proxy started afresh {} times in front of \
         4 workers that trickle their `/v1/*` answers (20 ms a byte, about 4 s an answer, \
         without blocking their loop); {} concurrent `POST /v1/events`, each on its own client connection, so each \
         holds an upstream connection, twice: first the workers close every connection after \
         its answer (nothing is pooled; RSS before), then they keep them (RSS pooled); each \
         read one second after the last answer, the client connections closed, with the \
         proxy's connections to the workers counted in `/proc/net/tcp`:\n\n\
         | proxy | pooled (per round) | RSS before (MiB, median) | RSS pooled (MiB, median) | per pooled connection (KiB, median; rounds) |\n\
         | --- | --- | --- | --- | --- |\n",
        crate::scenarios::conns::POOL_ROUNDS,
        crate::scenarios::conns::POOL_FILL,
    );
    let mut names: Vec<&str> = pools.iter().map(|p| p.contender.as_str()).collect();
    names.dedup();
    for name in names {
        let rounds: Vec<_> = pools.iter().filter(|p| p.contender == name).collect();
        let pooled: Vec<String> = rounds.iter().map(|p| p.pooled.to_string()).collect();
        let kib = |f: fn(&crate::scenarios::conns::PoolRow) -> u64| {
            median(&rounds.iter().map(|p| f(p) as f64).collect::<Vec<_>>()) / 1024.0
        };
        let per: Vec<f64> = rounds.iter().filter_map(|p| p.per_pooled_kib()).collect();
        let shown: Vec<String> = per.iter().map(|k| format!("{k:.2}")).collect();
        let per_cell = if per.is_empty() {
            "none pooled".to_string()
        } else {
            format!("**{:.2}** ({})", median(&per), shown.join(", "))
        };
        out.push_str(&format!(
            "| {name} | {} | {:.1} | {:.1} | {per_cell} |\n",
            pooled.join(", "),
            kib(|p| p.rss_before_kib),
            kib(|p| p.rss_pooled_kib),
        ));
    }
    out.push_str(
        "\nPer pooled connection = (pooled − before) / pooled. The first fill leaves the \
         allocator holding what as many requests in flight cost, so the difference is the pool's \
         own. sloguard runs with `[guard] mode = \"off\"` here: the guard would take \
         trickling workers for stalled ones and hold the fill back, and a pooled \
         connection's memory does not depend on the mode. sloguard and bare Pingora run with \
         `MIMALLOC_PURGE_DELAY=0` here (mimalloc returns freed pages at once), so that RSS \
         follows live memory: with the default delay their RSS after a thousand requests moved \
         by up to 13 MiB between rounds, more than the pool holds.",
    );
    out
}

fn run_section(r: &Results) -> String {
    let m = &r.machine;
    let mut s = format!(
        "- Generated: {} by `{}` in {:.0} s ({}{} round(s) per scenario).\n\
         - Machine: {} cores (`nproc`), {} (`lscpu`), {} memory, {}; CPU busy in the second before the scenarios: {}.\n\
         - Tools: {}; {}; {}; {}.\n- Pinning: {}.\n",
        r.generated_at,
        r.command,
        r.total_secs,
        if r.plan.quick { "quick run, " } else { "" },
        r.plan.rounds,
        m.nproc,
        m.cpu_model,
        m.memory,
        m.kernel,
        pct(r.busy_before),
        m.rustc,
        m.nginx,
        m.haproxy,
        m.redis,
        r.pinning,
    );
    let foreign = foreign_shares(r);
    if !foreign.is_empty() {
        let max = foreign.iter().copied().fold(0.0, f64::max);
        let reruns = r.overhead.as_ref().map_or(0, |o| o.reruns)
            + r.ratelimit.as_ref().map_or(0, |l| l.reruns);
        s.push_str(&format!(
            "- Other processes' CPU during the measurements: median {} of a core, at most {} \
             (an overhead or rate-limit measurement over {} is run again: {reruns} were).\n",
            pct(median(&foreign)),
            pct(max),
            pct(DISTURBED),
        ));
    }
    for f in &r.failures {
        s.push_str(&format!("- **Not measured**: {f}\n"));
    }
    s
}

/// The foreign CPU share of every kept measurement.
fn foreign_shares(r: &Results) -> Vec<f64> {
    let mut v = Vec::new();
    if let Some(o) = &r.overhead {
        v.extend(
            o.open
                .iter()
                .flat_map(|c| c.rounds.iter().map(|s| s.foreign_cpu)),
        );
        v.extend(
            o.closed
                .iter()
                .flat_map(|c| c.rounds.iter().map(|s| s.foreign_cpu)),
        );
    }
    if let Some(l) = &r.ratelimit {
        for x in &l.results {
            v.extend(x.open.rounds.iter().map(|s| s.foreign_cpu));
            v.extend(x.closed.rounds.iter().map(|s| s.foreign_cpu));
        }
    }
    let open = r.incident.iter().flat_map(|i| &i.results);
    v.extend(open.flat_map(|c| c.rounds.iter().map(|s| s.foreign_cpu)));
    let overload = r.overload.iter().flat_map(|o| &o.fleets);
    let overload = overload.flat_map(|f| &f.results);
    v.extend(overload.flat_map(|c| c.rounds.iter().map(|s| s.foreign_cpu)));
    let phases = r.lifecycle.iter().flat_map(|l| &l.fleets);
    let phases = phases.flat_map(|f| &f.results);
    v.extend(phases.flat_map(|c| c.rounds.iter().map(|s| s.foreign_cpu)));
    v
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn memory_section(samples: &[MemSample]) -> String {
    // One row per (scenario, contender): idle of the first start, median at the end of its
    // runs, the highest peak.
    let mut groups: Vec<(&str, &str, Vec<&MemSample>)> = Vec::new();
    for s in samples {
        match groups
            .iter_mut()
            .find(|g| g.0 == s.scenario && g.1 == s.contender)
        {
            Some(g) => g.2.push(s),
            None => groups.push((s.scenario, &s.contender, vec![s])),
        }
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|(scenario, contender, v)| {
            let ends: Vec<f64> = v
                .iter()
                .filter_map(|s| s.end_kib)
                .map(|k| k as f64)
                .collect();
            vec![
                scenario.to_string(),
                contender.to_string(),
                mib(v[0].idle_kib),
                mib((!ends.is_empty()).then(|| median(&ends) as u64)),
                mib(v.iter().filter_map(|s| s.peak_kib).max()),
            ]
        })
        .collect();
    table(
        &[
            "scenario",
            "proxy",
            "RSS idle (MiB)",
            "RSS after load (MiB)",
            "peak RSS (MiB)",
        ],
        &rows,
    ) + "\nRSS is VmRSS from /proc/PID/status (nginx: master plus its worker), read right after \
         start and at the end of each run; peak is VmHWM, summed the same way.\n"
}

fn micro_section(micro: &[Micro]) -> String {
    let rows: Vec<Vec<String>> = micro
        .iter()
        .map(|m| {
            vec![
                format!("`{}`", m.id),
                format!("{:.1}", m.median_ns),
                format!("{:.1}", m.mean_ns),
            ]
        })
        .collect();
    table(&["benchmark", "median (ns)", "mean (ns)"], &rows)
}

/// A contender's result by name.
pub(crate) fn find_result<'a>(rows: &'a [OpenResult], name: &str) -> Option<&'a OpenResult> {
    rows.iter().find(|r| r.contender == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_only_between_markers() {
        let doc = "intro\n<!-- bench:a -->\nold\n<!-- /bench:a -->\nprose\n<!-- bench:b -->\n<!-- /bench:b -->\n";
        let out = fill(doc, "a", "new table\n").unwrap();
        assert_eq!(out, "intro\n<!-- bench:a -->\nnew table\n<!-- /bench:a -->\nprose\n<!-- bench:b -->\n<!-- /bench:b -->\n");
        assert!(fill(doc, "missing", "x").is_none());
        let twice = fill(&out, "a", "newer").unwrap();
        assert!(twice.contains("newer") && !twice.contains("new table"));
    }

    #[test]
    fn skeleton_has_every_section() {
        for name in [
            "run",
            "overhead",
            "incident",
            "overload",
            "lifecycle",
            "starved",
            "ratelimit",
            "memory",
            "conns",
            "uds",
            "soak",
            "micro",
        ] {
            assert!(fill(SKELETON, name, "x").is_some(), "{name}");
        }
    }

    #[test]
    fn tables_and_numbers() {
        let t = table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
        assert_eq!(ms(0.1234), "0.123");
        assert_eq!(ms(2.345), "2.35");
        assert_eq!(ms(25.25), "25.2");
        assert_eq!(ms(1234.4), "1234");
        assert_eq!(pct(0.0), "0%");
        assert_eq!(pct(0.0004), "0.04%");
        assert_eq!(pct(0.25), "25.0%");
        assert_eq!(added_us(0.0456), "+46 µs");
        assert_eq!(added_us(-0.002), "-2 µs");
    }

    #[test]
    fn memory_rows_group_rounds() {
        let s = |end| MemSample {
            scenario: "incident",
            contender: "sloguard (enforce)".into(),
            idle_kib: Some(10240),
            end_kib: Some(end),
            peak_kib: Some(end + 1024),
        };
        let out = memory_section(&[s(20480), s(30720), s(40960)]);
        assert!(
            out.contains("| incident | sloguard (enforce) | 10.0 | 30.0 | 41.0 |"),
            "{out}"
        );
    }
}
