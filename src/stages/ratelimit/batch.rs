//! Group commit for the calls to Redis: concurrent requests share one script call. Pure
//! (no I/O, no clock), so its rule is tested without sockets; `redis` does the calls.
//!
//! The rule: a request that finds no call under way starts one at once, so a lone request
//! waits for nothing but its own round trip. Requests arriving while a call is under way
//! wait for it to return and then leave together in the next, however many they are (up to
//! [`MAX_BATCH`]). A batch's size follows the load by itself, as a database's group commit
//! does: at a few hundred requests a second it is one request, at ten thousand it is as
//! many as arrive during one round trip. No timer is involved (envoyproxy/ratelimit waits a
//! fixed window instead, which every request pays even when alone). A request waits at most
//! for the call under way, then its own.

/// Most requests in one script call: the script's arguments grow with it, and a batch that
/// large means Redis is slow, where smaller calls let the first answers out sooner.
pub const MAX_BATCH: usize = 128;

/// The requests waiting for the next call, and whether a sender is running.
#[derive(Debug)]
pub struct CallQueue<T> {
    waiting: Vec<T>,
    sending: bool,
}

impl<T> Default for CallQueue<T> {
    fn default() -> Self {
        CallQueue {
            waiting: Vec::new(),
            sending: false,
        }
    }
}

impl<T> CallQueue<T> {
    /// Queues one request; `true` when no sender is running, so the caller starts one.
    #[must_use]
    pub fn push(&mut self, item: T) -> bool {
        self.waiting.push(item);
        !std::mem::replace(&mut self.sending, true)
    }

    /// The sender's next batch: up to [`MAX_BATCH`] of the waiting requests, oldest first;
    /// `None` when none is waiting, and the sender stops (the next push starts another).
    pub fn next_batch(&mut self) -> Option<Vec<T>> {
        if self.waiting.is_empty() {
            self.sending = false;
            return None;
        }
        if self.waiting.len() <= MAX_BATCH {
            return Some(std::mem::take(&mut self.waiting));
        }
        let rest = self.waiting.split_off(MAX_BATCH);
        Some(std::mem::replace(&mut self.waiting, rest))
    }

    /// The sender died (a panic): the next push starts another. The requests waiting keep
    /// their place.
    pub fn abandon(&mut self) {
        self.sending = false;
    }

    /// Requests waiting for the next call.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_request_starts_its_own_call_at_once() {
        let mut q = CallQueue::default();
        assert!(q.push(1), "no call under way: start one");
        assert_eq!(q.next_batch(), Some(vec![1]));
        assert_eq!(q.next_batch(), None, "nothing more: the sender stops");
        assert!(q.push(2), "and the next request starts another");
    }

    #[test]
    fn requests_arriving_during_a_call_leave_together_in_the_next() {
        let mut q = CallQueue::default();
        assert!(q.push(1));
        assert_eq!(q.next_batch(), Some(vec![1]));
        // The call for 1 is under way: these do not start senders of their own.
        assert!(!q.push(2));
        assert!(!q.push(3));
        assert!(!q.push(4));
        assert_eq!(q.waiting(), 3);
        assert_eq!(q.next_batch(), Some(vec![2, 3, 4]), "in arrival order");
        assert_eq!(q.next_batch(), None);
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_the_rest_go_next() {
        let mut q = CallQueue::default();
        for i in 0..MAX_BATCH + 10 {
            let _ = q.push(i);
        }
        let first = q.next_batch().unwrap();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0], 0);
        assert_eq!(
            q.next_batch().unwrap(),
            (MAX_BATCH..MAX_BATCH + 10).collect::<Vec<_>>()
        );
        assert_eq!(q.next_batch(), None);
    }
}
