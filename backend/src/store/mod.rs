//! The in-process aggregate store shared by every worker: events are folded
//! into 1 s aggregates on ingest, and coarser buckets are merged at query time.
//!
//! Layout, per `(customer, event)`:
//! - `all`: second -> [`Agg`], the ungrouped series;
//! - `by_dim`: dimension name -> dimension value -> second -> [`Agg`], one
//!   series per value, used by `group_by`. An event without the dimension is
//!   in no group.
//!
//! One `std::sync::Mutex` guards everything: workers hold it only to fold
//! an event or merge a query's seconds, never across an await, and with a
//! handful of single-threaded workers contention stays low. A batch is
//! folded under one lock, so a query sees all of it or none of it.

mod sketch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::event::Event;
use crate::query::Query;
pub use sketch::{Sketch, RELATIVE_ACCURACY};

/// Count, sum, min, max (exact) and a quantile sketch of the values in one bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub sketch: Sketch,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: Sketch::default(),
        }
    }
}

impl Agg {
    /// Folds one value in.
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sketch.add(value);
    }

    /// Folds another aggregate in.
    pub fn merge(&mut self, other: &Agg) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch.merge(&other.sketch);
    }

    /// Quantile estimate, kept inside the exact `[min, max]`.
    pub fn quantile(&self, q: f64) -> f64 {
        self.sketch
            .quantile(q)
            .map_or(0.0, |v| v.clamp(self.min, self.max))
    }
}

/// Seconds since the epoch -> aggregate of the events in that second.
type Seconds = BTreeMap<i64, Agg>;

#[derive(Debug, Default)]
struct Series {
    all: Seconds,
    by_dim: HashMap<String, HashMap<String, Seconds>>,
}

/// One time bucket of a query answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Bucket start, milliseconds since the epoch.
    pub ts: i64,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Estimates within [`RELATIVE_ACCURACY`] of the exact quantile.
    pub p50: f64,
    pub p95: f64,
}

/// One series of a query answer: `group` is the dimension value, or `None`
/// for an ungrouped query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesResult {
    pub group: Option<String>,
    pub points: Vec<Point>,
}

/// The answer to a [`Query`], serialised as the `GET /v1/metrics` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    pub customer: String,
    pub event: String,
    pub bucket_ms: i64,
    /// Ungrouped: exactly one series (maybe without points). Grouped: one
    /// series per dimension value with data in range, sorted by value.
    pub series: Vec<SeriesResult>,
}

/// The shared aggregate store.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<HashMap<String, HashMap<String, Series>>>,
    total: AtomicU64,
}

impl Store {
    pub fn new() -> Self {
        Store::default()
    }

    /// A poisoned lock only means another worker panicked mid-fold; the
    /// maps are still consistent enough to serve, so carry on.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Series>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one event in.
    pub fn ingest(&self, event: &Event) {
        self.ingest_batch(std::slice::from_ref(event));
    }

    /// Folds several events in under one lock (all visible at once).
    pub fn ingest_batch(&self, events: &[Event]) {
        let mut inner = self.lock();
        for e in events {
            let second = e.ts_ms.div_euclid(1000);
            let series = inner
                .entry(e.customer_id.clone())
                .or_default()
                .entry(e.event.clone())
                .or_default();
            series.all.entry(second).or_default().add(e.value);
            for (name, value) in &e.dimensions {
                series
                    .by_dim
                    .entry(name.clone())
                    .or_default()
                    .entry(value.clone())
                    .or_default()
                    .entry(second)
                    .or_default()
                    .add(e.value);
            }
        }
        self.total.fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    /// Number of events accepted so far (tests use it to prove nothing was
    /// lost or stored twice).
    pub fn total_events(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Answers a query, merging 1 s aggregates into `query.bucket`.
    pub fn query(&self, query: &Query) -> QueryResult {
        let bucket_ms = query.bucket.millis();
        // Seconds overlapping [from, to).
        let first = query.from_ms.map_or(i64::MIN, |f| f.div_euclid(1000));
        let last = query
            .to_ms
            .map_or(i64::MAX, |t| t.saturating_sub(1).div_euclid(1000));
        let points = |seconds: &Seconds| -> Vec<Point> {
            let mut merged: BTreeMap<i64, Agg> = BTreeMap::new();
            if first <= last {
                for (second, agg) in seconds.range(first..=last) {
                    let start = (second * 1000).div_euclid(bucket_ms) * bucket_ms;
                    merged.entry(start).or_default().merge(agg);
                }
            }
            merged
                .into_iter()
                .map(|(ts, a)| Point {
                    ts,
                    count: a.count,
                    sum: a.sum,
                    min: a.min,
                    max: a.max,
                    p50: a.quantile(0.5),
                    p95: a.quantile(0.95),
                })
                .collect()
        };
        let inner = self.lock();
        let series = inner
            .get(&query.customer)
            .and_then(|events| events.get(&query.event));
        let series = match (&query.group_by, series) {
            (None, series) => vec![SeriesResult {
                group: None,
                points: series.map(|s| points(&s.all)).unwrap_or_default(),
            }],
            (Some(_), None) => Vec::new(),
            (Some(dim), Some(s)) => {
                let mut groups: Vec<SeriesResult> = s
                    .by_dim
                    .get(dim)
                    .into_iter()
                    .flatten()
                    .map(|(value, seconds)| SeriesResult {
                        group: Some(value.clone()),
                        points: points(seconds),
                    })
                    .filter(|g| !g.points.is_empty())
                    .collect();
                groups.sort_by(|a, b| a.group.cmp(&b.group));
                groups
            }
        };
        QueryResult {
            customer: query.customer.clone(),
            event: query.event.clone(),
            bucket_ms,
            series,
        }
    }
}

#[cfg(test)]
mod tests;
