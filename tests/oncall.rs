//! On call, end to end (short form): a real Prometheus scrapes a real sloguard every 500 ms
//! and evaluates the shipped rules, time-scaled 10 times (5 minutes become 30 s; see
//! `common::prometheus`), while the test plays an incident timeline on the real backend
//! under steady light load: quiet, a worker's event loop blocks and then recovers, a broken
//! policy is written and then fixed, Redis dies and comes back, 2x overload. Each alert
//! meant for a phase must fire in it, read from Prometheus's own `/api/v1/alerts`, none may
//! be pending or firing while all is well, and the error alert stays quiet while sloguard
//! sheds an overload. What fired when is printed as a table (docs/oncall.md).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{self, Load};
use common::prometheus::{time_scaled_rules, Prometheus, TIME_SCALE};
use common::*;

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

async fn wait_state(prom: &Prometheus, alert: &str, firing: bool, within: Duration) -> Duration {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_in_their_phase_of_the_incident_and_not_while_all_is_well() {
    let mut redis = RedisServer::spawn();
    let be = backend(4);
    let sg = Sloguard::spawn(&be.addrs(), &policy(&redis));
    let prom = Prometheus::spawn(sg.admin);
    wait_until(Duration::from_secs(20), "the first scrape", || {
        prom.scraped()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let base = format!("http://{}", sg.proxy);
    let load = steady_load(base.clone(), 40.0, stop.clone());
    let mut rows = Vec::new();

    // Quiet: the longest window of the alerts that could misfire (5 minutes, 30 s scaled)
    // passes under steady load, and nothing is pending or firing.
    let quiet = Duration::from_millis(300_000 / TIME_SCALE + 2000);
    let quiet_until = Instant::now() + quiet;
    while Instant::now() < quiet_until {
        let alerts = prom.alerts().await;
        assert!(alerts.is_empty(), "while all is well: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
    let fired = wait_state(
        &prom,
        "SloguardWorkerEjected",
        true,
        Duration::from_secs(60),
    )
    .await;
    let also = prom.firing().await;
    be.set_fault(3, FaultSpec::default());
    let resolved = wait_state(
        &prom,
        "SloguardWorkerEjected",
        false,
        Duration::from_secs(120),
    )
    .await;
    rows.push(Row {
        phase: "worker 3 blocks its loop",
        alert: "SloguardWorkerEjected",
        fired_after: fired,
        resolved_after: Some(resolved),
    });
    println!("firing with the ejection: {also:?}");

    // A broken policy file: the reload is refused (the old policy keeps serving) and the
    // reload alert fires at once; a fixed file loads again.
    let good = std::fs::read_to_string(&sg.policy_path).unwrap();
    std::fs::write(&sg.policy_path, format!("{good}\n[[route]]\nname = 1\n")).unwrap();
    let http = client();
    let refused = http.post(sg.admin_url("/reload")).send().await.unwrap();
    assert_ne!(refused.status(), 200, "a broken policy is not loaded");
    let fired = wait_state(
        &prom,
        "SloguardConfigReloadFailed",
        true,
        Duration::from_secs(30),
    )
    .await;
    std::fs::write(&sg.policy_path, &good).unwrap();
    let fixed = http.post(sg.admin_url("/reload")).send().await.unwrap();
    assert_eq!(fixed.status(), 200);
    rows.push(Row {
        phase: "a broken policy is written",
        alert: "SloguardConfigReloadFailed",
        fired_after: fired,
        resolved_after: None,
    });

    // Redis dies: limits fall back in-process and the fallback alert fires; Redis comes
    // back and it resolves.
    redis.kill();
    let fired = wait_state(
        &prom,
        "SloguardRateLimitRedisFallback",
        true,
        Duration::from_secs(30),
    )
    .await;
    redis.restart();
    let resolved = wait_state(
        &prom,
        "SloguardRateLimitRedisFallback",
        false,
        Duration::from_secs(30),
    )
    .await;
    rows.push(Row {
        phase: "Redis dies, then returns",
        alert: "SloguardRateLimitRedisFallback",
        fired_after: fired,
        resolved_after: Some(resolved),
    });

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
    let fired = wait_state(&prom, "SloguardShedding", true, Duration::from_secs(90)).await;
    let during = prom.alerts().await;
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
    over.store(true, Ordering::Relaxed);
    let statuses = overload.await.unwrap();
    for w in 1..=4 {
        be.set_fault(w, FaultSpec::default());
    }
    let resolved = wait_state(&prom, "SloguardShedding", false, Duration::from_secs(90)).await;
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
    rows.push(Row {
        phase: "2x overload",
        alert: "SloguardShedding",
        fired_after: fired,
        resolved_after: Some(resolved),
    });

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    println!("| phase | alert | fired after | resolved after |\n| --- | --- | --- | --- |");
    for r in &rows {
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
