//! The admin listener: liveness and a JSON status snapshot for on-call and for tests.
//!
//! Served by its own Pingora service on its own port, so a saturated proxy listener never
//! hides the health and status endpoints.

pub mod metrics;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::state::State;

pub struct AdminApp {
    state: Arc<State>,
}

impl AdminApp {
    pub fn new(state: Arc<State>) -> AdminApp {
        AdminApp { state }
    }

    /// The answer for a method and path; pure apart from reading the state.
    pub fn route(&self, method: &http::Method, path: &str) -> (StatusCode, serde_json::Value) {
        match (method.as_str(), path) {
            ("GET" | "HEAD", "/healthz") => (StatusCode::OK, json!({"status": "ok"})),
            ("GET" | "HEAD", "/status") => (StatusCode::OK, self.status()),
            (_, "/healthz" | "/status") => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": format!("{method} is not allowed on {path}")}),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                json!({"error": format!("no admin endpoint at {path}")}),
            ),
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
        let routes: Vec<_> = policy
            .routes
            .iter()
            .map(|r| {
                json!({
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
            "guard": policy.guard.as_str(),
            "ratelimit": self.state.ratelimiter.snapshot(&policy.ratelimit),
            "rejections": self.state.rejections.lock().map(|m| {
                let mut rows: Vec<_> = m.iter().map(|((route, reason), n)| json!({"route": &**route, "reason": reason, "count": n})).collect();
                rows.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
                rows
            }).unwrap_or_default(),
            "retries": {
                "granted": self.state.retry_budget.granted(),
                "budget_tokens": (self.state.retry_budget.tokens() * 10.0).round() / 10.0,
            },
            "admission": {
                "waiting": admission.waiting(),
                "shadow_would_queue": admission.shadow_queued(),
                "drain_rate_per_s": (admission.drain_rate() * 10.0).round() / 10.0,
            },
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
        if req.uri.path() == "/metrics" && matches!(req.method.as_str(), "GET" | "HEAD") {
            let text = self.state.metrics.load().render().into_bytes();
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4")
                .header("content-length", text.len())
                .body(text)
                .unwrap_or_default();
        }
        let (status, body) = self.route(&req.method, req.uri.path());
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
