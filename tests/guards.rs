//! Request guards: each refusal has its exact status and a JSON body naming the limit, and
//! the backend's own counters show it never saw the refused request.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const GUARDED: &str = r#"
[[route]]
name = "ingest"
match = { method = "POST", path_prefix = "/v1/events" }
max_body_bytes = 4096

[[route]]
name = "upload"
match = { method = "POST", path_prefix = "/debug/echo" }
max_body_bytes = 100000

[limits]
max_url_bytes = 512
max_header_bytes = 2048
body_read_timeout_ms = 300
"#;

fn body_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_chunked_body_over_a_small_cap_is_refused_before_the_backend_sees_anything() {
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), GUARDED);
    let before = backend_seen(&be).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let r = client()
        .post(sg.url("/v1/events"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["limit"].as_str(), body["route"].as_str()),
        (Some("max_body_bytes"), Some("ingest"))
    );
    assert!(body["value"].as_u64().unwrap() > 4096);
    // A chunked body under the cap is read, checked and replayed intact.
    let ok = client()
        .post(sg.url("/v1/events"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            vec![
                Ok::<_, std::io::Error>(br#"{"customer_id":"c","event":"e","#.to_vec()),
                Ok(br#""ts":1700000000000,"value":2}"#.to_vec()),
            ],
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(be.store().total_events(), 1);
    assert_eq!(
        backend_seen(&be).await - before,
        1,
        "the backend saw only the accepted request"
    );
    // The refusal is counted by route and reason.
    let st: Value = sg.status().await;
    let rows = st["rejections"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["route"] == "ingest" && r["reason"] == "body_too_large" && r["count"] == 1),
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_large_chunked_body_over_its_cap_is_cut_off_and_the_backend_never_gets_a_valid_request() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), GUARDED);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..50).map(|_| Ok(vec![b'x'; 4000])).collect();
    let r = client()
        .post(sg.url("/debug/echo"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["limit"], "max_body_bytes");
            assert_eq!(body["route"], "upload");
        }
        // The client may still be writing when the 413 and the close arrive.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    // Whatever reached the backend, it never answered a complete echo (a 200).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = client()
        .get(format!("http://{}/metrics", be.addrs()[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The echo endpoint counts as route "not_found" in the backend's labels.
    assert!(
        !text.contains("route=\"not_found\",status=\"200\""),
        "{text}"
    );
}

#[tokio::test]
async fn long_urls_big_headers_and_stalled_bodies_get_414_431_and_408() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), GUARDED);
    let before = backend_seen(&be).await;
    let long = format!(
        "GET /v1/metrics?{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(600)
    );
    let r = raw_exchange(sg.proxy, long.as_bytes(), Duration::from_secs(2)).await;
    assert!(r.starts_with("HTTP/1.1 414"), "{r}");
    assert_eq!(body_of(&r)["limit"], "limits.max_url_bytes");

    let big = format!(
        "GET /v1/metrics HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(3000)
    );
    let r = raw_exchange(sg.proxy, big.as_bytes(), Duration::from_secs(2)).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert_eq!(body_of(&r)["limit"], "limits.max_header_bytes");

    // Content-Length 100, 10 bytes sent, then silence: 408 after the 300 ms body timeout.
    let t = std::time::Instant::now();
    let slow = b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\ncontent-type: application/json\r\n\r\n{\"customer";
    let r = raw_exchange(sg.proxy, slow, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(be.store().total_events(), 0);
    // The refused head never reached the backend. (The stalled body did start towards it;
    // the backend saw a broken request, which it did not store.)
    assert!(backend_seen(&be).await - before <= 1);
}

const JSON_GUARDED: &str = r#"
[[route]]
name = "ingest"
match = { method = "POST", path_prefix = "/v1/events" }
max_body_bytes = 4096
json = { max_depth = 4, max_keys = 10, max_array_len = 5, max_string_bytes = 64 }

[[route]]
name = "bulk"
match = { method = "POST", path_prefix = "/debug/echo" }
max_body_bytes = 200000
json = { max_depth = 8 }
"#;

#[tokio::test]
async fn json_bodies_are_checked_before_the_backend_sees_them() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), JSON_GUARDED);
    let before = backend_seen(&be).await;
    let http = client();
    let post = |body: String| {
        http.post(sg.url("/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            r#"{"customer_id":"c","event":"e","ts":1,"dimensions":{"a":{"b":{"c":{"d":1}}}}}"#
                .to_string(),
            422,
            "json.max_depth",
        ),
        (
            format!(
                r#"{{"customer_id":"c","event":"e","ts":1,"value":1,{}}}"#,
                (0..8)
                    .map(|i| format!("\"k{i}\":1"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            422,
            "json.max_keys",
        ),
        (
            r#"{"customer_id":"c","event":"e","ts":1,"tags":[1,2,3,4,5,6]}"#.to_string(),
            422,
            "json.max_array_len",
        ),
        (
            format!(
                r#"{{"customer_id":"{}","event":"e","ts":1}}"#,
                "c".repeat(100)
            ),
            422,
            "json.max_string_bytes",
        ),
        (
            r#"{"customer_id":"c","event":"e","ts":1,}"#.to_string(),
            400,
            "",
        ),
        ("{\"customer_id\":\"c\"".to_string(), 400, ""),
        ("not json".to_string(), 400, ""),
    ];
    for (body, status, limit) in &cases {
        let r = post(body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["route"], "ingest");
        if *status == 422 {
            assert_eq!(
                (v["reason"].as_str(), v["limit"].as_str()),
                (Some("json_limit"), Some(*limit)),
                "{body}: {v}"
            );
        } else {
            assert_eq!(v["reason"], "invalid_json", "{body}: {v}");
        }
    }
    let ok = post(
        r#"{"customer_id":"c","event":"e","ts":1700000000000,"dimensions":{"a":"b"}}"#.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(be.store().total_events(), 1);
    assert_eq!(
        backend_seen(&be).await - before,
        1,
        "the backend saw only the valid event"
    );
}

#[tokio::test]
async fn a_large_json_body_streams_through_when_valid_and_is_cut_off_when_not() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), JSON_GUARDED);
    let http = client();
    // About 100 KB: over the 64 KiB replay buffer, so it streams.
    let items: Vec<String> = (0..5000)
        .map(|i| format!("{{\"i\":{i},\"v\":\"abcdefgh\"}}"))
        .collect();
    let valid = format!("[{}]", items.join(","));
    let r = http
        .post(sg.url("/debug/echo"))
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["body_len"], valid.len());
    // The same body with its last bracket missing: the scan sees it only at the end, after
    // most bytes went upstream; the upstream request is aborted, the client gets the 400.
    let broken = valid[..valid.len() - 1].to_string();
    let r = http
        .post(sg.url("/debug/echo"))
        .body(broken)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "invalid_json");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = client()
        .get(format!("http://{}/metrics", be.addrs()[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let echoed: u64 = text
        .lines()
        .filter(|l| l.contains("route=\"not_found\",status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        echoed, 1,
        "only the valid body was answered by the backend: {text}"
    );
}
