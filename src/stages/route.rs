//! Route matching: which `[[route]]` a request belongs to. Pure; first match wins.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::json_scan::JsonLimits;

/// Shedding order under overload: `Sheddable` goes first, `Critical` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Sheddable,
    Normal,
    Critical,
}

impl Priority {
    /// Share of each worker's concurrency limit this class may fill: the rest is kept for
    /// higher classes, so a burst of cheap-to-drop traffic cannot take every slot (and, on
    /// an event loop, every loop) from critical requests. Critical 100%, normal 50%,
    /// sheddable 25%; an idle worker always takes one request of any class.
    pub fn limit_share(self) -> f64 {
        match self {
            Priority::Critical => 1.0,
            Priority::Normal => 0.5,
            Priority::Sheddable => 0.25,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Sheddable => "sheddable",
        }
    }
}

/// A route's latency objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slo {
    pub p95: Option<Duration>,
    pub p99: Option<Duration>,
}

/// What a route matches. All present conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub method: Option<Method>,
    pub path_prefix: Option<String>,
    pub path: Option<String>,
}

impl RouteMatch {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.path.as_deref().is_none_or(|p| path == p)
    }
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub slo: Option<Slo>,
    pub priority: Priority,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: Option<u64>,
    /// Longest wait for a worker slot, when set explicitly.
    pub queue_budget: Option<Duration>,
    /// Longest wait for one attempt's response; an idempotent request is then retried once
    /// on another worker (Envoy's per-try timeout). `None` = the upstream read timeout.
    pub per_try_timeout: Option<Duration>,
    /// A bodiless idempotent request still unanswered after this long (or whose worker
    /// stalls first) is also sent to a second worker; the first answer wins
    /// (`stages::hedge`).
    pub hedge_after: Option<Duration>,
    /// Requests of this route may be retried whatever their method.
    pub retry_idempotent: bool,
    /// The body must be JSON within these limits (checked as it streams).
    pub json: Option<JsonLimits>,
}

impl Route {
    /// The catch-all used when the policy declares no `default` route: normal priority,
    /// no SLO, no caps.
    pub fn implicit_default() -> Route {
        Route {
            name: Arc::from("default"),
            matcher: RouteMatch::default(),
            slo: None,
            priority: Priority::Normal,
            max_body_bytes: None,
            queue_budget: None,
            per_try_timeout: None,
            hedge_after: None,
            retry_idempotent: false,
            json: None,
        }
    }
}

/// Index of a route in a [`RouteTable`]; the default route is `routes.len()`.
pub type RouteId = usize;

/// The routes of one policy, in match order, plus the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
    default: Route,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, default: Route) -> RouteTable {
        RouteTable { routes, default }
    }

    /// The first route matching the request, or the default route.
    pub fn match_request(&self, method: &Method, path: &str) -> RouteId {
        self.routes
            .iter()
            .position(|r| r.matcher.matches(method, path))
            .unwrap_or(self.routes.len())
    }

    pub fn get(&self, id: RouteId) -> &Route {
        self.routes.get(id).unwrap_or(&self.default)
    }

    /// All routes, the default last.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(std::iter::once(&self.default))
    }

    /// How long a request of `route` may spend on its worker, queueing inside the worker
    /// included: `worker_share` of its p95 target (p99 if only that), or `default` (the
    /// policy's `default_queue_ms`) without an SLO. A worker's capacity for the request is
    /// how many requests it completes within this (see `Worker::capacity`).
    pub fn worker_target(route: &Route, worker_share: f64, default: Duration) -> Duration {
        match route.slo.and_then(|s| s.p95.or(s.p99)) {
            Some(target) => target.mul_f64(worker_share).max(Duration::from_millis(1)),
            None => default,
        }
    }

    /// The longest a request of `route` may wait for a worker slot: the explicit budget, or
    /// what its p95 target leaves after the worker's share (at least 1 ms), or the
    /// policy-wide default without an SLO.
    pub fn queue_budget(route: &Route, worker_share: f64, default: Duration) -> Duration {
        match (route.queue_budget, route.slo.and_then(|s| s.p95.or(s.p99))) {
            (Some(b), _) => b,
            (None, Some(target)) => target
                .mul_f64(1.0 - worker_share)
                .max(Duration::from_millis(1)),
            (None, None) => default,
        }
    }

    /// The tightest [`RouteTable::worker_target`] of any route: a worker with room for it
    /// has room for every request (the ticker wakes queued requests with it).
    pub fn tightest_worker_target(&self, worker_share: f64, default: Duration) -> Duration {
        self.iter()
            .map(|r| RouteTable::worker_target(r, worker_share, default))
            .min()
            .unwrap_or(default)
    }

    /// Whether `name` is a declared route or `default`.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|r| &*r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &str,
        method: Option<Method>,
        prefix: Option<&str>,
        path: Option<&str>,
    ) -> Route {
        Route {
            name: Arc::from(name),
            matcher: RouteMatch {
                method,
                path_prefix: prefix.map(String::from),
                path: path.map(String::from),
            },
            ..Route::implicit_default()
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            vec![
                route("ingest", Some(Method::POST), Some("/v1/events"), None),
                route("query", Some(Method::GET), Some("/v1/metrics"), None),
                route("health", None, None, Some("/healthz")),
            ],
            Route::implicit_default(),
        )
    }

    fn name(t: &RouteTable, m: Method, p: &str) -> String {
        t.get(t.match_request(&m, p)).name.to_string()
    }

    #[test]
    fn first_match_wins_and_method_must_agree() {
        let t = table();
        assert_eq!(name(&t, Method::POST, "/v1/events"), "ingest");
        assert_eq!(name(&t, Method::POST, "/v1/events/batch"), "ingest");
        assert_eq!(name(&t, Method::GET, "/v1/events"), "default");
        assert_eq!(name(&t, Method::GET, "/v1/metrics?x=1"), "query");
    }

    #[test]
    fn exact_path_matches_only_itself_and_any_method() {
        let t = table();
        assert_eq!(name(&t, Method::GET, "/healthz"), "health");
        assert_eq!(name(&t, Method::HEAD, "/healthz"), "health");
        assert_eq!(name(&t, Method::GET, "/healthz/deep"), "default");
    }

    #[test]
    fn unmatched_requests_use_default() {
        let t = table();
        let id = t.match_request(&Method::DELETE, "/nothing");
        assert_eq!(id, 3);
        assert_eq!(&*t.get(id).name, "default");
        assert!(t.contains("default") && t.contains("query") && !t.contains("nope"));
    }
}
