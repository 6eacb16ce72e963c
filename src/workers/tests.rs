//! Worker set tests: leases, retries skipping tried workers, enforced choice.

use super::*;

fn cfg(n: usize) -> UpstreamConfig {
    UpstreamConfig {
        workers: (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
            .collect(),
        connect_timeout: Duration::from_millis(100),
        read_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        keepalive_pool_size: 8,
        lag_header: "x-loop-lag-ms".into(),
        health: HealthConfig::default(),
        max_ejected_percent: 50,
        probe: None,
    }
}

fn set(n: usize) -> WorkerSet {
    WorkerSet::new(&cfg(n), &LimiterConfig::default())
}

#[test]
fn leases_count_in_flight_and_release_on_drop() {
    let s = set(2);
    let a = s.acquire(GuardMode::Off, 0, None, None).unwrap();
    let b = s.acquire(GuardMode::Off, 0, None, None).unwrap();
    // With one request on a worker, the next goes to the other one.
    assert_ne!(a.index(), b.index());
    assert_eq!(s.iter().map(|w| w.in_flight()).sum::<usize>(), 2);
    drop(a);
    drop(b);
    assert_eq!(s.iter().map(|w| w.in_flight()).sum::<usize>(), 0);
    assert_eq!(s.iter().map(|w| w.requests()).sum::<u64>(), 2);
}

#[test]
fn tried_workers_are_skipped_until_none_is_left() {
    for mode in [GuardMode::Off, GuardMode::Enforce] {
        let s = set(3);
        let first = s.acquire(mode, 0, Some(1.0), None).unwrap().index();
        let second = s
            .acquire(mode, 1 << first, Some(1.0), None)
            .unwrap()
            .index();
        assert_ne!(first, second);
        assert!(s.acquire(mode, 0b111, Some(1.0), None).is_none());
    }
}

#[test]
fn enforced_choice_skips_ejected_workers_and_full_ones() {
    let s = set(3);
    let now = Instant::now();
    let w0 = &s.workers[0];
    let hc = HealthConfig::default();
    for _ in 0..hc.consecutive_failures {
        w0.on_connect_failure(&hc);
    }
    assert!(matches!(
        w0.evaluate(&hc, true, now),
        Some(Transition::Ejected { .. })
    ));
    let mut leases = vec![];
    // Two workers left, each with the initial limit of 8.
    while let Some(l) = s.acquire(GuardMode::Enforce, 0, Some(1.0), None) {
        assert_ne!(l.index(), 0, "an ejected worker got a request");
        leases.push(l);
        assert!(leases.len() <= 16);
    }
    assert_eq!(leases.len(), 16);
    assert!(!s.has_room());
    // A lower class's share of a full worker is used up too.
    assert!(s.acquire(GuardMode::Enforce, 0, Some(0.5), None).is_none());
    // Without limits (a retry), a full worker can still be chosen; the ejected one not.
    assert_ne!(
        s.acquire(GuardMode::Enforce, 0, None, None)
            .unwrap()
            .index(),
        0
    );
    // With the guard off, the ejected worker is just another worker.
    assert_eq!(s.acquire(GuardMode::Off, 0, None, None).unwrap().index(), 0);
}
