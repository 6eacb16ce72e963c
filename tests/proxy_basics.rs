//! The foundation, end to end: requests go through the real sloguard process to the real
//! analytics backend and arrive intact; sloguard's own answers are explicit JSON.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use analytics_backend::api::echo::fnv1a_hex as fnv;
use common::*;
use serde_json::Value;

#[tokio::test]
async fn an_event_posted_through_the_proxy_is_seen_by_a_query_through_the_proxy() {
    let be = backend(4);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let http = client();
    let ts = 1_732_550_000_000u64;
    for (i, v) in [10.0, 20.0, 30.0].into_iter().enumerate() {
        let r = http
            .post(sg.url("/v1/events"))
            .json(&event("acme", "page_view", ts + i as u64 * 1000, v))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
    }
    // Queries spread over the workers; every one must see all three events.
    for _ in 0..4 {
        let q: Value = http
            .get(sg.url(&format!(
                "/v1/metrics?customer=acme&event=page_view&from={ts}&to={}&bucket=1m",
                ts + 60_000
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let points = q["series"][0]["points"]
            .as_array()
            .expect("a series")
            .clone();
        let count: u64 = points.iter().map(|p| p["count"].as_u64().unwrap()).sum();
        let sum: f64 = points.iter().map(|p| p["sum"].as_f64().unwrap()).sum();
        assert_eq!((count, sum), (3, 60.0), "{q}");
    }
    assert_eq!(be.store().total_events(), 3);
}

#[tokio::test]
async fn a_one_megabyte_body_and_its_headers_arrive_intact() {
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let r = client()
        .put(sg.url("/debug/echo/some/path?a=1&b=two%20words"))
        .header("x-custom", "kept as is")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-request-id", "client-chosen-id")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-chosen-id");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/debug/echo/some/path");
    assert_eq!(echo["query"], "a=1&b=two%20words");
    assert_eq!(echo["body_len"], 1_048_576);
    assert_eq!(echo["body_fnv"], fnv(&body));
    assert_eq!(echo["headers"]["x-custom"][0], "kept as is");
    assert_eq!(echo["headers"]["x-request-id"][0], "client-chosen-id");
    // No trusted proxies: the client's own X-Forwarded-For is a claim nobody vouches for,
    // so the worker gets the TCP peer alone (tests/client_ip.rs has the trusted chains).
    assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1");
}

#[tokio::test]
async fn a_chunked_body_arrives_intact_and_a_request_id_is_added() {
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64u8).map(|i| Ok(vec![i; 1000 + i as usize])).collect();
    let whole: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.as_ref().unwrap().clone())
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let r = client()
        .post(sg.url("/debug/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["body_len"], whole.len());
    assert_eq!(echo["body_fnv"], fnv(&whole));
    assert_eq!(echo["headers"]["transfer-encoding"][0], "chunked");
    // The id we generated reached the backend and came back to the client.
    assert_eq!(echo["headers"]["x-request-id"][0], id.as_str());
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1");
}

/// Sends 30 events through a sloguard whose second worker is a closed port; returns the
/// status document afterwards.
async fn thirty_events_with_a_dead_worker(guard: &str) -> Value {
    let be = backend(2);
    let mut workers = be.addrs();
    // A port nobody listens on: the crashed worker.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    workers.insert(1, dead);
    let sg = Sloguard::spawn(
        &workers,
        &format!("{ROUTES}\n[guard]\nmode = \"{guard}\"\n"),
    );
    let http = client();
    for i in 0..30u64 {
        let r = http
            .post(sg.url("/v1/events"))
            .json(&event("acme", "retry", 1_700_000_000_000 + i, 1.0))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "request {i}: {:?}", r.text().await);
    }
    assert_eq!(
        be.store().total_events(),
        30,
        "each accepted POST stored exactly once"
    );
    sg.status().await
}

#[tokio::test]
async fn with_the_guard_off_a_refused_connection_is_retried_on_another_worker() {
    let status = thirty_events_with_a_dead_worker("off").await;
    let failures = status["workers"][1]["connect_failures"].as_u64().unwrap();
    assert!(
        failures > 0,
        "the dead worker was tried and counted: {status}"
    );
    assert_eq!(status["workers"][0]["connect_failures"], 0);
    // The two live workers answered all 30, all successfully.
    let ok = status["workers"][0]["successes"].as_u64().unwrap()
        + status["workers"][2]["successes"].as_u64().unwrap();
    assert_eq!(ok, 30, "{status}");
    assert_eq!(status["workers"][0]["failures"], 0);
}

#[tokio::test]
async fn with_the_guard_on_a_dead_worker_is_ejected_by_its_probes() {
    let status = thirty_events_with_a_dead_worker("enforce").await;
    let dead = &status["workers"][1];
    assert_eq!(dead["state"], "ejected", "{status}");
    assert!(
        dead["reason"].as_str().unwrap().contains("probe"),
        "{status}"
    );
    assert_eq!(status["workers"][0]["state"], "healthy", "{status}");
}

#[tokio::test]
async fn a_body_over_the_route_cap_gets_413_json_and_never_reaches_the_backend() {
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let http = client();
    let mut big = event("acme", "big", 1_700_000_000_000, 1.0);
    big["dimensions"]["blob"] = Value::String("x".repeat(8000));
    let r = http
        .post(sg.url("/v1/events"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["limit"], "max_body_bytes");
    assert_eq!(body["route"], "ingest");
    assert!(body["value"].as_u64().unwrap() > 8000);
    // A normal event on the same route passes.
    let r = http
        .post(sg.url("/v1/events"))
        .json(&event("acme", "small", 1_700_000_000_000, 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        be.store().total_events(),
        1,
        "only the small event reached the backend"
    );
}

#[tokio::test]
async fn when_every_worker_is_down_the_client_gets_a_json_502() {
    let dead: Vec<std::net::SocketAddr> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let sg = Sloguard::spawn(&dead, ROUTES);
    let r = client()
        .get(sg.url("/v1/metrics?customer=a&event=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "upstream_unavailable");
    assert_eq!(body["route"], "query");
}
