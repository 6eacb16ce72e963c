//! On call, end to end: a real Prometheus scrapes a real sloguard every 500 ms
//! and evaluates the shipped rules, time-scaled 10 times (5 minutes become 30 s; see
//! `common::prometheus`; `sloguard-bench oncall` runs the same at real time), while the
//! test plays an incident timeline on the real backend under steady light load: quiet, a
//! worker's event loop blocks and then recovers, a broken policy is written and then fixed,
//! Redis dies and comes back, 2x overload. Each alert
//! meant for a phase must fire in it, read from Prometheus's own `/api/v1/alerts`, none may
//! be pending or firing while all is well, and the error alert stays quiet while sloguard
//! sheds an overload. Every query of the shipped Grafana dashboard is read over each phase
//! (`common::dashboard`) and what the on-call engineer acts on must show. A second timeline
//! beside it covers sloguard itself (killed, left down) and a fleet that dies; a third,
//! sloguard at its container limits (starved of CPU, near its memory limit; the limits and
//! cAdvisor's metrics of them from `common::kubelet`). What fired when, and what each panel
//! showed, is printed as tables (docs/oncall.md).

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dashboard::{panel_queries, read_all, reading, PanelQuery, Reading, SCRAPE_MS};
use common::kubelet::Kubelet;
use common::load::{self, Load};
use common::prometheus::{time_scale, time_scaled_rules, Prometheus, TIME_SCALE};
use common::*;

/// How long each timeline waits for Prometheus' first scrape of its sloguard. Normally a
/// second or two; once, on a clean-clone run, 20 s passed without one (cause unknown: the
/// wait now says what Prometheus knew of its targets if it happens again).
const FIRST_SCRAPE: Duration = Duration::from_secs(60);

fn policy(redis: &RedisServer) -> String {
    format!(
        r#"{ROUTES}
[ratelimit]
redis_url = "{}"
timeout_ms = 50

[[ratelimit.rule]]
name = "ingest-total"
routes = ["ingest"]
key = "route"
rate = 100000
burst = 1000
"#,
        redis.url()
    )
}

/// `rate` requests/s (80% events) until `stop`, in bounded 5 s runs; the statuses.
fn steady_load(
    base: String,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let run = Load {
                rate,
                duration: Duration::from_secs(5),
                ingest_share: 0.8,
            };
            statuses.extend(load::run(&base, &run).await.iter().map(|o| o.status));
        }
        statuses
    })
}

/// One line of the timeline table.
struct Row {
    phase: &'static str,
    alert: &'static str,
    fired_after: Duration,
    resolved_after: Option<Duration>,
}

impl Row {
    fn new(
        phase: &'static str,
        alert: &'static str,
        fired_after: Duration,
        resolved_after: Option<Duration>,
    ) -> Row {
        Row {
            phase,
            alert,
            fired_after,
            resolved_after,
        }
    }
}

/// Waits until `alert` is firing (or, `firing` false, neither pending nor firing); how long
/// that took. `within` is for the CI's scale ([`TIME_SCALE`]); a slower run stretches it.
async fn wait_state(prom: &Prometheus, alert: &str, firing: bool, within: Duration) -> Duration {
    let within = within.mul_f64(TIME_SCALE as f64 / time_scale() as f64);
    let what = if firing { "firing" } else { "resolved" };
    wait_until(within, &format!("{alert} {what}"), || async {
        let alerts = prom.alerts().await;
        let fired = alerts.iter().any(|(a, s)| a == alert && s == "firing");
        let any = alerts.iter().any(|(a, _)| a == alert);
        if firing {
            fired
        } else {
            !any
        }
    })
    .await
}

/// How the second and third timelines begin: 40 requests/s on `proxy` until the returned
/// flag is set, and 3 s in which no alert may be pending or firing.
async fn start_quietly(
    prom: &Prometheus,
    proxy: std::net::SocketAddr,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<u16>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(format!("http://{proxy}"), 40.0, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(prom.alerts().await.is_empty(), "{:?}", prom.alerts().await);
    (stop, load)
}

/// Waits until `alert` fires, at most `secs`; how long that took.
async fn wait_firing(prom: &Prometheus, alert: &str, secs: u64) -> Duration {
    wait_state(prom, alert, true, Duration::from_secs(secs)).await
}

/// Waits until `alert` is neither pending nor firing, at most `secs`; how long that took.
async fn wait_resolved(prom: &Prometheus, alert: &str, secs: u64) -> Duration {
    wait_state(prom, alert, false, Duration::from_secs(secs)).await
}

#[test]
fn the_shipped_rules_are_scaled_and_only_their_durations_change() {
    let scaled = time_scaled_rules(TIME_SCALE);
    assert!(scaled.starts_with("groups:\n"), "{scaled}");
    for window in ["[1m]", "[5m]", "[15m]", "[30m]"] {
        assert!(!scaled.contains(window), "{window} left in:\n{scaled}");
    }
    assert!(scaled.contains("[30000ms]"), "5m became 30 s");
    assert!(scaled.contains("for: 12000ms"), "2m became 12 s");
    assert!(scaled.contains("interval: 3000ms"), "30s became 3 s");
    let shipped =
        std::fs::read_to_string(repo_root().join("k8s/monitoring/prometheus-rules.yaml")).unwrap();
    assert_eq!(
        scaled.matches("- alert: ").count(),
        shipped.matches("- alert: ").count()
    );
}

/// The three timelines below, at once, each with its own backend, sloguard and Prometheus:
/// one test, so they run side by side whatever the harness's thread count (as three tests
/// on a 2-core machine, the third waited for a thread, and the binary took 3.6 minutes
/// instead of under 3). A timeline that fails fails the test with its own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_alert_fires_in_its_phase_and_none_while_all_is_well() {
    let timelines = [
        tokio::spawn(alerts_fire_in_their_phase_of_the_incident_and_not_while_all_is_well()),
        tokio::spawn(sloguard_down_or_out_of_workers_pages_in_its_phase()),
        tokio::spawn(sloguard_at_its_container_limits_pages_in_its_phase()),
    ];
    let mut failed = None;
    for t in timelines {
        if let Err(e) = t.await {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn alerts_fire_in_their_phase_of_the_incident_and_not_while_all_is_well() {
    let mut redis = RedisServer::spawn();
    let be = backend(4);
    let sg = Sloguard::spawn(&be.addrs(), &policy(&redis));
    let prom = Prometheus::spawn(sg.admin);
    prom.wait_first_scrape(FIRST_SCRAPE, || prom.scraped())
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let base = format!("http://{}", sg.proxy);
    let load = steady_load(base.clone(), 40.0, stop.clone());
    let mut rows = Vec::new();
    let queries = panel_queries("oncall", SCRAPE_MS, time_scale());
    let mut panels: Vec<(&str, Vec<Reading>)> = Vec::new();

    // Quiet: the longest window of the alerts that could misfire (5 minutes, 30 s scaled)
    // passes under steady load, and nothing is pending or firing.
    let quiet = Duration::from_millis(300_000 / time_scale() + 2000);
    let mut phase_start = Instant::now();
    let quiet_until = phase_start + quiet;
    while Instant::now() < quiet_until {
        let alerts = prom.alerts().await;
        assert!(alerts.is_empty(), "while all is well: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panels.push(("quiet", read_all(&prom, &queries, phase_start).await));
    // What SloguardStarved compares with its threshold (0.25), for docs/oncall.md: on a
    // 2-core machine running both timelines' processes, debug builds.
    let held = "max without (thread) (rate(sloguard_loop_held_up_seconds_total[30000ms]))";
    println!(
        "quiet: held-up share over 30 s: {:?}",
        prom.query(held)
            .await
            .first()
            .map(|r| r["value"][1].clone())
    );
    // The load was served, every event through the Redis rule.
    let st = sg.status().await;
    assert!(
        st["ratelimit"]["allowed"].as_u64().unwrap() > 100,
        "{}",
        st["ratelimit"]
    );
    assert_eq!(st["ratelimit"]["redis_errors"], 0, "{}", st["ratelimit"]);

    // A worker blocks its event loop 250 ms on every 4th request (the incident): it is
    // ejected, again at each readmission, and the ejection alert fires; once it is fixed
    // the alert resolves.
    be.set_fault(3, "block=250ms,every=4".parse().unwrap());
    phase_start = Instant::now();
    let fired = wait_firing(&prom, "SloguardWorkerEjected", 60).await;
    let also = prom.firing().await;
    panels.push((
        "worker 3 blocks",
        read_all(&prom, &queries, phase_start).await,
    ));
    be.set_fault(3, FaultSpec::default());
    let resolved = wait_resolved(&prom, "SloguardWorkerEjected", 120).await;
    rows.push(Row::new(
        "worker 3 blocks its loop",
        "SloguardWorkerEjected",
        fired,
        Some(resolved),
    ));
    println!("firing with the ejection: {also:?}");

    // A broken policy file: the reload is refused (the old policy keeps serving) and the
    // reload alert fires at once; a fixed file loads again.
    let good = std::fs::read_to_string(&sg.policy_path).unwrap();
    std::fs::write(&sg.policy_path, format!("{good}\n[[route]]\nname = 1\n")).unwrap();
    let http = client();
    phase_start = Instant::now();
    let refused = http.post(sg.admin_url("/reload")).send().await.unwrap();
    assert_ne!(refused.status(), 200, "a broken policy is not loaded");
    let fired = wait_firing(&prom, "SloguardConfigReloadFailed", 30).await;
    panels.push((
        "broken policy",
        read_all(&prom, &queries, phase_start).await,
    ));
    std::fs::write(&sg.policy_path, &good).unwrap();
    let fixed = http.post(sg.admin_url("/reload")).send().await.unwrap();
    assert_eq!(fixed.status(), 200);
    rows.push(Row::new(
        "a broken policy is written",
        "SloguardConfigReloadFailed",
        fired,
        None,
    ));

    // Redis dies: limits fall back in-process and the fallback alert fires; Redis comes
    // back and it resolves.
    redis.kill();
    phase_start = Instant::now();
    let fired = wait_firing(&prom, "SloguardRateLimitRedisFallback", 30).await;
    panels.push(("Redis down", read_all(&prom, &queries, phase_start).await));
    redis.restart();
    let resolved = wait_resolved(&prom, "SloguardRateLimitRedisFallback", 30).await;
    rows.push(Row::new(
        "Redis dies, then returns",
        "SloguardRateLimitRedisFallback",
        fired,
        Some(resolved),
    ));

    // 2x overload: every event now holds its worker's loop 40 ms (4 workers: 100 events/s)
    // and 200 events/s arrive. sloguard sheds the excess and the shedding alert fires; the
    // shed 503s are not counted as errors. When the load ends, the alert resolves. Whether
    // what it serves stays inside the route's target is the guard's business and the
    // bench's number (in a debug build on 2 cores, ingest p95 was 149 ms in one run and
    // 200 ms in another: docs/oncall.md), so the SLO alert is asserted neither way here.
    for w in 1..=4 {
        be.set_fault(w, "block=40ms".parse().unwrap());
    }
    let over = Arc::new(AtomicBool::new(false));
    let overload = steady_load(base.clone(), 250.0, over.clone());
    phase_start = Instant::now();
    let fired = wait_firing(&prom, "SloguardShedding", 90).await;
    let during = prom.alerts().await;
    panels.push(("2x overload", read_all(&prom, &queries, phase_start).await));
    // What the recording rules said then, for docs/oncall.md.
    for q in [
        "namespace_route:sloguard_shed:ratio_rate5m",
        "namespace_route:sloguard_request_duration_seconds:p95_5m",
        "namespace_route_slo:sloguard_requests_over_slo:ratio_rate5m",
    ] {
        let values: Vec<String> = prom
            .query(q)
            .await
            .iter()
            .map(|r| {
                let slo = r["metric"]["slo"].as_str().unwrap_or("");
                format!("{} {slo} {}", r["metric"]["route"], r["value"][1])
            })
            .collect();
        println!("{q}: {values:?}");
    }
    // Every loop now lags: a blocking call on a hot route, what the lag alert is for (a
    // single blocked worker is ejected instead, and gets no requests to lag on). Its
    // 5-minute average and `for: 5m` (30 s each, scaled) make it the slowest of the phase.
    wait_firing(&prom, "SloguardWorkerLoopLagHigh", 90).await;
    let lag_fired = phase_start.elapsed();
    println!(
        "overload: loop lag by worker when its alert fired: {:?}",
        prom.query("avg_over_time(sloguard_worker_loop_lag_seconds[30s])")
            .await
            .iter()
            .map(|r| format!("{} {}", r["metric"]["worker"], r["value"][1]))
            .collect::<Vec<_>>()
    );
    over.store(true, Ordering::Relaxed);
    let statuses = overload.await.unwrap();
    for w in 1..=4 {
        be.set_fault(w, FaultSpec::default());
    }
    let resolved = wait_resolved(&prom, "SloguardShedding", 90).await;
    let shed = statuses.iter().filter(|s| **s == 503).count();
    println!(
        "overload: {shed} of {} shed; alerts when shedding fired: {during:?}",
        statuses.len()
    );
    assert!(shed > 0);
    assert!(
        !during.iter().any(|(a, _)| a == "SloguardHigh5xxRatio"),
        "shed 503s counted as errors: {during:?}"
    );
    rows.push(Row::new(
        "2x overload",
        "SloguardShedding",
        fired,
        Some(resolved),
    ));
    rows.push(Row::new(
        "2x overload",
        "SloguardWorkerLoopLagHigh",
        lag_fired,
        None,
    ));

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    print_rows(&rows);
    print_panels(&queries, &panels);
    check_panels(&queries, &panels);
}

/// What the on-call engineer must see on the dashboard in each phase of the first timeline.
fn check_panels(queries: &[PanelQuery], panels: &[(&str, Vec<Reading>)]) {
    let at = |phase: &str, name: &str| {
        let (_, readings) = panels.iter().find(|(p, _)| *p == phase).unwrap();
        reading(queries, readings, name).clone()
    };
    // Every panel that is not about events draws something in every phase: no query
    // broken by a renamed metric or label. The admission wait quantiles are NaN while no
    // request waits (a gap in Grafana).
    for (phase, readings) in panels {
        for (q, r) in queries.iter().zip(readings) {
            if !q.events_only && !q.name.starts_with("Admission wait") {
                assert!(
                    r.has_data(),
                    "{phase}: panel {} shows {r}: {}",
                    q.name,
                    q.expr
                );
            }
        }
    }
    // While all is well: nothing shed, ejected or on the fallback, and the event panels
    // are empty.
    for name in ["Shed", "Rate-limit Redis", "Workers ejected / suspect #1"] {
        assert_eq!(at("quiet", name).max(), 0.0, "quiet: {name}");
    }
    for name in ["Ejections", "Shed by reason", "Policy reloads"] {
        assert_eq!(at("quiet", name), Reading::NoData, "quiet: {name}");
    }
    // Each incident shows on its panels while its alert fires.
    assert!(at("worker 3 blocks", "Workers ejected / suspect #1").max() >= 1.0);
    assert!(at("worker 3 blocks", "Ejections").has_data());
    assert!(at("worker 3 blocks", "Event-loop lag per worker").max() > 0.075);
    assert!(at("broken policy", "Policy reloads").has_data());
    assert_eq!(at("Redis down", "Rate-limit Redis").max(), 1.0);
    assert_eq!(at("Redis down", "Redis errors and fallback #2").max(), 1.0);
    assert!(at("2x overload", "Shed").max() > 0.01);
    assert!(at("2x overload", "Shed by reason").has_data());
}

/// The phase x alert table of docs/oncall.md.
fn print_rows(rows: &[Row]) {
    println!("| phase | alert | fired after | resolved after |\n| --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {:.1} s | {} |",
            r.phase,
            r.alert,
            r.fired_after.as_secs_f64(),
            r.resolved_after
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
    }
}

/// The phase x panel table of docs/oncall.md: each query's largest value from the start of
/// the phase until its alert fired (the whole quiet phase for the first column).
fn print_panels(queries: &[PanelQuery], panels: &[(&str, Vec<Reading>)]) {
    let phases: Vec<&str> = panels.iter().map(|(p, _)| *p).collect();
    println!("| panel | {} |", phases.join(" | "));
    println!("| --- |{}", " --- |".repeat(phases.len()));
    for (i, q) in queries.iter().enumerate() {
        let cells: Vec<String> = panels.iter().map(|(_, r)| r[i].to_string()).collect();
        println!("| {} | {} |", q.name, cells.join(" | "));
    }
}

/// The phases about sloguard itself and a fleet beyond its help, in a second timeline run
/// beside the first (its own backend, sloguard and Prometheus): sloguard crashes and comes
/// back, stays down; half the workers die, then all of them. Each alert fires in its phase;
/// the restart and scrape alerts resolve once sloguard is back.
async fn sloguard_down_or_out_of_workers_pages_in_its_phase() {
    let be = backend(4);
    let mut sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let prom = Prometheus::spawn(sg.admin);
    let start_times = || async {
        prom.query("process_start_time_seconds{container=\"sloguard\"}")
            .await
            .first()
            .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
    };
    prom.wait_first_scrape(FIRST_SCRAPE, || async { start_times().await.is_some() })
        .await;
    let (stop, load) = start_quietly(&prom, sg.proxy).await;
    let mut rows = Vec::new();
    let queries = panel_queries("oncall", SCRAPE_MS, time_scale());
    let mut panels: Vec<(&str, Vec<Reading>)> = Vec::new();

    // sloguard crashes and its container restarts it at once; Prometheus sees a new start
    // time. The start time has a second's resolution: wait past it.
    let first = start_times().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sg.crash();
    sg.start_again();
    wait_until(
        Duration::from_secs(20),
        "the new start time scraped",
        || async { start_times().await.is_some_and(|t| t > first) },
    )
    .await;
    // It crashes again and stays down (CrashLoopBackOff): the scrape alert fires after
    // its `for:`; when it is back, the restart alert fires (two restarts in 15 minutes)
    // and the scrape alert resolves.
    sg.crash();
    let fired = wait_firing(&prom, "SloguardScrapeDown", 60).await;
    sg.start_again();
    let restarting = wait_firing(&prom, "SloguardRestarting", 30).await;
    let resolved = wait_resolved(&prom, "SloguardScrapeDown", 30).await;
    rows.push(Row::new(
        "sloguard down",
        "SloguardScrapeDown",
        fired,
        Some(resolved),
    ));
    rows.push(Row::new(
        "sloguard restarted twice",
        "SloguardRestarting",
        restarting,
        None,
    ));

    // A dependency slows down: every answer leaves its worker one byte every 2 ms (about
    // 0.4 s an answer), the loops free and the probes fast. No worker stands out and no
    // capacity is missing at 40 requests/s, so there is nothing for the guard to route
    // around: the routes miss their latency targets and the SLO alert fires once both its
    // windows (5 and 30 minutes, 30 s and 3 min scaled) are over the allowed share, after
    // its `for: 5m`. Not waited to resolve (its 5-minute window, 30 s scaled).
    for w in 1..=4 {
        be.set_fault(w, "trickle=2ms".parse().unwrap());
    }
    let phase_start = Instant::now();
    let fired = wait_firing(&prom, "SloguardLatencySLOBurn", 90).await;
    panels.push((
        "every answer slow",
        read_all(&prom, &queries, phase_start).await,
    ));
    println!(
        "slow answers: firing then: {:?}; share over target by route: {:?}",
        prom.firing().await,
        prom.query("namespace_route_slo:sloguard_requests_over_slo:ratio_rate5m")
            .await
            .iter()
            .map(|r| format!(
                "{} {} {}",
                r["metric"]["route"], r["metric"]["slo"], r["value"][1]
            ))
            .collect::<Vec<_>>()
    );
    for w in 1..=4 {
        be.set_fault(w, FaultSpec::default());
    }
    rows.push(Row::new(
        "every answer takes 0.4 s (a slow dependency)",
        "SloguardLatencySLOBurn",
        fired,
        None,
    ));

    // Two of the four workers die: they are ejected and stay out (no probe succeeds), the
    // ejection cap (half the workers) is reached and its alert fires.
    be.kill_worker(1);
    be.kill_worker(2);
    let fired = wait_firing(&prom, "SloguardEjectionCapReached", 60).await;
    rows.push(Row::new(
        "workers 1 and 2 die",
        "SloguardEjectionCapReached",
        fired,
        None,
    ));

    // The other two die: no worker is healthy (the cap keeps two in rotation as suspect),
    // every request fails with a 502, and both the worker alert and the error alert fire.
    be.kill_worker(3);
    be.kill_worker(4);
    let phase_start = Instant::now();
    let fired = wait_firing(&prom, "SloguardNoHealthyWorker", 60).await;
    rows.push(Row::new(
        "every worker dies",
        "SloguardNoHealthyWorker",
        fired,
        None,
    ));
    let fired = wait_firing(&prom, "SloguardHigh5xxRatio", 90).await;
    rows.push(Row::new(
        "every worker dies",
        "SloguardHigh5xxRatio",
        fired,
        None,
    ));
    panels.push((
        "every worker dies",
        read_all(&prom, &queries, phase_start).await,
    ));
    println!("firing at the end: {:?}", prom.firing().await);

    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(
        statuses.contains(&502),
        "requests failed with 502 once no worker was left"
    );
    print_rows(&rows);
    print_panels(&queries, &panels);
    let at = |phase: &str, name: &str| {
        let (_, readings) = panels.iter().find(|(p, _)| *p == phase)?;
        Some(reading(&queries, readings, name).clone())
    };
    // With no worker left, the answers are sloguard's own 502s, counted as 5xx.
    let refusals = at("every worker dies", "Refusals by reason").unwrap();
    assert!(
        refusals.has_data(),
        "no refusal panel with every worker dead"
    );
}

/// sloguard's container limits, in a third timeline beside the others (its own backend,
/// sloguard, Prometheus and `Kubelet`, which sets the limits in real cgroups and serves
/// cAdvisor's metrics of them): a CPU limit at a quarter of what sloguard needs (starved,
/// throttled), then a memory limit just over its working set. Each alert fires in its phase
/// and resolves once the limit is lifted. Where cgroups cannot be written (not root), the
/// phase says SKIPPED.
async fn sloguard_at_its_container_limits_pages_in_its_phase() {
    let be = backend(4);
    let sg = Sloguard::spawn(&be.addrs(), "");
    let kubelet = Kubelet::spawn().await;
    let prom = Prometheus::spawn_with_kubelet(sg.admin, kubelet.addr);
    // The container's memory group holds its process from the start, as the kubelet's
    // does (the kernel moves no pages charged before a process joins).
    let memory = kubelet.join_memory(sg.pid());
    prom.wait_first_scrape(FIRST_SCRAPE, || prom.scraped())
        .await;
    let (stop, load) = start_quietly(&prom, sg.proxy).await;
    let mut rows = Vec::new();
    let queries = panel_queries("oncall", SCRAPE_MS, time_scale());
    let mut panels: Vec<(&str, Vec<Reading>)> = Vec::new();

    // Traffic grows to 200 requests/s and the CPU limit is a quarter of what sloguard
    // then uses (a Kubernetes `limits.cpu` set for yesterday's traffic; relative, because a
    // debug build needs ten times the CPU of a release one; never under 0.02 cores, where
    // even a scrape takes longer than this Prometheus waits for it). It is held up most of
    // the time and the starvation alert fires once its 5-minute rate (30 s scaled) and
    // `for:` have passed; the limit lifted, it resolves.
    let busier = Arc::new(AtomicBool::new(false));
    let extra = steady_load(format!("http://{}", sg.proxy), 160.0, busier.clone());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let demand = prom
        .query("rate(process_cpu_seconds_total{container=\"sloguard\"}[5s])")
        .await
        .first()
        .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .expect("sloguard's CPU scraped");
    let cores = (demand / 4.0).clamp(0.02, 0.2);
    println!("starved: sloguard used {demand:.3} cores at 200 requests/s; limited to {cores:.3}");
    match kubelet.limit_cpu(sg.pid(), cores) {
        Ok(()) => {
            let phase_start = Instant::now();
            let fired = wait_firing(&prom, "SloguardStarved", 90).await;
            panels.push((
                "sloguard under a CPU limit",
                read_all(&prom, &queries, phase_start).await,
            ));
            // cAdvisor's view of the same limit: throttled in most periods, for its
            // `for: 10m` (60 s scaled).
            wait_firing(&prom, "SloguardCPUThrottled", 120).await;
            let throttled_fired = phase_start.elapsed();
            let throttled = kubelet.lift_cpu();
            let resolved = wait_resolved(&prom, "SloguardStarved", 30).await;
            let throttled_resolved = wait_resolved(&prom, "SloguardCPUThrottled", 30).await;
            println!("starved: throttled (periods, ms) {throttled:?}");
            // Its probes' answers sat unread while it was throttled: that time is its own,
            // and no worker is ejected for it (all four were, in turn, before it was
            // excused).
            let log = sg.log();
            let ejected: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("worker ejected"))
                .collect();
            println!("starved: {} ejections: {ejected:?}", ejected.len());
            assert!(
                !ejected.iter().any(|l| l.contains("probe took")),
                "a starved sidecar blamed its workers' probes: {ejected:?}"
            );
            rows.push(Row::new(
                "sloguard under a quarter of the CPU it needs",
                "SloguardStarved",
                fired,
                Some(resolved),
            ));
            rows.push(Row::new(
                "sloguard under a quarter of the CPU it needs",
                "SloguardCPUThrottled",
                throttled_fired,
                Some(throttled_resolved),
            ));
        }
        // A machine whose cgroups this test may not write (not root, a read-only
        // /sys/fs/cgroup): the phase cannot be played there; say so.
        Err(e) => println!("SKIPPED the starved phase: no CPU limit possible here: {e}"),
    }
    busier.store(true, Ordering::Relaxed);
    extra.await.unwrap();

    // Back at 40 requests/s, the container's memory limit is set just over what sloguard
    // uses and follows its working set (held at 93% of the limit, over the alert's 90%):
    // the memory alert fires after its `for: 5m` (30 s scaled); lifted, it resolves.
    // sloguard keeps serving: the later phases need it.
    match memory.and_then(|_| kubelet.hold_memory_at(0.93)) {
        Ok(limit) => {
            println!(
                "memory: working set {:?} KiB, limit {} KiB (held at 93%)",
                kubelet.working_set().map(|b| b / 1024),
                limit / 1024
            );
            let fired = wait_firing(&prom, "SloguardMemoryNearLimit", 60).await;
            println!(
                "memory: working set {:?} KiB, limit {:?} KiB when the alert fired",
                kubelet.working_set().map(|b| b / 1024),
                kubelet.memory_limit().map(|b| b / 1024)
            );
            kubelet.lift_memory();
            let resolved = wait_resolved(&prom, "SloguardMemoryNearLimit", 30).await;
            rows.push(Row::new(
                "memory limit held just over sloguard's working set",
                "SloguardMemoryNearLimit",
                fired,
                Some(resolved),
            ));
        }
        Err(e) => println!("SKIPPED the memory phase: no memory limit possible here: {e}"),
    }

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    print_rows(&rows);
    print_panels(&queries, &panels);
    // The starved sidecar shows on its panel (when the phase could be played).
    if let Some((_, readings)) = panels
        .iter()
        .find(|(p, _)| *p == "sloguard under a CPU limit")
    {
        let held = reading(
            &queries,
            readings,
            "sloguard CPU and time its loop was held up #2",
        );
        assert!(held.max() > 0.25, "held up {held} under the CPU limit");
    }
}
