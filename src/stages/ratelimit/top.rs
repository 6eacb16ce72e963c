//! Which keys a rule is limiting: the heaviest hitters among the keys it denied (or would
//! deny in shadow, or found near their limit), in bounded memory, for on-call's first
//! question in a rate-limit incident ("which tenant?"). Pure: time is passed in.
//!
//! Space-Saving (Metwally, Agrawal, El Abbadi 2005): at most `capacity` keys are counted;
//! a new key arriving when the table is full takes the place of the key with the smallest
//! count and inherits that count, remembered as its possible over-count. Any key seen more
//! than `total / capacity` times is guaranteed to be in the table, and its count is at most
//! `error` too high, so the top of the table is right even with millions of distinct keys
//! (a scan from random client IPs cannot push a real heavy hitter out). Counts cover the
//! current window and the one before (a minute each): the table says who is limited now,
//! not since start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Keys counted per table.
pub const CAPACITY: usize = 64;
/// Length of a counting window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One counted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    count: u64,
    /// How much of `count` may belong to keys it replaced.
    error: u64,
}

/// A key's count as reported: over the current and the previous window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyCount {
    pub key: String,
    pub count: u64,
    /// The count is at most this much too high (Space-Saving's bound).
    pub error: u64,
}

/// The heavy hitters of one rule and one kind of event.
#[derive(Debug, Clone)]
pub struct TopKeys {
    capacity: usize,
    current: HashMap<String, Count>,
    previous: HashMap<String, Count>,
    window_start: Instant,
}

impl TopKeys {
    pub fn new(capacity: usize, now: Instant) -> TopKeys {
        TopKeys {
            capacity: capacity.max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
            window_start: now,
        }
    }

    /// One event for `key`.
    pub fn record(&mut self, key: &str, now: Instant) {
        self.roll(now);
        if let Some(c) = self.current.get_mut(key) {
            c.count += 1;
            return;
        }
        let inherited = if self.current.len() >= self.capacity {
            // Full: the smallest count gives its place (a linear scan of 64: events are
            // denials, not every request).
            let smallest = self
                .current
                .iter()
                .min_by_key(|(_, c)| c.count)
                .map(|(k, c)| (k.clone(), c.count));
            match smallest {
                Some((k, count)) => {
                    self.current.remove(&k);
                    count
                }
                None => 0,
            }
        } else {
            0
        };
        self.current.insert(
            key.to_string(),
            Count {
                count: inherited + 1,
                error: inherited,
            },
        );
    }

    /// The `n` keys with the most events over the current and the previous window, most
    /// first (ties by key, so the order is stable).
    pub fn top(&self, n: usize, now: Instant) -> Vec<KeyCount> {
        let mut merged: HashMap<&str, Count> = HashMap::new();
        let previous = if now.saturating_duration_since(self.window_start) < 2 * WINDOW {
            Some(&self.previous)
        } else {
            None
        };
        let current = if now.saturating_duration_since(self.window_start) < WINDOW {
            Some(&self.current)
        } else {
            // The current window ended with no event since: it is the previous one now.
            None
        };
        let windows = match (current, previous) {
            (Some(c), Some(p)) => vec![c, p],
            (None, Some(_)) => vec![&self.current],
            (c, None) => c.into_iter().collect(),
        };
        for table in windows {
            for (k, c) in table {
                let m = merged
                    .entry(k.as_str())
                    .or_insert(Count { count: 0, error: 0 });
                m.count += c.count;
                m.error += c.error;
            }
        }
        let mut out: Vec<KeyCount> = merged
            .into_iter()
            .map(|(k, c)| KeyCount {
                key: k.to_string(),
                count: c.count,
                error: c.error,
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        out.truncate(n);
        out
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        self.previous = if elapsed < 2 * WINDOW {
            std::mem::take(&mut self.current)
        } else {
            self.current.clear();
            HashMap::new()
        };
        // Windows stay aligned to the first one.
        let windows = (elapsed.as_secs_f64() / WINDOW.as_secs_f64()).floor() as u32;
        self.window_start += WINDOW * windows;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn keys(top: &[KeyCount]) -> Vec<(&str, u64)> {
        top.iter().map(|k| (k.key.as_str(), k.count)).collect()
    }

    #[test]
    fn counts_keys_and_reports_the_heaviest_first() {
        let t0 = Instant::now();
        let mut t = TopKeys::new(8, t0);
        for (key, n) in [("acme", 5), ("globex", 9), ("initech", 1)] {
            for _ in 0..n {
                t.record(key, t0 + S);
            }
        }
        assert_eq!(keys(&t.top(2, t0 + S)), [("globex", 9), ("acme", 5)]);
        assert!(t.top(10, t0 + S).iter().all(|k| k.error == 0));
    }

    #[test]
    fn a_scan_of_distinct_keys_does_not_push_out_a_heavy_hitter() {
        let t0 = Instant::now();
        let mut t = TopKeys::new(CAPACITY, t0);
        // One tenant over its limit 2000 times, interleaved with 100 000 one-off client
        // IPs (a scan): memory stays at 64 keys and the tenant stays on top.
        for i in 0..100_000u32 {
            if i % 50 == 0 {
                t.record("tenant-hot", t0 + S);
            }
            t.record(
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                t0 + S,
            );
        }
        assert_eq!(t.current.len(), CAPACITY);
        let top = t.top(3, t0 + S);
        assert_eq!(top[0].key, "tenant-hot");
        // The reported count is an upper bound, within its error of the truth.
        assert!(
            top[0].count >= 2000 && top[0].count - top[0].error <= 2000,
            "{top:?}"
        );
    }

    #[test]
    fn counts_cover_this_window_and_the_last_then_fade() {
        let t0 = Instant::now();
        let mut t = TopKeys::new(8, t0);
        for _ in 0..3 {
            t.record("old", t0 + S);
        }
        t.record("new", t0 + WINDOW + S);
        // A window later: both windows count.
        assert_eq!(keys(&t.top(5, t0 + WINDOW + S)), [("old", 3), ("new", 1)]);
        // Two windows later with no events: only the last window's key is left.
        assert_eq!(keys(&t.top(5, t0 + 2 * WINDOW + S)), [("new", 1)]);
        // Three windows of silence: nothing.
        assert!(t.top(5, t0 + 3 * WINDOW + S).is_empty());
        // After a long gap, events start a fresh table.
        t.record("later", t0 + 10 * WINDOW);
        assert_eq!(keys(&t.top(5, t0 + 10 * WINDOW)), [("later", 1)]);
    }
}
