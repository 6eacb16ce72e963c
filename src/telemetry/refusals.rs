//! sloguard's own refusals, counted once: by route and [`Reason`] for routed requests, by
//! reason alone for connections refused before any request was routed. `/metrics`
//! (`sloguard_shed_total`, `sloguard_rejections_total`) and `/status` (`rejections`) both
//! read these cells; nothing copies them.
//!
//! A cell is an atomic add on the request path, no lock, no map. The table is rebuilt when a
//! reload changes the routes, and a route that keeps its name keeps its cells (shared, not
//! copied, so a refusal counted on the old table while the reload swaps is not lost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::collected::family;
use crate::stages::{Reason, ReasonKind};

/// One route's counts, indexed by the reason's discriminant.
type RouteCells = [AtomicU64; Reason::REQUEST_COUNT];
/// Connection refusals, indexed by the reason's discriminant less [`Reason::REQUEST_COUNT`].
type ConnectionCells = [AtomicU64; Reason::ALL.len() - Reason::REQUEST_COUNT];

/// The `route` label of connection refusals (the access log's "no route" too).
pub const NO_ROUTE: &str = "-";

const SHED_FAMILY: (&str, &str) = (
    "sloguard_shed_total",
    "Requests shed by admission (503), by route and reason.",
);
const REJECTED_FAMILY: (&str, &str) = (
    "sloguard_rejections_total",
    "Requests and connections refused by sloguard for another reason than shedding (limits, rate limits, bad input, upstream failures), by route (- before routing) and reason.",
);

/// The counts for the routes of one policy.
#[derive(Debug)]
pub struct RefusalCounts {
    routes: Vec<(Arc<str>, Arc<RouteCells>)>,
    connection: Arc<ConnectionCells>,
}

/// One row of the table: a route (`-` for connections), a reason, its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalRow {
    pub route: Arc<str>,
    pub reason: Reason,
    pub count: u64,
}

impl RefusalCounts {
    /// A table for `routes`, taking over the cells of the routes `previous` already had.
    pub fn new<'a>(
        routes: impl IntoIterator<Item = &'a Arc<str>>,
        previous: Option<&RefusalCounts>,
    ) -> RefusalCounts {
        let kept = |name: &Arc<str>| {
            previous?
                .routes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, cells)| cells.clone())
        };
        RefusalCounts {
            routes: routes
                .into_iter()
                .map(|name| {
                    let cells = kept(name).unwrap_or_default();
                    (name.clone(), cells)
                })
                .collect(),
            connection: previous.map(|p| p.connection.clone()).unwrap_or_default(),
        }
    }

    /// One refusal of a request on route `route` (its index in the policy), or of a
    /// connection before routing when `reason` is a connection reason.
    pub fn count(&self, route: usize, reason: Reason) {
        let cell = if reason.is_connection() {
            self.connection.get(reason as usize - Reason::REQUEST_COUNT)
        } else {
            self.routes
                .get(route)
                .map(|(_, cells)| &cells[reason as usize])
        };
        if let Some(cell) = cell {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every cell, connection reasons under [`NO_ROUTE`], zeros included.
    pub fn rows(&self) -> impl Iterator<Item = RefusalRow> + '_ {
        let no_route: Arc<str> = Arc::from(NO_ROUTE);
        let requests = self.routes.iter().flat_map(|(route, cells)| {
            Reason::request_reasons()
                .iter()
                .zip(cells.iter())
                .map(|(reason, n)| (route.clone(), *reason, n))
        });
        let connections = Reason::connection_reasons()
            .iter()
            .zip(self.connection.iter())
            .map(move |(reason, n)| (no_route.clone(), *reason, n));
        requests
            .chain(connections)
            .map(|(route, reason, n)| RefusalRow {
                route,
                reason,
                count: n.load(Ordering::Relaxed),
            })
    }

    /// `sloguard_shed_total` and `sloguard_rejections_total`, every series of the table
    /// (a zero is a series too: `rate()` needs it before the first refusal).
    pub fn write_exposition(&self, out: &mut String) {
        for ((name, help), shed) in [(SHED_FAMILY, true), (REJECTED_FAMILY, false)] {
            // Only `http_error` has a status-dependent kind, and it is never a shed.
            let rows = self
                .rows()
                .filter(|r| (r.reason.kind(0) == ReasonKind::Shed) == shed)
                .map(|r| {
                    let labels = format!("route=\"{}\",reason=\"{}\"", r.route, r.reason);
                    (labels, r.count)
                });
            family(out, name, "counter", help, rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|n| Arc::from(*n)).collect()
    }

    fn count_of(t: &RefusalCounts, route: &str, reason: Reason) -> u64 {
        t.rows()
            .find(|r| &*r.route == route && r.reason == reason)
            .map_or(u64::MAX, |r| r.count)
    }

    #[test]
    fn a_refusal_lands_in_its_routes_cell_and_a_connection_under_no_route() {
        let t = RefusalCounts::new(&names(&["ingest", "query"]), None);
        t.count(1, Reason::QueueTimeout);
        t.count(1, Reason::QueueTimeout);
        t.count(0, Reason::BodyTooLarge);
        t.count(0, Reason::HeaderTimeout);
        // An index the table does not have (a request of a policy swapped out) is dropped.
        t.count(7, Reason::Priority);
        assert_eq!(count_of(&t, "query", Reason::QueueTimeout), 2);
        assert_eq!(count_of(&t, "ingest", Reason::BodyTooLarge), 1);
        assert_eq!(count_of(&t, NO_ROUTE, Reason::HeaderTimeout), 1);
        assert_eq!(count_of(&t, "ingest", Reason::QueueTimeout), 0);
        assert_eq!(
            t.rows().map(|r| r.count).sum::<u64>(),
            4,
            "nothing else counted"
        );
    }

    #[test]
    fn a_reload_keeps_the_cells_of_routes_it_keeps_and_drops_the_others() {
        let old = RefusalCounts::new(&names(&["ingest", "query"]), None);
        old.count(0, Reason::Priority);
        old.count(1, Reason::QueueFull);
        old.count(0, Reason::TooManyConnections);
        let new = RefusalCounts::new(&names(&["batch", "ingest"]), Some(&old));
        assert_eq!(count_of(&new, "ingest", Reason::Priority), 1);
        assert_eq!(count_of(&new, "batch", Reason::QueueFull), 0);
        assert_eq!(count_of(&new, NO_ROUTE, Reason::TooManyConnections), 1);
        assert!(new.rows().all(|r| &*r.route != "query"));
        // A request still holding the old table counts into the same cell.
        old.count(0, Reason::Priority);
        assert_eq!(count_of(&new, "ingest", Reason::Priority), 2);
    }

    #[test]
    fn the_exposition_puts_each_reason_under_the_family_its_kind_names() {
        let t = RefusalCounts::new(&names(&["ingest"]), None);
        t.count(0, Reason::QueueTimeout);
        t.count(0, Reason::RateLimited);
        let mut text = String::new();
        t.write_exposition(&mut text);
        assert!(text.contains("sloguard_shed_total{route=\"ingest\",reason=\"queue_timeout\"} 1\n"));
        assert!(text
            .contains("sloguard_rejections_total{route=\"ingest\",reason=\"rate_limited\"} 1\n"));
        assert!(
            text.contains("sloguard_rejections_total{route=\"-\",reason=\"header_timeout\"} 0\n")
        );
        assert!(!text.contains("sloguard_shed_total{route=\"ingest\",reason=\"rate_limited\"}"));
        assert_eq!(text.matches("# TYPE").count(), 2);
    }
}
