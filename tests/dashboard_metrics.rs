//! Every metric the Grafana dashboard and the Prometheus alerts use exists in sloguard's real
//! `/metrics` output after some traffic: the dashboard cannot silently show "no data".

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
    }
    assert!(checked > 10);
}
