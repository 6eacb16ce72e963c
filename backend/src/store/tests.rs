//! Unit tests of the store: ingest/query round trips, bucket merging,
//! grouping, exact count/sum/min/max and percentile accuracy.

use super::*;
use crate::query::Bucket;

/// An event time that is not on a minute boundary, to exercise alignment.
const T0: i64 = 1_732_550_000_000;

fn minute_start() -> i64 {
    T0 - T0.rem_euclid(60_000)
}

fn pv(ts: i64, value: f64) -> Event {
    Event::new("c1", "page_view", ts).with_value(value)
}

#[test]
fn round_trip_one_event() {
    let store = Store::new();
    store.ingest(&pv(T0, 12.5).with_dim("country", "fr"));
    assert_eq!(store.total_events(), 1);
    let r = store.query(&Query::new("c1", "page_view"));
    assert_eq!(r.bucket_ms, 60_000);
    assert_eq!(r.series.len(), 1);
    assert_eq!(r.series[0].group, None);
    let p = &r.series[0].points[0];
    assert_eq!(p.ts, T0 - T0.rem_euclid(60_000));
    assert_eq!((p.count, p.sum, p.min, p.max), (1, 12.5, 12.5, 12.5));
    assert_eq!((p.p50, p.p95), (12.5, 12.5));
}

#[test]
fn unknown_series_is_empty() {
    let store = Store::new();
    store.ingest(&pv(T0, 1.0));
    let r = store.query(&Query::new("c2", "page_view"));
    assert_eq!(r.series.len(), 1);
    assert!(r.series[0].points.is_empty());
    let grouped = Query {
        group_by: Some("country".into()),
        ..Query::new("c1", "click")
    };
    assert!(store.query(&grouped).series.is_empty());
}

#[test]
fn seconds_merge_into_coarser_buckets_exactly() {
    let store = Store::new();
    let m = minute_start();
    // Three events in minute 0 (two seconds), two in minute 1.
    for (ts, v) in [
        (m, 1.0),
        (m + 1500, 2.5),
        (m + 59_999, -4.0),
        (m + 60_000, 8.0),
        (m + 119_000, 0.5),
    ] {
        store.ingest(&pv(ts, v));
    }
    let r = store.query(&Query::new("c1", "page_view"));
    let pts = &r.series[0].points;
    assert_eq!(pts.len(), 2);
    assert_eq!(pts[0].ts, m);
    assert_eq!(
        (pts[0].count, pts[0].sum, pts[0].min, pts[0].max),
        (3, -0.5, -4.0, 2.5)
    );
    assert_eq!(pts[1].ts, m + 60_000);
    assert_eq!(
        (pts[1].count, pts[1].sum, pts[1].min, pts[1].max),
        (2, 8.5, 0.5, 8.0)
    );

    let hourly = Query {
        bucket: Bucket::D1,
        ..Query::new("c1", "page_view")
    };
    let r = store.query(&hourly);
    assert_eq!(r.series[0].points.len(), 1);
    assert_eq!(r.series[0].points[0].count, 5);
    assert_eq!(r.series[0].points[0].ts % 86_400_000, 0);

    let per_second = Query {
        bucket: Bucket::S1,
        ..Query::new("c1", "page_view")
    };
    let ts: Vec<i64> = store.query(&per_second).series[0]
        .points
        .iter()
        .map(|p| p.ts)
        .collect();
    assert_eq!(ts, [m, m + 1000, m + 59_000, m + 60_000, m + 119_000]);
}

#[test]
fn time_range_is_half_open_at_second_resolution() {
    let store = Store::new();
    let m = minute_start();
    for s in 0..10 {
        store.ingest(&pv(m + s * 1000 + 500, 1.0));
    }
    let q = |from, to| Query {
        from_ms: from,
        to_ms: to,
        bucket: Bucket::S1,
        ..Query::new("c1", "page_view")
    };
    let count = |q: Query| -> u64 {
        store.query(&q).series[0]
            .points
            .iter()
            .map(|p| p.count)
            .sum()
    };
    assert_eq!(count(q(Some(m + 2000), Some(m + 5000))), 3);
    // A from inside a second still includes that second.
    assert_eq!(count(q(Some(m + 2999), Some(m + 5000))), 3);
    assert_eq!(count(q(None, Some(m + 1))), 1);
    assert_eq!(count(q(Some(m + 9000), None)), 1);
    assert_eq!(count(q(Some(m + 20_000), None)), 0);
}

#[test]
fn group_by_splits_by_dimension_value() {
    let store = Store::new();
    store.ingest_batch(&[
        pv(T0, 1.0)
            .with_dim("country", "fr")
            .with_dim("device", "ios"),
        pv(T0, 2.0).with_dim("country", "de"),
        pv(T0, 3.0).with_dim("country", "fr"),
        pv(T0, 4.0), // no country: in no group
    ]);
    assert_eq!(store.total_events(), 4);
    let q = Query {
        group_by: Some("country".into()),
        ..Query::new("c1", "page_view")
    };
    let r = store.query(&q);
    let groups: Vec<(Option<&str>, u64, f64)> = r
        .series
        .iter()
        .map(|s| (s.group.as_deref(), s.points[0].count, s.points[0].sum))
        .collect();
    assert_eq!(groups, [(Some("de"), 1, 2.0), (Some("fr"), 2, 4.0)]);
    let q = Query {
        group_by: Some("browser".into()),
        ..Query::new("c1", "page_view")
    };
    assert!(store.query(&q).series.is_empty());
}

#[test]
fn customers_and_events_are_kept_apart() {
    let store = Store::new();
    store.ingest(&Event::new("c1", "click", T0));
    store.ingest(&Event::new("c2", "page_view", T0));
    store.ingest(&pv(T0, 1.0));
    assert_eq!(
        store.query(&Query::new("c1", "page_view")).series[0].points[0].count,
        1
    );
    assert_eq!(
        store.query(&Query::new("c1", "click")).series[0].points[0].count,
        1
    );
    assert_eq!(store.total_events(), 3);
}

#[test]
fn percentiles_within_the_documented_bound_across_buckets() {
    let store = Store::new();
    let m = minute_start();
    // 1..=1000 spread over 60 seconds: exact p50 = 500, p95 = 950 (floor ranks).
    let mut values: Vec<f64> = (1..=1000).map(f64::from).collect();
    for (i, v) in values.iter().enumerate() {
        store.ingest(&pv(m + (i as i64 % 60) * 1000, *v));
    }
    let p = &store.query(&Query::new("c1", "page_view")).series[0].points[0];
    assert_eq!(
        (p.count, p.sum, p.min, p.max),
        (1000, 500_500.0, 1.0, 1000.0)
    );
    values.sort_by(f64::total_cmp);
    for (estimate, q) in [(p.p50, 0.5), (p.p95, 0.95)] {
        let truth = values[(q * 999.0) as usize];
        let err = (estimate - truth).abs() / truth;
        assert!(err <= RELATIVE_ACCURACY, "q{q}: {estimate} vs {truth}");
    }
}
