//! Hedged requests (`hedge_after_ms`): a query waiting on a slow or stalled worker is also
//! sent to another worker and the first answer wins, through real sockets to the real
//! backend.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Sends `n` queries at once and returns (status, body, latency) for each.
async fn concurrent_queries(sg: &Sloguard, n: usize) -> Vec<(u16, serde_json::Value, Duration)> {
    let http = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let http = http.clone();
        let url = sg.url(&format!("/v1/metrics?customer=hedge-{i}&event=e"));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body, t.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A `query` route hedging after `hedge_after_ms`, the guard enforcing, and stall
/// detection after `stall_after_ms` (the `[upstream.health]` section stays open).
fn hedging_policy(p95_ms: u64, hedge_after_ms: u64, stall_after_ms: u64) -> String {
    format!(
        r#"
[[route]]
name = "query"
match = {{ method = "GET", path_prefix = "/v1/metrics" }}
slo = {{ p95_ms = {p95_ms} }}
hedge_after_ms = {hedge_after_ms}

[guard]
mode = "enforce"

[upstream.health]
stall_after_ms = {stall_after_ms}
"#
    )
}

fn hedges(st: &serde_json::Value) -> (u64, u64) {
    (
        st["hedges"]["launched"].as_u64().unwrap(),
        st["hedges"]["won"].as_u64().unwrap(),
    )
}

/// Every query got its answer (200 with series), at least one was hedged and a hedge
/// answered first.
fn every_query_answered_and_one_hedge_won(
    results: &[(u16, serde_json::Value, Duration)],
    st: &serde_json::Value,
) {
    for (status, body, _) in results {
        assert_eq!(*status, 200, "{body}");
        assert!(body["series"].is_array(), "not a query answer: {body}");
    }
    let (launched, won) = hedges(st);
    assert!(launched >= 1, "no query was hedged: {}", st["hedges"]);
    assert!(won >= 1, "no hedge answered first: {}", st["hedges"]);
}

/// A worker whose queries block 300 ms (but is not ejected: its health thresholds are set
/// out of reach): queries sent to it are hedged after 40 ms and answered by the other
/// worker, long before the slow one would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_is_hedged_after_hedge_after_ms_and_the_fast_answer_wins() {
    let be = backend_with_faults(
        2,
        vec![(
            1,
            FaultSpec {
                query_block: Some(Duration::from_millis(300)),
                ..FaultSpec::default()
            },
        )],
    );
    let sg = Sloguard::spawn(
        &be.addrs(),
        &format!(
            "{}lag_eject_ms = 10000\n\n[upstream.probe]\nenabled = false\n",
            hedging_policy(250, 40, 10_000)
        ),
    );
    let results = concurrent_queries(&sg, 8).await;
    let st = sg.status().await;
    let worst = results.iter().map(|r| r.2).max().unwrap();
    println!(
        "latencies {:?}; hedges {}",
        results.iter().map(|r| r.2).collect::<Vec<_>>(),
        st["hedges"]
    );
    every_query_answered_and_one_hedge_won(&results, &st);
    assert!(
        worst < Duration::from_millis(250),
        "a query waited {worst:?}: the hedge did not take over from the 300 ms block"
    );
}

/// A route with both `hedge_after_ms` and `per_try_timeout_ms`: each attempt of a hedged
/// query ends at the per-try timeout (both workers block 2 s here), so the client gets a 504
/// after about 0.35 s. The hedge path once built its own peers without the per-try timeout:
/// both attempts waited out the block and the query was answered 200 after 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_query_keeps_the_per_try_timeout_on_both_attempts() {
    let slow = FaultSpec {
        query_block: Some(Duration::from_secs(2)),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(2, vec![(1, slow.clone()), (2, slow)]);
    let policy = hedging_policy(2500, 50, 10_000).replace(
        "hedge_after_ms = 50\n",
        "hedge_after_ms = 50\nper_try_timeout_ms = 300\n",
    );
    assert!(policy.contains("per_try_timeout_ms = 300"));
    let sg = Sloguard::spawn(
        &be.addrs(),
        &format!("{policy}lag_eject_ms = 10000\n\n[upstream.probe]\nenabled = false\n"),
    );
    let r = client()
        .get(sg.url("/v1/metrics?customer=per-try&event=e"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let st = sg.status().await;
    println!("{status} {body}; hedges {}", st["hedges"]);
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["reason"], "upstream_timeout", "{body}");
    assert!(
        hedges(&st).0 >= 1,
        "the query was not hedged: {}",
        st["hedges"]
    );
}

/// A worker that stops answering: its queries are hedged as soon as the guard finds it
/// stalled, well before `hedge_after_ms` (1.5 s here) would fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_on_a_worker_found_stalled_is_hedged_before_the_timer() {
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), &hedging_policy(2500, 1500, 60));
    // Warm both workers so the concurrent queries spread over them.
    let warm = concurrent_queries(&sg, 4).await;
    assert!(warm.iter().all(|r| r.0 == 200));
    be.set_fault(
        1,
        FaultSpec {
            stall: Some(Duration::from_secs(3)),
            ..FaultSpec::default()
        },
    );
    let results = concurrent_queries(&sg, 8).await;
    let st = sg.status().await;
    let worst = results.iter().map(|r| r.2).max().unwrap();
    println!(
        "latencies {:?}; hedges {}; workers {}",
        results.iter().map(|r| r.2).collect::<Vec<_>>(),
        st["hedges"],
        st["workers"]
    );
    for (status, body, _) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let (launched, _) = hedges(&st);
    assert!(launched >= 1, "no query was hedged: {}", st["hedges"]);
    assert!(
        worst < Duration::from_millis(1000),
        "a query waited {worst:?}: the stall signal did not trigger the hedge before the 1.5 s timer"
    );
}

/// Hedging over Unix sockets: two uvicorn workers reached on their socket files (`unix:`
/// workers), worker 1 blocking its loop 300 ms on every query. Queries caught on it are hedged
/// to worker 2 and answered from there; every query is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_to_unix_socket_workers_are_hedged_too() {
    use common::fleet::{Fleet, FleetKind};
    let fleet = Fleet::start(FleetKind::PythonUnix, 2, &[(1, "query_block=300ms")]);
    let workers = fleet.workers();
    assert!(
        workers.iter().all(|w| w.starts_with("unix:/")),
        "{workers:?}"
    );
    let sg = Sloguard::spawn_named(
        &workers,
        &format!(
            "{}lag_eject_ms = 10000\n\n[upstream.probe]\nenabled = false\n",
            hedging_policy(250, 40, 10_000)
        ),
    );
    let results = concurrent_queries(&sg, 8).await;
    let st = sg.status().await;
    println!(
        "latencies {:?}; hedges {}; workers {}",
        results.iter().map(|r| r.2).collect::<Vec<_>>(),
        st["hedges"],
        st["workers"]
    );
    every_query_answered_and_one_hedge_won(&results, &st);
    // Queries went to the blocked worker over its socket (their first attempts, given up
    // when the hedge answered first), and the other answered over its own.
    let w = &st["workers"];
    assert!(w[0]["requests"].as_u64().unwrap() >= 1, "{w}");
    assert!(w[1]["successes"].as_u64().unwrap() >= 1, "{w}");
}
