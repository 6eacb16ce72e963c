//! Per-worker counters (in flight, requests by route and status, events
//! accepted, connection faults fired) and their Prometheus text exposition
//! for `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::api::Route;

/// Counters of one worker. Only its own loop writes them; the mutex is
/// never contended and the map has at most routes x statuses entries.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    in_flight: AtomicU64,
    accepted: AtomicU64,
    requests: Mutex<BTreeMap<(Route, u16), u64>>,
    /// Connection faults fired, by name (`trickle`, `reset`, `close_keepalive`).
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

/// Counts one request in flight until dropped, on every exit path
/// (answered, failed, or client gone and the future dropped).
pub(crate) struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    pub(crate) fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn accepted(&self, n: usize) {
        self.accepted.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn answered(&self, route: Route, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route, status)).or_default() += 1;
    }

    /// A connection fault fired (an answer trickled, a connection reset or
    /// closed after its answer).
    pub(crate) fn fault(&self, name: &'static str) {
        let mut map = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(name).or_default() += 1;
    }

    /// Prometheus text format (version 0.0.4).
    pub(crate) fn render(&self, worker: usize, lag: Duration, lag_max: Duration) -> String {
        let mut out = String::new();
        let w = worker;
        let _ = writeln!(
            out,
            "# HELP analytics_loop_lag_seconds Worst event-loop lag in the last second.\n\
             # TYPE analytics_loop_lag_seconds gauge\n\
             analytics_loop_lag_seconds{{worker=\"{w}\"}} {}\n\
             # HELP analytics_loop_lag_max_seconds Worst event-loop lag since the worker started.\n\
             # TYPE analytics_loop_lag_max_seconds gauge\n\
             analytics_loop_lag_max_seconds{{worker=\"{w}\"}} {}\n\
             # HELP analytics_in_flight_requests Requests being served by this worker.\n\
             # TYPE analytics_in_flight_requests gauge\n\
             analytics_in_flight_requests{{worker=\"{w}\"}} {}\n\
             # HELP analytics_events_accepted_total Events accepted by this worker.\n\
             # TYPE analytics_events_accepted_total counter\n\
             analytics_events_accepted_total{{worker=\"{w}\"}} {}\n\
             # HELP analytics_requests_total Requests answered, by route and status.\n\
             # TYPE analytics_requests_total counter",
            lag.as_secs_f64(),
            lag_max.as_secs_f64(),
            self.in_flight(),
            self.accepted.load(Ordering::Relaxed),
        );
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, status), n) in map.iter() {
            let _ = writeln!(
                out,
                "analytics_requests_total{{worker=\"{w}\",route=\"{}\",status=\"{status}\"}} {n}",
                route.label()
            );
        }
        drop(map);
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if !faults.is_empty() {
            let _ = writeln!(
                out,
                "# HELP analytics_faults_total Connection faults fired (answers trickled, \
                 connections reset or closed after an answer).\n\
                 # TYPE analytics_faults_total counter"
            );
        }
        for (name, n) in faults.iter() {
            let _ = writeln!(
                out,
                "analytics_faults_total{{worker=\"{w}\",fault=\"{name}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let stats = Stats::default();
        let guard = stats.enter();
        stats.accepted(3);
        stats.answered(Route::Events, 202);
        stats.answered(Route::Events, 202);
        stats.answered(Route::NotFound, 404);
        let text = stats.render(3, Duration::from_millis(250), Duration::from_secs(1));
        assert!(
            text.contains("analytics_loop_lag_seconds{worker=\"3\"} 0.25\n"),
            "{text}"
        );
        assert!(text.contains("analytics_loop_lag_max_seconds{worker=\"3\"} 1\n"));
        assert!(text.contains("analytics_in_flight_requests{worker=\"3\"} 1\n"));
        assert!(text.contains("analytics_events_accepted_total{worker=\"3\"} 3\n"));
        assert!(text.contains(
            "analytics_requests_total{worker=\"3\",route=\"events\",status=\"202\"} 2\n"
        ));
        assert!(text.contains("route=\"not_found\",status=\"404\"} 1\n"));
        assert!(!text.contains("analytics_faults_total"));
        stats.fault("reset");
        stats.fault("reset");
        let text = stats.render(3, Duration::ZERO, Duration::ZERO);
        assert!(
            text.contains("analytics_faults_total{worker=\"3\",fault=\"reset\"} 2\n"),
            "{text}"
        );
        drop(guard);
        assert_eq!(stats.in_flight(), 0);
    }
}
