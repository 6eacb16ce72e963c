//! What the admin listener reads from the live state: the `/status` snapshot (JSON, for
//! on-call and tests) and the figures `/metrics` collects at scrape time. Reading only:
//! every figure is kept by the module that decides it.

// I/O edge: the status page stamps what it shows with the clock.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::config::Policy;
use crate::stages::ratelimit::RateLimiter;
use crate::state::State;
use crate::telemetry::{Collected, WorkerSample};

/// Milliseconds with one decimal, for humans.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// A snapshot of the policy, the workers and every count sloguard keeps.
pub fn status(state: &State) -> Value {
    let policy = state.policy();
    let now = Instant::now();
    let workers: Vec<_> = state
        .workers()
        .iter()
        .map(|w| {
            let health = w.health();
            let limiter = w.limiter();
            json!({
                "id": w.id,
                "addr": w.addr.to_string(),
                "state": w.state().as_str(),
                "reason": health.last_reason().map(|r| r.to_string()),
                "ejected_for_ms": health.ejected_until().map(|t| t.saturating_duration_since(now).as_millis() as u64),
                "ejections": health.ejections,
                "in_flight": w.in_flight(),
                "limit": w.limit(),
                "work_ms": ms(w.work()),
                "latency_ms": ms(health.latency()),
                "baseline_ms": limiter.baseline().map(ms),
                "loop_lag_ms": health.last_lag().map(ms),
                "probe_ms": match health.last_probe() {
                    Some(Ok(d)) => json!(ms(d)),
                    Some(Err(())) => json!("failed"),
                    None => json!(null),
                },
                "requests": w.requests(),
                "successes": w.successes(),
                "failures": w.failures(),
                "connect_failures": w.connect_failures(),
            })
        })
        .collect();
    let costs = state.route_costs();
    let routes: Vec<_> = policy
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "cost_ms": costs.get_named(i, &r.name).map(ms),
                "name": &*r.name,
                "priority": r.priority.as_str(),
                "slo_p95_ms": r.slo.and_then(|s| s.p95).map(|d| d.as_millis() as u64),
                "slo_p99_ms": r.slo.and_then(|s| s.p99).map(|d| d.as_millis() as u64),
                "max_body_bytes": r.max_body_bytes,
            })
        })
        .collect();
    let admission = &state.admission;
    let metrics = state.telemetry.metrics();
    let mut rejections: Vec<_> = metrics.refusals().rows().filter(|r| r.count > 0).collect();
    rejections.sort_by_key(|r| std::cmp::Reverse(r.count));
    let lifecycle = &state.lifecycle;
    json!({
        "policy": {"file": policy.source.display().to_string(), "version": policy.version},
        "last_reload": lifecycle.last_reload().map(|r| json!({
            "at_unix_s": r.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "trigger": r.trigger,
            "ok": r.result.is_ok(),
            "version": r.result.as_ref().ok().map(|a| a.version.clone()),
            "notes": r.result.as_ref().ok().map(|a| a.notes.clone()),
            "error": r.result.as_ref().err(),
        })),
        "guard": policy.guard.as_str(),
        "ratelimit": ratelimit(&state.ratelimiter(), &policy),
        "rejections": rejections.iter().map(|r| json!({"route": &*r.route, "reason": r.reason, "count": r.count})).collect::<Vec<_>>(),
        "hedges": {
            "launched": state.hedges.launched(),
            "won": state.hedges.won(),
        },
        "retries": {
            "granted": state.retry_budget.granted(),
            "budget_tokens": (state.retry_budget.tokens() * 10.0).round() / 10.0,
        },
        "admission": {
            "waiting": admission.waiting(),
            "shadow_would_queue": admission.shadow_queued(),
            "drain_rate_per_s": admission.drain_rate().map(|r| (r * 10.0).round() / 10.0),
            "own_delay_ms": ms(admission.own_delay()),
        },
        // What a drain waits for: requests in flight (from Pingora's `new_ctx`), and requests
        // begun on a connection (from their head's first bytes, so before `new_ctx` too).
        "requests": {
            "in_flight": lifecycle.requests_in_flight(),
            "begun": lifecycle.requests_begun(),
            "draining": lifecycle.draining(),
        },
        "connections": {
            "open": lifecycle.connections.open(),
            "max": state.connection_cap(),
            "refused_at_max": lifecycle.connections.refused(),
        },
        "local_failures": crate::resources::counts().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "accept_failures": crate::listener::failure_counts().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "log_lines_suppressed": crate::logging::suppressed_total(),
        "uptime_seconds": lifecycle.started.elapsed().as_secs(),
        "workers": workers,
        "routes": routes,
    })
}

/// The rate limiter's mode, rules and counters.
fn ratelimit(limiter: &RateLimiter, policy: &Policy) -> Value {
    let cfg = &policy.ratelimit;
    let s = &limiter.stats;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "mode": limiter.mode(),
        "redis_tls": limiter.tls(),
        "redis_username": limiter.credentials().username,
        "rules": cfg.rules.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
        "on_redis_error": cfg.on_redis_error.as_str(),
        "allowed": n(&s.allowed),
        "limited": n(&s.limited),
        "limited_from_cache": n(&s.limited_from_cache),
        "shadow_denied": n(&s.shadow_denied),
        "near_limit": n(&s.near_limit),
        "redis_calls": n(&s.redis_calls),
        "redis_errors": n(&s.redis_errors),
        "fallback_decisions": n(&s.fallback_decisions),
        "top_keys": limiter.top_keys(cfg),
    })
}

/// The figures `/metrics` reads from their owners when scraped.
pub fn collected(state: &State) -> Collected {
    let limiter = state.ratelimiter();
    Collected {
        workers: state
            .workers()
            .iter()
            .map(|w| {
                let h = w.health();
                WorkerSample {
                    state: w.state(),
                    in_flight: w.in_flight(),
                    limit: w.limit(),
                    latency: h.latency(),
                    lag: h.last_lag().unwrap_or_default(),
                    probe: h.last_probe_ok(),
                    ejections: h.ejections,
                }
            })
            .collect(),
        queue_depth: state.admission.waiting(),
        retries: state.retry_budget.granted(),
        hedges_launched: state.hedges.launched(),
        hedges_won: state.hedges.won(),
        redis_errors: limiter.stats.redis_errors.load(Ordering::Relaxed),
        fallback_active: limiter.mode() == "fallback",
        local_failures: crate::resources::counts(),
        accept_failures: crate::listener::failure_counts(),
        connections_open: state.lifecycle.connections.open(),
        connections_max: state.connection_cap(),
        log_lines_suppressed: crate::logging::suppressed_total(),
        loop_lateness: state.admission.own_delay(),
        held_up: crate::proxy::held_up_totals(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::config::Policy;
    use crate::stages::Reason;
    use crate::state::State;

    /// `/status` names every reason by the same label as the metrics and the access log,
    /// with the count `/metrics` shows (one table behind both).
    #[test]
    fn status_lists_every_reason_by_its_label_with_the_count_metrics_show() {
        let policy =
            Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sloguard.toml"))
                .unwrap();
        let ingest = policy
            .routes
            .iter()
            .position(|r| &*r.name == "ingest")
            .unwrap();
        let state = Arc::new(State::new(policy));
        let metrics = state.telemetry.metrics();
        for (i, reason) in Reason::ALL.iter().enumerate() {
            for _ in 0..=i {
                metrics.record_refusal(ingest, *reason);
            }
        }
        let status = super::status(&state);
        let rows = status["rejections"].as_array().unwrap();
        assert_eq!(rows.len(), Reason::ALL.len());
        let text = metrics.render(&super::collected(&state));
        for (i, reason) in Reason::ALL.iter().enumerate() {
            let row = rows
                .iter()
                .find(|r| r["reason"] == reason.as_str())
                .unwrap_or_else(|| panic!("{reason} missing from {rows:?}"));
            assert_eq!(row["count"], i as u64 + 1, "{reason}");
            let route = if reason.is_connection() {
                "-"
            } else {
                "ingest"
            };
            assert_eq!(row["route"], route);
            let series = format!("{{route=\"{route}\",reason=\"{reason}\"}} {}\n", i + 1);
            assert!(text.contains(&series), "{series} missing from /metrics");
        }
    }
}
