//! The verdict on a request that found no free worker slot: wait in the queue (perhaps
//! taking a lower-priority waiter's place), or be shed at once. Pure: the queue's state and
//! the estimates are passed in.
//!
//! A request is refused only when the SLO cannot be kept anyway: when its predicted wait
//! (the backlog ahead of it at the queue's drain rate, or, if longer, its own class's
//! waiters at the rate that class drains while higher ones overtake it; plus how far behind
//! sloguard itself runs) exceeds what its budget allows, when the backlog exceeds the
//! queue's target, or when the queue is full of requests that rank as high. Lower classes give way to higher ones only when the fleet is full for the higher
//! class: its requests have stood in the queue (CoDel's test: every one served waited longer
//! than the standing target) for a whole interval. A passing burst just queues them behind,
//! and so does a higher lane that is never empty but served within milliseconds.

use std::time::Duration;

use super::ShedReason;
use crate::stages::route::Priority;

/// What the verdict depends on.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub priority: Priority,
    /// Waiters that would be served before this request.
    pub ahead: usize,
    /// Waiters of a strictly higher priority.
    pub higher: usize,
    pub queue_len: usize,
    pub max_queue: usize,
    /// Some waiter ranks below this request (and could be evicted for it).
    pub lower_waiting: bool,
    /// Higher-priority requests have stood in the queue for a whole interval (every one
    /// served waited longer than the standing target): the fleet is full for them, and they
    /// keep arriving ahead of this one.
    pub higher_standing: bool,
    /// How long the backlog ahead takes to drain (zero while the drain rate is unknown).
    pub expected_wait: Duration,
    /// How long the waiters of its own class take to drain at the rate its class's lane
    /// drains (zero while unknown): higher classes arriving later go first, so a lower
    /// class can wait far longer than the backlog ahead says.
    pub class_wait: Duration,
    /// How far behind sloguard's own event loop runs: every request already waited that
    /// long before it was read.
    pub own_delay: Duration,
    /// The longest this request may wait (its route's queue budget).
    pub budget: Duration,
    /// The longest expected queueing accepted on arrival, whatever the budget.
    pub target_delay: Duration,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Queue,
    /// Queue, after evicting the newest waiter of the lowest lower priority.
    EvictAndQueue,
    Shed(ShedReason),
}

/// The drain-time estimate is an average: a 25% margin keeps requests admitted to the queue
/// from timing out in it (a late shed is the worst outcome: the client waited for nothing).
const MARGIN: f64 = 1.25;

pub fn decide(a: &Arrival) -> Verdict {
    if a.higher > 0 && a.higher_standing {
        // Higher-priority requests keep arriving ahead of this one.
        return Verdict::Shed(ShedReason::Priority);
    }
    // The queue holds at most its target delay of backlog; and whatever sloguard's own
    // backlog already cost the request comes off its budget, not off the queue's target
    // (a request read 40 ms late can still wait 60 ms of a 100 ms budget).
    // The class's own drain only says whether this request's deadline can be met; the
    // queue's target is about the backlog the workers need, not about who overtakes whom.
    let queueing = a.expected_wait.mul_f64(MARGIN);
    let own_turn = queueing.max(a.class_wait.mul_f64(MARGIN));
    if queueing > a.target_delay || own_turn + a.own_delay > a.budget {
        return Verdict::Shed(ShedReason::DeadlineUnreachable);
    }
    if a.queue_len >= a.max_queue {
        return if a.lower_waiting {
            Verdict::EvictAndQueue
        } else {
            Verdict::Shed(ShedReason::QueueFull)
        };
    }
    Verdict::Queue
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn base() -> Arrival {
        Arrival {
            priority: Priority::Normal,
            ahead: 0,
            higher: 0,
            queue_len: 0,
            max_queue: 1024,
            lower_waiting: false,
            higher_standing: false,
            expected_wait: Duration::ZERO,
            class_wait: Duration::ZERO,
            own_delay: Duration::ZERO,
            budget: 100 * MS,
            target_delay: 50 * MS,
        }
    }

    #[test]
    fn with_no_estimate_and_room_in_the_queue_a_request_waits() {
        assert_eq!(decide(&base()), Verdict::Queue);
        // Unknown drain rate: zero expected wait, even behind a long queue.
        let a = Arrival {
            ahead: 500,
            queue_len: 500,
            ..base()
        };
        assert_eq!(decide(&a), Verdict::Queue);
    }

    #[test]
    fn a_passing_burst_queues_a_lower_class_behind_a_higher_one() {
        let a = Arrival {
            higher: 3,
            ahead: 3,
            queue_len: 3,
            ..base()
        };
        assert_eq!(decide(&a), Verdict::Queue);
        // Sustained overload: it gives way at once.
        let a = Arrival {
            higher_standing: true,
            ..a
        };
        assert_eq!(decide(&a), Verdict::Shed(ShedReason::Priority));
        // A sustained queue of its own class or lower does not shed it for priority.
        let a = Arrival { higher: 0, ..a };
        assert_eq!(decide(&a), Verdict::Queue);
    }

    #[test]
    fn a_backlog_that_cannot_drain_within_the_budget_or_the_target_sheds_at_once() {
        // 40 ms expected, x1.25 = 50 ms: at the 50 ms target, admitted.
        let a = Arrival {
            expected_wait: 40 * MS,
            ..base()
        };
        assert_eq!(decide(&a), Verdict::Queue);
        let a = Arrival {
            expected_wait: 41 * MS,
            ..base()
        };
        assert_eq!(decide(&a), Verdict::Shed(ShedReason::DeadlineUnreachable));
        // A budget tighter than the target binds.
        let a = Arrival {
            expected_wait: 10 * MS,
            budget: 12 * MS,
            ..base()
        };
        assert_eq!(decide(&a), Verdict::Shed(ShedReason::DeadlineUnreachable));
    }

    #[test]
    fn a_class_overtaken_by_higher_ones_is_shed_when_its_own_turn_misses_the_budget() {
        // 10 ms of backlog ahead, but its class drains slowly (higher classes take most
        // slots): 70 ms for its own lane, x1.25 = 87.5 ms, inside a 100 ms budget: queued,
        // although past the queue's 50 ms target (which is about the backlog, not its turn).
        let a = Arrival {
            expected_wait: 10 * MS,
            class_wait: 70 * MS,
            ..base()
        };
        assert_eq!(decide(&a), Verdict::Queue);
        // 90 ms (x1.25 = 112.5): its turn comes after its deadline, shed on arrival rather
        // than after waiting for nothing.
        let a = Arrival {
            class_wait: 90 * MS,
            ..a
        };
        assert_eq!(decide(&a), Verdict::Shed(ShedReason::DeadlineUnreachable));
        // sloguard's own delay counts against that budget too.
        let a = Arrival {
            class_wait: 70 * MS,
            own_delay: 15 * MS,
            ..a
        };
        assert_eq!(decide(&a), Verdict::Shed(ShedReason::DeadlineUnreachable));
    }

    #[test]
    fn sloguards_own_delay_counts_against_the_budget() {
        // A starved proxy: its loop runs 95 ms late; with 5 ms of backlog ahead (x1.25) the
        // request cannot start within its 100 ms budget.
        let a = Arrival {
            expected_wait: 5 * MS,
            own_delay: 95 * MS,
            ..base()
        };
        assert_eq!(decide(&a), Verdict::Shed(ShedReason::DeadlineUnreachable));
        // 45 ms late: it still has time to wait its turn (the queue's 50 ms target is about
        // the backlog it holds, not about time already lost).
        let a = Arrival {
            own_delay: 45 * MS,
            ..a
        };
        assert_eq!(decide(&a), Verdict::Queue);
    }

    #[test]
    fn a_full_queue_evicts_a_lower_class_or_sheds_the_newcomer() {
        let full = Arrival {
            queue_len: 1024,
            ..base()
        };
        assert_eq!(decide(&full), Verdict::Shed(ShedReason::QueueFull));
        let a = Arrival {
            lower_waiting: true,
            ..full
        };
        assert_eq!(decide(&a), Verdict::EvictAndQueue);
    }
}
