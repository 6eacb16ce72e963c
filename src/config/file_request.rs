//! The serde mirror of the sections about each request and connection outside the guard:
//! `[limits]`, `[retry]` and `[log]`. Defaults are those of the validated types, applied in
//! `policy_request.rs`.

use serde::Deserialize;
use toml::Spanned;

/// `[log]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `off`, `sampled` (default) or `all`.
    #[serde(default)]
    pub access: AccessModeFile,
    pub sample: Option<Spanned<f64>>,
    pub refusals_per_second: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum AccessModeFile {
    Off,
    #[default]
    Sampled,
    All,
}

/// `[limits]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_url_bytes: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub body_read_timeout_ms: Option<Spanned<u64>>,
    /// Total time to read a request head, from its first byte. Default 10 000.
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    /// Open connections allowed per client IP; 0 (the default) = no cap.
    pub max_connections_per_client_ip: Option<Spanned<u64>>,
    /// Idle time allowed between two requests of a keep-alive connection. Default 60 000.
    pub keepalive_timeout_ms: Option<Spanned<u64>>,
}

/// `[retry]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    pub budget_percent: Option<Spanned<f64>>,
    pub min_per_second: Option<Spanned<f64>>,
}
