//! Request guards: each refusal has its exact status and a JSON body naming the limit, and
//! the backend's own counters show it never saw the refused request.

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
    let st: Value = client()
        .get(sg.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
