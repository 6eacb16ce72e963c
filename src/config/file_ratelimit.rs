//! The serde mirror of `[ratelimit]` and its `[[ratelimit.rule]]` entries.

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// `[ratelimit]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// `redis://host:port[/db]`; absent = limits run in-process.
    pub redis_url: Option<Spanned<String>>,
    /// Seed nodes of a Redis Cluster (`["redis://a:6379", ...]`), instead of `redis_url`.
    #[serde(default)]
    pub redis_cluster_nodes: Vec<Spanned<String>>,
    /// PEM CA certificates that verify a `rediss://` server (default: the system's roots).
    pub redis_ca_file: Option<Spanned<String>>,
    /// The Redis ACL user (default: `default`).
    pub redis_username: Option<Spanned<String>>,
    /// Name of the environment variable holding the Redis password.
    pub redis_password_env: Option<Spanned<String>>,
    /// File holding the Redis password (a mounted Secret).
    pub redis_password_file: Option<Spanned<String>>,
    pub timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub on_redis_error: OnRedisErrorFile,
    pub replicas_hint: Option<Spanned<u64>>,
    pub key_prefix: Option<Spanned<String>>,
    pub failures_to_open: Option<Spanned<u64>>,
    /// Whether concurrent requests share Redis calls. Default true.
    pub batch_calls: Option<bool>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisErrorFile {
    #[default]
    Local,
    Allow,
    Deny,
}

/// `[[ratelimit.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: Spanned<String>,
    /// Route names; empty or absent = every route.
    #[serde(default)]
    pub routes: Vec<Spanned<String>>,
    /// `header:NAME`, `client_ip`, `route`, or several joined with `+`.
    pub key: Spanned<String>,
    /// Requests per period (integer or decimal).
    pub rate: Spanned<Number>,
    /// The period of `rate`, ms. Default 1000.
    pub period_ms: Option<Spanned<u64>>,
    /// Extra requests allowed at once beyond the steady rate. Default 0.
    pub burst: Option<Spanned<u64>>,
    #[serde(default)]
    pub mode: RuleModeFile,
    #[serde(default)]
    pub missing_key: MissingKeyFile,
    /// `[[ratelimit.rule.override]]`: keys with limits of their own.
    #[serde(default, rename = "override")]
    pub overrides: Vec<OverrideFile>,
}

/// `[[ratelimit.rule.override]]`: a plan's tier (`rate`, `burst`) or an allowlist
/// (`unlimited = true`) for the key values listed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideFile {
    /// Key values as the rule builds them (a tenant id, a client IP, `a+b` for two parts).
    pub keys: Spanned<Vec<Spanned<String>>>,
    /// Requests per the rule's `period_ms`.
    pub rate: Option<Spanned<Number>>,
    /// Default: the rule's `burst`.
    pub burst: Option<Spanned<u64>>,
    pub unlimited: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RuleModeFile {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum MissingKeyFile {
    #[default]
    Deny,
    Allow,
    Shared,
}

/// A TOML number, integer or float (`rate = 100` and `rate = 0.5` both read).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
        }
        d.deserialize_any(V)
    }
}
