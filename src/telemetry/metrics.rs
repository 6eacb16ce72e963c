//! Prometheus metrics the request path records: every handle registered once, when a policy
//! is loaded, so recording is an index into a vector and an atomic add: no string
//! formatting, no map lookup, no global lock. Rendered at `/metrics` on the admin listener,
//! with the refusal table ([`RefusalCounts`]) and the figures a scrape reads from their
//! owners ([`Collected`]).
//!
//! Label cardinality is bounded by the policy: routes x status classes x workers, routes x
//! outcomes, routes x reasons, rules x results, workers x states. No tenant, path or key is
//! ever a label. Names follow Prometheus conventions (`sloguard_` prefix, base units).

use std::sync::Arc;

use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::collected::Collected;
use super::refusals::RefusalCounts;
use super::MetricsLayout;
use crate::stages::{Reason, ReasonKind};

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
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
const RATE_RESULTS: [&str; 4] = ["allowed", "limited", "shadow_denied", "near_limit"];

/// A route's target, seconds, and its count of served requests slower than it.
type SloCounter = (f64, Counter);

/// The kind of a described metric.
enum Kind {
    Counter,
    Histogram,
}

/// `# HELP` of every registered metric (`sloguard_config_info`, the SLO targets, the process
/// metrics, the refusals and the collected figures write their own at render time). A test
/// checks none is left out.
const HELP: &[(&str, Kind, &str)] = &[
    ("sloguard_requests_total", Kind::Counter, "Requests answered, by route, status class and the worker that answered (none: sloguard did)."),
    ("sloguard_request_duration_seconds", Kind::Histogram, "Time from the request's arrival to its answer, by route and outcome (ok, error: served by a worker; shed, limited, rejected: answered by sloguard)."),
    ("sloguard_requests_over_slo_total", Kind::Counter, "Requests a worker served (outcome ok or error) slower than their route's p95 or p99 target (label slo); over the served requests, a share above 5% (p95) or 1% (p99) misses the SLO."),
    ("sloguard_ratelimit_decisions_total", Kind::Counter, "Rate-limit results, by rule and result."),
    ("sloguard_admission_wait_seconds", Kind::Histogram, "Time admitted requests waited in the admission queue."),
    ("sloguard_config_reloads_total", Kind::Counter, "Policy reloads, by result (error: rejected, the running policy stays)."),
];

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
    /// sloguard's refusals by route and reason (connections under route `-`).
    refusals: RefusalCounts,
    /// [rule][result]
    ratelimit: Vec<Counter>,
    /// [route]: its name and, for [p95, p99], its target in seconds and its count of served
    /// requests slower than it; `None` where the route sets no such target. The targets are
    /// also `sloguard_route_slo_target_seconds`, written by `render` like
    /// `sloguard_config_info`: a route renamed by a reload must not keep a series.
    over_slo: Vec<(String, [Option<SloCounter>; 2])>,
    pub queue_wait: Histogram,
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
    pub fn new(policy: &MetricsLayout) -> Metrics {
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
            refusals: RefusalCounts::new(policy.routes.iter().map(|r| &r.name), None),
            ratelimit: vec![],
            over_slo: vec![],
            queue_wait: recorder
                .register_histogram(&key("sloguard_admission_wait_seconds", &[]), &meta()),
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
    pub fn rebound(&self, policy: &MetricsLayout) -> Metrics {
        let mut m = Metrics {
            handle: self.handle.clone(),
            recorder: self.recorder.clone(),
            routes: 0,
            workers: 0,
            version: self.version.clone(),
            requests: vec![],
            durations: vec![],
            refusals: RefusalCounts::new(
                policy.routes.iter().map(|r| &r.name),
                Some(&self.refusals),
            ),
            ratelimit: vec![],
            over_slo: vec![],
            queue_wait: self.queue_wait.clone(),
            reloads_ok: self.reloads_ok.clone(),
            reloads_error: self.reloads_error.clone(),
        };
        m.bind(policy);
        m
    }

    /// (Re)registers the handles that depend on the policy's routes, rules and workers.
    /// Registering an existing series returns the same series, so counts survive a reload.
    fn bind(&mut self, policy: &MetricsLayout) {
        let r = &self.recorder;
        let routes: Vec<String> = policy.routes.iter().map(|x| x.name.to_string()).collect();
        let workers = policy.workers;
        let mut requests = Vec::new();
        let mut durations = Vec::new();
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
        }
        let over_slo = policy
            .routes
            .iter()
            .map(|route| {
                let targets = route.slo;
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
        for rule in &policy.rules {
            for result in RATE_RESULTS {
                let labels = [("rule", rule.to_string()), ("result", result.to_string())];
                ratelimit.push(r.register_counter(
                    &key("sloguard_ratelimit_decisions_total", &labels),
                    &meta(),
                ));
            }
        }
        // `sloguard_config_info` is written by `render`, not registered: a registered series
        // cannot be removed, so each version ever served stayed (at 0), and the dashboard's
        // count of versions read as pods disagreeing.
        self.version = policy.version.clone();
        self.routes = routes.len();
        self.workers = workers;
        self.requests = requests;
        self.durations = durations;
        self.ratelimit = ratelimit;
        self.over_slo = over_slo;
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

    /// One refusal by sloguard itself: of a request on route `route` (its index in the
    /// policy), or of a connection before routing (a connection reason; `route` unused).
    pub fn record_refusal(&self, route: usize, reason: Reason) {
        self.refusals.count(route, reason);
    }

    /// The refusal table, for the status page.
    pub fn refusals(&self) -> &RefusalCounts {
        &self.refusals
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

    /// The Prometheus text exposition: the registered handles, then what is written at
    /// render time (versions, process, refusals, and the `collected` figures).
    pub fn render(&self, collected: &Collected) -> String {
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
        self.refusals.write_exposition(&mut text);
        collected.write_exposition(&mut text);
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

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
