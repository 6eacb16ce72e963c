//! Prometheus metrics: every handle registered once, when a policy is loaded, so recording
//! on the request path is an index into a vector and an atomic add: no string formatting,
//! no map lookup, no global lock. Rendered at `/metrics` on the admin listener.
//!
//! Label cardinality is bounded by the policy: routes x status classes x workers, routes x
//! outcomes, routes x reasons, rules x results, workers x states. No tenant, path or key is
//! ever a label. Names follow Prometheus conventions (`sloguard_` prefix, base units).

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::config::Policy;
use crate::stages::{Reason, ReasonKind};
use crate::workers::HealthState;

/// Request-duration buckets, seconds: dense around the SLOs (150 ms, 250 ms, 400 ms), and up
/// to the longest timeout a request can wait out (30 s: `read_timeout_ms`'s default), so a
/// request that hung until a timeout lands in a bucket that says so, not in `+Inf`.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.4, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Queue-wait buckets, seconds.
const WAIT_BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25];

/// How a request ended, for the duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Shed,
    Limited,
    Rejected,
}

impl From<ReasonKind> for Outcome {
    fn from(kind: ReasonKind) -> Outcome {
        match kind {
            ReasonKind::Shed => Outcome::Shed,
            ReasonKind::Limited => Outcome::Limited,
            ReasonKind::Rejected => Outcome::Rejected,
            ReasonKind::Failed => Outcome::Error,
        }
    }
}

const OUTCOMES: [&str; 5] = ["ok", "error", "shed", "limited", "rejected"];
/// The targets a route's `slo` may set, as the `slo` label (a p95 target allows 5% of the
/// served requests over it, a p99 target 1%: the alert's thresholds).
const SLO_TARGETS: [&str; 2] = ["p95", "p99"];
/// Each route's targets, one series per route and target of the policy serving now.
const SLO_TARGET_GAUGE: &str = "sloguard_route_slo_target_seconds";
/// Written at render time (see [`held_up_exposition`]).
const HELD_UP_COUNTER: &str = "sloguard_loop_held_up_seconds_total";
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// The `route` label of connection refusals (the access log's "no route" too).
pub const NO_ROUTE: &str = "-";
const RATE_RESULTS: [&str; 4] = ["allowed", "limited", "shadow_denied", "near_limit"];
const STATES: [HealthState; 3] = [
    HealthState::Healthy,
    HealthState::Suspect,
    HealthState::Ejected,
];

/// A route's target, seconds, and its count of served requests slower than it.
type SloCounter = (f64, Counter);

/// The kind of a described metric.
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// `# HELP` of every registered metric (`sloguard_config_info`, the SLO targets and the
/// process metrics write their own at render time). A test checks none is left out.
const HELP: &[(&str, Kind, &str)] = &[
    ("sloguard_requests_total", Kind::Counter, "Requests answered, by route, status class and the worker that answered (none: sloguard did)."),
    ("sloguard_request_duration_seconds", Kind::Histogram, "Time from the request's arrival to its answer, by route and outcome (ok, error: served by a worker; shed, limited, rejected: answered by sloguard)."),
    ("sloguard_requests_over_slo_total", Kind::Counter, "Requests a worker served (outcome ok or error) slower than their route's p95 or p99 target (label slo); over the served requests, a share above 5% (p95) or 1% (p99) misses the SLO."),
    ("sloguard_shed_total", Kind::Counter, "Requests shed by admission (503), by route and reason."),
    ("sloguard_rejections_total", Kind::Counter, "Requests and connections refused by sloguard for another reason than shedding (limits, rate limits, bad input, upstream failures), by route (- before routing) and reason."),
    ("sloguard_ratelimit_decisions_total", Kind::Counter, "Rate-limit results, by rule and result."),
    ("sloguard_ratelimit_redis_errors_total", Kind::Counter, "Rate-limit calls to Redis that failed or timed out."),
    ("sloguard_ratelimit_fallback_active", Kind::Gauge, "1 while rate limits run on the fallback because Redis is unreachable."),
    ("sloguard_worker_state", Kind::Gauge, "1 for the state each worker is in (healthy, suspect, ejected)."),
    ("sloguard_worker_in_flight", Kind::Gauge, "Requests in flight on each worker."),
    ("sloguard_worker_concurrency_limit", Kind::Gauge, "Each worker's learnt concurrency limit."),
    ("sloguard_worker_latency_seconds", Kind::Gauge, "Each worker's latency estimate (peak EWMA of its answers and probes)."),
    ("sloguard_worker_loop_lag_seconds", Kind::Gauge, "Each worker's last reported event-loop lag."),
    ("sloguard_worker_probe_seconds", Kind::Gauge, "Each worker's last health-probe latency."),
    ("sloguard_worker_ejections_total", Kind::Counter, "Times each worker was ejected."),
    ("sloguard_admission_queue_depth", Kind::Gauge, "Requests waiting in the admission queue."),
    ("sloguard_admission_wait_seconds", Kind::Histogram, "Time admitted requests waited in the admission queue."),
    ("sloguard_retries_total", Kind::Counter, "Requests sent again to another worker after a failure."),
    ("sloguard_hedges_total", Kind::Counter, "Hedged requests: second attempts launched, and second attempts that answered first."),
    ("sloguard_config_reloads_total", Kind::Counter, "Policy reloads, by result (error: rejected, the running policy stays)."),
    ("sloguard_local_failures_total", Kind::Counter, "Operations that failed for want of a local resource (descriptors, memory, ports), by cause."),
    ("sloguard_accept_failures_total", Kind::Counter, "Failed accepts on the listeners, by cause."),
    ("sloguard_client_connections", Kind::Gauge, "Client connections open."),
    ("sloguard_client_connections_max", Kind::Gauge, "Most client connections accepted at once (limits.max_connections)."),
    ("sloguard_log_lines_suppressed_total", Kind::Counter, "Repeated log lines held back by the per-line rate limit."),
    ("sloguard_loop_lateness_seconds", Kind::Gauge, "How late sloguard's own event loops run (the worst timer lateness of the last 50-100 ms): a sidecar short of CPU."),
];

/// What [`Metrics::set_process`] exports.
#[derive(Debug, Clone, Default)]
pub struct ProcessStats {
    pub local_failures: Vec<(&'static str, u64)>,
    pub accept_failures: Vec<(&'static str, u64)>,
    pub connections_open: u32,
    pub connections_max: u32,
    pub log_lines_suppressed: u64,
    /// How late sloguard's own event loops run (see `proxy::self_lag`), seconds.
    pub loop_lateness: f64,
}

/// One worker's gauges.
pub struct WorkerMetrics {
    pub state: [Gauge; 3],
    pub in_flight: Gauge,
    pub limit: Gauge,
    pub latency: Gauge,
    pub lag: Gauge,
    pub probe: Gauge,
    pub ejections: Counter,
}

/// The registered handles for one policy.
pub struct Metrics {
    handle: PrometheusHandle,
    /// Shared by every rebinding, so series (and their counts) survive a reload.
    recorder: Arc<PrometheusRecorder>,
    routes: usize,
    workers: usize,
    /// The policy version these handles were bound to (its info gauge is 1).
    version: String,
    /// [route][class][worker 0 = none, 1..=N]
    requests: Vec<Counter>,
    /// [route][outcome]
    durations: Vec<Histogram>,
    /// [route][request reason] (`sloguard_shed_total` for a shed reason, else
    /// `sloguard_rejections_total`), indexed by the reason's discriminant.
    refusals: Vec<Counter>,
    /// [connection reason]: policy-independent, registered once, route `-`.
    connection_refusals: Vec<Counter>,
    /// [rule][result]
    ratelimit: Vec<Counter>,
    /// [route]: its name and, for [p95, p99], its target in seconds and its count of served
    /// requests slower than it; `None` where the route sets no such target. The targets are
    /// also `sloguard_route_slo_target_seconds`, written by `render` like
    /// `sloguard_config_info`: a route renamed by a reload must not keep a series.
    over_slo: Vec<(String, [Option<SloCounter>; 2])>,
    pub worker: Vec<WorkerMetrics>,
    pub queue_depth: Gauge,
    pub queue_wait: Histogram,
    pub retries: Counter,
    /// Hedged requests: second attempts sent, and second attempts that answered first.
    pub hedges_launched: Counter,
    pub hedges_won: Counter,
    pub redis_errors: Counter,
    pub fallback_active: Gauge,
    reloads_ok: Counter,
    reloads_error: Counter,
}

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect::<Vec<_>>(),
    )
}

impl Metrics {
    /// A recorder with explicit buckets (the exporter would otherwise render summaries).
    pub fn new(policy: &Policy) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("sloguard_request_duration_seconds".into()),
                &DURATION_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("sloguard_admission_wait_seconds".into()),
                    &WAIT_BUCKETS,
                )
            })
            .expect("bucket lists are constant and non-empty")
            .build_recorder();
        for (name, kind, help) in HELP {
            let (name, help) = ((*name).into(), (*help).into());
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        let mut m = Metrics {
            handle,
            routes: 0,
            workers: 0,
            version: String::new(),
            requests: vec![],
            durations: vec![],
            refusals: vec![],
            ratelimit: vec![],
            over_slo: vec![],
            worker: vec![],
            connection_refusals: Reason::connection_reasons()
                .iter()
                .map(|reason| {
                    let labels = [("route", NO_ROUTE.into()), ("reason", reason.to_string())];
                    recorder.register_counter(&key("sloguard_rejections_total", &labels), &meta())
                })
                .collect(),
            queue_depth: recorder
                .register_gauge(&key("sloguard_admission_queue_depth", &[]), &meta()),
            queue_wait: recorder
                .register_histogram(&key("sloguard_admission_wait_seconds", &[]), &meta()),
            retries: recorder.register_counter(&key("sloguard_retries_total", &[]), &meta()),
            hedges_launched: recorder.register_counter(
                &key("sloguard_hedges_total", &[("result", "launched".into())]),
                &meta(),
            ),
            hedges_won: recorder.register_counter(
                &key("sloguard_hedges_total", &[("result", "won".into())]),
                &meta(),
            ),
            redis_errors: recorder
                .register_counter(&key("sloguard_ratelimit_redis_errors_total", &[]), &meta()),
            fallback_active: recorder
                .register_gauge(&key("sloguard_ratelimit_fallback_active", &[]), &meta()),
            reloads_ok: recorder.register_counter(
                &key("sloguard_config_reloads_total", &[("result", "ok".into())]),
                &meta(),
            ),
            reloads_error: recorder.register_counter(
                &key(
                    "sloguard_config_reloads_total",
                    &[("result", "error".into())],
                ),
                &meta(),
            ),
            recorder: Arc::new(recorder),
        };
        m.bind(policy);
        m
    }

    /// Handles for a reloaded policy on the same recorder.
    pub fn rebound(&self, policy: &Policy) -> Metrics {
        let mut m = Metrics {
            handle: self.handle.clone(),
            recorder: self.recorder.clone(),
            routes: 0,
            workers: 0,
            version: self.version.clone(),
            requests: vec![],
            durations: vec![],
            refusals: vec![],
            ratelimit: vec![],
            over_slo: vec![],
            worker: vec![],
            connection_refusals: self.connection_refusals.clone(),
            queue_depth: self.queue_depth.clone(),
            queue_wait: self.queue_wait.clone(),
            retries: self.retries.clone(),
            hedges_launched: self.hedges_launched.clone(),
            hedges_won: self.hedges_won.clone(),
            redis_errors: self.redis_errors.clone(),
            fallback_active: self.fallback_active.clone(),
            reloads_ok: self.reloads_ok.clone(),
            reloads_error: self.reloads_error.clone(),
        };
        m.bind(policy);
        m
    }

    /// (Re)registers the handles that depend on the policy's routes, rules and workers.
    /// Registering an existing series returns the same series, so counts survive a reload.
    pub fn bind(&mut self, policy: &Policy) {
        let r = &self.recorder;
        let routes: Vec<String> = policy.routes.iter().map(|x| x.name.to_string()).collect();
        let workers = policy.upstream.workers.len();
        let mut requests = Vec::new();
        let mut durations = Vec::new();
        let mut refusals = Vec::new();
        for route in &routes {
            for class in CLASSES {
                for w in 0..=workers {
                    let worker = if w == 0 {
                        "none".to_string()
                    } else {
                        w.to_string()
                    };
                    let labels = [
                        ("route", route.clone()),
                        ("status_class", class.to_string()),
                        ("worker", worker),
                    ];
                    requests.push(
                        r.register_counter(&key("sloguard_requests_total", &labels), &meta()),
                    );
                }
            }
            for outcome in OUTCOMES {
                let labels = [("route", route.clone()), ("outcome", outcome.to_string())];
                durations.push(r.register_histogram(
                    &key("sloguard_request_duration_seconds", &labels),
                    &meta(),
                ));
            }
            for reason in Reason::request_reasons() {
                let name = match reason.kind(0) {
                    ReasonKind::Shed => "sloguard_shed_total",
                    _ => "sloguard_rejections_total",
                };
                let labels = [("route", route.clone()), ("reason", reason.to_string())];
                refusals.push(r.register_counter(&key(name, &labels), &meta()));
            }
        }
        let over_slo = policy
            .routes
            .iter()
            .map(|route| {
                let targets = route.slo.map_or([None, None], |s| [s.p95, s.p99]);
                let counters = std::array::from_fn(|i| {
                    let target = targets[i]?.as_secs_f64();
                    let labels = [
                        ("route", route.name.to_string()),
                        ("slo", SLO_TARGETS[i].to_string()),
                    ];
                    let name = key("sloguard_requests_over_slo_total", &labels);
                    Some((target, r.register_counter(&name, &meta())))
                });
                (route.name.to_string(), counters)
            })
            .collect();
        let mut ratelimit = Vec::new();
        for rule in &policy.ratelimit.rules {
            for result in RATE_RESULTS {
                let labels = [
                    ("rule", rule.name.to_string()),
                    ("result", result.to_string()),
                ];
                ratelimit.push(r.register_counter(
                    &key("sloguard_ratelimit_decisions_total", &labels),
                    &meta(),
                ));
            }
        }
        let worker = (1..=workers)
            .map(|w| {
                let id = || [("worker", w.to_string())];
                let g = |name| r.register_gauge(&key(name, &id()), &meta());
                WorkerMetrics {
                    state: STATES.map(|s| {
                        r.register_gauge(
                            &key(
                                "sloguard_worker_state",
                                &[("worker", w.to_string()), ("state", s.as_str().to_string())],
                            ),
                            &meta(),
                        )
                    }),
                    in_flight: g("sloguard_worker_in_flight"),
                    limit: g("sloguard_worker_concurrency_limit"),
                    latency: g("sloguard_worker_latency_seconds"),
                    lag: g("sloguard_worker_loop_lag_seconds"),
                    probe: g("sloguard_worker_probe_seconds"),
                    ejections: r
                        .register_counter(&key("sloguard_worker_ejections_total", &id()), &meta()),
                }
            })
            .collect();
        // `sloguard_config_info` is written by `render`, not registered: a registered series
        // cannot be removed, so each version ever served stayed (at 0), and the dashboard's
        // count of versions read as pods disagreeing.
        self.version = policy.version.clone();
        self.routes = routes.len();
        self.workers = workers;
        self.requests = requests;
        self.durations = durations;
        self.refusals = refusals;
        self.ratelimit = ratelimit;
        self.over_slo = over_slo;
        self.worker = worker;
    }

    /// One finished request: its route index, status, answering worker (1-based), outcome
    /// and total time.
    pub fn record_request(
        &self,
        route: usize,
        status: u16,
        worker: Option<usize>,
        outcome: Outcome,
        seconds: f64,
    ) {
        if route >= self.routes {
            return;
        }
        let class = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        let w = worker.filter(|w| *w <= self.workers).unwrap_or(0);
        self.requests[(route * CLASSES.len() + class) * (self.workers + 1) + w].increment(1);
        self.durations[route * OUTCOMES.len() + outcome as usize].record(seconds);
        // Served requests only: refusals are answered in a millisecond and have their own
        // counters (as the latency panels and alerts judge them).
        if matches!(outcome, Outcome::Ok | Outcome::Error) {
            for (target, over) in self.over_slo[route].1.iter().flatten() {
                if seconds > *target {
                    over.increment(1);
                }
            }
        }
    }

    /// One refusal of a routed request by sloguard itself.
    pub fn record_refusal(&self, route: usize, reason: Reason) {
        if route < self.routes && !reason.is_connection() {
            self.refusals[route * Reason::REQUEST_COUNT + reason as usize].increment(1);
        }
    }

    /// The process's own resources, copied from their counters by the monitor: local
    /// failures per cause (`sloguard_local_failures_total`), failed accepts per cause
    /// (`sloguard_accept_failures_total`), client connections open and
    /// their cap, and log lines the per-site log limit suppressed.
    pub fn set_process(&self, p: &ProcessStats) {
        let r = &self.recorder;
        for (name, counts) in [
            ("sloguard_local_failures_total", &p.local_failures),
            ("sloguard_accept_failures_total", &p.accept_failures),
        ] {
            for (cause, n) in counts {
                r.register_counter(&key(name, &[("cause", cause.to_string())]), &meta())
                    .absolute(*n);
            }
        }
        r.register_gauge(&key("sloguard_client_connections", &[]), &meta())
            .set(f64::from(p.connections_open));
        r.register_gauge(&key("sloguard_client_connections_max", &[]), &meta())
            .set(f64::from(p.connections_max));
        r.register_counter(&key("sloguard_log_lines_suppressed_total", &[]), &meta())
            .absolute(p.log_lines_suppressed);
        r.register_gauge(&key("sloguard_loop_lateness_seconds", &[]), &meta())
            .set(p.loop_lateness);
    }

    /// One connection refused before any request on it was routed.
    pub fn record_connection_refusal(&self, reason: Reason) {
        if reason.is_connection() {
            self.connection_refusals[reason as usize - Reason::REQUEST_COUNT].increment(1);
        }
    }

    /// One rate-limit result for rule `rule` (its index in the policy).
    pub fn record_rate(&self, rule: usize, result: &str) {
        if let Some(i) = RATE_RESULTS.iter().position(|r| *r == result) {
            if let Some(c) = self.ratelimit.get(rule * RATE_RESULTS.len() + i) {
                c.increment(1);
            }
        }
    }

    pub fn record_reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_error
        }
        .increment(1);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        // One series a process: the version serving now (policy versions are hex digests,
        // nothing to escape).
        text.push_str(&format!(
            "# HELP sloguard_config_info The policy version serving now.\n\
             # TYPE sloguard_config_info gauge\n\
             sloguard_config_info{{version=\"{}\"}} 1\n",
            self.version
        ));
        text.push_str(&format!(
            "# HELP sloguard_build_info The sloguard release serving.\n\
             # TYPE sloguard_build_info gauge\n\
             sloguard_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ));
        text.push_str(&super::process::render());
        text.push_str(&held_up_exposition(&crate::proxy::held_up_totals()));
        // Route names are letters, digits, '_' and '-' (policy validation): nothing to
        // escape.
        let targets: Vec<String> = self
            .over_slo
            .iter()
            .flat_map(|(route, per_slo)| {
                per_slo.iter().zip(SLO_TARGETS).filter_map(move |(t, slo)| {
                    let (seconds, _) = t.as_ref()?;
                    Some(format!(
                        "{SLO_TARGET_GAUGE}{{route=\"{route}\",slo=\"{slo}\"}} {seconds}\n"
                    ))
                })
            })
            .collect();
        if !targets.is_empty() {
            text.push_str(&format!(
                "# HELP {SLO_TARGET_GAUGE} Each route's latency targets, from the policy \
                 serving now.\n# TYPE {SLO_TARGET_GAUGE} gauge\n"
            ));
            text.extend(targets);
        }
        text
    }

    /// Drains histogram buffers so memory stays flat between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// `sloguard_loop_held_up_seconds_total`, one series per proxy thread, in seconds (the
/// recorder's counters are whole numbers, too coarse for this): written at render time from
/// the threads' own totals, so it is exact and costs the request path nothing.
fn held_up_exposition(per_thread: &[std::time::Duration]) -> String {
    if per_thread.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "# HELP {HELD_UP_COUNTER} How long each proxy thread's event loop was kept from \
         running (its timer lateness beyond 1 ms, summed): the rate is the share of the time \
         sloguard could not read requests, a sidecar short of CPU.\n\
         # TYPE {HELD_UP_COUNTER} counter\n"
    );
    for (thread, held) in per_thread.iter().enumerate() {
        text.push_str(&format!(
            "{HELD_UP_COUNTER}{{thread=\"{thread}\"}} {}\n",
            held.as_secs_f64()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn policy() -> Policy {
        Policy::parse(
            r#"
[listen]
proxy = "127.0.0.1:1"
admin = "127.0.0.1:2"
[upstream]
workers = ["127.0.0.1:3", "127.0.0.1:4"]
[[route]]
name = "ingest"
match = { method = "POST" }
[[ratelimit.rule]]
name = "t"
key = "client_ip"
rate = 1
"#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn records_land_on_the_right_series_with_buckets() {
        let m = Metrics::new(&policy());
        m.record_request(0, 202, Some(2), Outcome::Ok, 0.012);
        m.record_request(1, 503, None, Outcome::Shed, 0.001);
        m.record_refusal(1, Reason::QueueTimeout);
        m.record_refusal(0, Reason::BodyTooLarge);
        m.record_rate(0, "limited");
        m.record_reload(false);
        m.record_connection_refusal(Reason::HeaderTimeout);
        let text = m.render();
        assert!(
            text.contains(
                r#"sloguard_requests_total{route="ingest",status_class="2xx",worker="2"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"sloguard_requests_total{route="default",status_class="5xx",worker="none"} 1"#
        ));
        assert!(text.contains(
            r#"sloguard_request_duration_seconds_bucket{route="ingest",outcome="ok",le="0.025"} 1"#
        ));
        assert!(text.contains(r#"sloguard_shed_total{route="default",reason="queue_timeout"} 1"#));
        assert!(
            text.contains(r#"sloguard_rejections_total{route="ingest",reason="body_too_large"} 1"#)
        );
        assert!(text.contains(r#"sloguard_ratelimit_decisions_total{rule="t",result="limited"} 1"#));
        assert!(text.contains(r#"sloguard_config_reloads_total{result="error"} 1"#));
        assert!(
            text.contains(r#"sloguard_rejections_total{route="-",reason="header_timeout"} 1"#),
            "{text}"
        );
        assert!(text
            .contains(r#"sloguard_rejections_total{route="-",reason="too_many_connections"} 0"#));
        assert!(text.contains("sloguard_config_info{version="));
    }

    fn with_slo(p95_ms: u64) -> Policy {
        let text = format!(
            r#"
[listen]
proxy = "127.0.0.1:1"
admin = "127.0.0.1:2"
[upstream]
workers = ["127.0.0.1:3"]
[[route]]
name = "ingest"
match = {{ method = "POST" }}
slo = {{ p95_ms = {p95_ms}, p99_ms = 400 }}
[[route]]
name = "query"
match = {{ method = "GET" }}
"#
        );
        Policy::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn served_requests_over_their_routes_targets_are_counted_per_target() {
        let m = Metrics::new(&with_slo(150));
        for (outcome, seconds) in [
            (Outcome::Ok, 0.1),
            (Outcome::Ok, 0.2),
            (Outcome::Error, 0.5),
            // Refusals are not judged against the SLO, however late.
            (Outcome::Shed, 0.3),
            (Outcome::Limited, 0.9),
        ] {
            m.record_request(0, 200, Some(1), outcome, seconds);
        }
        m.record_request(1, 200, Some(1), Outcome::Ok, 9.0);
        let text = m.render();
        for series in [
            r#"sloguard_requests_over_slo_total{route="ingest",slo="p95"} 2"#,
            r#"sloguard_requests_over_slo_total{route="ingest",slo="p99"} 1"#,
            r#"sloguard_route_slo_target_seconds{route="ingest",slo="p95"} 0.15"#,
            r#"sloguard_route_slo_target_seconds{route="ingest",slo="p99"} 0.4"#,
            "# HELP sloguard_requests_over_slo_total Requests a worker served",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        // No target, no series.
        assert!(!text.contains(r#"route="query",slo="#), "{text}");
        // A reload that moves the target: the count stays, the target follows.
        let m = m.rebound(&with_slo(100));
        m.record_request(0, 200, Some(1), Outcome::Ok, 0.12);
        let text = m.render();
        assert!(text.contains(r#"sloguard_requests_over_slo_total{route="ingest",slo="p95"} 3"#));
        let targets: Vec<_> = text
            .lines()
            .filter(|l| {
                l.starts_with("sloguard_route_slo_target_seconds{route=\"ingest\",slo=\"p95\"}")
            })
            .collect();
        assert_eq!(
            targets,
            [r#"sloguard_route_slo_target_seconds{route="ingest",slo="p95"} 0.1"#]
        );
    }

    /// Every metric in `/metrics` says what it is: a `# HELP` line for each name, the
    /// registered ones from [`HELP`], the rendered ones their own.
    #[test]
    fn every_metric_has_help() {
        let m = Metrics::new(&with_slo(150));
        m.set_process(&ProcessStats {
            local_failures: vec![("fd_limit", 1)],
            accept_failures: vec![("shortage", 1)],
            ..ProcessStats::default()
        });
        m.record_request(0, 200, Some(1), Outcome::Ok, 0.01);
        m.queue_wait.record(0.001);
        let text = m.render();
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(n)
            })
            .collect();
        assert!(names.len() > 25, "{names:?}");
        for name in names {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP line"
            );
        }
        assert!(text.contains("sloguard_build_info{version=\""));
        assert!(text.contains("sloguard_loop_lateness_seconds 0"));
    }

    #[test]
    fn config_info_names_only_the_version_serving_now() {
        let m = Metrics::new(&policy());
        let mut next = policy();
        next.version = "0123456789abcdef".into();
        let m = m.rebound(&next);
        let text = m.render();
        let series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("sloguard_config_info"))
            .collect();
        assert_eq!(
            series,
            [r#"sloguard_config_info{version="0123456789abcdef"} 1"#],
            "{text}"
        );
    }

    /// Every reason lands on its own series, under the metric its kind names: none is
    /// left out (`bad_chunked_body` once was) and none is counted under another's label.
    #[test]
    fn every_reason_is_counted_under_its_own_label() {
        let m = Metrics::new(&policy());
        for (i, reason) in Reason::ALL.iter().enumerate() {
            for _ in 0..=i {
                if reason.is_connection() {
                    m.record_connection_refusal(*reason);
                } else {
                    m.record_refusal(0, *reason);
                }
            }
        }
        let text = m.render();
        for (i, reason) in Reason::ALL.iter().enumerate() {
            let (name, route) = match (reason.is_connection(), reason.kind(503)) {
                (true, _) => ("sloguard_rejections_total", "-"),
                (false, ReasonKind::Shed) => ("sloguard_shed_total", "ingest"),
                (false, _) => ("sloguard_rejections_total", "ingest"),
            };
            let series = format!(r#"{name}{{route="{route}",reason="{reason}"}} {}"#, i + 1);
            assert!(text.contains(&series), "{series} missing");
        }
    }

    #[test]
    fn the_series_count_at_the_default_policy_stays_bounded() {
        let p = Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sloguard.toml"))
            .unwrap();
        let m = Metrics::new(&p);
        let series = m
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        assert!(series < 1500, "{series} series");
    }

    #[test]
    fn held_up_time_is_a_counter_per_thread_in_seconds() {
        assert_eq!(held_up_exposition(&[]), "", "no proxy thread has run yet");
        let text = held_up_exposition(&[Duration::from_millis(1500), Duration::from_micros(250)]);
        assert!(text.contains("# TYPE sloguard_loop_held_up_seconds_total counter\n"));
        assert!(text.contains("sloguard_loop_held_up_seconds_total{thread=\"0\"} 1.5\n"));
        assert!(text.contains("sloguard_loop_held_up_seconds_total{thread=\"1\"} 0.00025\n"));
    }
}
