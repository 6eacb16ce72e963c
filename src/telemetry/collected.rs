//! What `/metrics` reads from its owners when it is scraped, instead of a loop copying it
//! into registered handles: each worker's state and estimates, the queue, retries and
//! hedges, the rate limiter's Redis errors, and the process's own resources. Each figure is
//! kept once, by the module that decides it; a scrape samples it (as a Prometheus client
//! library's collector does), so a counter here is exactly its owner's count and nothing
//! runs while nobody looks.
//!
//! The admin listener builds a [`Collected`] from the live state; this module only writes
//! the exposition, so it is tested on fixed values.

use std::fmt::{Display, Write};
use std::time::Duration;

use crate::workers::HealthState;

const STATES: [HealthState; 3] = [
    HealthState::Healthy,
    HealthState::Suspect,
    HealthState::Ejected,
];

/// One worker as a scrape sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSample {
    pub state: HealthState,
    pub in_flight: usize,
    pub limit: u32,
    pub latency: Duration,
    /// Its last reported event-loop lag (0 until one is reported).
    pub lag: Duration,
    /// Its last successful probe's latency (a failed probe keeps the last success's figure;
    /// the failure shows in its state).
    pub probe: Option<Duration>,
    pub ejections: u64,
}

/// Everything a scrape reads besides the registered handles of [`super::Metrics`].
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// In worker order (label `worker` is the 1-based position).
    pub workers: Vec<WorkerSample>,
    pub queue_depth: usize,
    pub retries: u64,
    pub hedges_launched: u64,
    pub hedges_won: u64,
    pub redis_errors: u64,
    pub fallback_active: bool,
    pub local_failures: Vec<(&'static str, u64)>,
    pub accept_failures: Vec<(&'static str, u64)>,
    pub connections_open: u32,
    pub connections_max: u32,
    pub log_lines_suppressed: u64,
    /// How late sloguard's own event loops run (see `proxy::self_lag`).
    pub loop_lateness: Duration,
    /// Per proxy thread: how long its event loop was kept from running.
    pub held_up: Vec<Duration>,
}

/// Writes one family's `# HELP` and `# TYPE`, then its samples (`labels` already rendered,
/// empty for none).
pub(super) fn family<V: Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn one<V: Display>(value: V) -> [(String, V); 1] {
    [(String::new(), value)]
}

impl Collected {
    /// The exposition of every collected family.
    pub fn write_exposition(&self, out: &mut String) {
        let workers = || self.workers.iter().enumerate().map(|(i, w)| (i + 1, w));
        let by_worker = |w: usize| format!("worker=\"{w}\"");
        family(
            out,
            "sloguard_worker_state",
            "gauge",
            "1 for the state each worker is in (healthy, suspect, ejected).",
            workers().flat_map(|(i, w)| {
                STATES.map(|s| {
                    let labels = format!("worker=\"{i}\",state=\"{}\"", s.as_str());
                    (labels, u8::from(w.state == s))
                })
            }),
        );
        family(
            out,
            "sloguard_worker_in_flight",
            "gauge",
            "Requests in flight on each worker.",
            workers().map(|(i, w)| (by_worker(i), w.in_flight)),
        );
        family(
            out,
            "sloguard_worker_concurrency_limit",
            "gauge",
            "Each worker's learnt concurrency limit.",
            workers().map(|(i, w)| (by_worker(i), w.limit)),
        );
        family(
            out,
            "sloguard_worker_latency_seconds",
            "gauge",
            "Each worker's latency estimate (peak EWMA of its answers and probes).",
            workers().map(|(i, w)| (by_worker(i), w.latency.as_secs_f64())),
        );
        family(
            out,
            "sloguard_worker_loop_lag_seconds",
            "gauge",
            "Each worker's last reported event-loop lag.",
            workers().map(|(i, w)| (by_worker(i), w.lag.as_secs_f64())),
        );
        family(
            out,
            "sloguard_worker_probe_seconds",
            "gauge",
            "Each worker's last successful health-probe latency.",
            workers().filter_map(|(i, w)| Some((by_worker(i), w.probe?.as_secs_f64()))),
        );
        family(
            out,
            "sloguard_worker_ejections_total",
            "counter",
            "Times each worker was ejected.",
            workers().map(|(i, w)| (by_worker(i), w.ejections)),
        );
        family(
            out,
            "sloguard_admission_queue_depth",
            "gauge",
            "Requests waiting in the admission queue.",
            one(self.queue_depth),
        );
        family(
            out,
            "sloguard_retries_total",
            "counter",
            "Requests sent again to another worker after a failure.",
            one(self.retries),
        );
        family(
            out,
            "sloguard_hedges_total",
            "counter",
            "Hedged requests: second attempts launched, and second attempts that answered first.",
            [
                ("result=\"launched\"".to_string(), self.hedges_launched),
                ("result=\"won\"".to_string(), self.hedges_won),
            ],
        );
        family(
            out,
            "sloguard_ratelimit_redis_errors_total",
            "counter",
            "Rate-limit calls to Redis that failed or timed out (counted by the limiter of the Redis settings in force: new settings start from 0).",
            one(self.redis_errors),
        );
        family(
            out,
            "sloguard_ratelimit_fallback_active",
            "gauge",
            "1 while rate limits run on the fallback because Redis is unreachable.",
            one(u8::from(self.fallback_active)),
        );
        let by_cause = |counts: &[(&'static str, u64)]| {
            counts
                .iter()
                .map(|(cause, n)| (format!("cause=\"{cause}\""), *n))
                .collect::<Vec<_>>()
        };
        family(
            out,
            "sloguard_local_failures_total",
            "counter",
            "Operations that failed for want of a local resource (descriptors, memory, ports), by cause.",
            by_cause(&self.local_failures),
        );
        family(
            out,
            "sloguard_accept_failures_total",
            "counter",
            "Failed accepts on the listeners, by cause.",
            by_cause(&self.accept_failures),
        );
        family(
            out,
            "sloguard_client_connections",
            "gauge",
            "Client connections open.",
            one(self.connections_open),
        );
        family(
            out,
            "sloguard_client_connections_max",
            "gauge",
            "Most client connections accepted at once (limits.max_connections).",
            one(self.connections_max),
        );
        family(
            out,
            "sloguard_log_lines_suppressed_total",
            "counter",
            "Repeated log lines held back by the per-line rate limit.",
            one(self.log_lines_suppressed),
        );
        family(
            out,
            "sloguard_loop_lateness_seconds",
            "gauge",
            "How late sloguard's own event loops run (the worst timer lateness of the last 50-100 ms): a sidecar short of CPU.",
            one(self.loop_lateness.as_secs_f64()),
        );
        if !self.held_up.is_empty() {
            family(
                out,
                "sloguard_loop_held_up_seconds_total",
                "counter",
                "How long each proxy thread's event loop was kept from running (its timer lateness beyond 1 ms, summed): the rate is the share of the time sloguard could not read requests, a sidecar short of CPU.",
                self.held_up
                    .iter()
                    .enumerate()
                    .map(|(t, held)| (format!("thread=\"{t}\""), held.as_secs_f64())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(state: HealthState, probe: Option<Duration>) -> WorkerSample {
        WorkerSample {
            state,
            in_flight: 3,
            limit: 8,
            latency: Duration::from_millis(12),
            lag: Duration::ZERO,
            probe,
            ejections: 2,
        }
    }

    fn text(c: &Collected) -> String {
        let mut out = String::new();
        c.write_exposition(&mut out);
        out
    }

    #[test]
    fn each_worker_is_one_series_per_family_labelled_by_its_position() {
        let c = Collected {
            workers: vec![
                sample(HealthState::Healthy, Some(Duration::from_millis(2))),
                sample(HealthState::Ejected, None),
            ],
            ..Collected::default()
        };
        let t = text(&c);
        for line in [
            "sloguard_worker_state{worker=\"1\",state=\"healthy\"} 1\n",
            "sloguard_worker_state{worker=\"1\",state=\"ejected\"} 0\n",
            "sloguard_worker_state{worker=\"2\",state=\"ejected\"} 1\n",
            "sloguard_worker_in_flight{worker=\"2\"} 3\n",
            "sloguard_worker_concurrency_limit{worker=\"1\"} 8\n",
            "sloguard_worker_latency_seconds{worker=\"1\"} 0.012\n",
            "sloguard_worker_loop_lag_seconds{worker=\"2\"} 0\n",
            "sloguard_worker_probe_seconds{worker=\"1\"} 0.002\n",
            "sloguard_worker_ejections_total{worker=\"2\"} 2\n",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        // No successful probe yet: no figure rather than a made-up 0.
        assert!(!t.contains("sloguard_worker_probe_seconds{worker=\"2\"}"));
        assert!(
            !t.contains("sloguard_loop_held_up_seconds_total"),
            "no proxy thread has run yet"
        );
    }

    #[test]
    fn counters_are_their_owners_counts_and_each_family_is_typed_once() {
        let c = Collected {
            retries: 5,
            hedges_launched: 7,
            hedges_won: 2,
            redis_errors: 11,
            fallback_active: true,
            local_failures: vec![("fd_limit", 1)],
            accept_failures: vec![("shortage", 4)],
            connections_open: 9,
            connections_max: 100,
            loop_lateness: Duration::from_micros(1500),
            held_up: vec![Duration::from_millis(1500), Duration::from_micros(250)],
            ..Collected::default()
        };
        let t = text(&c);
        for line in [
            "sloguard_retries_total 5\n",
            "sloguard_hedges_total{result=\"launched\"} 7\n",
            "sloguard_hedges_total{result=\"won\"} 2\n",
            "sloguard_ratelimit_redis_errors_total 11\n",
            "sloguard_ratelimit_fallback_active 1\n",
            "sloguard_local_failures_total{cause=\"fd_limit\"} 1\n",
            "sloguard_accept_failures_total{cause=\"shortage\"} 4\n",
            "sloguard_client_connections 9\n",
            "sloguard_client_connections_max 100\n",
            "sloguard_loop_lateness_seconds 0.0015\n",
            "# TYPE sloguard_loop_held_up_seconds_total counter\n",
            "sloguard_loop_held_up_seconds_total{thread=\"0\"} 1.5\n",
            "sloguard_loop_held_up_seconds_total{thread=\"1\"} 0.00025\n",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        let types: Vec<&str> = t.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let unique: std::collections::BTreeSet<&&str> = types.iter().collect();
        assert_eq!(types.len(), unique.len(), "a family typed twice:\n{t}");
    }
}
