//! Waking queued requests when a slot frees: one waiter at a time, the best whose slot rule
//! fits, expired waiters told they were shed on the way.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::queue::Entry;
use super::{wall_clock, Admission, ShedReason, Wait, Waiter, WakeToken};
use crate::workers::{SlotListener, SlotRule, Worker};

impl Admission {
    /// A slot was released (on a worker now fitting `fits`): counts a completion and wakes
    /// the best waiter that can use it, if any.
    pub fn on_release(&self, fits: impl Fn(&SlotRule) -> bool) {
        self.completions.fetch_add(1, Ordering::Relaxed);
        if self.waiting() > 0 {
            self.wake_fitting(wall_clock(), fits);
        }
    }

    /// Wakes waiters one slot at a time while none is already on its way to a slot (a
    /// woken request that got its slot calls this again: the queue empties into free slots
    /// as fast as they are taken, without waking a herd for one slot).
    pub fn wake_one_if_idle(&self, fits: impl Fn(&SlotRule) -> bool) {
        if self.waiting() > 0 && self.woken.load(Ordering::Relaxed) == 0 {
            self.wake_fitting(wall_clock(), fits);
        }
    }

    /// Wakes the best waiter whose rule `fits` a free slot, telling expired ones they were
    /// shed. Returns whether one woke.
    pub fn wake_fitting(&self, now: Instant, fits: impl Fn(&SlotRule) -> bool) -> bool {
        let (adaptive_lifo, standing_target) = {
            let cfg = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
            (cfg.adaptive_lifo, cfg.lifo_target)
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let lifo = inner.detector.overloaded(now) && adaptive_lifo;
        let mut expired: Vec<Entry<_>> = Vec::new();
        loop {
            let next = inner.queue.pop_next(
                now,
                lifo,
                standing_target,
                &mut expired,
                |w: &Waiter, reserved| {
                    fits(&if reserved {
                        w.rule
                    } else {
                        w.rule.unreserved()
                    })
                },
            );
            for e in expired.drain(..) {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                let _ = e.payload.tx.send(Wait::Shed(ShedReason::QueueTimeout));
            }
            let Some(entry) = next else { return false };
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            inner
                .detector
                .on_dequeue(now.saturating_duration_since(entry.enqueued_at), now);
            // A waiter whose client left has dropped its receiver: try the next one. The
            // token travels in the message: whoever ends up dropping it (the waiter, or the
            // channel of a waiter that left) gives the claim back.
            self.woken.fetch_add(1, Ordering::Relaxed);
            if entry
                .payload
                .tx
                .send(Wait::Woken(WakeToken(self.woken.clone())))
                .is_ok()
            {
                return true;
            }
        }
    }
}

impl SlotListener for Admission {
    fn slot_freed(&self, worker: &Worker) {
        self.on_release(|rule| worker.has_slot(rule));
    }
}
