//! Validation of `[ratelimit]` (a child of `policy.rs`, sharing its `Validator`).

use std::sync::Arc;
use std::time::Duration;

use super::Validator;
use crate::config::error::PolicyError;
use crate::config::file::{MissingKeyFile, OnRedisErrorFile, RateLimitFile, RuleModeFile};
use crate::stages::ratelimit::gcra::Gcra;
use crate::stages::ratelimit::{
    KeyPart, MissingKey, OnRedisError, RateLimitConfig, Rule, RuleMode,
};
use crate::stages::route::RouteTable;

impl Validator<'_> {
    pub(super) fn ratelimit(
        &self,
        r: &RateLimitFile,
        routes: &RouteTable,
    ) -> Result<RateLimitConfig, PolicyError> {
        let d = RateLimitConfig::default();
        let redis_url = match &r.redis_url {
            None => None,
            Some(u) => {
                if redis::Client::open(u.get_ref().as_str()).is_err() {
                    return Err(self.invalid(
                        u.span(),
                        "ratelimit.redis_url",
                        format!("`{}` is not a Redis URL (redis://host:port)", u.get_ref()),
                    ));
                }
                Some(u.get_ref().clone())
            }
        };
        let mut redis_cluster_nodes = Vec::new();
        for node in &r.redis_cluster_nodes {
            if redis::Client::open(node.get_ref().as_str()).is_err() {
                return Err(self.invalid(
                    node.span(),
                    "ratelimit.redis_cluster_nodes",
                    format!("`{}` is not a Redis URL", node.get_ref()),
                ));
            }
            redis_cluster_nodes.push(node.get_ref().clone());
        }
        if let (Some(u), false) = (&r.redis_url, redis_cluster_nodes.is_empty()) {
            return Err(self.invalid(
                u.span(),
                "ratelimit.redis_url",
                "give redis_url or redis_cluster_nodes, not both",
            ));
        }
        let replicas_hint = match &r.replicas_hint {
            None => 1,
            Some(v) => self.positive(v, "ratelimit.replicas_hint")?,
        };
        let key_prefix = match &r.key_prefix {
            None => d.key_prefix.clone(),
            Some(p) if !p.get_ref().is_empty() && !p.get_ref().contains(['{', '}', ' ']) => {
                p.get_ref().clone()
            }
            Some(p) => {
                return Err(self.invalid(
                    p.span(),
                    "ratelimit.key_prefix",
                    "must be non-empty, without spaces or braces",
                ))
            }
        };
        let mut rules: Vec<Rule> = Vec::with_capacity(r.rules.len());
        for (i, f) in r.rules.iter().enumerate() {
            let key = |k: &str| format!("ratelimit.rule[{i}].{k}");
            let name = f.name.get_ref().trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(self.invalid(
                    f.name.span(),
                    key("name"),
                    "must be non-empty and use only letters, digits, '_' and '-'",
                ));
            }
            if rules.iter().any(|x| &*x.name == name) {
                return Err(self.invalid(
                    f.name.span(),
                    key("name"),
                    format!("rule `{name}` is defined twice"),
                ));
            }
            let mut rule_routes = Vec::with_capacity(f.routes.len());
            for route in &f.routes {
                if !routes.contains(route.get_ref()) {
                    return Err(self.invalid(
                        route.span(),
                        key("routes"),
                        format!("no route is named `{}`", route.get_ref()),
                    ));
                }
                rule_routes.push(Arc::from(route.get_ref().as_str()));
            }
            let mut parts = Vec::new();
            for part in f.key.get_ref().split('+') {
                parts.push(
                    KeyPart::parse(part).map_err(|m| self.invalid(f.key.span(), key("key"), m))?,
                );
            }
            let rate = f.rate.get_ref().0;
            if !(rate.is_finite() && rate > 0.0) {
                return Err(self.invalid(
                    f.rate.span(),
                    key("rate"),
                    format!("must be a positive number, not {rate}"),
                ));
            }
            let period = match &f.period_ms {
                None => Duration::from_secs(1),
                Some(p) => self.millis(p, &key("period_ms"))?,
            };
            let burst = f.burst.as_ref().map_or(0, |b| *b.get_ref());
            if burst > 1_000_000 {
                let span = f.burst.as_ref().map(|b| b.span()).unwrap_or(0..0);
                return Err(self.invalid(span, key("burst"), "must be at most 1000000"));
            }
            let period_us = period.as_micros() as u64;
            if period_us as f64 / rate < 1.0 {
                return Err(self.invalid(
                    f.rate.span(),
                    key("rate"),
                    "is over one request per microsecond",
                ));
            }
            rules.push(Rule {
                name: Arc::from(name),
                routes: rule_routes,
                key: parts,
                rate,
                period,
                burst,
                mode: match f.mode {
                    RuleModeFile::Enforce => RuleMode::Enforce,
                    RuleModeFile::Shadow => RuleMode::Shadow,
                },
                missing_key: match f.missing_key {
                    MissingKeyFile::Deny => MissingKey::Deny,
                    MissingKeyFile::Allow => MissingKey::Allow,
                    MissingKeyFile::Shared => MissingKey::Shared,
                },
                gcra: Gcra::new(rate, period_us, burst),
                local_gcra: Gcra::new(rate / replicas_hint as f64, period_us, burst),
            });
        }
        Ok(RateLimitConfig {
            redis_url,
            redis_cluster_nodes,
            timeout: match &r.timeout_ms {
                None => d.timeout,
                Some(t) => self.millis(t, "ratelimit.timeout_ms")?,
            },
            on_redis_error: match r.on_redis_error {
                OnRedisErrorFile::Local => OnRedisError::Local,
                OnRedisErrorFile::Allow => OnRedisError::Allow,
                OnRedisErrorFile::Deny => OnRedisError::Deny,
            },
            replicas_hint: replicas_hint.min(u64::from(u32::MAX)) as u32,
            key_prefix,
            failures_to_open: match &r.failures_to_open {
                None => d.failures_to_open,
                Some(v) => self.positive(v, "ratelimit.failures_to_open")?.min(1000) as u32,
            },
            rules,
        })
    }
}
