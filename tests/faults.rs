//! More faults on real processes: a worker answering 5xx, Redis answering slowly. What the
//! client sees, and that sloguard recovers by itself.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[tokio::test]
async fn a_worker_answering_5xx_is_ejected_after_a_few_and_the_rest_go_elsewhere() {
    let failing = FaultSpec {
        status: Some(503),
        every: 1,
        ..FaultSpec::default()
    };
    // Worker 1 answers in 25 ms, so the fast-failing worker 2 is the cheaper choice and gets
    // traffic whatever worker the first request lands on. (At 5 ms, a first answer of worker 2
    // slowed by its connection set-up in a debug build could cost more than worker 1's, and
    // sequential traffic then never tried worker 2 again.)
    let slow = FaultSpec {
        block: Some(Duration::from_millis(25)),
        every: 1,
        ..FaultSpec::default()
    };
    let be = backend_with_faults(2, vec![(1, slow), (2, failing)]);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let http = client();
    let mut errors = 0;
    for i in 0..60u64 {
        let r = http
            .post(sg.url("/v1/events"))
            .json(&event("c", "e", i, 1.0))
            .send()
            .await
            .unwrap();
        if r.status() != 202 {
            errors += 1;
        }
    }
    let st: Value = sg.status().await;
    println!("{errors} errors; worker 2: {}", st["workers"][1]);
    // The default consecutive_failures is 5: at most that many 503s reach clients before each
    // ejection (POSTs are never retried: the worker may have acted on them). The run outlasts
    // the first ejection (1 s), so worker 2 may be readmitted once, fail 5 more and be ejected
    // again, for twice as long. A worker readmitted near the end of the run is on probation
    // (suspect) and may be up to 4 failures into its next ejection: a clean-clone run ended
    // there with 8 errors, 1 ejection and worker 2 suspect.
    let ejections = st["workers"][1]["ejections"].as_u64().unwrap();
    assert!((1..=2).contains(&ejections), "{}", st["workers"][1]);
    let state = st["workers"][1]["state"].as_str().unwrap();
    let open_cycle = if state == "ejected" { 0 } else { 4 };
    assert!(
        errors as u64 <= 5 * ejections + open_cycle,
        "{errors} errors, {ejections} ejections, {state}"
    );
    assert!(
        matches!(state, "ejected" | "suspect"),
        "{}",
        st["workers"][1]
    );
    assert!(
        st["workers"][1]["reason"].as_str().unwrap().contains("5xx"),
        "{}",
        st["workers"][1]
    );
    assert_eq!(
        be.store().total_events(),
        60 - errors as u64,
        "every 202 stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_costs_no_request_more_than_its_timeout() {
    let redis = RedisServer::spawn();
    let be = backend(1);
    let policy = format!(
        "{ROUTES}\n[ratelimit]\nredis_url = \"{}\"\ntimeout_ms = 20\n\n[[ratelimit.rule]]\nname = \"t\"\nroutes = [\"ingest\"]\nkey = \"header:x-tenant\"\nrate = 1000\nburst = 100\n",
        redis.url()
    );
    let sg = Sloguard::spawn(&be.addrs(), &policy);
    let http = client();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut refused = 0;
    let mut slept = false;
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        if !slept && started.elapsed() > Duration::from_millis(500) {
            // Redis stops answering anyone for 1.5 s.
            redis.send("DEBUG SLEEP 1.5");
            slept = true;
        }
        let (status, took) = sg.post_event(&http, &format!("t{}", i % 10), i).await;
        slowest = slowest.max(took);
        if status != 202 {
            refused += 1;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let st: Value = sg.status().await;
    println!(
        "{i} requests, {refused} refused, slowest {slowest:?}, {}",
        st["ratelimit"]
    );
    assert_eq!(refused, 0);
    // A request that waited on Redis would take the whole 1.5 s sleep; the 20 ms timeout
    // and the local fallback keep every request far under it. (The bound is not the 20 ms:
    // a debug build on a busy 2-core machine has shown a 200 ms request here; latency
    // figures belong to the benchmark.)
    assert!(
        slowest < Duration::from_millis(1000),
        "a request waited {slowest:?} on a sleeping Redis"
    );
    assert!(
        st["ratelimit"]["redis_errors"].as_u64().unwrap() >= 1,
        "the sleep was noticed"
    );
    // Redis is awake again: shared limiting resumes by itself.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st: Value = sg.status().await;
        if st["ratelimit"]["mode"] == "redis" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never back to redis: {}",
            st["ratelimit"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
