//! Acceptance: overload. At twice the workers' capacity the guard admits what can be served
//! within the SLO and sheds the rest at once, lower priorities first; without it every
//! request queues and the SLO is lost for nearly all of them.
//!
//! One scenario at a time (a lock): they measure latency on a shared 2-core machine.

mod common;

use std::time::Duration;

use common::load::{self, Load};
use common::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn guard(mode: &str) -> String {
    format!("{ROUTES}\n[guard]\nmode = \"{mode}\"\n")
}

/// At twice the capacity, the guard admits what the workers can serve within the SLO and
/// sheds the rest at once with 503 and Retry-After; without it, every request queues and
/// the SLO is lost for nearly all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_twice_capacity_admitted_requests_keep_their_slo_and_the_excess_is_shed_fast() {
    let _serial = SERIAL.lock().await;
    // Each events request holds its worker's loop 4 ms: 4 workers serve about 1000/s.
    let slow = FaultSpec {
        block: Some(Duration::from_millis(4)),
        every: 1,
        ..FaultSpec::default()
    };
    let faults = (1..=4).map(|w| (w, slow.clone())).collect::<Vec<_>>();
    let capacity = 1000.0;
    let mut results = vec![];
    for mode in ["enforce", "off"] {
        let be = backend_with_faults(4, faults.clone());
        let sg = Sloguard::spawn(&be.addrs(), &guard(mode));
        let load = Load {
            rate: capacity * 2.0,
            duration: Duration::from_secs(5),
            ingest_share: 1.0,
        };
        let outcomes = load::run(&format!("http://{}", sg.proxy), &load).await;
        let r = load::report(&outcomes, load.duration);
        println!("{mode}: {r:?}");
        if mode == "enforce" {
            let st = sg.status().await;
            println!("{}", st["workers"]);
        }
        results.push(r);
    }
    let (on, off) = (&results[0], &results[1]);
    assert_eq!(on.server_errors + on.transport_errors, 0, "{on:?}");
    assert!(on.shed > 0, "nothing shed at 2x capacity");
    assert!(
        on.over_slo <= 0.01,
        "admitted requests over SLO: {:.3}%",
        on.over_slo * 100.0
    );
    assert!(
        on.goodput >= 0.7 * capacity,
        "goodput within SLO {:.0}/s",
        on.goodput
    );
    // The excess is shed on arrival, not after waiting: the queue holds at most its target
    // delay (50 ms), so the drain-rate estimate has slack. (Seen here: p99 4-17 ms, none
    // after waiting; the benchmark's release build sheds in 0.2 ms at p99. The bounds leave
    // room for a debug build and the test's own load generator on a busy 2-core machine.)
    assert!(
        on.shed_p99 <= Duration::from_millis(25),
        "503s took {:?} (p99)",
        on.shed_p99
    );
    assert!(
        on.shed_late * 50 <= on.shed,
        "{} of {} sheds came late",
        on.shed_late,
        on.shed
    );
    assert!(
        on.goodput >= 3.0 * off.goodput,
        "guard {:.0}/s vs off {:.0}/s",
        on.goodput,
        off.goodput
    );
}

/// Twice the capacity, where queries are the expensive class (each holds its worker's loop
/// 25 ms, like a heavy aggregation): ingestion is critical and keeps succeeding while the
/// queries absorb the shedding. Without the guard, both drown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_critical_ingest_keeps_succeeding_while_queries_are_shed() {
    let _serial = SERIAL.lock().await;
    let heavy_queries = FaultSpec {
        query_block: Some(Duration::from_millis(25)),
        ..FaultSpec::default()
    };
    let faults = (1..=4)
        .map(|w| (w, heavy_queries.clone()))
        .collect::<Vec<_>>();
    // Loop time per request: 0.8 x ~0.2 ms + 0.2 x 25 ms = ~5.2 ms; 4 loops: ~770/s.
    let rate = 1500.0;
    let mut runs = vec![];
    for mode in ["enforce", "off"] {
        let be = backend_with_faults(4, faults.clone());
        let sg = Sloguard::spawn(&be.addrs(), &guard(mode));
        let load = Load {
            rate,
            duration: Duration::from_secs(5),
            ingest_share: 0.8,
        };
        let outcomes = load::run(&format!("http://{}", sg.proxy), &load).await;
        let split = |kind: load::Kind| {
            let of: Vec<_> = outcomes
                .iter()
                .filter(|o| o.kind == kind)
                .copied()
                .collect();
            load::report(&of, load.duration)
        };
        let (ingest, query) = (split(load::Kind::Ingest), split(load::Kind::Query));
        let by_kind = |k: load::Kind| {
            load::reasons(
                &outcomes
                    .iter()
                    .filter(|o| o.kind == k)
                    .copied()
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "{mode}: shed reasons ingest {:?} query {:?}",
            by_kind(load::Kind::Ingest),
            by_kind(load::Kind::Query)
        );
        println!("{mode}: ingest {ingest:?}\n{mode}: query  {query:?}");
        runs.push((ingest, query));
    }
    let ((ingest, query), (ingest_off, _)) = (&runs[0], &runs[1]);
    assert!(
        ingest.ingest_success >= 0.99,
        "critical success {:.2}%",
        ingest.ingest_success * 100.0
    );
    assert!(
        ingest.over_slo <= 0.01,
        "critical over SLO {:.2}%",
        ingest.over_slo * 100.0
    );
    assert!(
        query.shed * 4 >= query.sent,
        "queries absorbed the shedding: {query:?}"
    );
    assert_eq!(
        ingest.server_errors + ingest.transport_errors + query.server_errors,
        0
    );
    assert!(
        ingest.goodput >= 5.0 * ingest_off.goodput,
        "critical goodput {:.0}/s with the guard vs {:.0}/s without",
        ingest.goodput,
        ingest_off.goodput
    );
}

/// Below capacity the guard sheds nothing: at 70% of what the workers can serve, every
/// request is admitted (false shedding under 0.01%) and within its SLO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_seventy_percent_of_capacity_nothing_is_shed() {
    let _serial = SERIAL.lock().await;
    let slow = FaultSpec {
        block: Some(Duration::from_millis(4)),
        every: 1,
        ..FaultSpec::default()
    };
    let faults = (1..=4).map(|w| (w, slow.clone())).collect::<Vec<_>>();
    let be = backend_with_faults(4, faults);
    let sg = Sloguard::spawn(&be.addrs(), &guard("enforce"));
    let load = Load {
        rate: 700.0,
        duration: Duration::from_secs(5),
        ingest_share: 1.0,
    };
    let outcomes = load::run(&format!("http://{}", sg.proxy), &load).await;
    let r = load::report(&outcomes, load.duration);
    println!(
        "{r:?} {:?}\n{}",
        load::reasons(&outcomes),
        sg.status().await["workers"]
    );
    assert!(
        r.shed * 10_000 <= r.sent,
        "false shedding: {} of {}",
        r.shed,
        r.sent
    );
    assert_eq!(r.ok, r.sent - r.shed);
    assert!(r.over_slo <= 0.001, "{r:?}");
}
