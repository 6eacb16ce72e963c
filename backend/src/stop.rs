//! A worker's stop switch, and the fault "blocking" primitives that honour it.
//!
//! Faults block the worker's thread on purpose (that is the incident), but a
//! test that kills a stalled worker, or drops the backend mid-stall, must
//! not wait out a 30 s stall. So the block is a condvar wait with a timeout
//! (to the event loop it is exactly a `std::thread::sleep`) and the CPU spin
//! checks the switch; both return early once the worker is told to stop.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Flipped once, from any thread, to stop one worker.
#[derive(Debug, Default)]
pub(crate) struct StopSwitch {
    stopped: Mutex<bool>,
    wake_blocked: Condvar,
    wake_loop: Notify,
}

impl StopSwitch {
    /// Stops the worker: wakes a blocked handler and the accept loop.
    pub(crate) fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake_blocked.notify_all();
        // A stored permit: works even if the loop is not waiting yet.
        self.wake_loop.notify_one();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once [`StopSwitch::stop`] was called. One waiter only (the
    /// worker's accept loop).
    pub(crate) async fn stopped(&self) {
        if !self.is_stopped() {
            self.wake_loop.notified().await;
        }
    }

    /// Blocks the calling thread for `d`, like `std::thread::sleep`, unless stopped first.
    pub(crate) fn block_for(&self, d: Duration) {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .wake_blocked
            .wait_timeout_while(guard, d, |stopped| !*stopped);
    }

    /// Burns CPU on the calling thread for `d`, unless stopped first.
    pub(crate) fn spin_for(&self, d: Duration) {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < d {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            if self.is_stopped() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn stop_cuts_a_long_block_short() {
        let switch = Arc::new(StopSwitch::default());
        let s = switch.clone();
        let blocked = std::thread::spawn(move || {
            let start = Instant::now();
            s.block_for(Duration::from_secs(30));
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(20));
        switch.stop();
        assert!(blocked.join().unwrap() < Duration::from_secs(5));
        // Once stopped, blocks and spins return at once.
        let start = Instant::now();
        switch.block_for(Duration::from_secs(30));
        switch.spin_for(Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn spin_lasts_about_as_asked() {
        let switch = StopSwitch::default();
        let start = Instant::now();
        switch.spin_for(Duration::from_millis(30));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
