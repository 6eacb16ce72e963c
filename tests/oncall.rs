//! On call, end to end (short form): a real Prometheus scrapes a real sloguard every 500 ms
//! and evaluates the shipped rules, time-scaled 10 times (5 minutes become 30 s; see
//! `common::prometheus`), while the test plays an incident timeline on the real backend
//! under steady light load: quiet, a worker's event loop blocks and then recovers, a broken
//! policy is written and then fixed, Redis dies and comes back. Each alert meant for a phase
//! must fire in it, read from Prometheus's own `/api/v1/alerts`, and none may be pending or
//! firing while all is well. What fired when is printed as a table (docs/oncall.md).

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

/// Steady light load until `stop`: 40 requests/s, 80% events, in bounded 20 s runs.
fn background_load(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let run = Load {
                rate: 40.0,
                duration: Duration::from_secs(5),
                ingest_share: 0.8,
            };
            load::run(&base, &run).await;
        }
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
    let load = background_load(format!("http://{}", sg.proxy), stop.clone());
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
