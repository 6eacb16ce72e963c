//! The admin listener: liveness and a JSON status snapshot for on-call and for tests.
//!
//! Served by its own Pingora service on its own port, so a saturated proxy listener never
//! hides the health and status endpoints.

// I/O edge: the admin server stamps what it serves with the clock.
#![allow(clippy::disallowed_methods)]

pub mod access_log;
pub mod metrics;
pub mod process;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::state::State;

/// The on-call status page: one self-contained file built into the binary (no CDN, no build
/// step); it polls `/status` and `/metrics` every second.
pub const STATUS_PAGE: &str = include_str!("status.html");

pub struct AdminApp {
    state: Arc<State>,
}

impl AdminApp {
    pub fn new(state: Arc<State>) -> AdminApp {
        AdminApp { state }
    }

    /// The answer for a method, path and query (`POST /reload` reloads the policy file,
    /// `POST /logging?filter=...` replaces the log filter).
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        match (method.as_str(), path) {
            ("GET" | "HEAD", "/logging") => (
                StatusCode::OK,
                json!({"filter": crate::logging::current_filter()}),
            ),
            ("POST", "/logging") => Self::set_log_filter(query),
            ("GET" | "HEAD", "/healthz") => (StatusCode::OK, json!({"status": "ok"})),
            ("GET" | "HEAD", "/readyz") => self.readiness(),
            ("GET" | "HEAD", "/status") => (StatusCode::OK, self.status()),
            ("POST", "/reload") => {
                let path = self.state.policy().source.clone();
                match crate::reload::reload(&self.state, &path, "admin") {
                    Ok(a) => (
                        StatusCode::OK,
                        json!({"result": if a.unchanged { "unchanged" } else { "reloaded" }, "version": a.version, "notes": a.notes}),
                    ),
                    Err(e) => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"result": "refused", "error": e.to_string(), "file": e.file().display().to_string(), "line": e.line(), "key": e.key(), "running_version": self.state.policy().version}),
                    ),
                }
            }
            (_, "/healthz" | "/readyz" | "/status" | "/reload" | "/logging") => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": format!("{method} is not allowed on {path}")}),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                json!({"error": format!("no admin endpoint at {path}")}),
            ),
        }
    }

    /// `POST /logging?filter=DIRECTIVES` (or `level=`, Envoy's name): the new filter in
    /// `RUST_LOG` syntax, e.g. `sloguard=debug,info`. A bad filter is a 400 naming it, and
    /// the filter in force stays.
    fn set_log_filter(query: Option<&str>) -> (StatusCode, serde_json::Value) {
        let wanted = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "filter" || k == "level")
                .map(|(_, v)| v.into_owned())
        });
        let Some(directives) = wanted else {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "give the new filter as ?filter=DIRECTIVES (RUST_LOG syntax, e.g. sloguard=debug,info)", "filter": crate::logging::current_filter()}),
            );
        };
        match crate::logging::set_filter(&directives) {
            Ok(previous) => {
                tracing::warn!(filter = %directives, previous = %previous, "log filter changed from the admin port");
                (
                    StatusCode::OK,
                    json!({"filter": directives, "previous": previous}),
                )
            }
            Err(e @ crate::logging::FilterError::Invalid { .. }) => (
                StatusCode::BAD_REQUEST,
                json!({"error": e.to_string(), "filter": crate::logging::current_filter()}),
            ),
            Err(e) => (StatusCode::CONFLICT, json!({"error": e.to_string()})),
        }
    }

    /// Ready when a policy is loaded (always, once serving) and at least one worker is not
    /// ejected: a pod whose every worker is stalled should leave the Service's endpoints.
    pub fn readiness(&self) -> (StatusCode, serde_json::Value) {
        if self.state.draining() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"ready": false, "reason": "draining (SIGTERM)"}),
            );
        }
        let workers = self.state.workers();
        let serving = workers.len() - workers.ejected();
        if serving > 0 {
            (
                StatusCode::OK,
                json!({"ready": true, "workers_serving": serving}),
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"ready": false, "reason": "every worker is ejected"}),
            )
        }
    }

    /// A snapshot of the policy and the workers.
    pub fn status(&self) -> serde_json::Value {
        let policy = self.state.policy();
        let workers: Vec<_> = self
            .state
            .workers()
            .iter()
            .map(|w| {
                let health = w.health();
                let limiter = w.limiter();
                let now = std::time::Instant::now();
                json!({
                    "id": w.id,
                    "addr": w.addr.to_string(),
                    "state": w.state().as_str(),
                    "reason": health.last_reason().map(|r| r.to_string()),
                    "ejected_for_ms": health.ejected_until().map(|t| t.saturating_duration_since(now).as_millis() as u64),
                    "ejections": health.ejections,
                    "in_flight": w.in_flight(),
                    "limit": w.limit(),
                    "work_ms": ms(w.work()),
                    "latency_ms": ms(health.latency()),
                    "baseline_ms": limiter.baseline().map(ms),
                    "loop_lag_ms": health.last_lag().map(ms),
                    "probe_ms": match health.last_probe() {
                        Some(Ok(d)) => json!(ms(d)),
                        Some(Err(())) => json!("failed"),
                        None => json!(null),
                    },
                    "requests": w.requests(),
                    "successes": w.successes(),
                    "failures": w.failures(),
                    "connect_failures": w.connect_failures(),
                })
            })
            .collect();
        let costs = self.state.route_costs();
        let routes: Vec<_> = policy
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                json!({
                    "cost_ms": costs.get_named(i, &r.name).map(ms),
                    "name": &*r.name,
                    "priority": r.priority.as_str(),
                    "slo_p95_ms": r.slo.and_then(|s| s.p95).map(|d| d.as_millis() as u64),
                    "slo_p99_ms": r.slo.and_then(|s| s.p99).map(|d| d.as_millis() as u64),
                    "max_body_bytes": r.max_body_bytes,
                })
            })
            .collect();
        let admission = &self.state.admission;
        json!({
            "policy": {"file": policy.source.display().to_string(), "version": policy.version},
            "last_reload": self.state.last_reload.lock().ok().and_then(|r| r.clone()).map(|r| json!({
                "at_unix_s": r.at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "trigger": r.trigger,
                "ok": r.result.is_ok(),
                "version": r.result.as_ref().ok().map(|a| a.version.clone()),
                "notes": r.result.as_ref().ok().map(|a| a.notes.clone()),
                "error": r.result.as_ref().err(),
            })),
            "guard": policy.guard.as_str(),
            "ratelimit": self.state.ratelimiter().snapshot(&policy.ratelimit),
            "rejections": self.state.rejections.lock().map(|m| {
                let mut rows: Vec<_> = m.iter().map(|((route, reason), n)| json!({"route": &**route, "reason": reason, "count": n})).collect();
                rows.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
                rows
            }).unwrap_or_default(),
            "hedges": {
                "launched": self.state.hedges.launched(),
                "won": self.state.hedges.won(),
            },
            "retries": {
                "granted": self.state.retry_budget.granted(),
                "budget_tokens": (self.state.retry_budget.tokens() * 10.0).round() / 10.0,
            },
            "admission": {
                "waiting": admission.waiting(),
                "shadow_would_queue": admission.shadow_queued(),
                "drain_rate_per_s": admission.drain_rate().map(|r| (r * 10.0).round() / 10.0),
                "own_delay_ms": ms(admission.own_delay()),
            },
            "connections": {
                "open": self.state.connections.open(),
                "max": self.state.connection_cap(),
                "refused_at_max": self.state.connections.refused(),
            },
            "local_failures": crate::resources::counts().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "accept_failures": crate::listener::failure_counts().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "log_lines_suppressed": crate::logging::suppressed_total(),
            "uptime_seconds": self.state.started.elapsed().as_secs(),
            "workers": workers,
            "routes": routes,
        })
    }
}

/// Milliseconds with one decimal, for humans.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() == "/" && matches!(req.method.as_str(), "GET" | "HEAD") {
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/html; charset=utf-8")
                .header("content-length", STATUS_PAGE.len())
                .header("cache-control", "no-store")
                .body(STATUS_PAGE.as_bytes().to_vec())
                .unwrap_or_default();
        }
        if req.uri.path() == "/metrics" && matches!(req.method.as_str(), "GET" | "HEAD") {
            let text = self.state.metrics.load().render().into_bytes();
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4")
                .header("content-length", text.len())
                .body(text)
                .unwrap_or_default();
        }
        let (status, body) = self.route(&req.method, req.uri.path(), req.uri.query());
        let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("cache-control", "no-store")
            .body(body)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::AdminApp;
    use crate::config::Policy;
    use crate::stages::Reason;
    use crate::state::State;

    /// `/status` names every reason by the same label as the metrics and the access log,
    /// with its own count.
    #[test]
    fn status_lists_every_reason_by_its_label_with_its_count() {
        let policy =
            Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sloguard.toml"))
                .unwrap();
        let state = Arc::new(State::new(policy));
        let route: Arc<str> = Arc::from("ingest");
        for (i, reason) in Reason::ALL.iter().enumerate() {
            for _ in 0..=i {
                state.count_rejection(&route, *reason);
            }
        }
        let status = AdminApp::new(state).status();
        let rows = status["rejections"].as_array().unwrap();
        assert_eq!(rows.len(), Reason::ALL.len());
        for (i, reason) in Reason::ALL.iter().enumerate() {
            let row = rows
                .iter()
                .find(|r| r["reason"] == reason.as_str())
                .unwrap_or_else(|| panic!("{reason} missing from {rows:?}"));
            assert_eq!(row["count"], i as u64 + 1, "{reason}");
            assert_eq!(row["route"], "ingest");
        }
    }
}
