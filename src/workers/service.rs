//! What a request costs a worker: how long one request of a route holds an event loop.
//! Pure estimators; samples and time are passed in.
//!
//! A request sent to an idle worker (nothing else in flight) measures its route's cost
//! directly: its time to answer is the loop time it took, with no queueing and no reported
//! lag to subtract (a Python worker's lag report is the worst of its last second, useless
//! per request). At half load about half the requests find their worker idle; under
//! sustained overload none do, and the estimate keeps what it last learnt (no evidence is
//! not bad evidence). Costs are kept per route because routes differ by orders of
//! magnitude (a 1 KB event vs a heavy aggregation), and a worker's outstanding work is the
//! sum of its requests' costs (see `Worker::work`).
//!
//! The estimate is an EWMA over time (1 s constant, at least 1% per sample). A sample over
//! 8x the estimate is clipped to it: a stall or a GC pause is the stall detector's business
//! and must not make a route look dear for seconds; a real change in cost is still mostly
//! learnt within a second (63% of the step). A cheaper sample moves it at least 10% at once:
//! a request's cost is a floor that interference only adds to (a cold start's first answers,
//! slowed by a burst of new connections, would otherwise keep every worker's share of work
//! small for a second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time constant of the estimate.
const DECAY: Duration = Duration::from_secs(1);
/// A sample counts for at least this much, so a burst of samples in one instant moves it.
const MIN_WEIGHT: f64 = 0.01;
/// A sample under the estimate counts for at least this much.
const MIN_WEIGHT_DOWN: f64 = 0.1;
/// A sample above this multiple of the estimate is clipped to it.
const CLIP: f64 = 8.0;

/// One route's cost estimate.
#[derive(Debug, Clone)]
pub struct ServiceTime {
    /// Seconds per request; `None` until the first sample.
    estimate: Option<f64>,
    stamp: Instant,
}

impl ServiceTime {
    pub fn new(now: Instant) -> ServiceTime {
        ServiceTime {
            estimate: None,
            stamp: now,
        }
    }

    /// A request sent to an idle worker answered after `rtt`.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_secs_f64();
        self.estimate = Some(match self.estimate {
            None => sample,
            Some(s) => {
                let dt = now.saturating_duration_since(self.stamp).as_secs_f64();
                let floor = if sample < s {
                    MIN_WEIGHT_DOWN
                } else {
                    MIN_WEIGHT
                };
                let w = (1.0 - (-dt / DECAY.as_secs_f64()).exp()).max(floor);
                s + w * (sample.min(s * CLIP) - s)
            }
        });
        self.stamp = self.stamp.max(now);
    }

    /// Loop time per request, once known.
    pub fn get(&self) -> Option<Duration> {
        self.estimate.map(Duration::from_secs_f64)
    }
}

/// The cost of each route of the policy, by route index; read on the hot path without a
/// lock. Survives reloads by route name.
#[derive(Debug)]
pub struct RouteCosts {
    routes: Vec<RouteCost>,
}

#[derive(Debug)]
struct RouteCost {
    name: Arc<str>,
    estimate: Mutex<ServiceTime>,
    /// Hot-path copy, ns; 0 while unknown.
    ns: AtomicU64,
}

impl RouteCosts {
    /// Costs for routes named `names` (in route-index order), carrying over what `old` knew
    /// of routes with the same name.
    pub fn new<'a>(
        names: impl Iterator<Item = &'a Arc<str>>,
        old: Option<&RouteCosts>,
        now: Instant,
    ) -> RouteCosts {
        RouteCosts {
            routes: names
                .map(|name| {
                    let known = old.and_then(|o| o.routes.iter().find(|r| r.name == *name));
                    let estimate = known.map_or_else(
                        || ServiceTime::new(now),
                        |r| r.estimate.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    );
                    let ns = estimate.get().map_or(0, |d| (d.as_nanos() as u64).max(1));
                    RouteCost {
                        name: name.clone(),
                        estimate: Mutex::new(estimate),
                        ns: AtomicU64::new(ns),
                    }
                })
                .collect(),
        }
    }

    /// What one request of route `route` costs, once known.
    pub fn get(&self, route: usize) -> Option<Duration> {
        match self.routes.get(route)?.ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// [`RouteCosts::get`] for route `route` named `name`: `None` as well when the index
    /// belongs to another route (a request that started under the policy before a reload
    /// that changed the routes).
    pub fn get_named(&self, route: usize, name: &str) -> Option<Duration> {
        self.routes
            .get(route)
            .filter(|r| &*r.name == name)
            .and_then(|_| self.get(route))
    }

    /// Whether these costs are for exactly the routes named `names`, in order.
    pub fn same_routes<'a>(&self, mut names: impl Iterator<Item = &'a Arc<str>>) -> bool {
        self.routes.iter().all(|r| names.next() == Some(&r.name)) && names.next().is_none()
    }

    /// A request of route `route` named `name` sent to an idle worker answered after `rtt`.
    pub fn observe(&self, route: usize, name: &str, rtt: Duration, now: Instant) {
        let Some(r) = self.routes.get(route).filter(|r| &*r.name == name) else {
            return;
        };
        let mut e = r.estimate.lock().unwrap_or_else(|e| e.into_inner());
        e.observe(rtt, now);
        let ns = e.get().map_or(0, |d| (d.as_nanos() as u64).max(1));
        r.ns.store(ns, Ordering::Relaxed);
    }

    /// `(route name, cost)` for every route, for the status page.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Option<Duration>)> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), self.get(i)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn unknown_until_the_first_sample_then_learnt() {
        let t0 = Instant::now();
        let mut s = ServiceTime::new(t0);
        assert_eq!(s.get(), None);
        for i in 0..200u32 {
            s.observe(2 * MS, t0 + i * MS);
        }
        let got = s.get().unwrap().as_secs_f64() * 1e3;
        assert!((got - 2.0).abs() < 0.01, "{got}");
    }

    #[test]
    fn one_stall_does_not_make_a_route_look_dear() {
        let t0 = Instant::now();
        let mut s = ServiceTime::new(t0);
        for i in 0..100u32 {
            s.observe(MS, t0 + i * MS);
        }
        // A 250 ms blocked loop: clipped to 8 ms, weighted by the 1 ms since the last one.
        s.observe(250 * MS, t0 + 101 * MS);
        assert!(s.get().unwrap() < 2 * MS, "{:?}", s.get());
    }

    #[test]
    fn a_real_change_in_cost_is_mostly_learnt_within_a_second() {
        let t0 = Instant::now();
        let mut s = ServiceTime::new(t0);
        s.observe(MS, t0);
        // The handler becomes 5x dearer: a sample every 10 ms for a second.
        for i in 1..=100u32 {
            s.observe(5 * MS, t0 + i * 10 * MS);
        }
        let got = s.get().unwrap().as_secs_f64() * 1e3;
        assert!(got > 3.4, "{got}");
    }

    #[test]
    fn a_cold_first_answer_is_forgotten_within_a_few_samples() {
        let t0 = Instant::now();
        let mut s = ServiceTime::new(t0);
        // The first answer came during a burst of new connections: 30 ms for a 1 ms route.
        s.observe(30 * MS, t0);
        for i in 1..=40u32 {
            s.observe(MS, t0 + i * Duration::from_micros(500));
        }
        assert!(s.get().unwrap() < 2 * MS, "{:?}", s.get());
    }

    #[test]
    fn route_costs_survive_a_reload_by_name() {
        let t0 = Instant::now();
        let names: Vec<Arc<str>> = vec![Arc::from("ingest"), Arc::from("query")];
        let costs = RouteCosts::new(names.iter(), None, t0);
        assert_eq!(costs.get(0), None);
        costs.observe(1, "query", 25 * MS, t0);
        costs.observe(0, "ingest", MS, t0);
        costs.observe(0, "query", 99 * MS, t0);
        assert_eq!(costs.get(1), Some(25 * MS));
        assert_eq!(
            costs.get(0),
            Some(MS),
            "a sample under another name is dropped"
        );
        assert_eq!(costs.get(7), None, "no such route");
        assert!(costs.same_routes(names.iter()));
        // A reload inserts a route before `query`: its cost follows it.
        let names: Vec<Arc<str>> = vec![Arc::from("ingest"), Arc::from("new"), Arc::from("query")];
        let reloaded = RouteCosts::new(names.iter(), Some(&costs), t0);
        assert_eq!(reloaded.get(0), Some(MS));
        assert_eq!(reloaded.get(1), None);
        assert_eq!(reloaded.get(2), Some(25 * MS));
        assert_eq!(reloaded.get_named(2, "query"), Some(25 * MS));
        assert_eq!(reloaded.get_named(1, "query"), None);
        assert_eq!(reloaded.snapshot()[2].0.as_ref(), "query");
        assert!(!reloaded.same_routes(names[..2].iter()));
    }
}
