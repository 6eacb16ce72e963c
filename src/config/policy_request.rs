//! Validation of the sections about each request and connection outside the guard:
//! `[limits]` (heads, bodies, connections), `[retry]` and `[log]` (a child of `policy.rs`,
//! sharing its `Validator`).

use super::Validator;
use crate::config::error::PolicyError;
use crate::config::file::{AccessModeFile, LimitsFile, LogFile, RetryFile};
use crate::stages::connection::{
    ConnLimits, MAX_CONNECTIONS_PER_CLIENT_IP, MAX_HEADER_READ_TIMEOUT, MAX_KEEPALIVE_TIMEOUT,
};
use crate::stages::payload::HeadLimits;
use crate::stages::retry::RetryConfig;
use crate::telemetry::access_log::{AccessLogConfig, AccessMode};

impl Validator<'_> {
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
}
