//! The incident's fault through the proxy: one worker blocks its event loop; its answers are
//! late and its loop-lag header shows it, while the other workers stay fast.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn a_blocked_worker_answers_late_and_reports_its_loop_lag_while_others_stay_fast() {
    let block = FaultSpec {
        block: Some(Duration::from_millis(250)),
        every: 1,
        ..FaultSpec::default()
    };
    let be = backend_with_faults(4, vec![(3, block)]);
    // The guard off: the plain balancer keeps feeding worker 3, which is what this shows.
    let sg = Sloguard::spawn(&be.addrs(), "[guard]\nmode = \"off\"\n");
    let http = client();
    // worker id -> (elapsed, reported lag ms) per answer
    let mut seen: HashMap<u64, Vec<(Duration, u64)>> = HashMap::new();
    for i in 0..40u64 {
        let t = Instant::now();
        let r = http
            .post(sg.url("/v1/events"))
            .json(&event("acme", "lag", 1_700_000_000_000 + i, 1.0))
            .send()
            .await
            .unwrap();
        let elapsed = t.elapsed();
        assert_eq!(r.status(), 202);
        let header = |name: &str| r.headers()[name].to_str().unwrap().parse::<u64>().unwrap();
        seen.entry(header("x-worker-id"))
            .or_default()
            .push((elapsed, header("x-loop-lag-ms")));
    }
    assert_eq!(be.store().total_events(), 40);
    let blocked = seen
        .get(&3)
        .expect("worker 3 got requests (random tie-break spreads them)");
    assert!(
        blocked
            .iter()
            .all(|(d, _)| *d >= Duration::from_millis(240)),
        "{blocked:?}"
    );
    let worst_lag = blocked.iter().map(|(_, lag)| *lag).max().unwrap();
    assert!(
        worst_lag >= 200,
        "worker 3's lag header shows the block: {blocked:?}"
    );
    for (worker, answers) in seen.iter().filter(|(w, _)| **w != 3) {
        let mut times: Vec<Duration> = answers.iter().map(|(d, _)| *d).collect();
        times.sort();
        let median = times[times.len() / 2];
        assert!(
            median < Duration::from_millis(100),
            "worker {worker} is slow: {answers:?}"
        );
        let lag = answers.iter().map(|(_, l)| *l).max().unwrap();
        assert!(
            lag < 100,
            "worker {worker} reports lag {lag} ms: {answers:?}"
        );
    }
    assert!(
        seen.len() >= 3,
        "requests reached most workers: {:?}",
        seen.keys()
    );
}
