//! GCRA (the generic cell rate algorithm), the limiter math, in microseconds. Pure. The Redis
//! script (`redis.rs`) runs the same arithmetic; the local limiter runs this one.
//!
//! A key's state is one number, its theoretical arrival time (TAT). With emission interval
//! `T = period / rate` and tolerance `tau = T * burst`, a request at `now` is allowed when
//! `max(TAT, now) + T - now <= tau + T`, and then TAT moves on by `T`. So a quiet key may
//! send `burst + 1` at once, and then one every `T`, which is "rate per period, plus burst".

use std::collections::HashMap;
use std::sync::Mutex;

/// A rule's parameters in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval: one request every `interval_us` at the steady rate.
    pub interval_us: u64,
    /// Burst tolerance: `interval_us * burst`.
    pub tau_us: u64,
}

/// The verdict on one request for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraDecision {
    pub allowed: bool,
    /// Requests still allowed right now after this one (0 when denied).
    pub remaining: u64,
    /// When denied: how long until one request would be allowed.
    pub retry_after_us: u64,
    /// Until the key is fully replenished (its state can be forgotten after this).
    pub reset_us: u64,
    /// The key's new TAT (unchanged when denied).
    pub tat_us: u64,
}

impl Gcra {
    /// `rate` requests per `period_us`, plus `burst`.
    pub fn new(rate: f64, period_us: u64, burst: u64) -> Gcra {
        let interval_us = ((period_us as f64) / rate).max(1.0) as u64;
        Gcra {
            interval_us,
            tau_us: interval_us.saturating_mul(burst),
        }
    }

    /// The limit, as requests allowed at once from a quiet key.
    pub fn capacity(&self) -> u64 {
        self.tau_us / self.interval_us + 1
    }

    /// Decides one request at `now_us` for a key whose TAT is `tat_us` (None = never seen).
    pub fn decide(&self, tat_us: Option<u64>, now_us: u64) -> GcraDecision {
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        let new_tat = tat + self.interval_us;
        // How far ahead of now the key would be; the limit allows up to tau + one interval.
        let ahead = new_tat - now_us;
        let allowance = self.tau_us + self.interval_us;
        if ahead > allowance {
            GcraDecision {
                allowed: false,
                remaining: 0,
                retry_after_us: ahead - allowance,
                reset_us: tat - now_us,
                tat_us: tat,
            }
        } else {
            GcraDecision {
                allowed: true,
                remaining: (allowance - ahead) / self.interval_us,
                retry_after_us: 0,
                reset_us: ahead,
                tat_us: new_tat,
            }
        }
    }
}

/// An in-process map from key to a time in microseconds (a TAT, or a "denied until"),
/// sharded to keep lock contention low. Entries whose time has passed are dropped by
/// [`LocalStore::sweep`], so memory follows the number of active keys; a full shard refuses
/// new keys (they are then judged as fresh: failing open rather than growing).
pub struct LocalStore {
    shards: Vec<Mutex<HashMap<String, u64>>>,
}

const SHARDS: usize = 16;
/// Most keys held per shard.
const MAX_KEYS_PER_SHARD: usize = 65_536;

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl LocalStore {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // FNV-1a: cheap and good enough to spread keys over 16 shards.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.shards[(h as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The time stored for `key`, if it is still in the future.
    pub fn get(&self, key: &str, now_us: u64) -> Option<u64> {
        self.shard(key).get(key).copied().filter(|t| *t > now_us)
    }

    /// Stores a time for `key`.
    pub fn set(&self, key: &str, value_us: u64, now_us: u64) {
        let mut shard = self.shard(key);
        if let Some(v) = shard.get_mut(key) {
            *v = value_us;
            return;
        }
        if shard.len() >= MAX_KEYS_PER_SHARD {
            shard.retain(|_, t| *t > now_us);
        }
        if shard.len() < MAX_KEYS_PER_SHARD {
            shard.insert(key.to_string(), value_us);
        }
    }

    /// Decides and records one request under GCRA.
    pub fn decide(&self, key: &str, gcra: &Gcra, now_us: u64) -> GcraDecision {
        let mut shard = self.shard(key);
        let d = gcra.decide(shard.get(key).copied(), now_us);
        if d.allowed {
            if let Some(tat) = shard.get_mut(key) {
                *tat = d.tat_us;
            } else {
                if shard.len() >= MAX_KEYS_PER_SHARD {
                    shard.retain(|_, tat| *tat > now_us);
                }
                if shard.len() < MAX_KEYS_PER_SHARD {
                    shard.insert(key.to_string(), d.tat_us);
                }
            }
        }
        d
    }

    /// Forgets keys whose time has passed.
    pub fn sweep(&self, now_us: u64) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, t| *t > now_us);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_quiet_key_gets_its_burst_then_the_steady_rate() {
        let g = Gcra::new(10.0, SEC, 5); // 10/s, burst 5
        assert_eq!(g.capacity(), 6);
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..20 {
            let d = g.decide(tat, 0);
            if d.allowed {
                allowed += 1;
                tat = Some(d.tat_us);
            }
        }
        assert_eq!(allowed, 6, "burst + 1 at once");
        let d = g.decide(tat, 0);
        assert!(!d.allowed);
        assert_eq!(
            d.retry_after_us, 100_000,
            "the next slot is one interval away"
        );
        assert!(g.decide(tat, 100_000).allowed);
    }

    #[test]
    fn remaining_counts_down_and_reset_says_when_it_is_full_again() {
        let g = Gcra::new(10.0, SEC, 2);
        let d1 = g.decide(None, 0);
        assert_eq!((d1.remaining, d1.reset_us), (2, 100_000));
        let d2 = g.decide(Some(d1.tat_us), 0);
        assert_eq!(d2.remaining, 1);
        let d3 = g.decide(Some(d2.tat_us), 0);
        assert_eq!((d3.allowed, d3.remaining, d3.reset_us), (true, 0, 300_000));
    }

    /// Property: over ANY window, allowed requests never exceed rate x window + burst + 1,
    /// whatever the arrival pattern (random bursts and gaps from a deterministic generator).
    #[test]
    fn never_more_than_rate_times_window_plus_burst() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..50 {
            let rate = 1.0 + (next() % 200) as f64;
            let burst = next() % 20;
            let g = Gcra::new(rate, SEC, burst);
            let (mut now, mut tat, mut allowed_at) = (0u64, None, Vec::new());
            for _ in 0..2000 {
                now += match next() % 4 {
                    0 => 0,
                    1 => next() % 1000,
                    2 => next() % 50_000,
                    _ => next() % 500_000,
                };
                let d = g.decide(tat, now);
                if d.allowed {
                    tat = Some(d.tat_us);
                    allowed_at.push(now);
                }
            }
            for (i, start) in allowed_at.iter().enumerate() {
                for window in [SEC / 10, SEC, 5 * SEC] {
                    let n = allowed_at[i..]
                        .iter()
                        .take_while(|t| **t < start + window)
                        .count() as f64;
                    let bound = (window as f64 / g.interval_us as f64).ceil() + burst as f64 + 1.0;
                    assert!(
                        n <= bound,
                        "case {case}: {n} allowed in {window} us, bound {bound}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_local_store_limits_per_key_and_forgets_replenished_keys() {
        let s = LocalStore::default();
        let g = Gcra::new(1.0, SEC, 0);
        assert!(s.decide("a", &g, 0).allowed);
        assert!(!s.decide("a", &g, 10).allowed);
        assert!(s.decide("b", &g, 10).allowed, "keys are independent");
        assert_eq!(s.len(), 2);
        s.sweep(2 * SEC);
        assert!(s.is_empty());
        s.set("x", 5 * SEC, 2 * SEC);
        assert_eq!(s.get("x", 4 * SEC), Some(5 * SEC));
        assert_eq!(s.get("x", 5 * SEC), None, "a time that has come is gone");
        assert!(s.decide("a", &g, 2 * SEC).allowed);
    }
}
