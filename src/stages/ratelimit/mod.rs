//! Per-tenant rate limits shared by every replica through Redis, with a local fallback.
//!
//! - [`rules`]: the validated rules and the key a request is counted under;
//! - [`gcra`]: the limiter math, and the in-process store used without Redis or while it is
//!   down (at `rate / replicas_hint`);
//! - [`redis`]: the same math in one Lua script, one round trip per request, concurrent
//!   requests sharing a call ([`batch`]);
//! - [`breaker`]: after a few Redis failures, stop asking until a health check says it is back;
//! - [`secret`]: the username, password and CA a managed Redis (TLS, ACL) needs, applied
//!   when the clients are built (`client`);
//! - `verdict`: what the stage says about a request (outcome, `RateLimit` headers);
//! - `upkeep`: the breaker's health check and the sweep of replenished keys.
//!
//! A key known to be over its limit is remembered until its retry time, so an abusive tenant
//! costs no Redis round trips. A request that got within 20% of a limit is counted as
//! "near limit"; the keys limited, near their limit and denied in shadow are counted per rule
//! in bounded memory ([`top`]) so `/status` names them.
//!
//! Why one file of ~450 lines: the request path through the limiter (`check`, the shared and
//! the local decisions, `judge`) is one flow over the limiter's fields and stays together;
//! what is not on that path lives beside it (the verdict in `verdict`, the upkeep in `upkeep`,
//! the `/status` tables in `top_keys`).

pub mod batch;
pub mod breaker;
mod client;
pub mod gcra;
pub mod redis;
pub mod rules;
pub mod secret;
pub mod top;
mod top_keys;
mod upkeep;
mod verdict;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use rules::{KeyPart, KeySource, MissingKey, OnRedisError, RateLimitConfig, Rule, RuleMode};
pub use secret::{Credentials, RedisAuth, SecretError};
pub use verdict::{RateHeaders, RateOutcome, RateVerdict};

use self::breaker::{Breaker, BreakerChange};
use self::gcra::{GcraDecision, LocalStore};
use self::redis::RedisStore;
use self::rules::{key_value, rule_key, Limits, RuleKey};
use self::top::TopKeys;
use self::top_keys::KeyEvent;
use self::verdict::headers_for;

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

/// Counters for the status page, `/metrics` and logs. Shared by the limiters a reload
/// swaps in (see [`RateLimiter::carrying_counts_from`]): Prometheus reads them as counters,
/// and a counter that fell back to 0 on a reload would read as a restart of the process.
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
    pub stats: Arc<RateStats>,
    /// The key the breaker's health check decides on (see [`RateLimiter::health_check`]).
    health_key: String,
    /// Per rule name: the keys it limited, found near their limit, and denied in shadow.
    top: Mutex<HashMap<Arc<str>, [TopKeys; 3]>>,
}

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
            Some(RedisTarget::Cluster(self::client::cluster_client(
                &cfg.redis_cluster_nodes,
                &credentials,
                cfg.timeout,
            )?))
        } else if let Some(url) = &cfg.redis_url {
            Some(RedisTarget::Single(self::client::single_client(
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
            stats: Arc::default(),
            health_key: format!("{}:breaker-check", cfg.key_prefix),
            top: Mutex::default(),
        })
    }

    /// This limiter, counting on from `old`'s counts (a reload that changed the Redis
    /// settings builds a new limiter; its counts are the process's, not the limiter's).
    pub fn carrying_counts_from(mut self, old: &RateLimiter) -> RateLimiter {
        self.stats = old.stats.clone();
        self
    }

    /// The credentials the Redis client was built with.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Whether Redis is reached over TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.tls
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

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
