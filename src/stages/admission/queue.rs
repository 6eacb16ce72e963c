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
    /// Since when each lane has held a waiter without emptying.
    busy_since: [Option<Instant>; 3],
    next_id: u64,
}

fn lane(p: Priority) -> usize {
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
            busy_since: [None; 3],
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

    /// Waiting requests that would be served before a new one of priority `p`.
    pub fn ahead_of(&self, p: Priority) -> usize {
        self.lanes[lane(p)..].iter().map(VecDeque::len).sum()
    }

    /// How long requests of a strictly higher priority than `p` have waited without their
    /// lane emptying (zero when none wait): under sustained overload higher classes keep
    /// arriving ahead of `p`, and this grows; a passing burst keeps it short.
    pub fn higher_busy_for(&self, p: Priority, now: Instant) -> Duration {
        self.busy_since[lane(p) + 1..]
            .iter()
            .flatten()
            .map(|since| now.saturating_duration_since(*since))
            .max()
            .unwrap_or_default()
    }

    /// Forgets when emptied lanes became busy (after every removal).
    fn settle(&mut self) {
        for (since, q) in self.busy_since.iter_mut().zip(&self.lanes) {
            if q.is_empty() {
                *since = None;
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
        self.busy_since[lane(priority)].get_or_insert(now);
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
        self.busy_since[lane(priority)].get_or_insert(enqueued_at);
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
    /// waiters can be told they were shed.
    pub fn pop_next(
        &mut self,
        now: Instant,
        lifo: bool,
        expired: &mut Vec<Entry<T>>,
        fits: impl Fn(&T, bool) -> bool,
    ) -> Option<Entry<T>> {
        let next = self.take_next(now, lifo, expired, fits);
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
            q.pop_next(t0, false, &mut exp, |_, _| true)
                .map(|e| e.payload)
        })
        .collect();
        assert_eq!(order, ["c1", "n1", "n2", "s1"]);

        q.push(Priority::Normal, far, t0, "n1");
        q.push(Priority::Normal, far, t0, "n2");
        assert_eq!(
            q.pop_next(t0, true, &mut exp, |_, _| true).unwrap().payload,
            "n2"
        );
        q.push_front(Priority::Normal, far, t0, "n0");
        assert_eq!(
            q.pop_next(t0, false, &mut exp, |_, _| true)
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
            .pop_next(t0 + 10 * MS, false, &mut exp, |_, _| true)
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
        assert_eq!(q.pop_next(t0, false, &mut exp, fits).unwrap().payload, 1);
        let unreserved = |_: &u32, reserved: bool| !reserved;
        assert_eq!(
            q.pop_next(t0, false, &mut exp, unreserved).unwrap().payload,
            40
        );
        // Nothing fits: nobody is taken.
        assert!(q.pop_next(t0, false, &mut exp, |_, _| false).is_none());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn higher_lanes_busy_time_grows_while_they_never_empty() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(10);
        let mut q = WaitQueue::default();
        let mut exp = vec![];
        q.push(Priority::Critical, far, t0, 1);
        assert_eq!(q.higher_busy_for(Priority::Normal, t0 + 30 * MS), 30 * MS);
        assert_eq!(
            q.higher_busy_for(Priority::Critical, t0 + 30 * MS),
            Duration::ZERO
        );
        // Another arrives before the first leaves: the lane never emptied.
        q.push(Priority::Critical, far, t0 + 40 * MS, 2);
        q.pop_next(t0 + 50 * MS, false, &mut exp, |_, _| true);
        assert_eq!(q.higher_busy_for(Priority::Normal, t0 + 120 * MS), 120 * MS);
        // It empties: the clock restarts with the next arrival.
        q.pop_next(t0 + 130 * MS, false, &mut exp, |_, _| true);
        assert_eq!(
            q.higher_busy_for(Priority::Sheddable, t0 + 140 * MS),
            Duration::ZERO
        );
        q.push(Priority::Normal, far, t0 + 150 * MS, 3);
        assert_eq!(
            q.higher_busy_for(Priority::Sheddable, t0 + 160 * MS),
            10 * MS
        );
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
