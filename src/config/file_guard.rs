//! The serde mirror of the SLO guard's sections: `[guard]`, `[upstream.health]`,
//! `[upstream.probe]`, `[concurrency]` and `[shedding]`. Defaults are those of the
//! validated types (`HealthConfig::default()` and friends), applied in `policy.rs`.

use serde::Deserialize;
use toml::Spanned;

/// `[guard]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GuardFile {
    /// `enforce` (default), `shadow` or `off`.
    #[serde(default)]
    pub mode: GuardModeFile,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum GuardModeFile {
    #[default]
    Enforce,
    Shadow,
    Off,
}

/// `[upstream.health]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub stall_after_ms: Option<Spanned<u64>>,
    pub lag_eject_ms: Option<Spanned<u64>>,
    pub consecutive_failures: Option<Spanned<u64>>,
    pub base_ejection_ms: Option<Spanned<u64>>,
    pub max_ejection_ms: Option<Spanned<u64>>,
    pub slow_start_ms: Option<Spanned<u64>>,
    pub forgive_after_ms: Option<Spanned<u64>>,
    pub latency_decay_ms: Option<Spanned<u64>>,
    pub max_ejected_percent: Option<Spanned<u64>>,
}

/// `[upstream.probe]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub path: Option<Spanned<String>>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
}

fn yes() -> bool {
    true
}

impl Default for ProbeFile {
    fn default() -> Self {
        ProbeFile {
            enabled: true,
            path: None,
            interval_ms: None,
            timeout_ms: None,
        }
    }
}

/// `[concurrency]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyFile {
    /// `gradient` (default) or `aimd`.
    #[serde(default)]
    pub algorithm: AlgorithmFile,
    pub min_limit: Option<Spanned<u64>>,
    pub max_limit: Option<Spanned<u64>>,
    pub initial_limit: Option<Spanned<u64>>,
    pub tolerance: Option<Spanned<f64>>,
    pub smoothing: Option<Spanned<f64>>,
    pub window_ms: Option<Spanned<u64>>,
    pub aimd_backoff: Option<Spanned<f64>>,
    pub worker_budget_share: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmFile {
    #[default]
    Gradient,
    Aimd,
}

/// `[shedding]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SheddingFile {
    pub max_queue: Option<Spanned<u64>>,
    pub default_queue_ms: Option<Spanned<u64>>,
    pub target_queue_ms: Option<Spanned<u64>>,
    pub lifo_target_ms: Option<Spanned<u64>>,
    pub lifo_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub adaptive_lifo: bool,
}
