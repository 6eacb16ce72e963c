//! Validation of the routes: `[[route]]` with its match, priority, SLO, body caps and JSON
//! limits (a child of `policy.rs`, sharing its `Validator`). The types are `stages::route`'s.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::error::PolicyError;
use crate::config::file::{self, PriorityFile, RouteFile};
use crate::stages::json_scan::JsonLimits;
use crate::stages::route::{Priority, Route, RouteMatch, RouteTable, Slo};

impl Validator<'_> {
    pub(super) fn routes(&self, raw: &[RouteFile]) -> Result<RouteTable, PolicyError> {
        let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
        let mut default = None;
        for (i, r) in raw.iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            let name = r.name.get_ref().trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(self.invalid(
                    r.name.span(),
                    key("name"),
                    "must be non-empty and use only letters, digits, '_' and '-'",
                ));
            }
            if routes.iter().any(|x| &*x.name == name) || (name == "default" && default.is_some()) {
                return Err(self.invalid(
                    r.name.span(),
                    key("name"),
                    format!("route `{name}` is defined twice"),
                ));
            }
            let matcher = match (&r.matcher, name == "default") {
                (Some(m), true) => {
                    return Err(self.invalid(
                        m.span(),
                        key("match"),
                        "the `default` route takes every unmatched request; it has no match",
                    ))
                }
                (None, true) => None,
                (None, false) => {
                    return Err(self.invalid(
                        r.name.span(),
                        key("match"),
                        "is required (only the route named `default` has none)",
                    ))
                }
                (Some(m), false) => Some(self.matcher(m, &key("match"))?),
            };
            let slo = match &r.slo {
                None => None,
                Some(s) => Some(self.slo(s, &key("slo"))?),
            };
            let max_body_bytes = match &r.max_body_bytes {
                None => None,
                Some(b) => Some(self.positive(b, &key("max_body_bytes"))?),
            };
            let queue_budget = match &r.queue_budget_ms {
                None => None,
                Some(b) => Some(self.millis(b, &key("queue_budget_ms"))?),
            };
            let route = Route {
                name: Arc::from(name),
                matcher: matcher.unwrap_or_default(),
                slo,
                priority: priority(r.priority),
                max_body_bytes,
                queue_budget,
                per_try_timeout: match &r.per_try_timeout_ms {
                    None => None,
                    Some(t) => Some(self.millis(t, &key("per_try_timeout_ms"))?),
                },
                hedge_after: match &r.hedge_after_ms {
                    None => None,
                    Some(t) => Some(self.millis(t, &key("hedge_after_ms"))?),
                },
                retry_idempotent: r.retry_idempotent,
                json: match &r.json {
                    None => None,
                    Some(j) => Some(self.json_limits(j, &key("json"))?),
                },
            };
            if route.name.as_ref() == "default" {
                default = Some(route);
            } else {
                routes.push(route);
            }
        }
        Ok(RouteTable::new(
            routes,
            default.unwrap_or_else(Route::implicit_default),
        ))
    }

    fn matcher(&self, m: &Spanned<file::MatchFile>, key: &str) -> Result<RouteMatch, PolicyError> {
        let inner = m.get_ref();
        let method = match &inner.method {
            None => None,
            Some(s) => Some(
                http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    self.invalid(
                        m.span(),
                        format!("{key}.method"),
                        format!("`{s}` is not an HTTP method"),
                    )
                })?,
            ),
        };
        for (k, p) in [("path_prefix", &inner.path_prefix), ("path", &inner.path)] {
            if let Some(p) = p {
                if !p.starts_with('/') {
                    return Err(self.invalid(
                        m.span(),
                        format!("{key}.{k}"),
                        format!("`{p}` must start with '/'"),
                    ));
                }
            }
        }
        if inner.path_prefix.is_some() && inner.path.is_some() {
            return Err(self.invalid(m.span(), key, "give `path` or `path_prefix`, not both"));
        }
        if method.is_none() && inner.path_prefix.is_none() && inner.path.is_none() {
            return Err(self.invalid(m.span(), key, "matches nothing specific; name a method, path or path_prefix (or use the `default` route)"));
        }
        Ok(RouteMatch {
            method,
            path_prefix: inner.path_prefix.clone(),
            path: inner.path.clone(),
        })
    }

    fn json_limits(
        &self,
        j: &Spanned<file::JsonFile>,
        key: &str,
    ) -> Result<JsonLimits, PolicyError> {
        let inner = j.get_ref();
        let check = |v: Option<u64>, k: &str| match v {
            None => Ok(None),
            Some(0) => Err(self.invalid(j.span(), format!("{key}.{k}"), "must be greater than 0")),
            Some(n) if n > u64::from(u32::MAX) => {
                Err(self.invalid(j.span(), format!("{key}.{k}"), "is too large"))
            }
            Some(n) => Ok(Some(n as u32)),
        };
        let limits = JsonLimits {
            max_depth: check(inner.max_depth, "max_depth")?,
            max_keys: check(inner.max_keys, "max_keys")?,
            max_array_len: check(inner.max_array_len, "max_array_len")?,
            max_string_bytes: check(inner.max_string_bytes, "max_string_bytes")?,
        };
        if limits
            .max_depth
            .is_some_and(|d| d > crate::stages::json_scan::DEPTH_CAP)
        {
            return Err(self.invalid(
                j.span(),
                format!("{key}.max_depth"),
                format!("must be at most {}", crate::stages::json_scan::DEPTH_CAP),
            ));
        }
        Ok(limits)
    }

    fn slo(&self, s: &Spanned<file::SloFile>, key: &str) -> Result<Slo, PolicyError> {
        let inner = s.get_ref();
        let check = |v: Option<u64>, k: &str| match v {
            Some(0) => Err(self.invalid(s.span(), format!("{key}.{k}"), "must be greater than 0")),
            Some(n) if n > 600_000 => Err(self.invalid(
                s.span(),
                format!("{key}.{k}"),
                "must be at most 600000 (10 minutes)",
            )),
            v => Ok(v.map(Duration::from_millis)),
        };
        let p95 = check(inner.p95_ms, "p95_ms")?;
        let p99 = check(inner.p99_ms, "p99_ms")?;
        match (p95, p99) {
            (None, None) => Err(self.invalid(s.span(), key, "give p95_ms, p99_ms or both")),
            (Some(a), Some(b)) if a > b => {
                Err(self.invalid(s.span(), format!("{key}.p99_ms"), "must be at least p95_ms"))
            }
            (p95, p99) => Ok(Slo { p95, p99 }),
        }
    }
}

fn priority(p: PriorityFile) -> Priority {
    match p {
        PriorityFile::Critical => Priority::Critical,
        PriorityFile::Normal => Priority::Normal,
        PriorityFile::Sheddable => Priority::Sheddable,
    }
}
