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

pub mod queue;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use self::queue::{Entry, OverloadDetector, WaitQueue};
use super::route::Priority;
use super::Rejection;

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
    /// CoDel target: a standing queue whose shortest wait stays above this... Default 5 ms.
    pub lifo_target: Duration,
    /// ...for a whole interval switches lanes to newest-first, if `adaptive_lifo`. Default 100 ms.
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

/// Why a request was shed; also the `reason` label of the shed counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// It waited its whole queue budget.
    QueueTimeout,
    /// The backlog ahead of it could not drain within its budget.
    DeadlineUnreachable,
    /// The queue was full of requests of its priority or higher.
    QueueFull,
    /// A higher-priority request took its place in a full queue.
    Evicted,
    /// Sustained overload with higher-priority requests waiting: lower classes go first.
    Priority,
}

impl ShedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::DeadlineUnreachable => "deadline_unreachable",
            ShedReason::QueueFull => "queue_full",
            ShedReason::Evicted => "evicted",
            ShedReason::Priority => "priority",
        }
    }

    /// The 503 answer, with `Retry-After` derived by the caller.
    pub fn rejection(self, budget: Duration) -> Rejection {
        let message = match self {
            ShedReason::QueueTimeout => format!(
                "shed: no worker could take the request within its queue budget of {} ms",
                budget.as_millis()
            ),
            ShedReason::DeadlineUnreachable => format!(
                "shed: the backlog ahead cannot drain within the queue budget of {} ms",
                budget.as_millis()
            ),
            ShedReason::QueueFull => "shed: the admission queue is full".to_string(),
            ShedReason::Evicted => {
                "shed: a higher-priority request took this one's place".to_string()
            }
            ShedReason::Priority => {
                "shed: sustained overload, and higher-priority requests are waiting".to_string()
            }
        };
        Rejection {
            status: 503,
            reason: self.as_str(),
            message,
            limit: Some("queue_budget_ms"),
            value: Some(budget.as_millis() as u64),
            retry_after: None,
        }
    }
}

/// The outcome of waiting for a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// A slot may be free: try to take one.
    Woken {
        waited: Duration,
    },
    Shed(ShedReason),
}

struct Inner {
    queue: WaitQueue<oneshot::Sender<Option<ShedReason>>>,
    detector: OverloadDetector,
}

/// The shared admission queue of one upstream.
pub struct Admission {
    inner: Mutex<Inner>,
    /// Mirrors `queue.len()` so releases skip the lock when nobody waits.
    waiting: AtomicUsize,
    /// Completed requests per second, EWMA, as f64 bits (updated by the guard ticker).
    drain_rate_bits: AtomicU64,
    completions: AtomicU64,
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
        let now = Instant::now();
        Admission {
            inner: Mutex::new(Inner {
                queue: WaitQueue::default(),
                detector: OverloadDetector::new(cfg.lifo_target, cfg.lifo_interval, now),
            }),
            waiting: AtomicUsize::new(0),
            drain_rate_bits: AtomicU64::new(0f64.to_bits()),
            completions: AtomicU64::new(0),
            shadow_queued: AtomicU64::new(0),
            cfg: Mutex::new(cfg),
        }
    }

    /// Applies a reloaded `[shedding]` section; waiters keep their deadlines.
    pub fn reconfigure(&self, cfg: SheddingConfig) {
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Completions per second (EWMA).
    pub fn drain_rate(&self) -> f64 {
        f64::from_bits(self.drain_rate_bits.load(Ordering::Relaxed))
    }

    /// Shadow mode: a request found no worker under its limit and went through anyway.
    pub fn note_shadow_queued(&self) {
        self.shadow_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests shadow mode let through that enforce would have queued (or shed).
    pub fn shadow_queued(&self) -> u64 {
        self.shadow_queued.load(Ordering::Relaxed)
    }

    /// Total completions, for the ticker's rate estimate.
    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    pub fn set_drain_rate(&self, per_second: f64) {
        self.drain_rate_bits
            .store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// How long the backlog ahead of a `priority` request takes to drain, at the current rate.
    pub fn expected_wait(&self, ahead: usize) -> Duration {
        let rate = self.drain_rate();
        if ahead == 0 || rate <= 1.0 {
            // No backlog, or no rate measured yet (the first 100 ms): no early verdict;
            // the deadline still bounds the wait.
            Duration::ZERO
        } else {
            Duration::from_secs_f64(ahead as f64 / rate)
        }
    }

    /// `Retry-After` seconds: how long the current backlog takes to drain, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.expected_wait(self.waiting() + 1)
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64
    }

    /// Whether a new request must queue rather than try for a slot at once (others wait).
    pub fn must_queue(&self) -> bool {
        self.waiting() > 0
    }

    /// A request got a slot without waiting (for the overload detector).
    pub fn on_admitted_directly(&self, now: Instant) {
        if self.waiting() > 0 {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.detector.on_dequeue(Duration::ZERO, now);
        }
    }

    /// Waits for a slot until `deadline`. Sheds at once when the queue is full or the
    /// backlog cannot drain in time.
    pub async fn wait(&self, priority: Priority, budget: Duration, deadline: Instant) -> Wait {
        self.wait_from(priority, budget, deadline, None).await
    }

    /// Like [`Admission::wait`], for a request that was woken but found no slot (another
    /// request took it first): it goes back to the head of its lane, keeping its turn.
    pub async fn wait_again(
        &self,
        priority: Priority,
        budget: Duration,
        deadline: Instant,
        since: Instant,
    ) -> Wait {
        self.wait_from(priority, budget, deadline, Some(since))
            .await
    }

    async fn wait_from(
        &self,
        priority: Priority,
        budget: Duration,
        deadline: Instant,
        requeued: Option<Instant>,
    ) -> Wait {
        let now = Instant::now();
        let (tx, rx) = oneshot::channel();
        let id = {
            let cfg = self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(since) = requeued {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                inner.queue.push_front(priority, deadline, since, tx)
            } else {
                let ahead = inner.queue.ahead_of(priority);
                // Lower classes are shed first: a request that would wait behind higher-priority
                // ones is not worth queueing (those keep arriving ahead of it). Below capacity
                // nobody waits, so this sheds nothing there.
                if inner.queue.higher_than(priority) > 0 {
                    return Wait::Shed(ShedReason::Priority);
                }
                // The drain-time estimate is an average; a 25% margin keeps requests admitted to
                // the queue from timing out in it (a late shed is the worst outcome).
                if self.expected_wait(ahead).mul_f64(1.25) > budget.min(cfg.target_queue_delay) {
                    return Wait::Shed(ShedReason::DeadlineUnreachable);
                }
                if inner.queue.len() >= cfg.max_queue {
                    match inner.queue.evict_below(priority) {
                        Some(evicted) => {
                            let _ = evicted.payload.send(Some(ShedReason::Evicted));
                            self.waiting.fetch_sub(1, Ordering::Relaxed);
                        }
                        None => return Wait::Shed(ShedReason::QueueFull),
                    }
                }
                self.waiting.fetch_add(1, Ordering::Relaxed);
                inner.queue.push(priority, deadline, now, tx)
            }
        };
        let timeout = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::select! {
            woken = rx => match woken {
                Ok(None) => Wait::Woken { waited: requeued.unwrap_or(now).elapsed() },
                Ok(Some(reason)) => Wait::Shed(reason),
                Err(_) => Wait::Shed(ShedReason::QueueTimeout),
            },
            _ = timeout => {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if inner.queue.remove(id).is_some() {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                }
                Wait::Shed(ShedReason::QueueTimeout)
            }
        }
    }

    /// A slot was released: wake the next waiter (if any).
    pub fn on_release(&self) {
        self.completions.fetch_add(1, Ordering::Relaxed);
        if self.waiting() > 0 {
            self.wake_next(Instant::now());
        }
    }

    /// Wakes the best waiter, telling expired ones they were shed. Returns whether one woke.
    pub fn wake_next(&self, now: Instant) -> bool {
        let adaptive_lifo = self
            .cfg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .adaptive_lifo;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let lifo = inner.detector.overloaded(now) && adaptive_lifo;
        let mut expired: Vec<Entry<_>> = Vec::new();
        loop {
            let next = inner.queue.pop_next(now, lifo, &mut expired);
            for e in expired.drain(..) {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                let _ = e.payload.send(Some(ShedReason::QueueTimeout));
            }
            let Some(entry) = next else { return false };
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            inner
                .detector
                .on_dequeue(now.saturating_duration_since(entry.enqueued_at), now);
            // A waiter whose client left has dropped its receiver: try the next one.
            if entry.payload.send(None).is_ok() {
                return true;
            }
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
