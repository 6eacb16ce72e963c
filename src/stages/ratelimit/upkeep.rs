//! The limiter's background upkeep: the breaker's health check while Redis is away, and
//! the sweep of replenished local keys.

use std::sync::Arc;
use std::time::Duration;

use super::breaker::BreakerChange;
use super::gcra::Gcra;
use super::{now_us, RateLimiter};

/// How often an open breaker asks Redis whether it is back.
const HEALTH_CHECK: Duration = Duration::from_millis(100);
/// How often replenished local keys and expired denials are forgotten.
const SWEEP: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// While the breaker is open, asks Redis whether it is back; closes it if so. "Back"
    /// means it decides requests again: the limiter's own script, on a key of its own. A PING
    /// is answered by a Redis that refuses the script's writes (out of memory, a read-only
    /// replica), which closed the breaker every 100 ms only for the next requests to fail
    /// and open it again (a flapping mode, a warning each time).
    pub async fn health_check(&self) {
        if let (true, Some(redis)) = (self.breaker.is_open(), self.redis()) {
            // Always allowed at one check per 100 ms, so the script writes the key.
            let allow = Gcra {
                interval_us: 1_000,
                tau_us: 1_000_000,
            };
            let decides = redis
                .decide(vec![self.health_key.clone()], vec![(allow, true)])
                .await
                .is_ok();
            if self.breaker.on_health_check(decides) == Some(BreakerChange::Closed) {
                tracing::info!("rate limits: redis is back, shared limiting resumes");
            }
        }
    }

    /// The limiter's upkeep for the limiter `current` returns (read each round, so a reload's
    /// new limiter is the one kept up): closes the Redis breaker when Redis is back (checked
    /// every `HEALTH_CHECK` (100 ms) while open) and forgets replenished local keys every
    /// `SWEEP` (1 s). Returns only with the runtime.
    pub async fn keep_up(current: impl Fn() -> Arc<RateLimiter>) {
        let sweep_every = (SWEEP.as_millis() / HEALTH_CHECK.as_millis()).max(1) as u32;
        let mut n = 0u32;
        loop {
            tokio::time::sleep(HEALTH_CHECK).await;
            let limiter = current();
            limiter.health_check().await;
            n += 1;
            if n.is_multiple_of(sweep_every) {
                limiter.sweep();
            }
        }
    }

    /// Drops replenished local keys and expired denials.
    pub fn sweep(&self) {
        let now = now_us();
        self.local.sweep(now);
        self.denied.sweep(now);
    }
}
