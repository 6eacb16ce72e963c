//! Validation of the SLO guard's sections: `[guard]`, `[upstream.health]`,
//! `[upstream.probe]`, `[concurrency]` and `[shedding]` (a child of `policy.rs`, sharing its
//! `Validator`).

use super::Validator;
use crate::config::error::PolicyError;
use crate::config::file::{
    AlgorithmFile, ConcurrencyFile, GuardModeFile, HealthFile, ProbeFile, SheddingFile,
};
use crate::stages::admission::SheddingConfig;
use crate::workers::{Algorithm, GuardMode, HealthConfig, LimiterConfig, ProbeConfig};

impl Validator<'_> {
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
