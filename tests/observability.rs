//! What on-call reads: Prometheus metrics on the admin listener, with the outcome of every
//! request (sloguard's own refusals included) and each worker's state.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;

/// The value of the series whose line starts with `prefix` (labels included), if present.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_outcomes_refusals_and_worker_state() {
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let http = client();
    for i in 0..10u64 {
        let r = http
            .post(sg.url("/v1/events"))
            .json(&event("c", "e", i, 1.0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let big = "x".repeat(5000);
    let r = http
        .post(sg.url("/v1/events"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Worker 2's loop stops: its probes go unanswered, it is ejected.
    be.set_fault(
        2,
        FaultSpec {
            stall: Some(Duration::from_secs(2)),
            ..FaultSpec::default()
        },
    );
    // Detection (a probe timing out after 500 ms), then a gauge refresh: scrape until the
    // gauge shows it, within the stall.
    let ejected = "sloguard_worker_state{worker=\"2\",state=\"ejected\"}";
    let started = std::time::Instant::now();
    let text = loop {
        let r = http.get(sg.admin_url("/metrics")).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4");
        let text = r.text().await.unwrap();
        if value(&text, ejected) == Some(1.0) || started.elapsed() > Duration::from_millis(1800) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ok: f64 = ["1", "2"]
        .iter()
        .filter_map(|w| value(&text, &format!("sloguard_requests_total{{route=\"ingest\",status_class=\"2xx\",worker=\"{w}\"}}")))
        .sum();
    assert_eq!(ok, 10.0, "{text}");
    assert_eq!(
        value(
            &text,
            "sloguard_requests_total{route=\"ingest\",status_class=\"4xx\",worker=\"none\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "sloguard_rejections_total{route=\"ingest\",reason=\"body_too_large\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "sloguard_request_duration_seconds_count{route=\"ingest\",outcome=\"ok\"}"
        ),
        Some(10.0)
    );
    assert!(text.contains(
        "sloguard_request_duration_seconds_bucket{route=\"ingest\",outcome=\"ok\",le=\"0.15\"}"
    ));
    // Worker 2 is ejected.
    assert_eq!(
        value(
            &text,
            "sloguard_worker_state{worker=\"2\",state=\"ejected\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "sloguard_worker_state{worker=\"1\",state=\"healthy\"}"
        ),
        Some(1.0)
    );
    assert!(value(&text, "sloguard_worker_ejections_total{worker=\"2\"}").unwrap() >= 1.0);
    assert!(value(&text, "sloguard_worker_loop_lag_seconds{worker=\"1\"}").is_some());
    assert!(text.contains("sloguard_config_info{version=\""));
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert!(series < 1500, "{series} series");
}

/// sloguard with an access line for every request, in JSON.
fn spawn_logging_every_request(be: &Backend) -> Sloguard {
    Sloguard::spawn_logging(
        &be.addrs(),
        &format!("{ROUTES}\n[log]\naccess = \"all\"\n"),
        "warn,sloguard::access=info",
    )
}

/// The access lines logged so far, parsed.
fn access_lines(sg: &Sloguard) -> Vec<serde_json::Value> {
    sg.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sloguard::access")
        .collect()
}

#[tokio::test]
async fn the_access_log_says_why_a_request_was_refused_in_one_json_line() {
    let be = backend(1);
    let sg = spawn_logging_every_request(&be);
    let http = client();
    let r = http
        .post(sg.url("/v1/events"))
        .header("x-request-id", "ok-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&event("c", "e", 1, 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .post(sg.url("/v1/events"))
        .header("x-request-id", "big-1")
        .body("x".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    wait_until(Duration::from_secs(10), "both access lines", || async {
        let log = sg.log();
        log.contains("\"ok-1\"") && log.contains("\"big-1\"")
    })
    .await;
    let lines = access_lines(&sg);
    let find = |id: &str| {
        lines
            .iter()
            .find(|v| v["request_id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    let ok = find("ok-1");
    assert_eq!(ok["decision"], "admitted", "{lines:?}");
    assert_eq!(ok["route"], "ingest");
    assert_eq!(ok["status"], 202);
    assert!(ok["worker"].as_u64().is_some());
    // Flat fields, with the address the worker number stands for, the bodies' sizes and
    // the client's trace context.
    assert_eq!(ok["upstream"], be.addrs()[0].to_string(), "{ok}");
    let sent = serde_json::to_vec(&event("c", "e", 1, 1.0)).unwrap().len();
    assert_eq!(ok["bytes_in"].as_u64(), Some(sent as u64), "{ok}");
    assert!(ok["bytes_out"].as_u64() > Some(0), "{ok}");
    assert_eq!(
        ok["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(ok["target"], "sloguard::access");
    assert!(ok.get("fields").is_none(), "{ok}");
    let big = find("big-1");
    assert_eq!(big["decision"], "rejected", "{lines:?}");
    assert_eq!(big["reason"], "body_too_large");
    assert_eq!(big["status"], 413);
}

/// The per-site log limit (10 lines a second per site) bounds error paths, never the access
/// log: with `access = "all"`, 50 requests in well under a second give 50 lines.
#[tokio::test]
async fn the_access_log_is_not_cut_by_the_per_site_log_limit() {
    let be = backend(1);
    let sg = spawn_logging_every_request(&be);
    let http = client();
    for i in 0..50u64 {
        let r = http
            .post(sg.url("/v1/events"))
            .header("x-request-id", format!("burst-{i}"))
            .json(&event("c", "e", i, 1.0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let burst = || {
        access_lines(&sg)
            .iter()
            .filter(|v| {
                v["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("burst-"))
            })
            .count()
    };
    wait_until(Duration::from_secs(5), "50 access lines", || async {
        burst() == 50
    })
    .await;
}

/// The log filter is changed while serving, on the admin port (Envoy's `/logging`): access
/// lines filtered out at `warn` appear once `sloguard::access=info` is added, a bad filter
/// is refused with a 400 naming it, and the filter in force stays.
#[tokio::test]
async fn the_log_filter_changes_at_run_time_and_a_bad_one_is_refused() {
    let be = backend(1);
    let sg = Sloguard::spawn_logging(
        &be.addrs(),
        &format!("{ROUTES}\n[log]\naccess = \"all\"\n"),
        "warn",
    );
    let http = client();
    // `POST /logging` with `query`: the status and the JSON answer.
    let post = |query: &'static str| {
        let http = http.clone();
        let url = sg.admin_url(&format!("/logging{query}"));
        async move {
            let r = http.post(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let current: serde_json::Value =
        serde_json::from_str(&get_text(&sg.admin_url("/logging")).await).unwrap();
    assert_eq!(current["filter"], "warn");
    let send = |id: &'static str| {
        let http = http.clone();
        let url = sg.url("/v1/events");
        async move {
            let r = http
                .post(url)
                .header("x-request-id", id)
                .json(&event("c", "e", 1, 1.0))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    send("before").await;
    // A request's access line is written after its answer went out, together with its
    // metrics: once they count it, its line was decided under the old filter.
    wait_until(
        std::time::Duration::from_secs(10),
        "the first request counted",
        || async { metric_sum(&sg, "sloguard_requests_total").await >= 1.0 },
    )
    .await;
    let (status, body) = post("?filter=warn%2Csloguard%3A%3Aaccess%3Dinfo").await;
    assert_eq!(status, 200);
    assert_eq!(body["previous"], "warn");
    assert_eq!(body["filter"], "warn,sloguard::access=info");
    send("after").await;
    wait_until(
        std::time::Duration::from_secs(10),
        "an access line after the filter changed",
        || async { !access_lines(&sg).is_empty() },
    )
    .await;
    // Only the request after the change was logged.
    let ids: Vec<_> = access_lines(&sg)
        .iter()
        .map(|l| l["request_id"].clone())
        .collect();
    assert_eq!(ids, ["after"], "{}", sg.log());
    let (status, body) = post("?filter=sloguard%3Dloud").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("sloguard=loud"),
        "{body}"
    );
    assert_eq!(body["filter"], "warn,sloguard::access=info");
    assert_eq!(post("").await.0, 400);
}
