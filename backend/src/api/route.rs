//! The backend's routes: which path is which handler, and which method it takes.

use http::Method;

use crate::fault::RequestKind;

/// Every route, plus `NotFound`; also the `route` label of the request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    Events,
    EventsBatch,
    MetricsQuery,
    Healthz,
    Prometheus,
    AdminFault,
    NotFound,
}

impl Route {
    /// Maps a path (no query string) to its route.
    pub fn from_path(path: &str) -> Route {
        match path {
            "/v1/events" => Route::Events,
            "/v1/events/batch" => Route::EventsBatch,
            "/v1/metrics" => Route::MetricsQuery,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Prometheus,
            "/admin/fault" => Route::AdminFault,
            _ => Route::NotFound,
        }
    }

    /// The one method the route answers (`None` for `NotFound`). `HEAD` is
    /// not offered: nothing here needs it.
    pub fn method(self) -> Option<Method> {
        match self {
            Route::Events | Route::EventsBatch | Route::AdminFault => Some(Method::POST),
            Route::MetricsQuery | Route::Healthz | Route::Prometheus => Some(Method::GET),
            Route::NotFound => None,
        }
    }

    /// Label used in `analytics_requests_total{route=..}`.
    pub fn label(self) -> &'static str {
        match self {
            Route::Events => "events",
            Route::EventsBatch => "events_batch",
            Route::MetricsQuery => "metrics_query",
            Route::Healthz => "healthz",
            Route::Prometheus => "prometheus",
            Route::AdminFault => "admin_fault",
            Route::NotFound => "not_found",
        }
    }

    /// Which faults may hit this route.
    pub fn fault_kind(self) -> RequestKind {
        match self {
            Route::Events | Route::EventsBatch => RequestKind::Events,
            Route::MetricsQuery => RequestKind::V1,
            _ => RequestKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes() {
        assert_eq!(Route::from_path("/v1/events"), Route::Events);
        assert_eq!(Route::from_path("/v1/events/batch"), Route::EventsBatch);
        assert_eq!(Route::from_path("/v1/metrics"), Route::MetricsQuery);
        assert_eq!(Route::from_path("/v1/events/"), Route::NotFound);
        assert_eq!(Route::from_path("/"), Route::NotFound);
        assert_eq!(Route::Events.method(), Some(Method::POST));
        assert_eq!(Route::Healthz.method(), Some(Method::GET));
        assert_eq!(Route::NotFound.method(), None);
        assert_eq!(Route::EventsBatch.fault_kind(), RequestKind::Events);
        assert_eq!(Route::Healthz.fault_kind(), RequestKind::Other);
    }
}
