//! Per-tenant rate limits shared by every replica through Redis, with a local fallback.
//!
//! - [`rules`]: the validated rules and the key a request is counted under;
//! - [`gcra`]: the limiter math, and the in-process store used without Redis or while it is
//!   down (at `rate / replicas_hint`);
//! - [`redis`]: the same math in one Lua script, one round trip per request, concurrent
//!   requests sharing a call ([`batch`]);
//! - [`breaker`]: after a few Redis failures, stop asking until a health check says it is back;
//! - [`secret`]: the username, password and CA a managed Redis (TLS, ACL) needs.
//!
//! A key known to be over its limit is remembered until its retry time, so an abusive tenant
//! costs no Redis round trips. A request that got within 20% of a limit is counted as
//! "near limit"; the keys limited, near their limit and denied in shadow are counted per rule
//! in bounded memory ([`top`]) so `/status` names them.

pub mod batch;
pub mod breaker;
pub mod gcra;
pub mod redis;
pub mod rules;
pub mod secret;
pub mod top;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

pub use rules::{KeyPart, KeySource, MissingKey, OnRedisError, RateLimitConfig, Rule, RuleMode};
pub use secret::{Credentials, RedisAuth, SecretError};

use self::breaker::{Breaker, BreakerChange};
use self::gcra::{Gcra, GcraDecision, LocalStore};
use self::redis::RedisStore;
use self::rules::{key_value, rule_key, Limits, RuleKey};
use self::top::{KeyCount, TopKeys};
use super::{Reason, Rejection};

/// The wall clock, read where a request meets the limiter (its deciders, `gcra`, `top` and
/// `breaker`, take `now`).
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Instant {
    Instant::now()
}

/// Microseconds on a process-wide monotonic clock (local state only; Redis uses its own).
fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(wall_clock);
    wall_clock().saturating_duration_since(epoch).as_micros() as u64
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RateOutcome {
    #[default]
    Allow,
    /// Over an enforced rule's limit: 429.
    Limited {
        rule: Arc<str>,
        /// The key's value (a tenant, a client IP), for the access line.
        key: String,
        retry_after: Duration,
    },
    /// The rule's key could not be built and `missing_key = "deny"`: 400.
    MissingKey { rule: Arc<str>, part: String },
    /// Redis is down and `on_redis_error = "deny"`: 503.
    Unavailable { rule: Arc<str> },
}

impl RateOutcome {
    /// The answer for a refused request; `None` for `Allow`.
    pub fn rejection(&self) -> Option<Rejection> {
        let (status, reason, message, retry_after) = match self {
            RateOutcome::Allow => return None,
            RateOutcome::Limited {
                rule, retry_after, ..
            } => (
                429,
                Reason::RateLimited,
                format!("rate limit `{rule}` exceeded; retry in {} ms", retry_after.as_millis()),
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            ),
            RateOutcome::MissingKey { rule, part } => (
                400,
                Reason::MissingRateLimitKey,
                format!("rate limit `{rule}` needs the request's {part}"),
                None,
            ),
            RateOutcome::Unavailable { rule } => (
                503,
                Reason::RateLimitUnavailable,
                format!("rate limit `{rule}` cannot be checked (its store is down) and the policy refuses unchecked requests"),
                Some(1),
            ),
        };
        Some(Rejection {
            status,
            reason,
            message,
            limit: Some("ratelimit.rule"),
            value: None,
            retry_after,
        })
    }

    /// The key's value a 429 was for (a tenant, a client IP), for the access line.
    pub fn key(&self) -> Option<&str> {
        match self {
            RateOutcome::Limited { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The rule that refused, for the JSON body.
    pub fn rule(&self) -> Option<&str> {
        match self {
            RateOutcome::Allow => None,
            RateOutcome::Limited { rule, .. }
            | RateOutcome::MissingKey { rule, .. }
            | RateOutcome::Unavailable { rule } => Some(rule),
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` header values (draft-ietf-httpapi-ratelimit-headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateHeaders {
    pub policy: String,
    pub limit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateVerdict {
    pub outcome: RateOutcome,
    pub headers: Option<RateHeaders>,
    /// Per rule that judged the request: (its index in the policy, `allowed` / `limited` /
    /// `shadow_denied` / `near_limit`), for the metrics.
    pub results: Vec<(usize, &'static str)>,
}

/// Counters for the status page and logs.
#[derive(Debug, Default)]
pub struct RateStats {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    pub limited_from_cache: AtomicU64,
    pub shadow_denied: AtomicU64,
    pub near_limit: AtomicU64,
    pub redis_calls: AtomicU64,
    pub redis_errors: AtomicU64,
    pub fallback_decisions: AtomicU64,
}

/// The rate-limiter could not be set up from its policy.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
}

/// The Redis client, built (and its credentials read) when the limiter is; connected on
/// first use. One per limiter (per policy), so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum RedisTarget {
    Single(::redis::Client),
    Cluster(::redis::cluster::ClusterClient),
}

/// The rate-limit stage's live state.
pub struct RateLimiter {
    target: Option<RedisTarget>,
    /// What the client was built with, to tell on a reload whether a rotated Secret changed.
    credentials: Credentials,
    /// The Redis URLs use TLS (`rediss://`).
    tls: bool,
    redis_timeout: Duration,
    batch_calls: bool,
    /// Made on first use, inside a Tokio runtime (the connection manager spawns its driver
    /// there; the process builds this before Pingora's runtimes exist).
    redis: OnceLock<Option<RedisStore>>,
    breaker: Breaker,
    local: LocalStore,
    /// Keys known to be over an enforced limit, until their retry time.
    denied: LocalStore,
    pub stats: RateStats,
    /// The key the breaker's health check decides on (see [`RateLimiter::health_check`]).
    health_key: String,
    /// Per rule name: the keys it limited, found near their limit, and denied in shadow.
    top: Mutex<HashMap<Arc<str>, [TopKeys; 3]>>,
}

/// What happened to a key, for the top-keys tables (their order in `RateLimiter::top`).
#[derive(Debug, Clone, Copy)]
enum KeyEvent {
    Limited = 0,
    NearLimit = 1,
    ShadowDenied = 2,
}

/// The `/status` names of the [`KeyEvent`] tables, in their order.
const KEY_EVENTS: [&str; 3] = ["limited", "near_limit", "shadow_denied"];

/// Keys listed per rule and event on `/status`.
const TOP_SHOWN: usize = 10;

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl RateLimiter {
    /// Builds the limiter: reads the credentials and builds the Redis client; Redis itself
    /// is connected lazily (a Redis down at start is a fallback, not a failure).
    pub fn new(cfg: &RateLimitConfig) -> Result<RateLimiter, LimiterError> {
        let credentials = cfg.redis_auth.resolve()?;
        RateLimiter::with_credentials(cfg, credentials)
    }

    /// [`RateLimiter::new`] with the credentials already read.
    pub fn with_credentials(
        cfg: &RateLimitConfig,
        credentials: Credentials,
    ) -> Result<RateLimiter, LimiterError> {
        let target = if !cfg.redis_cluster_nodes.is_empty() {
            Some(RedisTarget::Cluster(self::redis::cluster_client(
                &cfg.redis_cluster_nodes,
                &credentials,
                cfg.timeout,
            )?))
        } else if let Some(url) = &cfg.redis_url {
            Some(RedisTarget::Single(self::redis::single_client(
                url,
                &credentials,
            )?))
        } else {
            None
        };
        let tls = cfg
            .redis_url
            .iter()
            .chain(&cfg.redis_cluster_nodes)
            .any(|u| u.starts_with("rediss://"));
        Ok(RateLimiter {
            target,
            credentials,
            tls,
            redis_timeout: cfg.timeout,
            batch_calls: cfg.batch_calls,
            redis: OnceLock::new(),
            breaker: Breaker::new(cfg.failures_to_open),
            local: LocalStore::default(),
            denied: LocalStore::default(),
            stats: RateStats::default(),
            health_key: format!("{}:breaker-check", cfg.key_prefix),
            top: Mutex::default(),
        })
    }

    /// The credentials the Redis client was built with.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// `redis`, `fallback` (Redis configured but the breaker is open) or `local`.
    pub fn mode(&self) -> &'static str {
        match (self.target.is_some(), self.breaker.is_open()) {
            (false, _) => "local",
            (true, false) => "redis",
            (true, true) => "fallback",
        }
    }

    /// The Redis handle, made on first use (must be called inside a Tokio runtime).
    fn redis(&self) -> Option<&RedisStore> {
        self.redis
            .get_or_init(|| {
                let store = match self.target.as_ref()? {
                    RedisTarget::Single(client) => {
                        RedisStore::new(client.clone(), self.redis_timeout, self.batch_calls)
                    }
                    RedisTarget::Cluster(client) => {
                        Ok(RedisStore::cluster(client.clone(), self.redis_timeout))
                    }
                };
                store
                    .map_err(|e| tracing::error!(error = %e, "rate limits: cannot use redis; limiting in-process"))
                    .ok()
            })
            .as_ref()
    }

    /// Decides one request against every rule of its route.
    pub async fn check(&self, cfg: &RateLimitConfig, src: &KeySource<'_>) -> RateVerdict {
        let mut applicable: Vec<Applied<'_>> = Vec::new();
        for rule in cfg.rules.iter().filter(|r| r.applies_to(src.route)) {
            match rule_key(&cfg.key_prefix, rule, src) {
                RuleKey::Key(key) => {
                    // A key on the rule's allowlist is not counted; one with a tier of its
                    // own is counted against that.
                    if let Some(limits) = rule.limits_for_key(&key) {
                        applicable.push(Applied { rule, key, limits });
                    }
                }
                RuleKey::Exempt => {}
                RuleKey::Missing(part) if rule.mode == RuleMode::Enforce => {
                    return RateVerdict {
                        outcome: RateOutcome::MissingKey {
                            rule: rule.name.clone(),
                            part,
                        },
                        headers: None,
                        results: vec![],
                    }
                }
                RuleKey::Missing(_) => bump(&self.stats.shadow_denied),
            }
        }
        if applicable.is_empty() {
            return RateVerdict {
                outcome: RateOutcome::Allow,
                headers: None,
                results: vec![],
            };
        }
        let now = now_us();
        // Known over the limit: answer without a round trip.
        for Applied {
            rule, key, limits, ..
        } in applicable
            .iter()
            .filter(|a| a.rule.mode == RuleMode::Enforce)
        {
            if let Some(until) = self.denied.get(key, now) {
                bump(&self.stats.limited);
                bump(&self.stats.limited_from_cache);
                self.note(rule, KeyEvent::Limited, key);
                return RateVerdict {
                    outcome: RateOutcome::Limited {
                        rule: rule.name.clone(),
                        key: key_value(key, &rule.name).to_string(),
                        retry_after: Duration::from_micros(until - now),
                    },
                    headers: Some(headers_for(rule, limits, 0, until - now)),
                    results: vec![(rule_index(cfg, rule), "limited")],
                };
            }
        }
        let shared = self.shared_decisions(cfg, &applicable).await;
        // The Redis call may have taken up to its timeout: decide locally, and date the deny
        // cache, with the time after it. With the time from before, a request that waited
        // on a failing Redis looked early to the local GCRA by that wait, and tenants far
        // under their limit were refused as soon as the wait exceeded burst / rate.
        let now = now_us();
        let decisions = match shared {
            Some(d) => d,
            None => match cfg.on_redis_error {
                OnRedisError::Local => {
                    bump(&self.stats.fallback_decisions);
                    self.local_decisions(&applicable, now, true)
                }
                OnRedisError::Allow => {
                    bump(&self.stats.fallback_decisions);
                    return RateVerdict {
                        outcome: RateOutcome::Allow,
                        headers: None,
                        results: vec![],
                    };
                }
                OnRedisError::Deny => {
                    return RateVerdict {
                        outcome: RateOutcome::Unavailable {
                            rule: applicable[0].rule.name.clone(),
                        },
                        headers: None,
                        results: vec![],
                    }
                }
            },
        };
        let mut verdict = self.judge(&applicable, &decisions, now);
        verdict.results = applicable
            .iter()
            .zip(&decisions)
            .map(|(Applied { rule, limits, .. }, d)| {
                let result = match (d.allowed, rule.mode) {
                    (true, _) if d.remaining * 5 <= limits.gcra.capacity() => "near_limit",
                    (true, _) => "allowed",
                    (false, RuleMode::Shadow) => "shadow_denied",
                    (false, RuleMode::Enforce) => "limited",
                };
                (rule_index(cfg, rule), result)
            })
            .collect();
        verdict
    }

    /// Asks Redis, or the local store when no Redis is configured; `None` when Redis is
    /// configured but could not answer (the caller falls back).
    async fn shared_decisions(
        &self,
        cfg: &RateLimitConfig,
        applicable: &[Applied<'_>],
    ) -> Option<Vec<GcraDecision>> {
        let Some(redis) = self.redis() else {
            return Some(self.local_decisions(applicable, now_us(), false));
        };
        if self.breaker.is_open() {
            return None;
        }
        let keys: Vec<String> = applicable.iter().map(|a| a.key.clone()).collect();
        let params: Vec<_> = applicable
            .iter()
            .map(|a| (a.limits.gcra, a.rule.mode == RuleMode::Enforce))
            .collect();
        bump(&self.stats.redis_calls);
        match redis.decide(keys, params).await {
            Ok(d) => {
                self.breaker.on_success();
                Some(d)
            }
            Err(e) => {
                bump(&self.stats.redis_errors);
                if e.is_shared() {
                    tracing::debug!(error = %e, "rate limits: redis call failed");
                } else if self.breaker.on_failure() == Some(BreakerChange::Opened) {
                    tracing::warn!(error = %e, fallback = cfg.on_redis_error.as_str(), "rate limits: redis failing, breaker open, using the fallback");
                } else {
                    tracing::debug!(error = %e, "rate limits: redis call failed");
                }
                None
            }
        }
    }

    /// In-process decisions, stopping at the first enforced denial (so it does not use up
    /// the rules after it; rules before it were counted, a small over-count that fails safe).
    fn local_decisions(
        &self,
        applicable: &[Applied<'_>],
        now: u64,
        fallback: bool,
    ) -> Vec<GcraDecision> {
        let mut out = Vec::with_capacity(applicable.len());
        for Applied { rule, key, limits } in applicable {
            let gcra = if fallback {
                &limits.local_gcra
            } else {
                &limits.gcra
            };
            let d = self.local.decide(key, gcra, now);
            let stop = !d.allowed && rule.mode == RuleMode::Enforce;
            out.push(d);
            if stop {
                break;
            }
        }
        out
    }

    fn judge(
        &self,
        applicable: &[Applied<'_>],
        decisions: &[GcraDecision],
        now: u64,
    ) -> RateVerdict {
        let mut limited: Option<(&Rule, &str, u64)> = None;
        let mut tightest: Option<(&Applied<'_>, &GcraDecision)> = None;
        for (applied, d) in applicable.iter().zip(decisions) {
            let Applied { rule, key, limits } = applied;
            if tightest.is_none_or(|(_, t)| d.remaining < t.remaining) {
                tightest = Some((applied, d));
            }
            if d.allowed {
                if d.remaining * 5 <= limits.gcra.capacity() {
                    bump(&self.stats.near_limit);
                    self.note(rule, KeyEvent::NearLimit, key);
                    tracing::debug!(rule = %rule.name, key = %key, remaining = d.remaining, "near rate limit");
                }
            } else if rule.mode == RuleMode::Shadow {
                bump(&self.stats.shadow_denied);
                self.note(rule, KeyEvent::ShadowDenied, key);
                // At the normal level: shadow mode exists to show whom enforce would refuse
                // (the per-site log limit bounds the lines).
                tracing::info!(rule = %rule.name, key = key_value(key, &rule.name), "shadow rate limit would deny");
            } else {
                self.denied.set(key, now + d.retry_after_us, now);
                self.note(rule, KeyEvent::Limited, key);
                if limited.is_none_or(|(_, _, r)| d.retry_after_us > r) {
                    limited = Some((rule, key, d.retry_after_us));
                }
            }
        }
        let headers =
            tightest.map(|(a, d)| headers_for(a.rule, &a.limits, d.remaining, d.reset_us));
        match limited {
            Some((rule, key, retry_us)) => {
                bump(&self.stats.limited);
                RateVerdict {
                    outcome: RateOutcome::Limited {
                        rule: rule.name.clone(),
                        key: key_value(key, &rule.name).to_string(),
                        retry_after: Duration::from_micros(retry_us),
                    },
                    headers,
                    results: vec![],
                }
            }
            None => {
                bump(&self.stats.allowed);
                RateVerdict {
                    outcome: RateOutcome::Allow,
                    headers,
                    results: vec![],
                }
            }
        }
    }

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

    /// Mode, rules and counters, for the status page.
    pub fn snapshot(&self, cfg: &RateLimitConfig) -> serde_json::Value {
        let s = &self.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "mode": self.mode(),
            "redis_tls": self.tls,
            "redis_username": self.credentials.username,
            "rules": cfg.rules.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
            "on_redis_error": cfg.on_redis_error.as_str(),
            "allowed": n(&s.allowed),
            "limited": n(&s.limited),
            "limited_from_cache": n(&s.limited_from_cache),
            "shadow_denied": n(&s.shadow_denied),
            "near_limit": n(&s.near_limit),
            "redis_calls": n(&s.redis_calls),
            "redis_errors": n(&s.redis_errors),
            "fallback_decisions": n(&s.fallback_decisions),
            "top_keys": self.top_keys(cfg),
        })
    }

    /// Counts `event` for `key` (the full store key) under `rule`.
    fn note(&self, rule: &Rule, event: KeyEvent, key: &str) {
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

    /// Drops replenished local keys and expired denials.
    pub fn sweep(&self) {
        let now = now_us();
        self.local.sweep(now);
        self.denied.sweep(now);
    }
}

/// One rule as it applies to one request: the key it counts, and the limits for that key
/// (the rule's own, or its tier's).
struct Applied<'a> {
    rule: &'a Rule,
    key: String,
    limits: Limits,
}

/// A rule's position in the policy (rules are few; this runs only for judged requests).
fn rule_index(cfg: &RateLimitConfig, rule: &Rule) -> usize {
    cfg.rules
        .iter()
        .position(|r| std::ptr::eq(r, rule))
        .unwrap_or(usize::MAX)
}

fn headers_for(rule: &Rule, limits: &Limits, remaining: u64, reset_us: u64) -> RateHeaders {
    RateHeaders {
        policy: format!(
            "\"{}\";q={};w={}",
            rule.name,
            limits.gcra.capacity(),
            rule.period.as_secs().max(1)
        ),
        limit: format!(
            "\"{}\";r={};t={}",
            rule.name,
            remaining,
            Duration::from_micros(reset_us).as_secs_f64().ceil() as u64
        ),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
