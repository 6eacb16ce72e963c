//! The on-call status page in a real browser: headless Chromium loads the page from a running
//! sloguard whose worker 3 has stalled, runs its script, and the rendered DOM shows worker 3
//! as ejected (and why) while the others are healthy.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it).

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn chromium() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("a headless Chromium is needed for this test: apt-get install chromium (as .ci/run does)")
}

/// Renders `url` headless and returns the DOM after its scripts ran for a while.
fn render(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_stalled_worker_as_ejected() {
    let be = backend(4);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let http = client();
    for i in 0..20u64 {
        http.post(sg.url("/v1/events"))
            .json(&event("c", "e", i, 1.0))
            .send()
            .await
            .unwrap();
    }
    // Worker 3 stops answering anything (its probes included) for 30 s.
    be.set_fault(
        3,
        FaultSpec {
            stall: Some(Duration::from_secs(30)),
            ..FaultSpec::default()
        },
    );
    wait_until(Duration::from_secs(10), "worker 3 ejected", || async {
        let st = sg.status().await;
        st["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|w| w["id"] == 3 && w["state"] == "ejected"))
    })
    .await;
    let url = sg.admin_url("/");
    let dom = tokio::task::spawn_blocking(move || render(&url, &["--dump-dom"]))
        .await
        .unwrap();
    assert!(
        dom.contains("<h1>sloguard</h1>"),
        "not the status page: {dom:.500}"
    );
    assert!(
        dom.contains(r#"data-worker="3" data-state="ejected""#),
        "worker 3 not shown ejected: {dom}"
    );
    for w in [1, 2, 4] {
        assert!(
            dom.contains(&format!(r#"data-worker="{w}" data-state="healthy""#)),
            "worker {w}: {dom}"
        );
    }
    assert!(
        dom.contains("probe failed") || dom.contains("stalled"),
        "the reason is shown: {dom}"
    );
    // Set SLOGUARD_SCREENSHOT=docs/status.png to refresh the README's screenshot.
    if let Ok(path) = std::env::var("SLOGUARD_SCREENSHOT") {
        let url = sg.admin_url("/");
        let arg = format!("--screenshot={path}");
        tokio::task::spawn_blocking(move || render(&url, &[&arg]))
            .await
            .unwrap();
    }
}

/// The page names the keys a rate-limit rule refuses most: a tenant over its limit shows in
/// the rule's "limited" column of the rendered DOM, a tenant within it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_names_the_tenant_being_rate_limited() {
    let be = backend(2);
    let policy = format!(
        "{ROUTES}\n[[ratelimit.rule]]\nname = \"per-tenant\"\nkey = \"header:x-tenant\"\n\
         rate = 1\nburst = 2\n"
    );
    let sg = Sloguard::spawn(&be.addrs(), &policy);
    let http = client();
    let mut limited = 0;
    for i in 0..8u64 {
        limited += u32::from(sg.post_event(&http, "hot-tenant", i).await.0 == 429);
    }
    assert!(limited >= 4, "{limited} of 8 limited");
    assert_eq!(sg.post_event(&http, "quiet-tenant", 99).await.0, 202);
    let url = sg.admin_url("/");
    let dom = tokio::task::spawn_blocking(move || render(&url, &["--dump-dom"]))
        .await
        .unwrap();
    let row = dom
        .split(r#"<tr data-rule="per-tenant">"#)
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for the rule: {dom}"));
    let limited_cell = row.split("<td>").nth(2).unwrap_or_default();
    assert!(limited_cell.contains("hot-tenant"), "{row}");
    assert!(!row.contains("quiet-tenant"), "{row}");
}
