//! Micro-benchmarks of the per-request decision paths: route match, worker choice, the
//! concurrency limiter, the peak-EWMA estimate, the admission wait queue, the in-process
//! rate limit (GCRA) and the JSON guard's scan (per KB of a typical event body). Run with
//! `cargo bench --bench decisions`; `sloguard-bench all` runs them with short times and
//! copies the estimates into BENCHMARKS.md.

// Not the proxy: a benchmark harness that reads the clock as it needs to.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Throughput;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use sloguard::stages::admission::queue::WaitQueue;
use sloguard::stages::json_scan::{JsonLimits, JsonScanner, JsonVerdict};
use sloguard::stages::ratelimit::gcra::{Gcra, LocalStore};
use sloguard::stages::route::{Priority, Route, RouteMatch, RouteTable};
use sloguard::workers::ewma::PeakEwma;
use sloguard::workers::limiter::{ConcurrencyLimiter, LimiterConfig, Sample};
use sloguard::workers::{pick_least_loaded, pick_p2c, Tried};

/// The shipped policy's routes: ingest, query, then the default.
fn routes() -> RouteTable {
    let route = |name: &str, method: Method, prefix: &str, priority| Route {
        name: Arc::from(name),
        matcher: RouteMatch {
            method: Some(method),
            path_prefix: Some(prefix.into()),
            path: None,
        },
        priority,
        ..Route::implicit_default()
    };
    RouteTable::new(
        vec![
            route("ingest", Method::POST, "/v1/events", Priority::Critical),
            route("query", Method::GET, "/v1/metrics", Priority::Normal),
        ],
        Route::implicit_default(),
    )
}

fn route_match(c: &mut Criterion) {
    let t = routes();
    let mut g = c.benchmark_group("route_match");
    g.bench_function("first_route", |b| {
        b.iter(|| t.match_request(black_box(&Method::POST), black_box("/v1/events")))
    });
    g.bench_function("second_route", |b| {
        b.iter(|| t.match_request(black_box(&Method::GET), black_box("/v1/metrics")))
    });
    g.bench_function("default", |b| {
        b.iter(|| t.match_request(black_box(&Method::DELETE), black_box("/other/path")))
    });
    g.finish();
}

fn worker_choice(c: &mut Criterion) {
    let mut g = c.benchmark_group("worker_choice");
    let costs = [(0, 1.5), (1, 0.9), (2, 250.0), (3, 1.1)];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function("pick_p2c_4", |b| {
        b.iter(|| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            pick_p2c(black_box(&costs), seed)
        })
    });
    let loads = [3usize, 1, 7, 1];
    g.bench_function("pick_least_loaded_4", |b| {
        b.iter(|| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            pick_least_loaded(black_box(loads).into_iter(), black_box(Tried::of(2)), seed)
        })
    });
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let cfg = LimiterConfig::default();
    let start = Instant::now();
    let mut lim = ConcurrencyLimiter::new(&cfg, start);
    let mut n = 0u64;
    c.bench_function("limiter_on_sample", |b| {
        b.iter(|| {
            // 1 ms apart, so a window closes (and the limit is recomputed) every 100 calls.
            n += 1;
            let s = Sample {
                rtt: Duration::from_micros(800 + n % 400),
                in_flight_before: (n % 6) as usize,
                lag: Some(Duration::from_millis(n % 3)),
            };
            lim.on_sample(&cfg, black_box(s), start + Duration::from_millis(n))
        })
    });
}

fn ewma(c: &mut Criterion) {
    let start = Instant::now();
    let mut e = PeakEwma::new(Duration::from_secs(1), Duration::from_millis(1), start);
    let mut n = 0u64;
    c.bench_function("peak_ewma_observe", |b| {
        b.iter(|| {
            n += 1;
            e.observe(
                black_box(Duration::from_micros(500 + n % 1000)),
                start + Duration::from_micros(n * 100),
            );
            e.estimate()
        })
    });
}

fn wait_queue(c: &mut Criterion) {
    let start = Instant::now();
    let mut q: WaitQueue<u64> = WaitQueue::default();
    // A standing backlog of 32 waiters across the three priorities, far from their deadline.
    let deadline = start + Duration::from_secs(3600);
    let prio = |i: u64| match i % 3 {
        0 => Priority::Critical,
        1 => Priority::Normal,
        _ => Priority::Sheddable,
    };
    for i in 0..32 {
        q.push(prio(i), deadline, start, i);
    }
    let mut expired = Vec::new();
    let mut n = 32u64;
    c.bench_function("wait_queue_push_pop_32", |b| {
        b.iter(|| {
            n += 1;
            q.push(prio(n), deadline, start, n);
            let e = q.pop_next(
                start + Duration::from_millis(1),
                false,
                Duration::from_millis(5),
                &mut expired,
                |_, _| true,
            );
            expired.clear();
            black_box(e.map(|e| e.payload))
        })
    });
}

/// One in-process rate-limit decision for one of 50 tenants (a map lookup and a GCRA step).
fn gcra_local(c: &mut Criterion) {
    let gcra = Gcra::new(100.0, 1_000_000, 20);
    let store = LocalStore::default();
    let keys: Vec<String> = (0..50)
        .map(|t| format!("sg:per-tenant:tenant-{t}"))
        .collect();
    let mut now = 1_000_000u64;
    let mut i = 0usize;
    c.bench_function("ratelimit_local_decide", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            now += 100;
            black_box(store.decide(&keys[i], &gcra, now))
        })
    });
}

/// The JSON guard over 1 KiB of event documents (the shipped `ingest` limits), fed whole.
fn json_scan(c: &mut Criterion) {
    let limits = JsonLimits {
        max_depth: Some(16),
        max_keys: Some(256),
        max_array_len: Some(1000),
        max_string_bytes: Some(8192),
    };
    let event = r#"{"customer_id":"tenant-7","event":"page_view","ts":1700000000007,"value":7.5,"dimensions":{"country":"fr","device":"ios","plan":"pro","page":"/pricing"}}"#;
    let mut body = String::from("[");
    while body.len() + event.len() + 2 < 1024 {
        if body.len() > 1 {
            body.push(',');
        }
        body.push_str(event);
    }
    body.push(']');
    let body = body.into_bytes();
    let mut g = c.benchmark_group("json_scan");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("scan_1kib", |b| {
        b.iter(|| {
            let mut s = JsonScanner::new(limits);
            let v = s.feed(black_box(&body));
            assert_eq!(v, JsonVerdict::Continue);
            black_box(s.finish())
        })
    });
}

criterion_group!(
    benches,
    route_match,
    worker_choice,
    limiter,
    ewma,
    wait_queue,
    gcra_local,
    json_scan
);
criterion_main!(benches);
