//! Rate-limit rules as validated from `[ratelimit]`, and the key a request is counted under.
//! Pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use super::gcra::Gcra;
use super::secret::RedisAuth;

/// `[ratelimit]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// `None` (and no cluster nodes): limits run in-process only.
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster, instead of `redis_url`.
    pub redis_cluster_nodes: Vec<String>,
    /// Username, password source and CA file for Redis (TLS and ACLs of managed Redis).
    pub redis_auth: RedisAuth,
    /// Longest wait on Redis for one request. Default 5 ms.
    pub timeout: Duration,
    pub on_redis_error: OnRedisError,
    /// Replicas sharing the limit; the local fallback allows `rate / replicas_hint`.
    pub replicas_hint: u32,
    /// Prefix of every Redis key. Default `sloguard`.
    pub key_prefix: String,
    /// Consecutive failed Redis calls that open the breaker. Default 3.
    pub failures_to_open: u32,
    /// Requests asking Redis while a call is under way share the next call
    /// (see `ratelimit::batch`); off, each request is its own call. Default on.
    pub batch_calls: bool,
    pub rules: Vec<Rule>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            redis_url: None,
            redis_cluster_nodes: vec![],
            redis_auth: RedisAuth::default(),
            timeout: Duration::from_millis(5),
            on_redis_error: OnRedisError::Local,
            replicas_hint: 1,
            key_prefix: "sloguard".into(),
            failures_to_open: 3,
            batch_calls: true,
            rules: vec![],
        }
    }
}

/// What to do while Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Limit in-process at `rate / replicas_hint`.
    Local,
    /// Let everything through.
    Allow,
    /// Refuse rate-limited routes (503).
    Deny,
}

impl OnRedisError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Local => "local",
            OnRedisError::Allow => "allow",
            OnRedisError::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMode {
    Enforce,
    /// Decide and count, never block.
    Shadow,
}

/// A request without the key's value (e.g. the header is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKey {
    /// Refuse it (400 naming the missing part).
    Deny,
    /// Let it through unlimited.
    Allow,
    /// Count all such requests under one shared key.
    Shared,
}

/// One part of a rule's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Header(HeaderName),
    ClientIp,
    Route,
}

impl KeyPart {
    /// Parses `header:NAME`, `client_ip` or `route`.
    pub fn parse(text: &str) -> Result<KeyPart, String> {
        match text.trim() {
            "client_ip" => Ok(KeyPart::ClientIp),
            "route" => Ok(KeyPart::Route),
            t => match t.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(KeyPart::Header)
                    .map_err(|_| format!("`{name}` is not a header name")),
                None => Err(format!(
                    "`{t}` is not a key part (header:NAME, client_ip or route)"
                )),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            KeyPart::Header(h) => format!("header {h}"),
            KeyPart::ClientIp => "client ip".into(),
            KeyPart::Route => "route".into(),
        }
    }
}

/// One validated `[[ratelimit.rule]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: Arc<str>,
    /// Route names it applies to; empty = all routes.
    pub routes: Vec<Arc<str>>,
    pub key: Vec<KeyPart>,
    /// Requests per `period`.
    pub rate: f64,
    pub period: Duration,
    pub burst: u64,
    pub mode: RuleMode,
    pub missing_key: MissingKey,
    /// The shared limit.
    pub gcra: Gcra,
    /// The local fallback's share: `rate / replicas_hint`.
    pub local_gcra: Gcra,
    /// Keys with limits of their own, by key value (`[[ratelimit.rule.override]]`): a plan's
    /// tier, or an allowlist.
    pub overrides: HashMap<String, KeyOverride>,
}

/// What a key may do: the shared limit and the local fallback's share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub gcra: Gcra,
    pub local_gcra: Gcra,
}

/// A key's exception to its rule's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyOverride {
    /// Not counted at all (an internal batch job, a partner on a contract).
    Unlimited,
    /// Counted against these limits instead (a plan's tier).
    Limited {
        rate: f64,
        burst: u64,
        limits: Limits,
    },
}

impl Rule {
    pub fn applies_to(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| &**r == route)
    }

    /// [`Rule::limits_for`] the key [`rule_key`] built: the lookup (and the key's value)
    /// only for a rule with overrides, so the others cost nothing more per request.
    pub fn limits_for_key(&self, key: &str) -> Option<Limits> {
        if self.overrides.is_empty() {
            return Some(self.own_limits());
        }
        self.limits_for(key_value(key, &self.name))
    }

    /// The limits for key value `value` (a tenant, a client IP): its override's, the rule's
    /// own otherwise; `None` when the key is not limited.
    pub fn limits_for(&self, value: &str) -> Option<Limits> {
        match self.overrides.get(value) {
            Some(KeyOverride::Unlimited) => None,
            Some(KeyOverride::Limited { limits, .. }) => Some(*limits),
            None => Some(self.own_limits()),
        }
    }

    /// The rule's own limits, for keys without an override.
    fn own_limits(&self) -> Limits {
        Limits {
            gcra: self.gcra,
            local_gcra: self.local_gcra,
        }
    }
}

/// What a request is counted under, for one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKey {
    Key(String),
    /// Unlimited (missing key, `allow`).
    Exempt,
    /// Refused: this part of the key is missing.
    Missing(String),
}

/// The request facts keys are made of.
pub struct KeySource<'a> {
    pub route: &'a str,
    pub client_ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
}

/// The value part of a key built by [`rule_key`] for rule `rule` (`acme` of
/// `{sloguard:per-tenant:acme}`), for logs and `/status`; the whole key if it is not one.
pub fn key_value<'a>(key: &'a str, rule: &str) -> &'a str {
    let inner = key
        .strip_prefix('{')
        .and_then(|k| k.strip_suffix('}'))
        .unwrap_or(key);
    let marker = format!(":{rule}:");
    inner
        .find(&marker)
        .map_or(inner, |i| &inner[i + marker.len()..])
}

/// Builds the key of `rule` for a request: `{prefix:rule:part1+part2}`. The braces make the
/// whole key a Redis Cluster hash tag, so a key's state lives on one slot.
pub fn rule_key(prefix: &str, rule: &Rule, src: &KeySource<'_>) -> RuleKey {
    let mut key = format!("{{{prefix}:{}:", rule.name);
    for (i, part) in rule.key.iter().enumerate() {
        if i > 0 {
            key.push('+');
        }
        let value = match part {
            KeyPart::Header(h) => src
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty()),
            KeyPart::ClientIp => None,
            KeyPart::Route => Some(src.route),
        };
        match (part, value) {
            (KeyPart::ClientIp, _) => match src.client_ip {
                Some(ip) => key.push_str(&ip.to_string()),
                None => return missing(rule, part, &mut key),
            },
            // Bounded, and without braces (they would break the hash tag).
            (_, Some(v)) => key.extend(v.chars().filter(|c| *c != '{' && *c != '}').take(128)),
            (_, None) => {
                if let Some(k) = missing_or_shared(rule, part, &mut key) {
                    return k;
                }
            }
        }
    }
    key.push('}');
    RuleKey::Key(key)
}

fn missing(rule: &Rule, part: &KeyPart, key: &mut String) -> RuleKey {
    missing_or_shared(rule, part, key).unwrap_or_else(|| {
        key.push('}');
        RuleKey::Key(std::mem::take(key))
    })
}

fn missing_or_shared(rule: &Rule, part: &KeyPart, key: &mut String) -> Option<RuleKey> {
    match rule.missing_key {
        MissingKey::Deny => Some(RuleKey::Missing(part.describe())),
        MissingKey::Allow => Some(RuleKey::Exempt),
        MissingKey::Shared => {
            key.push_str("-missing-");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_of_a_key_is_what_follows_its_rule() {
        assert_eq!(
            key_value("{sloguard:per-tenant:acme}", "per-tenant"),
            "acme"
        );
        assert_eq!(
            key_value("{a:b:per-ip:10.0.0.1+ingest}", "per-ip"),
            "10.0.0.1+ingest"
        );
        assert_eq!(key_value("plain", "per-ip"), "plain");
    }

    fn rule(key: &str, missing_key: MissingKey) -> Rule {
        Rule {
            name: Arc::from("per-tenant"),
            routes: vec![Arc::from("ingest")],
            key: key.split('+').map(|p| KeyPart::parse(p).unwrap()).collect(),
            rate: 10.0,
            period: Duration::from_secs(1),
            burst: 0,
            mode: RuleMode::Enforce,
            missing_key,
            gcra: Gcra::new(10.0, 1_000_000, 0),
            local_gcra: Gcra::new(10.0, 1_000_000, 0),
            overrides: HashMap::new(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn keys_join_their_parts_inside_one_hash_tag() {
        let h = headers(&[("x-tenant", "acme")]);
        let src = KeySource {
            route: "ingest",
            client_ip: Some("10.0.0.7".parse().unwrap()),
            headers: &h,
        };
        let r = rule("header:x-tenant+client_ip+route", MissingKey::Deny);
        assert_eq!(
            rule_key("sg", &r, &src),
            RuleKey::Key("{sg:per-tenant:acme+10.0.0.7+ingest}".into())
        );
        assert!(r.applies_to("ingest") && !r.applies_to("query"));
    }

    #[test]
    fn a_missing_part_follows_missing_key() {
        let h = headers(&[]);
        let src = KeySource {
            route: "ingest",
            client_ip: None,
            headers: &h,
        };
        assert_eq!(
            rule_key("sg", &rule("header:x-tenant", MissingKey::Deny), &src),
            RuleKey::Missing("header x-tenant".into())
        );
        assert_eq!(
            rule_key("sg", &rule("header:x-tenant", MissingKey::Allow), &src),
            RuleKey::Exempt
        );
        assert_eq!(
            rule_key("sg", &rule("header:x-tenant", MissingKey::Shared), &src),
            RuleKey::Key("{sg:per-tenant:-missing-}".into())
        );
        assert_eq!(
            rule_key("sg", &rule("client_ip", MissingKey::Deny), &src),
            RuleKey::Missing("client ip".into())
        );
    }

    #[test]
    fn hostile_header_values_cannot_break_the_key() {
        let long = format!("a{{b}}{}", "x".repeat(1000));
        let h = headers(&[("x-tenant", &long)]);
        let src = KeySource {
            route: "ingest",
            client_ip: None,
            headers: &h,
        };
        match rule_key("sg", &rule("header:x-tenant", MissingKey::Deny), &src) {
            RuleKey::Key(k) => {
                assert_eq!(k.matches('{').count(), 1);
                assert!(k.len() < 200);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_parts_parse_or_say_why_not() {
        assert_eq!(KeyPart::parse("route"), Ok(KeyPart::Route));
        assert!(KeyPart::parse("header:").is_err());
        assert!(KeyPart::parse("cookie:x")
            .unwrap_err()
            .contains("not a key part"));
    }
}
