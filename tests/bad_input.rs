//! Malformed and hostile requests, request smuggling first: each gets its exact status, and
//! the backend's own counters prove it saw none of them.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;

/// (name, raw request, expected status line prefix)
const CASES: &[(&str, &str, &str)] = &[
    (
        "two different content-lengths",
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "HTTP/1.1 400",
    ),
    (
        "a non-numeric content-length",
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 5x\r\n\r\nhello",
        "HTTP/1.1 400",
    ),
    (
        "transfer-encoding other than chunked",
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nhello",
        "HTTP/1.1 400",
    ),
    ("a malformed request line", "GARBAGE\r\n\r\n", "HTTP/1.1 400"),
    ("a request line without a version", "GET /v1/metrics\r\nhost: x\r\n\r\n", "HTTP/1.1 400"),
    (
        "an obsolete line fold (header injection attempt)",
        "GET /v1/metrics HTTP/1.1\r\nhost: x\r\nx-a: b\r\n x-injected: c\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "a chunk size past 64 bits, on a capped route (body read whole)",
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "HTTP/1.1 without a Host header (RFC 9112 3.2)",
        "GET /v1/metrics?customer=a&event=e HTTP/1.1\r\naccept: */*\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "two Host headers",
        "GET /v1/metrics?customer=a&event=e HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "a space before the colon",
        "GET /v1/metrics HTTP/1.1\r\nhost: x\r\nx-a : b\r\n\r\n",
        "HTTP/1.1 400",
    ),
];

#[tokio::test]
async fn hostile_requests_get_their_status_and_never_reach_the_backend() {
    let be = backend(1);
    let sg = Sloguard::spawn(
        &be.addrs(),
        &format!("{ROUTES}\n[limits]\nmax_header_bytes = 8192\n"),
    );
    let before = backend_seen(&be).await;
    let mut failures = vec![];
    for (name, raw, expect) in CASES {
        let got = raw_exchange(sg.proxy, raw.as_bytes(), Duration::from_secs(2)).await;
        let line = got
            .lines()
            .next()
            .unwrap_or("(connection closed without an answer)")
            .to_string();
        println!(
            "{name}: {line} (backend saw {})",
            backend_seen(&be).await - before
        );
        if !line.starts_with(expect) {
            failures.push(format!("{name}: expected {expect}, got {line}"));
        }
    }
    // Raw non-UTF-8 bytes in the path.
    let got = raw_exchange(
        sg.proxy,
        b"GET /v1/\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let line = got.lines().next().unwrap_or_default().to_string();
    println!("non-UTF-8 path: {line}");
    if !line.starts_with("HTTP/1.1 400") {
        failures.push(format!("non-UTF-8 path: expected 400, got {line}"));
    }
    // Absurd header counts: 2000 small headers.
    let many: String = (0..2000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let got = raw_exchange(
        sg.proxy,
        format!("GET /v1/metrics HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    let line = got.lines().next().unwrap_or_default().to_string();
    println!("2000 headers: {line}");
    if !(line.starts_with("HTTP/1.1 431") || line.starts_with("HTTP/1.1 400")) {
        failures.push(format!("2000 headers: expected 431 or 400, got {line}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        backend_seen(&be).await,
        before,
        "the backend saw a hostile request"
    );
    assert_eq!(be.store().total_events(), 0);
}

/// Content-Length and Transfer-Encoding together: the request is framed by
/// Transfer-Encoding alone and the connection is closed after the answer (RFC 9112 6.1, as
/// Pingora does), so the bytes after the chunked body (the smuggled "G...") never become a
/// second request, on our side or the backend's.
#[tokio::test]
async fn a_cl_te_smuggling_attempt_cannot_desync_the_connection() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let before = backend_seen(&be).await;
    let raw = "POST /debug/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let got = raw_exchange(sg.proxy, raw.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(
        got.matches("HTTP/1.1 ").count(),
        1,
        "one answer only: {got}"
    );
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    let echo: serde_json::Value =
        serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        echo["body_len"], 3,
        "framed by the chunked encoding: {echo}"
    );
    assert!(echo["headers"].get("content-length").is_none(), "{echo}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        backend_seen(&be).await - before,
        1,
        "the smuggled GET never reached the backend"
    );
}

/// The JSON body of a raw answer, and its status line.
fn status_and_json(raw: &str) -> (String, serde_json::Value) {
    let line = raw.lines().next().unwrap_or_default().to_string();
    let body = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
    (line, json)
}

/// `sloguard_rejections_total` for `reason`, summed over routes.
async fn rejections_counted(sg: &Sloguard, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    get_text(&sg.admin_url("/metrics"))
        .await
        .lines()
        .filter(|l| l.starts_with("sloguard_rejections_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A broken chunked body is the client's fault: 400 with the JSON body naming the rule,
/// whether the route reads the body whole (it never reaches the backend) or streams it (the
/// worker gets a broken request, cut off, and stores nothing). It was a 500.
#[tokio::test]
async fn a_chunk_size_past_64_bits_is_a_400_naming_the_rule() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    for path in ["/v1/events", "/debug/echo"] {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
             FFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"
        );
        let got = raw_exchange(sg.proxy, raw.as_bytes(), Duration::from_secs(2)).await;
        let (line, json) = status_and_json(&got);
        println!("{path}: {line} {json}");
        assert!(line.starts_with("HTTP/1.1 400"), "{path}: {got}");
        assert_eq!(json["reason"], "bad_chunked_body", "{path}: {json}");
        assert_eq!(json["limit"], "rfc9112.chunked", "{path}: {json}");
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
    }
    assert_eq!(be.store().total_events(), 0);
    // Counted under its own reason (it was in no metrics list: never counted).
    assert_eq!(rejections_counted(&sg, "bad_chunked_body").await, 2.0);
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without a Host header is answered 400 by
/// sloguard (it was proxied), and HTTP/1.0 without one still passes. (Two Host headers are
/// refused by Pingora's own parser already: the table above.)
#[tokio::test]
async fn a_missing_host_is_a_400_naming_the_rule_and_http10_may_omit_it() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let before = backend_seen(&be).await;
    for (raw, value) in [("GET /v1/metrics?customer=a&event=e HTTP/1.1\r\n\r\n", 0)] {
        let got = raw_exchange(sg.proxy, raw.as_bytes(), Duration::from_secs(2)).await;
        let (line, json) = status_and_json(&got);
        assert!(line.starts_with("HTTP/1.1 400"), "{got}");
        assert_eq!(json["reason"], "bad_host", "{json}");
        assert_eq!(json["limit"], "rfc9112.host", "{json}");
        assert_eq!(json["value"], value, "{json}");
        assert_eq!(json["route"], "query", "{json}");
    }
    assert_eq!(
        backend_seen(&be).await,
        before,
        "the backend saw none of them"
    );
    assert_eq!(rejections_counted(&sg, "bad_host").await, 1.0);
    let got = raw_exchange(
        sg.proxy,
        b"GET /v1/metrics?customer=a&event=e HTTP/1.0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 200") || got.starts_with("HTTP/1.0 200"),
        "{got}"
    );
}
