//! Validation of the SLO guard's sections (a child of `policy.rs`, sharing its `Validator`).

use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::admin::access_log::{AccessLogConfig, AccessMode};
use crate::config::error::PolicyError;
use crate::config::file::{AccessModeFile, LimitsFile, LogFile};
use crate::config::file::{
    AlgorithmFile, ConcurrencyFile, GuardModeFile, HealthFile, ProbeFile, RetryFile, SheddingFile,
};
use crate::stages::admission::SheddingConfig;
use crate::stages::connection::{
    ConnLimits, MAX_CONNECTIONS_PER_CLIENT_IP, MAX_HEADER_READ_TIMEOUT, MAX_KEEPALIVE_TIMEOUT,
};
use crate::stages::payload::HeadLimits;
use crate::stages::retry::RetryConfig;
use crate::workers::{Algorithm, GuardMode, HealthConfig, LimiterConfig, ProbeConfig};

impl Validator<'_> {
    fn ms_or(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, PolicyError> {
        match v {
            None => Ok(default),
            Some(v) => self.millis(v, key),
        }
    }

    /// Like `ms_or`, and at most `max` (named in words for the error).
    fn ms_at_most(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        default: Duration,
        (max, words): (Duration, &str),
    ) -> Result<Duration, PolicyError> {
        let d = self.ms_or(v, key, default)?;
        if d > max {
            let span = v.as_ref().map_or(0..0, |v| v.span());
            return Err(self.invalid(
                span,
                key,
                format!("must be at most {} ({words})", max.as_millis()),
            ));
        }
        Ok(d)
    }

    fn count_or(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        default: u64,
        max: u64,
    ) -> Result<u64, PolicyError> {
        match v {
            None => Ok(default),
            Some(v) => {
                let n = self.positive(v, key)?;
                if n > max {
                    return Err(self.invalid(v.span(), key, format!("must be at most {max}")));
                }
                Ok(n)
            }
        }
    }

    fn ratio_or(
        &self,
        v: &Option<Spanned<f64>>,
        key: &str,
        default: f64,
        range: (f64, f64),
    ) -> Result<f64, PolicyError> {
        match v {
            None => Ok(default),
            Some(v) if (range.0..=range.1).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(
                v.span(),
                key,
                format!("must be between {} and {}", range.0, range.1),
            )),
        }
    }

    pub(super) fn guard_mode(&self, m: GuardModeFile) -> GuardMode {
        match m {
            GuardModeFile::Enforce => GuardMode::Enforce,
            GuardModeFile::Shadow => GuardMode::Shadow,
            GuardModeFile::Off => GuardMode::Off,
        }
    }

    pub(super) fn health(&self, h: &HealthFile) -> Result<(HealthConfig, u8), PolicyError> {
        let d = HealthConfig::default();
        let k = |s: &str| format!("upstream.health.{s}");
        let cfg = HealthConfig {
            stall_after: self.ms_or(&h.stall_after_ms, &k("stall_after_ms"), d.stall_after)?,
            lag_eject: self.ms_or(&h.lag_eject_ms, &k("lag_eject_ms"), d.lag_eject)?,
            consecutive_failures: self.count_or(
                &h.consecutive_failures,
                &k("consecutive_failures"),
                5,
                1000,
            )? as u32,
            base_ejection: self.ms_or(
                &h.base_ejection_ms,
                &k("base_ejection_ms"),
                d.base_ejection,
            )?,
            max_ejection: self.ms_or(&h.max_ejection_ms, &k("max_ejection_ms"), d.max_ejection)?,
            slow_start: self.ms_or(&h.slow_start_ms, &k("slow_start_ms"), d.slow_start)?,
            forgive_after: self.ms_or(
                &h.forgive_after_ms,
                &k("forgive_after_ms"),
                d.forgive_after,
            )?,
            latency_decay: self.ms_or(
                &h.latency_decay_ms,
                &k("latency_decay_ms"),
                d.latency_decay,
            )?,
        };
        if cfg.max_ejection < cfg.base_ejection {
            let span = h.max_ejection_ms.as_ref().map(|s| s.span()).unwrap_or(0..0);
            return Err(self.invalid(
                span,
                k("max_ejection_ms"),
                "must be at least base_ejection_ms",
            ));
        }
        let pct = match &h.max_ejected_percent {
            None => 50,
            Some(v) if *v.get_ref() <= 100 => *v.get_ref() as u8,
            Some(v) => {
                return Err(self.invalid(
                    v.span(),
                    k("max_ejected_percent"),
                    "must be between 0 and 100",
                ))
            }
        };
        Ok((cfg, pct))
    }

    pub(super) fn probe(&self, p: &ProbeFile) -> Result<Option<ProbeConfig>, PolicyError> {
        if !p.enabled {
            return Ok(None);
        }
        let d = ProbeConfig::default();
        let path = match &p.path {
            None => d.path,
            Some(s)
                if s.get_ref().starts_with('/') && !s.get_ref().contains(char::is_whitespace) =>
            {
                s.get_ref().clone()
            }
            Some(s) => {
                return Err(self.invalid(
                    s.span(),
                    "upstream.probe.path",
                    "must start with '/' and contain no spaces",
                ))
            }
        };
        Ok(Some(ProbeConfig {
            path,
            interval: self.ms_or(&p.interval_ms, "upstream.probe.interval_ms", d.interval)?,
            timeout: self.ms_or(&p.timeout_ms, "upstream.probe.timeout_ms", d.timeout)?,
        }))
    }

    pub(super) fn concurrency(&self, c: &ConcurrencyFile) -> Result<LimiterConfig, PolicyError> {
        let d = LimiterConfig::default();
        let k = |s: &str| format!("concurrency.{s}");
        let min = self.count_or(
            &c.min_limit,
            &k("min_limit"),
            u64::from(d.min_limit),
            10_000,
        )? as u32;
        let max = self.count_or(
            &c.max_limit,
            &k("max_limit"),
            u64::from(d.max_limit),
            10_000,
        )? as u32;
        if max < min {
            let span = c
                .max_limit
                .as_ref()
                .or(c.min_limit.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            return Err(self.invalid(span, k("max_limit"), "must be at least min_limit"));
        }
        let initial = self.count_or(
            &c.initial_limit,
            &k("initial_limit"),
            u64::from(d.initial_limit.clamp(min, max)),
            10_000,
        )? as u32;
        if !(min..=max).contains(&initial) {
            let span = c.initial_limit.as_ref().map(|s| s.span()).unwrap_or(0..0);
            return Err(self.invalid(
                span,
                k("initial_limit"),
                "must be between min_limit and max_limit",
            ));
        }
        let algorithm = match c.algorithm {
            AlgorithmFile::Gradient => Algorithm::Gradient,
            AlgorithmFile::Aimd => Algorithm::Aimd {
                backoff: self.ratio_or(&c.aimd_backoff, &k("aimd_backoff"), 0.9, (0.1, 0.99))?,
            },
        };
        Ok(LimiterConfig {
            algorithm,
            min_limit: min,
            max_limit: max,
            initial_limit: initial,
            tolerance: self.ratio_or(&c.tolerance, &k("tolerance"), d.tolerance, (1.0, 10.0))?,
            smoothing: self.ratio_or(&c.smoothing, &k("smoothing"), d.smoothing, (0.01, 1.0))?,
            window: self.ms_or(&c.window_ms, &k("window_ms"), d.window)?,
            worker_budget_share: self.ratio_or(
                &c.worker_budget_share,
                &k("worker_budget_share"),
                d.worker_budget_share,
                (0.05, 0.95),
            )?,
            ..d
        })
    }

    pub(super) fn access_log(&self, l: &LogFile) -> Result<AccessLogConfig, PolicyError> {
        let d = AccessLogConfig::default();
        Ok(AccessLogConfig {
            mode: match l.access {
                AccessModeFile::Off => AccessMode::Off,
                AccessModeFile::Sampled => AccessMode::Sampled,
                AccessModeFile::All => AccessMode::All,
            },
            sample: self.ratio_or(&l.sample, "log.sample", d.sample, (0.0, 1.0))?,
            refusals_per_second: self.count_or(
                &l.refusals_per_second,
                "log.refusals_per_second",
                d.refusals_per_second,
                1_000_000,
            )?,
        })
    }

    pub(super) fn limits(&self, l: &LimitsFile) -> Result<HeadLimits, PolicyError> {
        let d = HeadLimits::default();
        Ok(HeadLimits {
            max_url_bytes: self.count_or(
                &l.max_url_bytes,
                "limits.max_url_bytes",
                d.max_url_bytes as u64,
                1 << 20,
            )? as usize,
            max_header_bytes: self.count_or(
                &l.max_header_bytes,
                "limits.max_header_bytes",
                d.max_header_bytes as u64,
                1 << 20,
            )? as usize,
            body_read_timeout: self.ms_or(
                &l.body_read_timeout_ms,
                "limits.body_read_timeout_ms",
                d.body_read_timeout,
            )?,
        })
    }

    pub(super) fn conn_limits(&self, l: &LimitsFile) -> Result<ConnLimits, PolicyError> {
        let d = ConnLimits::default();
        let header_read_timeout = self.ms_at_most(
            &l.header_read_timeout_ms,
            "limits.header_read_timeout_ms",
            d.header_read_timeout,
            (MAX_HEADER_READ_TIMEOUT, "10 minutes"),
        )?;
        // 0 is allowed here: it turns the cap off.
        let max_connections_per_client_ip = match &l.max_connections_per_client_ip {
            None => d.max_connections_per_client_ip,
            Some(v) if *v.get_ref() > u64::from(MAX_CONNECTIONS_PER_CLIENT_IP) => {
                return Err(self.invalid(
                    v.span(),
                    "limits.max_connections_per_client_ip",
                    format!("must be at most {MAX_CONNECTIONS_PER_CLIENT_IP} (0 = no cap)"),
                ))
            }
            Some(v) => *v.get_ref() as u32,
        };
        let keepalive_timeout = self.ms_at_most(
            &l.keepalive_timeout_ms,
            "limits.keepalive_timeout_ms",
            d.keepalive_timeout,
            (MAX_KEEPALIVE_TIMEOUT, "1 hour"),
        )?;
        Ok(ConnLimits {
            header_read_timeout,
            max_connections_per_client_ip,
            keepalive_timeout,
        })
    }

    pub(super) fn retry(&self, r: &RetryFile) -> Result<RetryConfig, PolicyError> {
        let d = RetryConfig::default();
        Ok(RetryConfig {
            budget_percent: self.ratio_or(
                &r.budget_percent,
                "retry.budget_percent",
                d.budget_percent,
                (0.0, 100.0),
            )?,
            min_per_second: self.ratio_or(
                &r.min_per_second,
                "retry.min_per_second",
                d.min_per_second,
                (0.0, 10_000.0),
            )?,
        })
    }

    pub(super) fn shedding(&self, s: &SheddingFile) -> Result<SheddingConfig, PolicyError> {
        let d = SheddingConfig::default();
        let k = |x: &str| format!("shedding.{x}");
        let target_queue_delay = self.ms_or(
            &s.target_queue_ms,
            &k("target_queue_ms"),
            d.target_queue_delay,
        )?;
        Ok(SheddingConfig {
            target_queue_delay,
            adaptive_lifo: s.adaptive_lifo,
            max_queue: self.count_or(
                &s.max_queue,
                &k("max_queue"),
                d.max_queue as u64,
                1_000_000,
            )? as usize,
            default_queue_budget: self.ms_or(
                &s.default_queue_ms,
                &k("default_queue_ms"),
                d.default_queue_budget,
            )?,
            lifo_target: self.ms_or(&s.lifo_target_ms, &k("lifo_target_ms"), d.lifo_target)?,
            lifo_interval: self.ms_or(
                &s.lifo_interval_ms,
                &k("lifo_interval_ms"),
                d.lifo_interval,
            )?,
        })
    }
}
