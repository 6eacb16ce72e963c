//! Handler tests without sockets: requests go straight into [`serve`].

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::Value;

use super::*;
use crate::conn::ConnFaults;
use crate::fault::FaultSpec;
use crate::store::Store;

fn worker() -> Arc<WorkerShared> {
    let addr = "127.0.0.1:8003".parse().unwrap();
    Arc::new(WorkerShared::new(
        3,
        addr,
        Arc::new(Store::new()),
        FaultSpec::default(),
        None,
    ))
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn field(&self) -> Value {
        self.json()["field"].clone()
    }
}

async fn call(w: &Arc<WorkerShared>, method: Method, uri: &str, body: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = serve(Arc::clone(w), Arc::default(), req).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

const EVENT: &str = r#"{"customer_id":"c1","event":"page_view","ts":1732550000000,
    "dimensions":{"country":"fr"},"value":12.5}"#;

#[tokio::test]
async fn event_is_accepted_and_every_answer_is_stamped() {
    let w = worker();
    let a = call(&w, Method::POST, "/v1/events", EVENT).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json(), serde_json::json!({ "accepted": 1 }));
    assert_eq!(a.headers[WORKER_HEADER], "3");
    assert!(a.headers[LAG_HEADER]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(w.store.total_events(), 1);
    for (method, uri) in [(Method::GET, "/nope"), (Method::GET, "/v1/events")] {
        let a = call(&w, method, uri, "").await;
        assert!(a.headers.contains_key(LAG_HEADER) && a.headers.contains_key(WORKER_HEADER));
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let w = worker();
    let a = call(&w, Method::POST, "/v1/events", r#"{"event":"e","ts":1}"#).await;
    assert_eq!((a.status, a.field()), (400, "customer_id".into()));
    let a = call(&w, Method::POST, "/v1/events", "{\"customer_id\":").await;
    assert_eq!((a.status, a.field()), (400, Value::Null));
    assert!(a.json()["error"].as_str().unwrap().contains("line 1"));
    assert_eq!(w.store.total_events(), 0);
}

#[tokio::test]
async fn batch_is_all_or_none() {
    let w = worker();
    let bad = format!(r#"[{EVENT},{EVENT},{EVENT},{{"customer_id":"c","event":"e","ts":"x"}}]"#);
    let a = call(&w, Method::POST, "/v1/events/batch", &bad).await;
    assert_eq!((a.status, a.field()), (400, "[3].ts".into()));
    assert_eq!(w.store.total_events(), 0);
    let good = format!("[{EVENT},{EVENT}]");
    let a = call(&w, Method::POST, "/v1/events/batch", &good).await;
    assert_eq!((a.status, a.json()["accepted"].clone()), (202, 2.into()));
    assert_eq!(w.store.total_events(), 2);
}

#[tokio::test]
async fn routing_errors() {
    let w = worker();
    let a = call(&w, Method::GET, "/v1/events", "").await;
    assert_eq!(a.status, 405);
    assert_eq!(a.headers[header::ALLOW], "POST");
    let a = call(&w, Method::DELETE, "/healthz", "").await;
    assert_eq!(a.status, 405);
    let a = call(&w, Method::GET, "/v2/nothing", "").await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("/v2/nothing"));
}

#[tokio::test]
async fn metrics_query_round_trip() {
    let w = worker();
    call(&w, Method::POST, "/v1/events", EVENT).await;
    let uri = "/v1/metrics?customer=c1&event=page_view&bucket=1h&group_by=country";
    let a = call(&w, Method::GET, uri, "").await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["bucket_ms"], 3_600_000);
    assert_eq!(v["series"][0]["group"], "fr");
    assert_eq!(v["series"][0]["points"][0]["count"], 1);
    assert_eq!(v["series"][0]["points"][0]["p95"], 12.5);
    let a = call(&w, Method::GET, "/v1/metrics?event=page_view", "").await;
    assert_eq!((a.status, a.field()), (400, "customer".into()));
}

#[tokio::test]
async fn healthz_and_prometheus() {
    let w = worker();
    let a = call(&w, Method::GET, "/healthz", "").await;
    let v = a.json();
    assert_eq!(
        (v["worker"].clone(), v["port"].clone()),
        (3.into(), 8003.into())
    );
    assert_eq!(v["status"], "ok");
    assert_eq!(v["in_flight"], 1); // this very request
    assert!(v["loop_lag_ms"].is_u64());
    call(&w, Method::POST, "/v1/events", EVENT).await;
    let a = call(&w, Method::GET, "/metrics", "").await;
    let text = String::from_utf8(a.body.to_vec()).unwrap();
    assert!(text.contains("analytics_loop_lag_seconds{worker=\"3\"}"));
    assert!(text.contains("analytics_events_accepted_total{worker=\"3\"} 1"));
    assert!(text.contains("route=\"healthz\",status=\"200\"} 1"));
    assert!(text.contains("route=\"events\",status=\"202\"} 1"));
}

#[tokio::test]
async fn admin_fault_sets_echoes_and_clears() {
    let w = worker();
    let a = call(
        &w,
        Method::POST,
        "/admin/fault",
        r#"{"block_ms":250,"every":4}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), serde_json::json!({ "block_ms": 250, "every": 4 }));
    let a = call(&w, Method::POST, "/admin/fault", r#"{"status":503}"#).await;
    assert_eq!(a.json(), serde_json::json!({ "status": 503 }));
    // The status fault: nothing stored, health untouched.
    let a = call(&w, Method::POST, "/v1/events", EVENT).await;
    assert_eq!(a.status, 503);
    assert_eq!(w.store.total_events(), 0);
    let a = call(
        &w,
        Method::GET,
        "/v1/metrics?customer=c1&event=page_view",
        "",
    )
    .await;
    assert_eq!(a.status, 503);
    assert_eq!(call(&w, Method::GET, "/healthz", "").await.status, 200);
    let a = call(&w, Method::POST, "/admin/fault", "{}").await;
    assert_eq!(a.json(), serde_json::json!({}));
    assert_eq!(
        call(&w, Method::POST, "/v1/events", EVENT).await.status,
        202
    );
    let a = call(&w, Method::POST, "/admin/fault", r#"{"status":9000}"#).await;
    assert_eq!((a.status, a.field()), (400, "status".into()));
    let a = call(&w, Method::POST, "/admin/fault", r#"{"block":1}"#).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("unknown field"));
}

#[tokio::test]
async fn cpu_fault_holds_the_events_handler() {
    let w = worker();
    w.set_fault("cpu=40ms".parse().unwrap());
    let start = Instant::now();
    assert_eq!(
        call(&w, Method::POST, "/v1/events", EVENT).await.status,
        202
    );
    assert!(start.elapsed() >= Duration::from_millis(40));
    // Not on other routes.
    let start = Instant::now();
    call(&w, Method::GET, "/healthz", "").await;
    assert!(start.elapsed() < Duration::from_millis(40));
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let w = worker();
    let big = "x".repeat(MAX_BODY + 1);
    let a = call(&w, Method::POST, "/v1/events", &big).await;
    assert_eq!(a.status, 413);
}

fn request(method: Method, uri: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn a_reset_fault_stores_the_event_then_never_answers() {
    let w = worker();
    w.set_fault("reset=true,every=2".parse().unwrap());
    let conn = Arc::new(ConnFaults::default());
    let answer = tokio::time::timeout(
        Duration::from_millis(200),
        serve(
            Arc::clone(&w),
            Arc::clone(&conn),
            request(Method::POST, "/v1/events", EVENT),
        ),
    )
    .await;
    assert!(answer.is_err(), "answered despite the reset");
    assert!(conn.is_reset());
    // The handler ran: the event is stored (a retry would store it twice).
    assert_eq!(w.store.total_events(), 1);
    let metrics = call(&w, Method::GET, "/metrics", "").await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(text.contains("analytics_faults_total{worker=\"3\",fault=\"reset\"} 1"));
    assert!(
        !text.contains("route=\"events\""),
        "a reset is not an answer: {text}"
    );
    // every=2: the next one is answered.
    assert_eq!(
        call(&w, Method::POST, "/v1/events", EVENT).await.status,
        202
    );
}

#[tokio::test]
async fn close_keepalive_closes_each_connection_after_its_nth_answer_any_route() {
    let w = worker();
    w.set_fault("close_keepalive=2".parse().unwrap());
    let conn = Arc::new(ConnFaults::default());
    let mut closing = vec![];
    for uri in ["/healthz", "/v1/metrics?customer=c&event=e"] {
        let r = serve(
            Arc::clone(&w),
            Arc::clone(&conn),
            request(Method::GET, uri, ""),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        // No `Connection: close`: the client cannot tell.
        assert!(!r.headers().contains_key(header::CONNECTION));
        closing.push(conn.closes_after_answer());
    }
    assert_eq!(closing, [false, true]);
    // Another connection counts its own answers.
    let other = Arc::new(ConnFaults::default());
    serve(
        Arc::clone(&w),
        Arc::clone(&other),
        request(Method::GET, "/healthz", ""),
    )
    .await
    .unwrap();
    assert!(!other.closes_after_answer());
}

#[tokio::test]
async fn trickle_marks_only_faulted_answers() {
    let w = worker();
    w.set_fault("trickle=3ms,every=2".parse().unwrap());
    let conn = Arc::new(ConnFaults::default());
    let serve_one = |uri: &'static str| {
        let (w, conn) = (Arc::clone(&w), Arc::clone(&conn));
        async move { serve(w, conn, request(Method::GET, uri, "")).await.unwrap() }
    };
    serve_one("/v1/metrics?customer=c&event=e").await;
    let text =
        String::from_utf8(call(&w, Method::GET, "/metrics", "").await.body.to_vec()).unwrap();
    assert!(text.contains("fault=\"trickle\"} 1"), "{text}");
    serve_one("/v1/metrics?customer=c&event=e").await;
    serve_one("/healthz").await;
    let text =
        String::from_utf8(call(&w, Method::GET, "/metrics", "").await.body.to_vec()).unwrap();
    assert!(
        text.contains("fault=\"trickle\"} 1"),
        "every=2, probes exempt: {text}"
    );
}
