//! The per-rule top-keys tables behind `/status`'s `top_keys`: the keys each rule limited,
//! found near their limit, and denied in shadow most (see [`super::top`] for the counting).

use std::sync::PoisonError;

use super::rules::{key_value, RateLimitConfig, Rule};
use super::top::{self, KeyCount, TopKeys};
use super::{wall_clock, RateLimiter};

/// What happened to a key, for the top-keys tables (their order in `RateLimiter::top`).
#[derive(Debug, Clone, Copy)]
pub(super) enum KeyEvent {
    Limited = 0,
    NearLimit = 1,
    ShadowDenied = 2,
}

/// The `/status` names of the [`KeyEvent`] tables, in their order.
const KEY_EVENTS: [&str; 3] = ["limited", "near_limit", "shadow_denied"];

/// Keys listed per rule and event on `/status`.
const TOP_SHOWN: usize = 10;

impl RateLimiter {
    /// Counts `event` for `key` (the full store key) under `rule`.
    pub(super) fn note(&self, rule: &Rule, event: KeyEvent, key: &str) {
        let now = wall_clock();
        let mut top = self.top.lock().unwrap_or_else(PoisonError::into_inner);
        let tables = top
            .entry(rule.name.clone())
            .or_insert_with(|| std::array::from_fn(|_| TopKeys::new(top::CAPACITY, now)));
        tables[event as usize].record(key_value(key, &rule.name), now);
    }

    /// Per rule of `cfg`: the keys it limited, found near their limit and denied in shadow
    /// most over the last one to two minutes.
    pub fn top_keys(&self, cfg: &RateLimitConfig) -> serde_json::Value {
        let now = wall_clock();
        let top = self.top.lock().unwrap_or_else(PoisonError::into_inner);
        let per_rule = cfg.rules.iter().map(|r| {
            let tables: serde_json::Map<String, serde_json::Value> = KEY_EVENTS
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let keys: Vec<KeyCount> = top
                        .get(&r.name)
                        .map(|t| t[i].top(TOP_SHOWN, now))
                        .unwrap_or_default();
                    (name.to_string(), serde_json::json!(keys))
                })
                .collect();
            (r.name.to_string(), serde_json::Value::Object(tables))
        });
        serde_json::Value::Object(per_rule.collect())
    }
}
