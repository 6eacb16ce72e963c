//! Acceptance: the incident, end to end. Four workers, worker 3 blocking its event loop
//! 250 ms on one request in four; an open-loop mix of 80% ingest / 20% queries.
//!
//! The scenarios run one at a time (a lock), since they measure latency on a shared 2-core
//! machine. Every number is printed, so a failure shows what was seen.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::fleet::{Fleet, FleetKind};
use common::load::{self, Load, Report};
use common::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn incident_fault() -> FaultSpec {
    FaultSpec {
        block: Some(Duration::from_millis(250)),
        every: 4,
        ..FaultSpec::default()
    }
}

async fn measure(sg: &Sloguard, rate: f64, secs: u64) -> Report {
    let load = Load {
        rate,
        duration: Duration::from_secs(secs),
        ingest_share: 0.8,
    };
    let outcomes = load::run(&format!("http://{}", sg.proxy), &load).await;
    load::report(&outcomes, load.duration)
}

fn guard(mode: &str) -> String {
    format!("{ROUTES}\n[guard]\nmode = \"{mode}\"\n")
}

/// At moderate load (well below capacity), the plain balancer keeps feeding the blocked
/// worker and the tail shows it; the guard ejects worker 3 (and only it), sheds nothing,
/// fails nothing, stores every event once, and takes most of the tail away. The figures
/// (over-SLO share, p99.9 against the healthy workers alone) are the benchmark's; here the
/// comparison has margins that hold on a loaded 2-core machine with a debug build.
async fn the_incident_at_moderate_load(kind: FleetKind) {
    let _serial = SERIAL.lock().await;
    // Moderate for the workers, and little enough that a debug-build proxy and the test's
    // own client are not the bottleneck on a shared 2-core machine.
    let rate = 400.0;
    let secs = 6;
    let fault = [(3, "block=250ms,every=4")];

    let fleet = Fleet::start(kind, 4, &fault);
    let sg = Sloguard::spawn_named(&fleet.workers(), &guard("off"));
    let off = measure(&sg, rate, secs).await;
    drop(sg);
    drop(fleet);

    let fleet = Fleet::start(kind, 4, &fault);
    let sg = Sloguard::spawn_named(&fleet.workers(), &guard("enforce"));
    let on = measure(&sg, rate, secs).await;
    let st = sg.status().await;
    drop(sg);
    let accepted = fleet.total_events();
    drop(fleet);

    let fleet = Fleet::start(kind, 3, &[]);
    let sg = Sloguard::spawn_named(&fleet.workers(), &guard("off"));
    let ideal = measure(&sg, rate, secs).await;

    println!(
        "{kind:?} workers\nguard off    : {off:?}\nguard on     : {on:?}\nhealthy only : {ideal:?}\nworkers: {}",
        st["workers"]
    );
    // The guard: nothing fails, nothing is shed below capacity.
    assert_eq!(
        (on.server_errors, on.transport_errors, on.shed),
        (0, 0, 0),
        "{on:?}"
    );
    assert_eq!(on.ok, on.sent);
    let ingest_sent = (on.sent as f64 * 0.8).round() as u64;
    assert!(
        accepted.abs_diff(ingest_sent) <= 1,
        "every accepted event stored once: {accepted} vs {ingest_sent}"
    );
    // Without it, the same workers under the same load show the incident; with it, most of
    // that tail is gone. Typically 2 of 2400 requests against 20 (the stalls that begin on
    // worker 3 between ejections); the margin is 2x because on a slow stretch of a shared
    // machine every worker's latency estimate rises, so the stalled one keeps winning choices
    // for longer before its silence outweighs them (one clean-clone run: 9 against 21).
    assert!(
        off.over_slo >= 0.002,
        "the unguarded run should show the tail: {off:?}"
    );
    assert!(
        off.over_slo >= on.over_slo * 2.0,
        "off {:.4}% vs on {:.4}%",
        off.over_slo * 100.0,
        on.over_slo * 100.0
    );
    // The status page says which worker and why, and no healthy worker was ejected.
    let w3 = &st["workers"][2];
    if kind == FleetKind::PythonUnix {
        let addr = w3["addr"].as_str().unwrap_or_default();
        assert!(
            addr.starts_with("unix:/") && addr.ends_with("w3.sock"),
            "{w3}"
        );
        // Answers and probes both came over the socket: the worker's record has both.
        assert!(
            st["workers"][0]["successes"].as_u64().unwrap() > 100,
            "{}",
            st["workers"]
        );
        assert!(
            st["workers"][0]["probe_ms"].as_f64().is_some(),
            "{}",
            st["workers"]
        );
    }
    assert!(w3["ejections"].as_u64().unwrap() >= 1, "{w3}");
    let reason = w3["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("stalled") || reason.contains("lag"), "{w3}");
    for i in [0, 1, 3] {
        assert_eq!(
            st["workers"][i]["ejections"], 0,
            "a healthy worker was ejected: {}",
            st["workers"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_at_moderate_load_on_rust_workers() {
    the_incident_at_moderate_load(FleetKind::Rust).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_at_moderate_load_on_python_workers() {
    the_incident_at_moderate_load(FleetKind::Python).await;
}

/// The same, with sloguard reaching the uvicorn workers on Unix sockets (`unix:` workers):
/// requests, probes (readmission), ejection and the limiter all go over the socket files.
/// The status page names each worker by its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_at_moderate_load_on_python_workers_over_unix_sockets() {
    the_incident_at_moderate_load(FleetKind::PythonUnix).await;
}

/// Worker 3 is ejected within a few hundred ms of its first stall, and the status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_is_ejected_within_a_few_hundred_ms() {
    let _serial = SERIAL.lock().await;
    let be = backend_with_faults(4, vec![(3, incident_fault())]);
    let sg = Sloguard::spawn(&be.addrs(), &guard("enforce"));
    let base = format!("http://{}", sg.proxy);
    let started = std::time::Instant::now();
    let load = tokio::spawn(async move {
        let l = Load {
            rate: 400.0,
            duration: Duration::from_secs(2),
            ingest_share: 0.8,
        };
        load::report(&load::run(&base, &l).await, l.duration)
    });
    let mut ejected_at = None;
    while started.elapsed() < Duration::from_secs(3) {
        let st = sg.status().await;
        if st["workers"][2]["state"] == "ejected" {
            ejected_at = Some(started.elapsed());
            println!(
                "ejected after {:?}: {}",
                started.elapsed(),
                st["workers"][2]
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at = ejected_at.expect("worker 3 was never ejected");
    // The first blocked request starts on worker 3's 1st events request, within ~25 ms of
    // the load starting; detection takes stall_after (100 ms) plus a tick.
    assert!(at < Duration::from_millis(600), "ejected only after {at:?}");
    let r = load.await.unwrap();
    assert_eq!(r.server_errors + r.transport_errors, 0, "{r:?}");
}

/// A worker killed outright: only requests caught on it at that instant can fail; it is
/// ejected, and taken back once it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_costs_at_most_its_in_flight_requests_and_is_readmitted_when_back() {
    let _serial = SERIAL.lock().await;
    let be = backend(4);
    let addrs = be.addrs();
    let sg = Sloguard::spawn(&addrs, &guard("enforce"));
    let base = format!("http://{}", sg.proxy);
    let load = tokio::spawn(async move {
        let l = Load {
            rate: 800.0,
            duration: Duration::from_secs(4),
            ingest_share: 0.8,
        };
        load::report(&load::run(&base, &l).await, l.duration)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    be.kill_worker(2);
    let r = load.await.unwrap();
    println!("{r:?}");
    let failed = r.sent - r.ok;
    // At 800/s over 4 workers with ~2 ms latency, about 0.4 requests sit on a worker at any
    // instant; allow a handful for connections the kill cut mid-request.
    assert!(failed <= 5, "{failed} requests failed: {r:?}");
    let st = sg.status().await;
    assert_eq!(st["workers"][1]["state"], "ejected", "{}", st["workers"][1]);

    // The worker comes back on the same port: probes readmit it (after its ejection time).
    let back = Backend::start(BackendConfig {
        workers: 1,
        base_port: addrs[1].port(),
        ..BackendConfig::default()
    })
    .expect("the port is free again");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = sg.status().await;
        let state = st["workers"][1]["state"].as_str().unwrap().to_string();
        if state != "ejected" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never readmitted: {}",
            st["workers"][1]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // On probation its share ramps up over slow start (3 s): keep sending until it serves.
    let http = client();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut i = 0u64;
    while back.store().total_events() == 0 && std::time::Instant::now() < deadline {
        let r = http
            .post(sg.url("/v1/events"))
            .json(&event("acme", "back", i, 1.0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        back.store().total_events() > 0,
        "the returned worker gets traffic again"
    );
}

/// Shadow mode decides as enforce does (worker 3 shows as ejected, with its reason) but acts
/// on nothing: worker 3 keeps getting its share, as with the guard off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_reports_the_ejection_but_keeps_sending_to_the_worker() {
    let _serial = SERIAL.lock().await;
    let be = backend_with_faults(4, vec![(3, incident_fault())]);
    let sg = Sloguard::spawn(&be.addrs(), &guard("shadow"));
    let r = measure(&sg, 300.0, 2).await;
    let st = sg.status().await;
    println!("{r:?}\n{}", st["workers"]);
    assert_eq!(st["guard"], "shadow");
    let w3 = &st["workers"][2];
    assert!(
        w3["ejections"].as_u64().unwrap() >= 1,
        "shadow decided nothing: {w3}"
    );
    // Least-in-flight steers around it while a block holds a request there, yet it keeps
    // getting work (enforce lets it have a handful at most; see the incident test).
    assert!(
        w3["requests"].as_u64().unwrap() >= 15,
        "shadow acted on its decision: {w3}"
    );
    assert_eq!(r.shed, 0);
    assert!(
        r.p999 >= Duration::from_millis(200),
        "the tail is still there in shadow: {r:?}"
    );
}

/// A GET stuck on a stalled worker is retried on another after the route's per-try timeout,
/// within the SLO; a POST stuck the same way gets a 504 and is never sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_get_is_retried_elsewhere_and_a_stuck_post_is_never_repeated() {
    let _serial = SERIAL.lock().await;
    let be = backend(2);
    let routes = r#"
[[route]]
name = "ingest"
match = { method = "POST", path_prefix = "/v1/events" }
slo = { p95_ms = 150 }
per_try_timeout_ms = 80

[[route]]
name = "query"
match = { method = "GET", path_prefix = "/v1/metrics" }
slo = { p95_ms = 250 }
per_try_timeout_ms = 80

[guard]
mode = "off"
"#;
    let sg = Sloguard::spawn(&be.addrs(), routes);
    let http = client();
    // Worker 1 stops answering anything for 3 s, starting now.
    be.set_fault(
        1,
        FaultSpec {
            stall: Some(Duration::from_secs(3)),
            ..FaultSpec::default()
        },
    );
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let r = http
            .get(sg.url("/v1/metrics?customer=a&event=b"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
    }
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..20u64 {
        let r = http
            .post(sg.url("/v1/events"))
            .json(&event(&format!("once-{i}"), "e", 1_700_000_000_000, 1.0))
            .send()
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    let st = sg.status().await;
    println!(
        "worst GET {worst:?}; POST statuses {statuses:?}; retries {}",
        st["retries"]
    );
    assert!(worst < Duration::from_millis(250), "a GET waited {worst:?}");
    assert!(
        st["retries"]["granted"].as_u64().unwrap() >= 1,
        "{}",
        st["retries"]
    );
    assert!(
        statuses.get(&504).copied().unwrap_or(0) >= 1,
        "no POST hit the stalled worker: {statuses:?}"
    );
    assert_eq!(
        statuses.keys().filter(|s| **s != 202 && **s != 504).count(),
        0,
        "{statuses:?}"
    );
    // Let the stall end: the stuck POSTs may then be processed, but never twice.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for i in 0..20u64 {
        let q: serde_json::Value = http
            .get(sg.url(&format!("/v1/metrics?customer=once-{i}&event=e&bucket=1d")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count: u64 = q["series"][0]["points"]
            .as_array()
            .map(|p| p.iter().map(|x| x["count"].as_u64().unwrap()).sum())
            .unwrap_or(0);
        assert!(count <= 1, "event once-{i} stored {count} times");
    }
}
