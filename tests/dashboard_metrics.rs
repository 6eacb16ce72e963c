//! Every metric the Grafana dashboard and the Prometheus alerts use exists in sloguard's real
//! `/metrics` output after some traffic: the dashboard cannot silently show "no data".

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;

use common::*;

/// `sloguard_*` names used in a file, with histogram suffixes folded to the base name.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("sloguard_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || matches!(bytes[end], b'_' | b':'))
        {
            end += 1;
        }
        let name = &text[start..end];
        // Recording-rule names (`sloguard:...`) have a colon and are not matched; skip
        // pieces of other identifiers (a name preceded by a word character).
        let standalone = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || matches!(bytes[start - 1], b'_' | b':'));
        if standalone && !name.contains(':') && name.len() > "sloguard_".len() {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_alerts_is_exported() {
    let be = backend(2);
    // A rate-limit rule too, so its series exist (rule labels come from the policy).
    let policy = format!(
        "{ROUTES}\n[[ratelimit.rule]]\nname = \"per-ip\"\nkey = \"client_ip\"\nrate = 1000\n"
    );
    let sg = Sloguard::spawn(&be.addrs(), &policy);
    let http = client();
    for i in 0..5u64 {
        http.post(sg.url("/v1/events"))
            .json(&event("c", "e", i, 1.0))
            .send()
            .await
            .unwrap();
    }
    http.post(sg.url("/v1/events"))
        .body("x".repeat(5000))
        .send()
        .await
        .unwrap();
    // The process series are set by the monitor's first pass (every 250 ms).
    wait_until(
        std::time::Duration::from_secs(10),
        "the monitor's first pass",
        || async {
            get_text(&sg.admin_url("/metrics"))
                .await
                .contains("sloguard_log_lines_suppressed_total")
        },
    )
    .await;
    let exported = http
        .get(sg.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = exported
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let known = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| exported.contains(&format!("{name}{s}")))
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|base| exported.contains(&format!("{base}{s}")))
            })
    };
    let root = repo_root().join("k8s/monitoring");
    let mut checked = 0;
    for file in ["grafana-dashboard.json", "prometheus-rules.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = names_in(&text);
        assert!(!used.is_empty(), "{file} uses no sloguard metric?");
        let missing: Vec<_> = used.iter().filter(|n| !known(n)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics sloguard does not export: {missing:?}"
        );
        checked += used.len();
        // The standard process metrics the "sloguard itself" row and alerts read.
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
        ]
        .into_iter()
        .filter(|n| text.contains(n))
        {
            assert!(exported.contains(name), "{file} uses {name}, not exported");
            checked += 1;
        }
    }
    assert!(checked > 10);
}

/// The SLO alert and the top panel read `sloguard_requests_over_slo_total`: requests served
/// slower than their own route's target, counted by the real proxy against the policy's
/// targets. Queries take 300 ms on every worker (target 250 ms), events a few ms (target
/// 150 ms): each query counts once, no event does, and the targets are exported.
#[tokio::test]
async fn requests_over_their_routes_slo_target_are_counted_per_route_and_target() {
    let slow_queries = FaultSpec {
        query_block: Some(std::time::Duration::from_millis(300)),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(2, vec![(1, slow_queries.clone()), (2, slow_queries)]);
    // Blocks of 300 ms are the point here, not a stall to eject for.
    let policy = format!(
        "{ROUTES}\n[upstream.health]\nstall_after_ms = 10000\nlag_eject_ms = 10000\n\
         [upstream.probe]\ntimeout_ms = 5000\n"
    );
    let sg = Sloguard::spawn(&be.addrs(), &policy);
    let http = client();
    for i in 0..5u64 {
        assert_eq!(sg.post_event(&http, "t", i).await.0, 202);
    }
    for _ in 0..3 {
        let r = http
            .get(sg.url("/v1/metrics?customer=c&event=e"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = get_text(&sg.admin_url("/metrics")).await;
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    for (series, expected) in [
        (
            r#"sloguard_requests_over_slo_total{route="query",slo="p95"}"#,
            Some(3.0),
        ),
        (
            r#"sloguard_requests_over_slo_total{route="ingest",slo="p95"}"#,
            Some(0.0),
        ),
        (
            r#"sloguard_requests_over_slo_total{route="ingest",slo="p99"}"#,
            Some(0.0),
        ),
        // The query route sets no p99 target: no series for one.
        (
            r#"sloguard_requests_over_slo_total{route="query",slo="p99"}"#,
            None,
        ),
        (
            r#"sloguard_route_slo_target_seconds{route="query",slo="p95"}"#,
            Some(0.25),
        ),
        (
            r#"sloguard_route_slo_target_seconds{route="ingest",slo="p99"}"#,
            Some(0.4),
        ),
    ] {
        assert_eq!(value(series), expected, "{series}:\n{text}");
    }
}
