//! Admission: a request that finds no worker with a free slot waits, in priority order, until
//! its deadline; if the deadline passes, or the backlog already shows it cannot be met, it
//! is shed at once with a 503 that says why and when to retry.
//!
//! Deadlines come from the route's SLO: `queue budget = p95 target - expected service time`
//! (or the route's `queue_budget_ms`). Shedding early beats serving late: a request answered
//! 503 in a millisecond costs the client a retry; one served after its SLO costs everyone.
//!
//! Priorities: `critical` before `normal` before `sheddable`, always. When the queue is full
//! a newcomer evicts the newest waiter of a lower priority, or is shed itself. With
//! `adaptive_lifo`, a standing queue (CoDel's test) makes each lane serve newest first.

pub mod arrival;
pub mod drain;
mod outcome;
pub mod queue;
mod wake;

pub use outcome::{ShedReason, Wait, WakeToken};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use self::arrival::{Arrival, Verdict};
use self::drain::DrainEstimate;
use self::queue::{OverloadDetector, WaitQueue};
use super::route::Priority;
use crate::workers::SlotRule;

/// How often the drain-rate estimates are fed (the window `DrainEstimate` is built for).
pub const DRAIN_TICK: Duration = Duration::from_millis(50);

/// `[shedding]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SheddingConfig {
    /// Most requests waiting at once. Default 1024.
    pub max_queue: usize,
    /// Queue budget for routes without an SLO or `queue_budget_ms`. Default 100 ms.
    pub default_queue_budget: Duration,
    /// Longest expected queueing accepted on arrival, whatever the budget. Default 50 ms.
    /// A queue only needs to be long enough to keep the workers busy; a longer one adds
    /// latency to every admitted request and leaves no slack when the drain rate dips, so
    /// requests would be shed late, after waiting, instead of at once.
    pub target_queue_delay: Duration,
    /// CoDel target: a queue (or one priority's lane of it) whose waits stay above this...
    /// Default 5 ms.
    pub lifo_target: Duration,
    /// ...for a whole interval is standing: lanes switch to newest-first, if
    /// `adaptive_lifo`, and a standing higher lane sheds lower classes (`priority`).
    /// Default 100 ms.
    pub lifo_interval: Duration,
    /// Serve newest-first under a standing queue. Default off: with FIFO the drain-time
    /// estimate holds, so the excess is shed on arrival (in microseconds) instead of after
    /// waiting out its budget; LIFO serves fresher requests but sheds late.
    pub adaptive_lifo: bool,
}

impl Default for SheddingConfig {
    fn default() -> Self {
        SheddingConfig {
            max_queue: 1024,
            default_queue_budget: Duration::from_millis(100),
            target_queue_delay: Duration::from_millis(50),
            lifo_target: Duration::from_millis(5),
            lifo_interval: Duration::from_millis(100),
            adaptive_lifo: false,
        }
    }
}

/// A queued request: how to wake it, and which slots it can use.
#[derive(Debug)]
struct Waiter {
    tx: oneshot::Sender<Wait>,
    rule: SlotRule,
}

struct Inner {
    queue: WaitQueue<Waiter>,
    detector: OverloadDetector,
    drain: DrainEstimate,
    /// The same per priority lane, from the requests served from it (index: `queue::lane`).
    lane_drain: [DrainEstimate; 3],
}

/// The wall clock, read where a request meets the queue (its deciders, `arrival`, `queue`
/// and `drain`, take `now`).
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Instant {
    Instant::now()
}

/// The shared admission queue of one upstream.
pub struct Admission {
    inner: Mutex<Inner>,
    /// Mirrors `queue.len()` so releases skip the lock when nobody waits.
    waiting: AtomicUsize,
    /// The queue's drain rate when the fleet is full (requests/s, f64 bits; NaN while
    /// unknown), from [`DrainEstimate`], updated by the guard ticker.
    drain_rate_bits: AtomicU64,
    completions: AtomicU64,
    /// Waiters woken for a free slot that have not tried to take it yet: newcomers queue
    /// behind them instead of taking the slot first (see [`WakeToken`]).
    woken: Arc<AtomicUsize>,
    /// sloguard's own loop lateness, ns (see [`Admission::set_own_delay`]).
    own_delay_ns: AtomicU64,
    /// Requests that shadow mode let through although enforce would have queued them.
    shadow_queued: AtomicU64,
    cfg: Mutex<SheddingConfig>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl Admission {
    pub fn new(cfg: SheddingConfig) -> Admission {
        let now = wall_clock();
        Admission {
            inner: Mutex::new(Inner {
                queue: WaitQueue::default(),
                detector: OverloadDetector::new(cfg.lifo_target, cfg.lifo_interval, now),
                drain: DrainEstimate::new(now),
                lane_drain: [(); 3].map(|_| DrainEstimate::new(now)),
            }),
            waiting: AtomicUsize::new(0),
            drain_rate_bits: AtomicU64::new(f64::NAN.to_bits()),
            completions: AtomicU64::new(0),
            woken: Arc::new(AtomicUsize::new(0)),
            own_delay_ns: AtomicU64::new(0),
            shadow_queued: AtomicU64::new(0),
            cfg: Mutex::new(cfg),
        }
    }

    /// Applies a reloaded `[shedding]` section; waiters keep their deadlines. A new CoDel
    /// target or interval restarts the overload detector with it.
    pub fn reconfigure(&self, cfg: SheddingConfig) {
        let mut old = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
        if (old.lifo_target, old.lifo_interval) != (cfg.lifo_target, cfg.lifo_interval) {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.detector =
                OverloadDetector::new(cfg.lifo_target, cfg.lifo_interval, wall_clock());
        }
        *old = cfg;
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests per second the queue drains at when the fleet is full, once measured (see
    /// [`DrainEstimate`]).
    pub fn drain_rate(&self) -> Option<f64> {
        let r = f64::from_bits(self.drain_rate_bits.load(Ordering::Relaxed));
        (!r.is_nan()).then_some(r)
    }

    /// Shadow mode: a request found no worker under its limit and went through anyway.
    pub fn note_shadow_queued(&self) {
        self.shadow_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests shadow mode let through that enforce would have queued (or shed).
    pub fn shadow_queued(&self) -> u64 {
        self.shadow_queued.load(Ordering::Relaxed)
    }

    /// How far behind sloguard's own event loop runs (see [`Admission::set_own_delay`]).
    pub fn own_delay(&self) -> Duration {
        Duration::from_nanos(self.own_delay_ns.load(Ordering::Relaxed))
    }

    /// Sets how far behind sloguard's own event loop runs now (its runtime's timer
    /// lateness): every request already waited about that long before it was read.
    pub fn set_own_delay(&self, delay: Duration) {
        self.own_delay_ns
            .store(delay.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Sets the drain rate directly (tests of the waiting mechanics).
    #[cfg(test)]
    pub(crate) fn set_drain_rate(&self, per_second: f64) {
        self.drain_rate_bits
            .store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// Total completions (slots released).
    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    /// The ticker's turn: feeds the drain-rate estimates, the queue's and each lane's (see
    /// [`DrainEstimate`]).
    pub fn on_tick(&self, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = !inner.queue.is_empty();
        inner.drain.on_tick(now, self.completions(), waiting);
        for p in [Priority::Sheddable, Priority::Normal, Priority::Critical] {
            let (served, lane_waiting) = (inner.queue.served(p), inner.queue.lane_len(p) > 0);
            inner.lane_drain[queue::lane(p)].on_tick(now, served, lane_waiting);
        }
        let rate = inner.drain.rate().unwrap_or(f64::NAN);
        self.drain_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Calls [`Admission::on_tick`] every [`DRAIN_TICK`]; returns only with the runtime.
    pub async fn tick_drain_rate(&self) {
        loop {
            tokio::time::sleep(DRAIN_TICK).await;
            self.on_tick(wall_clock());
        }
    }

    /// How long the backlog of `ahead` requests takes to drain. Zero with no backlog or
    /// while the drain rate is unknown: no early verdict, the deadline still bounds the wait.
    pub fn expected_wait(&self, ahead: usize) -> Duration {
        match self.drain_rate() {
            Some(rate) if ahead > 0 && rate > 0.0 => Duration::from_secs_f64(ahead as f64 / rate),
            _ => Duration::ZERO,
        }
    }

    /// `Retry-After` seconds: how long the current backlog takes to drain, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.expected_wait(self.waiting() + 1)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64
    }

    /// Whether a new request must queue rather than try for a slot at once: others wait,
    /// or were just woken for a slot and have not taken it yet.
    pub fn must_queue(&self) -> bool {
        self.waiting() > 0 || self.woken.load(Ordering::Relaxed) > 0
    }

    /// A request got a slot without waiting (for the overload detector).
    pub fn on_admitted_directly(&self, now: Instant) {
        if self.waiting() > 0 {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.detector.on_dequeue(Duration::ZERO, now);
        }
    }

    /// Waits for a slot `rule` can use until `deadline`. Sheds at once when the queue is
    /// full or the backlog cannot drain in time (see [`arrival::decide`]).
    pub async fn wait(
        &self,
        priority: Priority,
        rule: SlotRule,
        budget: Duration,
        deadline: Instant,
    ) -> Wait {
        self.wait_from(priority, rule, budget, deadline, None).await
    }

    /// Like [`Admission::wait`], for a request that was woken but found no slot (another
    /// request took it first): it goes back to the head of its lane, keeping its turn.
    pub async fn wait_again(
        &self,
        priority: Priority,
        rule: SlotRule,
        budget: Duration,
        deadline: Instant,
        since: Instant,
    ) -> Wait {
        self.wait_from(priority, rule, budget, deadline, Some(since))
            .await
    }

    async fn wait_from(
        &self,
        priority: Priority,
        rule: SlotRule,
        budget: Duration,
        deadline: Instant,
        requeued: Option<Instant>,
    ) -> Wait {
        let now = wall_clock();
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter { tx, rule };
        let id = {
            let cfg = self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(since) = requeued {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                inner.queue.push_front(priority, deadline, since, waiter)
            } else {
                let ahead = inner.queue.ahead_of(priority);
                let arrival = Arrival {
                    priority,
                    ahead,
                    higher: inner.queue.higher_than(priority),
                    queue_len: inner.queue.len(),
                    max_queue: cfg.max_queue,
                    lower_waiting: inner.queue.len() > ahead,
                    higher_standing: inner.queue.higher_standing_for(
                        priority,
                        now,
                        cfg.lifo_target,
                    ) >= cfg.lifo_interval,
                    expected_wait: self.expected_wait(ahead),
                    class_wait: drain::wait_at(
                        inner.queue.lane_len(priority),
                        inner.lane_drain[queue::lane(priority)].rate(),
                    ),
                    own_delay: self.own_delay(),
                    budget,
                    target_delay: cfg.target_queue_delay,
                };
                match arrival::decide(&arrival) {
                    Verdict::Shed(reason) => {
                        tracing::debug!(
                            reason = reason.as_str(),
                            ahead = arrival.ahead,
                            queue = arrival.queue_len,
                            expected_wait_ms = arrival.expected_wait.as_secs_f64() * 1e3,
                            class_wait_ms = arrival.class_wait.as_secs_f64() * 1e3,
                            own_delay_ms = arrival.own_delay.as_secs_f64() * 1e3,
                            budget_ms = arrival.budget.as_secs_f64() * 1e3,
                            drain_rate = self.drain_rate(),
                            "shed on arrival"
                        );
                        return Wait::Shed(reason);
                    }
                    Verdict::EvictAndQueue => {
                        if let Some(evicted) = inner.queue.evict_below(priority) {
                            let _ = evicted.payload.tx.send(Wait::Shed(ShedReason::Evicted));
                            self.waiting.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    Verdict::Queue => {}
                }
                self.waiting.fetch_add(1, Ordering::Relaxed);
                inner.queue.push(priority, deadline, now, waiter)
            }
        };
        let timeout = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::select! {
            // A wake that arrived wins over a deadline passing at the same moment.
            biased;
            woken = rx => woken.unwrap_or(Wait::Shed(ShedReason::QueueTimeout)),
            _ = timeout => {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if inner.queue.remove(id).is_some() {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                }
                Wait::Shed(ShedReason::QueueTimeout)
            }
        }
    }

    /// Whether requests of a higher priority than `priority` wait: the fleet is full for
    /// them, and lower classes only get their reserved share.
    pub fn higher_waiting(&self, priority: Priority) -> bool {
        self.waiting() > 0
            && self
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .queue
                .higher_than(priority)
                > 0
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
