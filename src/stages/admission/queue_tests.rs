//! Tests of `queue.rs` (a child module, kept apart to keep that file readable).

use super::*;

const MS: Duration = Duration::from_millis(1);
/// The standing target the tests use (the default `lifo_target`).
const TARGET: Duration = Duration::from_millis(5);

/// How long lanes above `p` have stood at `at`, at the test target.
fn standing(q: &WaitQueue<u32>, p: Priority, at: Instant) -> Duration {
    q.higher_standing_for(p, at, TARGET)
}

#[test]
fn higher_priority_first_then_fifo_or_lifo() {
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(10);
    let mut q = WaitQueue::default();
    q.push(Priority::Sheddable, far, t0, "s1");
    q.push(Priority::Normal, far, t0, "n1");
    q.push(Priority::Normal, far, t0, "n2");
    q.push(Priority::Critical, far, t0, "c1");
    let mut exp = vec![];
    let order: Vec<&str> = std::iter::from_fn(|| {
        q.pop_next(t0, false, TARGET, &mut exp, |_, _| true)
            .map(|e| e.payload)
    })
    .collect();
    assert_eq!(order, ["c1", "n1", "n2", "s1"]);

    q.push(Priority::Normal, far, t0, "n1");
    q.push(Priority::Normal, far, t0, "n2");
    assert_eq!(
        q.pop_next(t0, true, TARGET, &mut exp, |_, _| true)
            .unwrap()
            .payload,
        "n2"
    );
    q.push_front(Priority::Normal, far, t0, "n0");
    assert_eq!(
        q.pop_next(t0, false, TARGET, &mut exp, |_, _| true)
            .unwrap()
            .payload,
        "n0"
    );
    assert!(exp.is_empty());
}

#[test]
fn expired_entries_are_handed_back_not_served() {
    let t0 = Instant::now();
    let mut q = WaitQueue::default();
    q.push(Priority::Normal, t0 + 5 * MS, t0, 1);
    q.push(Priority::Normal, t0 + 50 * MS, t0, 2);
    let mut exp = vec![];
    let next = q
        .pop_next(t0 + 10 * MS, false, TARGET, &mut exp, |_, _| true)
        .unwrap();
    assert_eq!(next.payload, 2);
    assert_eq!(exp.iter().map(|e| e.payload).collect::<Vec<_>>(), [1]);
    assert!(q.is_empty());
}

#[test]
fn a_head_that_does_not_fit_lets_a_lower_lane_through() {
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(10);
    let mut q = WaitQueue::default();
    q.push(Priority::Critical, far, t0, 40u32); // a dear request: 40 ms of work
    q.push(Priority::Normal, far, t0, 1);
    q.push(Priority::Normal, far, t0, 2);
    let mut exp = vec![];
    // A slot with room for 10 ms: the normal head goes (told a higher class waits), the
    // critical one keeps its place.
    let fits = |cost: &u32, reserved: bool| *cost <= 10 && reserved;
    assert_eq!(
        q.pop_next(t0, false, TARGET, &mut exp, fits)
            .unwrap()
            .payload,
        1
    );
    let unreserved = |_: &u32, reserved: bool| !reserved;
    assert_eq!(
        q.pop_next(t0, false, TARGET, &mut exp, unreserved)
            .unwrap()
            .payload,
        40
    );
    // Nothing fits: nobody is taken.
    assert!(q
        .pop_next(t0, false, TARGET, &mut exp, |_, _| false)
        .is_none());
    assert_eq!(q.len(), 1);
}

#[test]
fn a_lane_that_never_empties_but_serves_quickly_is_not_standing() {
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(10);
    let mut q = WaitQueue::default();
    let mut exp = vec![];
    // Critical requests arrive every millisecond for 300 ms, each served 2 ms after it
    // came: the lane is never empty, and never stands.
    for i in 0..300u32 {
        q.push(Priority::Critical, far, t0 + i * MS, i);
        if i >= 2 {
            let now = t0 + i * MS;
            let e = q
                .pop_next(now, false, TARGET, &mut exp, |_, _| true)
                .unwrap();
            assert_eq!(e.payload, i - 2);
            assert_eq!(standing(&q, Priority::Normal, now), Duration::ZERO);
        }
    }
    assert!(!q.is_empty());
}

#[test]
fn a_lane_stands_when_its_waits_stay_long_for_the_whole_time() {
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(10);
    let mut q = WaitQueue::default();
    let mut exp = vec![];
    // Nothing served: a stuck lane stands from the moment it filled.
    q.push(Priority::Critical, far, t0, 0);
    assert_eq!(standing(&q, Priority::Normal, t0 + 4 * MS), Duration::ZERO);
    assert_eq!(standing(&q, Priority::Normal, t0 + 120 * MS), 120 * MS);
    // Not higher than itself.
    assert_eq!(
        standing(&q, Priority::Critical, t0 + 120 * MS),
        Duration::ZERO
    );
    // Served, but each after 20 ms: still standing, and it counts for every lower class.
    for i in 1..10u32 {
        q.push(Priority::Critical, far, t0 + 100 * MS + i * 10 * MS, i);
        q.pop_next(
            t0 + 120 * MS + i * 10 * MS,
            false,
            TARGET,
            &mut exp,
            |_, _| true,
        );
    }
    let now = t0 + 220 * MS;
    assert_eq!(standing(&q, Priority::Sheddable, now), 220 * MS);
    // One request served within the target (newest first, as under adaptive LIFO): the
    // lane's waits are short again, though its oldest waiter is still old.
    q.push(Priority::Critical, far, now, 10);
    let e = q.pop_next(now + 5 * MS, true, TARGET, &mut exp, |_, _| true);
    assert_eq!(e.unwrap().payload, 10);
    let oldest_left = t0 + 190 * MS;
    assert!(now + 5 * MS - oldest_left > TARGET);
    assert_eq!(standing(&q, Priority::Normal, now + 5 * MS), Duration::ZERO);
    assert_eq!(standing(&q, Priority::Normal, now + 50 * MS), 45 * MS);
    // It empties: nothing stands, and the next waiter starts afresh.
    while q
        .pop_next(now + 60 * MS, false, TARGET, &mut exp, |_, _| true)
        .is_some()
    {}
    assert_eq!(
        standing(&q, Priority::Normal, now + 60 * MS),
        Duration::ZERO
    );
    q.push(Priority::Normal, far, now + 70 * MS, 11);
    assert_eq!(standing(&q, Priority::Sheddable, now + 90 * MS), 20 * MS);
}

#[test]
fn counts_ahead_remove_and_evict() {
    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(1);
    let mut q = WaitQueue::default();
    let s = q.push(Priority::Sheddable, far, t0, 0);
    q.push(Priority::Normal, far, t0, 1);
    q.push(Priority::Critical, far, t0, 2);
    assert_eq!(q.ahead_of(Priority::Critical), 1);
    assert_eq!(q.ahead_of(Priority::Normal), 2);
    assert_eq!(q.ahead_of(Priority::Sheddable), 3);
    assert_eq!(q.higher_than(Priority::Sheddable), 2);
    assert_eq!(q.higher_than(Priority::Critical), 0);
    assert_eq!(q.evict_below(Priority::Critical).unwrap().id, s);
    assert_eq!(q.evict_below(Priority::Critical).unwrap().payload, 1);
    assert!(q.evict_below(Priority::Critical).is_none());
    assert!(q.evict_below(Priority::Sheddable).is_none());
    assert_eq!(q.len(), 1);
    let id = q.push(Priority::Normal, far, t0, 9);
    assert_eq!(q.remove(id).unwrap().payload, 9);
    assert!(q.remove(id).is_none());
}

#[test]
fn overload_needs_a_standing_queue_for_a_whole_interval() {
    let t0 = Instant::now();
    let mut d = OverloadDetector::new(5 * MS, 100 * MS, t0);
    // A burst: long waits, but one request got through at once.
    d.on_dequeue(40 * MS, t0 + 10 * MS);
    d.on_dequeue(Duration::ZERO, t0 + 20 * MS);
    assert!(!d.overloaded(t0 + 100 * MS));
    // A standing queue: every wait over target for the whole interval.
    for i in 1..10 {
        d.on_dequeue(20 * MS, t0 + 100 * MS + i * 10 * MS);
    }
    assert!(d.overloaded(t0 + 200 * MS));
    // It drains: the next interval sees a zero wait.
    d.on_dequeue(Duration::ZERO, t0 + 250 * MS);
    assert!(!d.overloaded(t0 + 300 * MS));
}
