//! The admin listener: liveness, readiness, `/metrics`, a JSON status snapshot for on-call
//! and for tests, the status page, reloads and the log filter. It only serves and reads:
//! what it shows is counted by the modules that decide it (see `telemetry`).
//!
//! Served by its own Pingora service on its own port, so a saturated proxy listener never
//! hides the health and status endpoints.

// I/O edge: the admin server stamps what it serves with the clock.
#![allow(clippy::disallowed_methods)]

mod status;

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
            ("GET" | "HEAD", "/status") => (StatusCode::OK, status::status(&self.state)),
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
        if self.state.lifecycle.draining() {
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
            let collected = status::collected(&self.state);
            let text = self
                .state
                .telemetry
                .metrics()
                .render(&collected)
                .into_bytes();
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
