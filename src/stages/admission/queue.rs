//! The wait queue of the admission stage, as pure data: entries by priority, each with a
//! deadline. Generic over the payload (a wake-up sender in production, a number in tests).
//!
//! Order: a higher priority is always served first. Within a priority, oldest first (FIFO);
//! under sustained overload, newest first (LIFO), because the newest requests are the ones
//! whose clients are still waiting and whose deadline can still be met (Facebook's adaptive
//! LIFO; the switch is CoDel-style, see [`OverloadDetector`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::stages::route::Priority;

/// One waiting request.
#[derive(Debug)]
pub struct Entry<T> {
    pub id: u64,
    pub priority: Priority,
    pub enqueued_at: Instant,
    pub deadline: Instant,
    pub payload: T,
}

/// Waiting requests, one FIFO per priority.
#[derive(Debug)]
pub struct WaitQueue<T> {
    /// Index 0 = sheddable, 1 = normal, 2 = critical.
    lanes: [VecDeque<Entry<T>>; 3],
    /// Per lane, the last moment its waits were short: when it was empty, or when it served
    /// a request that had waited no longer than the standing target. `None` while empty.
    /// Since then every request it served waited longer (see [`WaitQueue::standing_for`]).
    short_wait_at: [Option<Instant>; 3],
    /// Per lane, requests served from it so far (its drain, see `DrainEstimate`).
    served: [u64; 3],
    next_id: u64,
}

/// The lane index of priority `p` (0 = sheddable, 1 = normal, 2 = critical).
pub(super) fn lane(p: Priority) -> usize {
    match p {
        Priority::Sheddable => 0,
        Priority::Normal => 1,
        Priority::Critical => 2,
    }
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue {
            lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            short_wait_at: [None; 3],
            served: [0; 3],
            next_id: 0,
        }
    }
}

impl<T> WaitQueue<T> {
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    /// Waiting requests of priority `p`.
    pub fn lane_len(&self, p: Priority) -> usize {
        self.lanes[lane(p)].len()
    }

    /// Requests of priority `p` served from the queue so far.
    pub fn served(&self, p: Priority) -> u64 {
        self.served[lane(p)]
    }

    /// Waiting requests that would be served before a new one of priority `p`.
    pub fn ahead_of(&self, p: Priority) -> usize {
        self.lanes[lane(p)..].iter().map(VecDeque::len).sum()
    }

    /// How long requests of a strictly higher priority than `p` have been standing in their
    /// queue (the longest over the higher lanes; zero when none stand): CoDel's test, per
    /// lane. A lane stands while its oldest waiter has waited more than `target` and every
    /// request it served since it was last short waited more than `target` too.
    ///
    /// A lane that is never empty is not a full fleet: at 2000 requests/s, waiters served
    /// within a millisecond keep it occupied for seconds on end. Only waits that stay long
    /// say that the higher class cannot get slots fast enough and a lower one must give way.
    pub fn higher_standing_for(&self, p: Priority, now: Instant, target: Duration) -> Duration {
        (lane(p) + 1..self.lanes.len())
            .map(|l| self.standing_for(l, now, target))
            .max()
            .unwrap_or_default()
    }

    fn standing_for(&self, l: usize, now: Instant, target: Duration) -> Duration {
        let (Some(oldest), Some(short_at)) = (self.lanes[l].front(), self.short_wait_at[l]) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(oldest.enqueued_at) <= target {
            return Duration::ZERO;
        }
        now.saturating_duration_since(short_at)
    }

    /// Forgets the waits of emptied lanes (after every removal).
    fn settle(&mut self) {
        for (at, q) in self.short_wait_at.iter_mut().zip(&self.lanes) {
            if q.is_empty() {
                *at = None;
            }
        }
    }

    /// Waiting requests of a strictly higher priority than `p`.
    pub fn higher_than(&self, p: Priority) -> usize {
        self.lanes[lane(p) + 1..].iter().map(VecDeque::len).sum()
    }

    /// Adds a request; returns its id.
    pub fn push(&mut self, priority: Priority, deadline: Instant, now: Instant, payload: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.short_wait_at[lane(priority)].get_or_insert(now);
        self.lanes[lane(priority)].push_back(Entry {
            id,
            priority,
            enqueued_at: now,
            deadline,
            payload,
        });
        id
    }

    /// Puts back, at the head of its lane, a request that was woken but lost the slot to
    /// another: it keeps its place instead of queueing again behind everyone.
    pub fn push_front(
        &mut self,
        priority: Priority,
        deadline: Instant,
        enqueued_at: Instant,
        payload: T,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.short_wait_at[lane(priority)].get_or_insert(enqueued_at);
        self.lanes[lane(priority)].push_front(Entry {
            id,
            priority,
            enqueued_at,
            deadline,
            payload,
        });
        id
    }

    /// Takes the next request to serve: highest priority first, then oldest (or newest when
    /// `lifo`), among lane heads that `fits` (a slot is free for them; the flag says a higher
    /// class waits, so the head may only use its reserved share). A head that does not fit
    /// (a dear request, the slot too small) lets a lower lane's head through rather than
    /// leave the slot idle. Entries past their deadline are returned in `expired` so their
    /// waiters can be told they were shed. A request served after waiting no longer than
    /// `standing_target` marks its lane's waits short again.
    pub fn pop_next(
        &mut self,
        now: Instant,
        lifo: bool,
        standing_target: Duration,
        expired: &mut Vec<Entry<T>>,
        fits: impl Fn(&T, bool) -> bool,
    ) -> Option<Entry<T>> {
        let next = self.take_next(now, lifo, expired, fits);
        if let Some(e) = &next {
            self.served[lane(e.priority)] += 1;
            if now.saturating_duration_since(e.enqueued_at) <= standing_target {
                self.short_wait_at[lane(e.priority)] = Some(now);
            }
        }
        self.settle();
        next
    }

    fn take_next(
        &mut self,
        now: Instant,
        lifo: bool,
        expired: &mut Vec<Entry<T>>,
        fits: impl Fn(&T, bool) -> bool,
    ) -> Option<Entry<T>> {
        // Whether a higher lane holds a waiter that did not fit: the lower class then only
        // gets its reserved share (see `fits`).
        let mut passed_over = false;
        for q in self.lanes.iter_mut().rev() {
            // Expired entries sit anywhere; sweep this lane first (cheap: lanes are short
            // when the guard does its job, and bounded by max_queue when it cannot).
            let mut i = 0;
            while i < q.len() {
                if q[i].deadline <= now {
                    expired.extend(q.remove(i));
                } else {
                    i += 1;
                }
            }
            let head = if lifo { q.back() } else { q.front() };
            if head.is_some_and(|e| fits(&e.payload, passed_over)) {
                return if lifo { q.pop_back() } else { q.pop_front() };
            }
            passed_over |= head.is_some();
        }
        None
    }

    /// Removes a request that gave up (client gone, deadline hit on its side).
    pub fn remove(&mut self, id: u64) -> Option<Entry<T>> {
        let mut found = None;
        for q in self.lanes.iter_mut() {
            if let Some(pos) = q.iter().position(|e| e.id == id) {
                found = q.remove(pos);
                break;
            }
        }
        self.settle();
        found
    }

    /// Makes room for a request of priority `p` by evicting the newest waiter of the lowest
    /// priority strictly below `p`. `None` when nobody ranks below `p`.
    pub fn evict_below(&mut self, p: Priority) -> Option<Entry<T>> {
        let evicted = self.lanes[..lane(p)]
            .iter_mut()
            .find(|q| !q.is_empty())
            .and_then(VecDeque::pop_back);
        self.settle();
        evicted
    }
}

/// CoDel's overload test: the queue is "standing" (overloaded) when even the shortest wait
/// seen over a whole `interval` stayed above `target`. A burst that drains does not trip it;
/// a queue that never empties does.
#[derive(Debug, Clone)]
pub struct OverloadDetector {
    target: Duration,
    interval: Duration,
    interval_start: Instant,
    min_sojourn: Option<Duration>,
    overloaded: bool,
}

impl OverloadDetector {
    pub fn new(target: Duration, interval: Duration, now: Instant) -> OverloadDetector {
        OverloadDetector {
            target,
            interval,
            interval_start: now,
            min_sojourn: None,
            overloaded: false,
        }
    }

    /// A request left the queue after waiting `sojourn` (a request admitted without waiting
    /// counts as zero).
    pub fn on_dequeue(&mut self, sojourn: Duration, now: Instant) {
        self.min_sojourn = Some(self.min_sojourn.map_or(sojourn, |m| m.min(sojourn)));
        self.roll(now);
    }

    /// Whether the queue is standing now.
    pub fn overloaded(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.overloaded
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.interval_start) >= self.interval {
            self.overloaded = self.min_sojourn.is_some_and(|m| m > self.target);
            self.min_sojourn = None;
            self.interval_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
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
}
