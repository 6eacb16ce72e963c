//! Tests of `metrics.rs` (a child module, kept apart to keep that file readable).

use super::*;
use crate::config::Policy;
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
    let m = Metrics::new(&policy().metrics_layout());
    m.record_request(0, 202, Some(2), Outcome::Ok, 0.012);
    m.record_request(1, 503, None, Outcome::Shed, 0.001);
    m.record_refusal(1, Reason::QueueTimeout);
    m.record_refusal(0, Reason::BodyTooLarge);
    m.record_rate(0, "limited");
    m.record_reload(false);
    m.record_refusal(0, Reason::HeaderTimeout);
    let text = m.render(&Collected::default());
    assert!(
        text.contains(r#"sloguard_requests_total{route="ingest",status_class="2xx",worker="2"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"sloguard_requests_total{route="default",status_class="5xx",worker="none"} 1"#
    ));
    assert!(text.contains(
        r#"sloguard_request_duration_seconds_bucket{route="ingest",outcome="ok",le="0.025"} 1"#
    ));
    assert!(text.contains(r#"sloguard_shed_total{route="default",reason="queue_timeout"} 1"#));
    assert!(text.contains(r#"sloguard_rejections_total{route="ingest",reason="body_too_large"} 1"#));
    assert!(text.contains(r#"sloguard_ratelimit_decisions_total{rule="t",result="limited"} 1"#));
    assert!(text.contains(r#"sloguard_config_reloads_total{result="error"} 1"#));
    assert!(
        text.contains(r#"sloguard_rejections_total{route="-",reason="header_timeout"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sloguard_rejections_total{route="-",reason="too_many_connections"} 0"#)
    );
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
    let m = Metrics::new(&with_slo(150).metrics_layout());
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
    let text = m.render(&Collected::default());
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
    let m = m.rebound(&with_slo(100).metrics_layout());
    m.record_request(0, 200, Some(1), Outcome::Ok, 0.12);
    let text = m.render(&Collected::default());
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
    let m = Metrics::new(&with_slo(150).metrics_layout());
    m.record_request(0, 200, Some(1), Outcome::Ok, 0.01);
    m.queue_wait.record(0.001);
    let collected = Collected {
        local_failures: vec![("fd_limit", 1)],
        accept_failures: vec![("shortage", 1)],
        workers: vec![crate::telemetry::WorkerSample {
            state: crate::workers::HealthState::Healthy,
            in_flight: 0,
            limit: 4,
            latency: Duration::ZERO,
            lag: Duration::ZERO,
            probe: Some(Duration::ZERO),
            ejections: 0,
        }],
        held_up: vec![Duration::ZERO],
        ..Collected::default()
    };
    let text = m.render(&collected);
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
    let m = Metrics::new(&policy().metrics_layout());
    let mut next = policy();
    next.version = "0123456789abcdef".into();
    let m = m.rebound(&next.metrics_layout());
    let text = m.render(&Collected::default());
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
    let m = Metrics::new(&policy().metrics_layout());
    for (i, reason) in Reason::ALL.iter().enumerate() {
        for _ in 0..=i {
            if reason.is_connection() {
                m.record_refusal(usize::MAX, *reason);
            } else {
                m.record_refusal(0, *reason);
            }
        }
    }
    let text = m.render(&Collected::default());
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
    let p =
        Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sloguard.toml")).unwrap();
    let m = Metrics::new(&p.metrics_layout());
    let series = m
        .render(&Collected::default())
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert!(series < 1500, "{series} series");
}
