//! Optional numbers of any section, read with their key and position so an error names
//! both (a child of `policy.rs`, sharing its `Validator`).

use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::error::PolicyError;

impl Validator<'_> {
    /// A duration in milliseconds at `key`, or `default` when it is not set.
    pub(super) fn ms_or(
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
    pub(super) fn ms_at_most(
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

    /// A positive count at `key`, at most `max`, or `default` when it is not set.
    pub(super) fn count_or(
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

    /// A number at `key` within `range` (inclusive), or `default` when it is not set.
    pub(super) fn ratio_or(
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
}
