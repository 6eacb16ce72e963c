//! Worker set tests: leases, retries skipping tried workers, enforced choice.

use super::*;

fn cfg(n: usize) -> UpstreamConfig {
    UpstreamConfig {
        workers: (0..n)
            .map(|i| {
                WorkerAddr::Tcp(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    9000 + i as u16,
                )))
            })
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

/// A request of unknown cost: beyond the learnt limit (its share), a worker takes it only
/// while its latency outlook is within the 50 ms cap.
fn rule(share: f64) -> SlotRule {
    SlotRule {
        share,
        cost: None,
        work_cap: Duration::from_millis(50),
        ceiling: 64,
    }
}

/// A request that costs `ms` of loop time, under a 50 ms target.
fn costing(share: f64, ms: u64) -> SlotRule {
    SlotRule {
        cost: Some(Duration::from_millis(ms)),
        ..rule(share)
    }
}

/// `n` leases taken under `rule` (each must be granted), held until dropped.
fn hold(s: &WorkerSet, n: usize, rule: &SlotRule) -> Vec<WorkerLease> {
    (0..n)
        .map(|_| {
            s.acquire(GuardMode::Enforce, Tried::NONE, Some(rule), None)
                .unwrap()
        })
        .collect()
}

/// Feeds worker `w` an answer `rtt` after it was sent with `before` others in flight.
fn answer(w: &Worker, rtt: Duration, before: usize, now: Instant) {
    let up = cfg(1);
    let sample = Sample {
        rtt,
        in_flight_before: before,
        lag: None,
    };
    w.on_response(&up, &LimiterConfig::default(), 200, sample, now);
}

#[test]
fn leases_count_in_flight_and_release_on_drop() {
    let s = set(2);
    let a = s.acquire(GuardMode::Off, Tried::NONE, None, None).unwrap();
    let b = s.acquire(GuardMode::Off, Tried::NONE, None, None).unwrap();
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
        let first = s
            .acquire(mode, Tried::NONE, Some(&rule(1.0)), None)
            .unwrap()
            .index();
        let second = s
            .acquire(mode, Tried::of(first), Some(&rule(1.0)), None)
            .unwrap()
            .index();
        assert_ne!(first, second);
        let mut all_three = Tried::NONE;
        (0..3).for_each(|i| all_three.insert(i));
        assert!(s.acquire(mode, all_three, Some(&rule(1.0)), None).is_none());
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
    // The others answer slower than the 50 ms cap: beyond their learnt limit they take
    // nothing more.
    for w in &s.workers[1..] {
        answer(w, Duration::from_millis(60), 0, now);
    }
    let mut leases = vec![];
    // Two workers left, each with the initial limit of 8.
    while let Some(l) = s.acquire(GuardMode::Enforce, Tried::NONE, Some(&rule(1.0)), None) {
        assert_ne!(l.index(), 0, "an ejected worker got a request");
        leases.push(l);
        assert!(leases.len() <= 16);
    }
    assert_eq!(leases.len(), 16);
    assert!(!s.has_room(&rule(1.0)));
    // A lower class's share of a full worker is used up too.
    assert!(s
        .acquire(GuardMode::Enforce, Tried::NONE, Some(&rule(0.5)), None)
        .is_none());
    // Without limits (a retry), a full worker can still be chosen; the ejected one not.
    assert_ne!(
        s.acquire(GuardMode::Enforce, Tried::NONE, None, None)
            .unwrap()
            .index(),
        0
    );
    // With the guard off, the ejected worker is just another worker.
    assert_eq!(
        s.acquire(GuardMode::Off, Tried::NONE, None, None)
            .unwrap()
            .index(),
        0
    );
}

#[test]
fn a_worker_takes_work_beyond_its_learnt_limit_while_it_fits_the_target() {
    let s = set(1);
    let w = &s.workers[0];
    // 1 ms requests, each starting within a 50 ms cap: 50 fit, whatever the learnt limit.
    let mut leases = vec![];
    while let Some(l) = s.acquire(
        GuardMode::Enforce,
        Tried::NONE,
        Some(&costing(1.0, 1)),
        None,
    ) {
        leases.push(l);
        assert!(leases.len() <= 64);
    }
    assert_eq!(leases.len(), 50);
    assert_eq!(w.work(), Duration::from_millis(50));
    // Releases give the work back.
    drop(leases.split_off(10));
    assert_eq!(w.work(), Duration::from_millis(10));
    // A normal request while a higher class waits (half the cap: 25 ms) starts within it
    // behind 10 ms of work...
    assert!(w.has_slot(&costing(0.5, 25)));
    // ...not behind 30 ms: a critical request would wait behind it.
    let more = hold(&s, 20, &costing(1.0, 1));
    assert_eq!(w.work(), Duration::from_millis(30));
    assert!(!w.has_slot(&costing(0.5, 1)));
    drop(more);
    // Unknown cost: beyond the learnt limit's share (8 x 0.5 = 4), only a worker answering
    // within the cap's share (25 ms) takes more.
    assert!(w.has_slot(&rule(0.5)));
    answer(w, Duration::from_millis(30), 0, Instant::now());
    assert!(!w.has_slot(&rule(0.5)));
    drop(leases);
    assert_eq!(w.work(), Duration::ZERO);
    // An idle worker takes any request, even one dearer than the cap.
    assert!(w.has_slot(&costing(0.25, 100)));
    // The ceiling bounds cheap requests.
    let cheap = SlotRule {
        ceiling: 10,
        ..costing(1.0, 0)
    };
    let held = hold(&s, 10, &cheap);
    assert!(!w.has_slot(&cheap));
    drop(held);
}

#[test]
fn a_worker_answering_late_takes_no_work_beyond_its_limit_whatever_the_cost_learnt() {
    let s = set(1);
    let w = &s.workers[0];
    let now = Instant::now();
    // A cost learnt at 1 ms, then the worker slows down for every request at once.
    let held = hold(&s, 10, &costing(1.0, 1));
    assert!(
        w.has_slot(&costing(1.0, 1)),
        "10 ms of work, under the 50 ms cap"
    );
    // Its answers now take 400 ms: the 1 ms cost is stale, and the answers say so.
    answer(w, Duration::from_millis(400), 0, now);
    assert!(!w.has_slot(&costing(1.0, 1)));
    drop(held);
    assert!(
        w.has_slot(&costing(1.0, 1)),
        "an idle worker always takes one"
    );
}

#[test]
fn a_silent_busy_worker_stops_getting_requests_before_it_is_ejected() {
    let s = set(2);
    let now = Instant::now();
    for w in s.iter() {
        for i in 0..20u32 {
            answer(
                w,
                Duration::from_millis(1),
                0,
                now + Duration::from_millis(u64::from(i)),
            );
        }
    }
    // Worker 0 takes one request and goes silent (a blocked loop); its last answer was at
    // +19 ms. Costs are read 30 ms after that: worker 0 counts as at least 30 ms slow.
    let stuck = s
        .acquire(GuardMode::Enforce, Tried::of(1), Some(&rule(1.0)), None)
        .unwrap();
    assert_eq!(stuck.index(), 0);
    let later = since_epoch(now + Duration::from_millis(49));
    let (c0, c1) = (s.workers[0].cost(later), s.workers[1].cost(later));
    assert!(c0 > 30.0 * c1, "stalled {c0} vs healthy {c1}");
}

#[test]
fn with_no_cost_known_a_worker_answering_in_time_takes_work_up_to_the_ceiling() {
    let s = set(1);
    let w = &s.workers[0];
    let now = Instant::now();
    // A fresh proxy knows no cost: it admits as least-connections would, up to the
    // ceiling, not just the initial limit of 8.
    let mut leases = vec![];
    while let Some(l) = s.acquire(GuardMode::Enforce, Tried::NONE, Some(&rule(1.0)), None) {
        leases.push(l);
        assert!(leases.len() <= 64);
    }
    assert_eq!(leases.len(), 64);
    drop(leases.split_off(20));
    // Answers well within the 50 ms cap (40 ms, from a proxy and workers sharing a core)
    // keep it taking work, whatever the limiter learnt from them...
    answer(w, Duration::from_millis(40), 0, now);
    assert!(w.has_slot(&rule(1.0)));
    // ...answers over it stop it at the learnt limit.
    answer(w, Duration::from_millis(55), 0, now);
    assert!(!w.has_slot(&rule(1.0)));
    drop(leases.split_off(7));
    assert!(w.has_slot(&rule(1.0)), "under the learnt limit of 8");
}

#[test]
fn a_silent_worker_stops_taking_work_beyond_its_limit_once_its_silence_passes_the_cap() {
    let s = set(1);
    let w = &s.workers[0];
    let now = Instant::now();
    let held = hold(&s, 10, &rule(1.0));
    // Busy since the first lease and silent: 60 ms later it is at least 60 ms slow.
    let later = since_epoch(now + Duration::from_millis(60));
    assert!(w.outlook(later) >= Duration::from_millis(59));
    assert!(w.outlook(since_epoch(now)) < Duration::from_millis(10));
    drop(held);
}
