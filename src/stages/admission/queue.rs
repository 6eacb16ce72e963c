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
#[path = "queue_tests.rs"]
mod tests;
