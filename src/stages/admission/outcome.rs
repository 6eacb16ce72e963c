//! What a wait in the admission queue ends in: woken for a slot (holding a [`WakeToken`]),
//! or shed for a [`ShedReason`] with the 503 that says why.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::stages::{Reason, Rejection};

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
    /// Higher-priority requests have stood in the queue for a whole interval (the fleet is
    /// full for them): lower classes go first.
    Priority,
}

impl ShedReason {
    pub fn reason(self) -> Reason {
        match self {
            ShedReason::QueueTimeout => Reason::QueueTimeout,
            ShedReason::DeadlineUnreachable => Reason::DeadlineUnreachable,
            ShedReason::QueueFull => Reason::QueueFull,
            ShedReason::Evicted => Reason::Evicted,
            ShedReason::Priority => Reason::Priority,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.reason().as_str()
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
                "shed: the fleet is full for higher-priority requests, which keep waiting"
                    .to_string()
            }
        };
        Rejection {
            status: 503,
            reason: self.reason(),
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
    /// A slot may be free: try to take one, holding the token meanwhile.
    Woken(WakeToken),
    Shed(ShedReason),
}

/// A woken waiter's claim on the slot that woke it: while held, newcomers queue instead of
/// taking that slot first (which would push the woken request back into the queue and
/// break first-come order). Dropped once the waiter has tried to take the slot, or gave up.
#[derive(Debug)]
pub struct WakeToken(pub(super) Arc<AtomicUsize>);

impl Drop for WakeToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PartialEq for WakeToken {
    fn eq(&self, _: &WakeToken) -> bool {
        true
    }
}

impl Eq for WakeToken {}
