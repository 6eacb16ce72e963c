//! Validation of `[ratelimit]` (a child of `policy.rs`, sharing its `Validator`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Validator;
use crate::config::error::PolicyError;
use crate::config::file::{
    MissingKeyFile, OnRedisErrorFile, RateLimitFile, RuleFile, RuleModeFile,
};
use crate::stages::ratelimit::gcra::Gcra;
use crate::stages::ratelimit::rules::{KeyOverride, Limits};
use crate::stages::ratelimit::secret::{redact_url, PasswordSource, RedisAuth};
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
                        format!(
                            "`{}` is not a Redis URL (redis://host:port or rediss://host:port)",
                            redact_url(u.get_ref())
                        ),
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
                    format!("`{}` is not a Redis URL", redact_url(node.get_ref())),
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
        let redis_auth =
            self.redis_auth(r, redis_url.is_some() || !redis_cluster_nodes.is_empty())?;
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
            let overrides = self.overrides(f, &key, period_us, burst, replicas_hint)?;
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
                overrides,
            });
        }
        Ok(RateLimitConfig {
            redis_url,
            redis_cluster_nodes,
            redis_auth,
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
            batch_calls: r.batch_calls.unwrap_or(d.batch_calls),
            rules,
        })
    }
}

impl Validator<'_> {
    /// A rule's `[[ratelimit.rule.override]]` entries, by key value. `key` names the rule's
    /// keys in errors (`ratelimit.rule[0].`...).
    fn overrides(
        &self,
        f: &RuleFile,
        key: &dyn Fn(&str) -> String,
        period_us: u64,
        rule_burst: u64,
        replicas_hint: u64,
    ) -> Result<HashMap<String, KeyOverride>, PolicyError> {
        let mut out = HashMap::new();
        for (j, o) in f.overrides.iter().enumerate() {
            let k = |name: &str| key(&format!("override[{j}].{name}"));
            if o.keys.get_ref().is_empty() {
                return Err(self.invalid(o.keys.span(), k("keys"), "must list at least one key"));
            }
            let unlimited = o.unlimited.as_ref().is_some_and(|u| *u.get_ref());
            let limit = match (&o.rate, unlimited) {
                (Some(r), true) => {
                    return Err(self.invalid(
                        r.span(),
                        k("rate"),
                        "give `rate` or `unlimited = true`, not both",
                    ))
                }
                (None, false) => {
                    return Err(self.invalid(
                        o.keys.span(),
                        k("rate"),
                        "an override needs `rate` (a tier) or `unlimited = true` (an allowlist)",
                    ))
                }
                (None, true) => KeyOverride::Unlimited,
                (Some(r), false) => {
                    let rate = r.get_ref().0;
                    if !(rate.is_finite() && rate > 0.0) || period_us as f64 / rate < 1.0 {
                        return Err(self.invalid(
                            r.span(),
                            k("rate"),
                            format!("must be a positive number of at most one request per microsecond, not {rate}"),
                        ));
                    }
                    let burst = o.burst.as_ref().map_or(rule_burst, |b| *b.get_ref());
                    if burst > 1_000_000 {
                        let span = o.burst.as_ref().map(|b| b.span()).unwrap_or(0..0);
                        return Err(self.invalid(span, k("burst"), "must be at most 1000000"));
                    }
                    KeyOverride::Limited {
                        rate,
                        burst,
                        limits: Limits {
                            gcra: Gcra::new(rate, period_us, burst),
                            local_gcra: Gcra::new(rate / replicas_hint as f64, period_us, burst),
                        },
                    }
                }
            };
            for value in o.keys.get_ref() {
                let v = value.get_ref().trim();
                if v.is_empty() || v.contains(['{', '}']) {
                    return Err(self.invalid(
                        value.span(),
                        k("keys"),
                        "a key must be non-empty, without braces",
                    ));
                }
                if out.insert(v.to_string(), limit).is_some() {
                    return Err(self.invalid(
                        value.span(),
                        k("keys"),
                        format!("key `{v}` has two overrides in this rule"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `redis_username`, `redis_password_env` / `redis_password_file` and `redis_ca_file`:
    /// checked for shape here; read when the policy is put to use (see
    /// `stages::ratelimit::secret`). Relative paths are from the policy file's directory.
    fn redis_auth(&self, r: &RateLimitFile, has_redis: bool) -> Result<RedisAuth, PolicyError> {
        let keys = [
            ("ratelimit.redis_ca_file", &r.redis_ca_file),
            ("ratelimit.redis_username", &r.redis_username),
            ("ratelimit.redis_password_env", &r.redis_password_env),
            ("ratelimit.redis_password_file", &r.redis_password_file),
        ];
        for (key, value) in keys {
            let Some(v) = value else { continue };
            if v.get_ref().trim().is_empty() {
                return Err(self.invalid(v.span(), key, "must not be empty"));
            }
            if !has_redis {
                return Err(self.invalid(v.span(), key, "needs redis_url or redis_cluster_nodes"));
            }
        }
        let urls: Vec<&str> = r
            .redis_url
            .iter()
            .chain(&r.redis_cluster_nodes)
            .map(|u| u.get_ref().as_str())
            .collect();
        if let Some(ca) = &r.redis_ca_file {
            if !urls.iter().all(|u| u.starts_with("rediss://")) {
                return Err(self.invalid(
                    ca.span(),
                    "ratelimit.redis_ca_file",
                    "verifies a TLS server: the Redis URLs must be rediss://",
                ));
            }
        }
        let password = match (&r.redis_password_env, &r.redis_password_file) {
            (Some(_), Some(f)) => {
                return Err(self.invalid(
                    f.span(),
                    "ratelimit.redis_password_file",
                    "give redis_password_env or redis_password_file, not both",
                ))
            }
            (Some(e), None) => {
                let name = e.get_ref().trim();
                let valid = name.chars().next().is_some_and(|c| !c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(self.invalid(
                        e.span(),
                        "ratelimit.redis_password_env",
                        format!("`{name}` is not an environment variable name"),
                    ));
                }
                Some((e.span(), PasswordSource::Env(name.to_string())))
            }
            (None, Some(f)) => Some((f.span(), PasswordSource::File(self.relative(f.get_ref())))),
            (None, None) => None,
        };
        if let Some((span, _)) = &password {
            let in_url = urls.iter().any(|u| {
                redis::IntoConnectionInfo::into_connection_info(*u)
                    .is_ok_and(|i| i.redis_settings().password().is_some())
            });
            if in_url {
                return Err(self.invalid(
                    span.clone(),
                    "ratelimit.redis_url",
                    "has a password too: give it in one place (the URL sits in a ConfigMap; prefer the env or file)",
                ));
            }
        }
        Ok(RedisAuth {
            username: r
                .redis_username
                .as_ref()
                .map(|u| u.get_ref().trim().to_string()),
            password: password.map(|(_, p)| p),
            ca_file: r.redis_ca_file.as_ref().map(|c| self.relative(c.get_ref())),
        })
    }

    /// `path` as given if absolute, else from the policy file's directory.
    fn relative(&self, path: &str) -> std::path::PathBuf {
        let p = std::path::Path::new(path.trim());
        match self.file.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }
}
