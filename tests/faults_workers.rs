//! Faults behind sloguard, on real processes: a worker trickling its answers byte by byte,
//! a worker resetting connections, a worker closing keep-alive connections under the
//! proxy's pool, and Redis answering errors. What the client sees, that no accepted request
//! is lost or stored twice (the backend's store against the 2xx answers, per event), and
//! that sloguard recovers by itself.
//!
//! One scenario at a time (a lock): several measure latency on a shared 2-core machine.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The reference query: its answer is the same from every worker (one shared store), and
/// no test writes to its customer after seeding it.
const REF_QUERY: &str = "/v1/metrics?customer=ref&event=e&bucket=1d";

/// What a client got.
#[derive(Debug, Clone)]
struct Answer {
    post: bool,
    /// The event's own customer id (POSTs), to count it in the store.
    customer: String,
    status: u16,
    /// `x-worker-id`: which worker answered (absent when sloguard answered itself).
    worker: Option<u64>,
    reason: Option<String>,
    body: Vec<u8>,
    took: Duration,
}

async fn send(http: &reqwest::Client, base: &str, post: bool, customer: &str) -> Answer {
    let t = Instant::now();
    let req = if post {
        http.post(format!("{base}/v1/events"))
            .json(&event(customer, "e", 1_700_000_000_000, 1.0))
    } else {
        http.get(format!("{base}{REF_QUERY}"))
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let worker = header("x-worker-id").and_then(|v| v.parse().ok());
    let reason = header("x-sloguard-reason");
    let body = r.bytes().await.unwrap().to_vec();
    Answer {
        post,
        customer: customer.to_string(),
        status,
        worker,
        reason,
        body,
        took: t.elapsed(),
    }
}

/// Seeds the reference customer straight into worker 1 and returns the reference answer's
/// body, read from that worker directly.
async fn seed_reference(be: &Backend) -> Vec<u8> {
    // No pooled connections: the worker may close them under us (close_keepalive).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap();
    let w1 = format!("http://{}", be.addrs()[0]);
    for i in 0..5u64 {
        let r = http
            .post(format!("{w1}/v1/events"))
            .json(&event("ref", "e", 1_700_000_000_000 + i, i as f64))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = http.get(format!("{w1}{REF_QUERY}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

/// Checks the store against the POST answers: every 2xx event is stored exactly once, no
/// event is stored twice, and (when `failed_stored`) every event answered with a failure
/// was stored too (the worker acted on it before the failure). Returns (2xx, stored).
fn check_store(be: &Backend, answers: &[Answer], failed_stored: Option<bool>) -> (u64, u64) {
    let mut ok = 0;
    let mut total = 0;
    for a in answers.iter().filter(|a| a.post) {
        let n = stored(be, &a.customer);
        assert!(n <= 1, "{} stored {n} times ({:?})", a.customer, a.status);
        total += n;
        if (200..300).contains(&a.status) {
            ok += 1;
            assert_eq!(n, 1, "{} answered {} but not stored", a.customer, a.status);
        } else if let Some(expected) = failed_stored {
            assert_eq!(
                n == 1,
                expected,
                "{} answered {}: stored {n}",
                a.customer,
                a.status
            );
        }
    }
    (ok, total)
}

/// Every GET answered 200 with the reference body; every POST 202, or a JSON 502
/// `upstream_error` (a POST is never retried once it may have reached a worker).
fn assert_gets_intact_posts_202_or_502(answers: &[Answer], reference: &[u8]) {
    for a in answers {
        if a.post {
            assert!(matches!(a.status, 202 | 502), "{a:?}");
            if a.status == 502 {
                let body: Value = serde_json::from_slice(&a.body).unwrap();
                assert_eq!(body["reason"], "upstream_error", "{body}");
            }
        } else {
            assert_eq!(a.status, 200, "{a:?}");
            assert!(a.body == reference, "GET body differs: {a:?}");
        }
    }
}

/// A worker's `analytics_faults_total` for one fault, from its own `/metrics`.
async fn faults_fired(addr: SocketAddr, worker: usize, fault: &str) -> u64 {
    let text = get_text(&format!("http://{addr}/metrics")).await;
    let prefix = format!("analytics_faults_total{{worker=\"{worker}\",fault=\"{fault}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

fn pct(mut v: Vec<Duration>, q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn statuses(answers: &[Answer], post: bool) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for a in answers.iter().filter(|a| a.post == post) {
        *m.entry(a.status).or_insert(0) += 1;
    }
    m
}

/// `clients` loops, each alternating a reference GET and a POST of a fresh event, for
/// `duration`; every answer.
async fn run_clients(base: &str, tag: &str, clients: usize, duration: Duration) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (base, tag) = (base.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let started = Instant::now();
            let mut out = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < duration && i < 10_000 {
                let post = i % 2 == 1;
                out.push(send(&http, &base, post, &format!("{tag}-{c}-{i}")).await);
                i += 1;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Trickling within the timeouts. The per-read timeout (`upstream.read_timeout_ms`, here the
/// harness's 10 s) restarts with every byte, so it never fires on a worker that sends a byte
/// every 4 ms: its answers arrive whole and intact, but each takes about a second (~270
/// bytes). What limits the damage is the choice of worker: the slow answer raises the
/// worker's latency estimate and power-of-two-choices stops picking it until probes bring
/// the estimate back down. The worker is never ejected (its loop is free, its probes fast,
/// it answers no 5xx), so a client that lands on it still waits the full second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_trickling_its_answers_gives_whole_bodies_and_loses_its_share_of_traffic() {
    let _serial = SERIAL.lock().await;
    let trickle = FaultSpec {
        trickle: Some(Duration::from_millis(4)),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(3, vec![(2, trickle)]);
    let reference = seed_reference(&be).await;
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let answers = run_clients(
        &format!("http://{}", sg.proxy),
        "trickle",
        4,
        Duration::from_secs(4),
    )
    .await;
    let st = sg.status().await;
    let (slow, fast): (Vec<&Answer>, Vec<&Answer>) =
        answers.iter().partition(|a| a.worker == Some(2));
    let slow_took: Vec<Duration> = slow.iter().map(|a| a.took).collect();
    let fast_took: Vec<Duration> = fast.iter().map(|a| a.took).collect();
    eprintln!(
        "trickle 4 ms/byte: {} requests, {} answered by the trickling worker (min {:?}, max \
         {:?}), others p50 {:?} p99 {:?}; GET {:?} POST {:?}; worker 2 {}",
        answers.len(),
        slow.len(),
        slow_took.iter().min(),
        slow_took.iter().max(),
        pct(fast_took.clone(), 0.5),
        pct(fast_took.clone(), 0.99),
        statuses(&answers, false),
        statuses(&answers, true),
        st["workers"][1]
    );
    // Every answer is complete and byte-correct, the trickled ones included.
    for a in &answers {
        if a.post {
            assert_eq!(a.status, 202, "{a:?}");
            assert_eq!(a.body, br#"{"accepted":1}"#, "{a:?}");
        } else {
            assert_eq!(a.status, 200, "{a:?}");
            assert!(a.body == reference, "GET body differs: {a:?}");
        }
    }
    assert!(!slow.is_empty(), "the trickling worker was never picked");
    // Its answers really were trickled: ~270 bytes at 4 ms each.
    assert!(
        slow_took.iter().all(|t| *t >= Duration::from_millis(500)),
        "{slow_took:?}"
    );
    // The other workers were not slowed: their answers stay far below one trickled answer.
    assert!(fast.len() >= 100, "{} fast answers", fast.len());
    assert!(
        pct(fast_took, 0.99) < Duration::from_millis(300),
        "the healthy workers' answers slowed down"
    );
    // Avoided by latency: it got a small share of the traffic.
    assert!(
        slow.len() * 10 <= answers.len(),
        "{} of {} went to the trickling worker",
        slow.len(),
        answers.len()
    );
    let (ok, total) = check_store(&be, &answers, None);
    assert_eq!(ok, total, "every POST stored exactly once");
}

/// Trickling slower than the route's per-try timeout (1 byte per 150 ms, per-try 100 ms):
/// the first byte arrives, the next read times out. A GET is then retried on another worker
/// and answered 200 with the right body; a POST is answered 504 `upstream_timeout` (never
/// retried). The worker had already stored that POST's event: a 504 does not mean "not
/// stored", which is why sloguard never repeats it. Guard `off` (fewest in flight, ties at
/// random) so that a third of the requests land on the trickling worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_trickling_slower_than_the_per_try_timeout_costs_gets_a_retry_and_posts_a_504() {
    let _serial = SERIAL.lock().await;
    let trickle = FaultSpec {
        trickle: Some(Duration::from_millis(150)),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(3, vec![(2, trickle)]);
    let reference = seed_reference(&be).await;
    let routes = r#"
[[route]]
name = "ingest"
match = { method = "POST", path_prefix = "/v1/events" }
per_try_timeout_ms = 100

[[route]]
name = "query"
match = { method = "GET", path_prefix = "/v1/metrics" }
slo = { p95_ms = 250, p99_ms = 1000 }
per_try_timeout_ms = 100

[guard]
mode = "off"
"#;
    let sg = Sloguard::spawn(&be.addrs(), routes);
    let answers = run_clients(
        &format!("http://{}", sg.proxy),
        "slowtrickle",
        1,
        Duration::from_secs(3),
    )
    .await;
    let st = sg.status().await;
    let trickled = faults_fired(be.addrs()[1], 2, "trickle").await;
    let timeouts: Vec<&Answer> = answers.iter().filter(|a| a.status == 504).collect();
    let worst_get = answers
        .iter()
        .filter(|a| !a.post)
        .map(|a| a.took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "trickle 150 ms/byte, per-try 100 ms: {} requests; GET {:?} (worst {worst_get:?}) \
         POST {:?}; {trickled} attempts hit the trickling worker; retries {}",
        answers.len(),
        statuses(&answers, false),
        statuses(&answers, true),
        st["retries"]
    );
    for a in &answers {
        if a.post {
            assert!(matches!(a.status, 202 | 504), "{a:?}");
            if a.status == 504 {
                let body: Value = serde_json::from_slice(&a.body).unwrap();
                assert_eq!(body["reason"], "upstream_timeout", "{body}");
                assert_eq!(a.reason.as_deref(), Some("upstream_timeout"));
            }
        } else {
            assert_eq!(a.status, 200, "{a:?}");
            assert!(a.body == reference, "GET body differs: {a:?}");
            assert_ne!(a.worker, Some(2));
        }
    }
    assert!(
        !timeouts.is_empty(),
        "no POST landed on the trickling worker"
    );
    // Every attempt on the trickling worker was a POST answered 504 or a GET retried once.
    let gets_retried = trickled - timeouts.len() as u64;
    assert!(gets_retried >= 1, "no GET landed on the trickling worker");
    assert!(
        st["retries"]["granted"].as_u64().unwrap() >= gets_retried,
        "{}",
        st["retries"]
    );
    // No GET waited much beyond one per-try timeout plus its retry.
    assert!(worst_get < Duration::from_millis(900), "{worst_get:?}");
    // Every POST is stored exactly once, the 504s included (the worker acted on them).
    let (ok, total) = check_store(&be, &answers, Some(true));
    assert_eq!(total, ok + timeouts.len() as u64);
}

/// A worker that resets the connection (RST) after acting on each `/v1` request, instead of
/// answering. sloguard never repeats a POST that reached a worker: the client gets a JSON
/// 502 `upstream_error`, and the store shows why that matters (the worker had stored it:
/// a retry would have stored it twice). A GET is retried on another worker. The failures
/// count as the worker's 5xx streak: after `consecutive_failures` (5) it is ejected, and
/// once the fault is cleared it is readmitted through its probes and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_resetting_connections_costs_posts_a_502_never_a_duplicate_and_is_ejected() {
    let _serial = SERIAL.lock().await;
    let reset = FaultSpec {
        reset: true,
        ..FaultSpec::default()
    };
    // Workers 1 and 3 answer in 25 ms, so the fast-failing worker 2 is the cheaper choice
    // and gets traffic whatever worker the first request lands on. (At 5 ms, a clean-clone
    // run on a slow stretch of the machine saw worker 2's failures take 10 ms: it got 2 of
    // 60 requests and was never ejected.)
    let slow = FaultSpec {
        block: Some(Duration::from_millis(25)),
        query_block: Some(Duration::from_millis(25)),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(3, vec![(1, slow.clone()), (2, reset), (3, slow.clone())]);
    let reference = seed_reference(&be).await;
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let base = format!("http://{}", sg.proxy);
    let http = client();
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut ejected_after = None;
    for i in 0..60u64 {
        answers.push(send(&http, &base, i % 2 == 1, &format!("reset-{i}")).await);
        if ejected_after.is_none() && sg.status().await["workers"][1]["state"] == "ejected" {
            ejected_after = Some((i + 1, started.elapsed()));
        }
    }
    let st = sg.status().await;
    let resets = faults_fired(be.addrs()[1], 2, "reset").await;
    let failed_posts: Vec<&Answer> = answers.iter().filter(|a| a.status == 502).collect();
    eprintln!(
        "reset: {} requests; GET {:?} POST {:?}; {resets} connections reset; ejected after \
         {ejected_after:?}; worker 2 {}",
        answers.len(),
        statuses(&answers, false),
        statuses(&answers, true),
        st["workers"][1]
    );
    assert_gets_intact_posts_202_or_502(&answers, &reference);
    assert!(
        !failed_posts.is_empty(),
        "no POST landed on the resetting worker"
    );
    // Each reset was a POST answered 502 or a GET retried elsewhere.
    assert!(resets >= failed_posts.len() as u64);
    // Ejected by its 5xx streak.
    let w2 = &st["workers"][1];
    let ejections = w2["ejections"].as_u64().unwrap();
    assert!(ejections >= 1, "{w2}");
    assert!(ejected_after.is_some(), "never seen ejected: {w2}");
    assert!(w2["reason"].as_str().unwrap_or("").contains("5xx"), "{w2}");
    // Each ejection takes 5 in a row, on first failing and after each readmission; a
    // worker readmitted near the end of the run may be up to 4 into its next one.
    let open_cycle = if w2["state"] == "ejected" { 0 } else { 4 };
    assert!(
        resets <= 5 * ejections + open_cycle,
        "{resets} resets, {ejections} ejections: {w2}"
    );
    // Nothing lost, nothing twice; every 502 POST had been stored by the worker.
    let (ok, total) = check_store(&be, &answers, Some(true));
    assert_eq!(total, ok + failed_posts.len() as u64);

    // Recovery: the worker stops resetting; sloguard readmits it by itself.
    be.set_fault(2, FaultSpec::default());
    let cleared = Instant::now();
    let recovered = loop {
        let a = send(
            &http,
            &base,
            true,
            &format!("reset-after-{}", cleared.elapsed().as_micros()),
        )
        .await;
        assert_eq!(a.status, 202, "{a:?}");
        if a.worker == Some(2) {
            break cleared.elapsed();
        }
        assert!(
            cleared.elapsed() < Duration::from_secs(15),
            "worker 2 never served again: {}",
            sg.status().await["workers"][1]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("reset: worker 2 served again {recovered:?} after the fault was cleared");
}

/// A worker that closes every keep-alive connection right after its answer (worker 2) or
/// after three answers (worker 3), without `Connection: close`, under concurrent load.
///
/// Pingora tests a pooled connection before reusing it (a non-blocking read: end of stream
/// = closed) and drops the closed ones, so nearly every request goes through. Not all: the
/// worker's FIN can arrive just after that test, while the next request is already on its
/// way (on this 2-core machine, when the worker's thread is descheduled between writing the
/// answer and closing). That request dies on a connection the worker closed without reading
/// it. A GET is then retried on a fresh connection (Pingora's `ReusedOnly`) and succeeds;
/// a POST is answered 502: sloguard cannot tell this from a worker that acted on the POST
/// and then died (see the reset test), so it never repeats it. Seen: 0 to ~1% of POSTs.
/// The failed POSTs were never stored, and nothing was stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_closing_keepalive_connections_after_answering_fail_no_get_and_few_posts() {
    let _serial = SERIAL.lock().await;
    let close = |n| FaultSpec {
        close_keepalive: Some(n),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(3, vec![(2, close(1)), (3, close(3))]);
    let reference = seed_reference(&be).await;
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let answers = run_clients(
        &format!("http://{}", sg.proxy),
        "close",
        4,
        Duration::from_secs(3),
    )
    .await;
    let closed = (
        faults_fired(be.addrs()[1], 2, "close_keepalive").await,
        faults_fired(be.addrs()[2], 3, "close_keepalive").await,
    );
    let by_worker = answers.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.worker.unwrap_or(0)).or_insert(0) += 1;
        m
    });
    let posts = answers.iter().filter(|a| a.post).count();
    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != 200 && a.status != 202)
        .collect();
    eprintln!(
        "close_keepalive: {} requests; GET {:?} POST {:?} ({:.2}% of POSTs failed); by worker \
         {by_worker:?}; connections closed by workers 2 and 3: {closed:?}",
        answers.len(),
        statuses(&answers, false),
        statuses(&answers, true),
        failed.len() as f64 * 100.0 / posts as f64
    );
    for a in &answers {
        if a.post {
            assert!(matches!(a.status, 202 | 502), "{a:?}");
            if a.status == 502 {
                assert_eq!(a.reason.as_deref(), Some("upstream_error"), "{a:?}");
            }
        } else {
            assert_eq!(a.status, 200, "{a:?}");
            assert!(a.body == reference, "GET body differs: {a:?}");
        }
    }
    // The race is rare: most POSTs on these workers went through.
    assert!(
        failed.len() * 20 <= posts,
        "{} of {posts} POSTs failed",
        failed.len()
    );
    // The fault really fired: both workers closed connections under the pool.
    assert!(closed.0 >= 20 && closed.1 >= 5, "{closed:?}");
    // The failed POSTs never reached a handler; the rest stored exactly once.
    let (ok, total) = check_store(&be, &answers, Some(false));
    assert_eq!(ok, total);
}

/// The keep-alive race made to happen every time: worker 2 keeps its connection open after
/// answering and closes it, unread (RST), when the next request arrives on it. The pooled
/// connection passed Pingora's liveness test and dies in use. This is what a worker's
/// keep-alive timeout (uvicorn: 5 s) racing the proxy's reuse does now and then.
///
/// Pingora marks such a failure `ReusedOnly` (the connection was reused, nothing came back).
/// sloguard retries it only for idempotent requests: a GET is sent again (worker 2's pool is
/// now empty, so on a fresh connection, or to worker 1) and succeeds. A POST is answered
/// 502: over TCP, "the worker closed before reading it" looks exactly like "the worker acted
/// on it and then died" (see the reset test above), so repeating it could store it twice.
/// None of the failed POSTs was stored (the worker never read them). Operators avoid the
/// race by keeping `upstream.idle_timeout_ms` below the workers' keep-alive timeout.
///
/// Known gap, not tested here: when *every* worker's pooled connections die on reuse, the
/// GET's one stale-connection retry can land on another stale pooled connection, and it
/// used up one of Pingora's `max_retries` (= the number of workers): seen 1 GET in 30
/// answered 502 with both workers under this fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_dying_on_reuse_costs_gets_nothing_and_posts_a_502_never_stored() {
    let _serial = SERIAL.lock().await;
    let late = FaultSpec {
        close_keepalive: Some(1),
        close_late: true,
        ..FaultSpec::default()
    };
    // Worker 1 answers in 5 ms, so worker 2 is the cheaper choice and gets most requests.
    let slow = FaultSpec {
        block: Some(Duration::from_millis(5)),
        query_block: Some(Duration::from_millis(5)),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(2, vec![(1, slow), (2, late)]);
    let reference = seed_reference(&be).await;
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let base = format!("http://{}", sg.proxy);
    let http = client();
    let mut answers = Vec::new();
    for i in 0..60u64 {
        answers.push(send(&http, &base, i % 2 == 1, &format!("late-{i}")).await);
    }
    let st = sg.status().await;
    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != 200 && a.status != 202)
        .collect();
    eprintln!(
        "close on reuse: {} requests; GET {:?} POST {:?}; retries {}; workers {} / {}",
        answers.len(),
        statuses(&answers, false),
        statuses(&answers, true),
        st["retries"],
        st["workers"][0],
        st["workers"][1]
    );
    assert_gets_intact_posts_202_or_502(&answers, &reference);
    assert!(failed.iter().all(|a| a.post), "a GET failed: {failed:?}");
    assert!(!failed.is_empty(), "no POST met a dying pooled connection");
    // A POST that got a 502 was never read by the worker, so never stored.
    let (ok, total) = check_store(&be, &answers, Some(false));
    assert_eq!(ok, total);
}

fn limits(redis: &RedisServer) -> String {
    format!(
        r#"{ROUTES}
[ratelimit]
redis_url = "{}"
timeout_ms = 20
replicas_hint = 1

[[ratelimit.rule]]
name = "per-tenant"
routes = ["ingest"]
key = "header:x-tenant"
rate = 20
burst = 5
"#,
        redis.url()
    )
}

fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A metric's value in sloguard's `/metrics` (a series without labels).
async fn metric(sg: &Sloguard, name: &str) -> Option<f64> {
    get_text(&sg.admin_url("/metrics"))
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Redis up but answering errors: `maxmemory 1` with `noeviction` makes every write fail
/// with OOM (the limiter's script writes the tenant's state), while PING still answers.
/// Requests are decided by the local fallback (`on_redis_error = "local"`): quiet tenants
/// pass, a greedy one is still limited; no request waits longer than the Redis timeout;
/// the breaker opens once and stays open, and shows in `/metrics`; when Redis is fixed,
/// shared limiting comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answering_errors_falls_back_to_local_limits_and_recovers_by_itself() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::spawn();
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), &limits(&redis));
    // Phases: healthy 1 s, Redis failing writes 2.5 s, fixed again 2 s.
    let http = client();
    let started = Instant::now();
    let phase = |t: Duration| match t.as_millis() {
        0..=999 => 0,
        1000..=3499 => 1,
        _ => 2,
    };
    let mut broken = false;
    // (breaker openings logged, Redis errors counted) when Redis broke, and when fixed.
    let (mut at_break, mut at_fix) = ((0, 0), (0, 0));
    let mut fixed_at = None;
    // Per phase: (quiet 202, quiet other, greedy 202, greedy 429, greedy other, slowest).
    let mut seen = [(0u32, 0u32, 0u32, 0u32, 0u32, Duration::ZERO); 3];
    let mut modes: [BTreeMap<String, u32>; 3] = Default::default();
    let mut gauge_open = false;
    // After the fix: (time since the fix, mode) per sample.
    let mut after_fix: Vec<(Duration, bool)> = Vec::new();
    let mut i = 0u64;
    let mut last_probe = Instant::now();
    while started.elapsed() < Duration::from_millis(5500) {
        let p = phase(started.elapsed());
        if p == 1 && !broken {
            assert_eq!(
                redis_cli(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
                "OK"
            );
            assert_eq!(
                redis_cli(&redis, &["CONFIG", "SET", "maxmemory", "1"]),
                "OK"
            );
            // Really answering errors, not down.
            assert_eq!(redis_cli(&redis, &["PING"]), "PONG");
            let write = redis_cli(&redis, &["SET", "probe", "1"]);
            assert!(write.starts_with("OOM"), "{write}");
            broken = true;
            at_break = (
                sg.log().matches("breaker open").count(),
                sg.status().await["ratelimit"]["redis_errors"]
                    .as_u64()
                    .unwrap(),
            );
        }
        if p == 2 && fixed_at.is_none() {
            at_fix = (
                sg.log().matches("breaker open").count(),
                sg.status().await["ratelimit"]["redis_errors"]
                    .as_u64()
                    .unwrap(),
            );
            assert_eq!(
                redis_cli(&redis, &["CONFIG", "SET", "maxmemory", "0"]),
                "OK"
            );
            fixed_at = Some(Instant::now());
        }
        // Ten quiet tenants at ~5/s each (a quarter of their rate), one greedy at three
        // requests a turn: over its 20/s even when the loop runs at a third of its usual
        // ~100 turns a second (a clean-clone run on a slow stretch of the machine made 36,
        // and one request a turn kept the greedy tenant under its limit).
        let (tenant, burst) = if i.is_multiple_of(2) {
            (format!("quiet-{}", (i / 2) % 10), 1)
        } else {
            ("greedy".to_string(), 3)
        };
        for _ in 0..burst {
            let (status, took) = sg.post_event(&http, &tenant, i).await;
            let s = &mut seen[p];
            s.5 = s.5.max(took);
            match (tenant.starts_with("quiet"), status) {
                (true, 202) => s.0 += 1,
                (true, _) => s.1 += 1,
                (false, 202) => s.2 += 1,
                (false, 429) => s.3 += 1,
                (false, _) => s.4 += 1,
            }
        }
        if last_probe.elapsed() >= Duration::from_millis(50) {
            last_probe = Instant::now();
            let mode = sg.status().await["ratelimit"]["mode"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            if let Some(t) = fixed_at {
                after_fix.push((t.elapsed(), mode == "redis"));
            }
            *modes[p].entry(mode).or_insert(0) += 1;
            if p == 1 && metric(&sg, "sloguard_ratelimit_fallback_active").await == Some(1.0) {
                gauge_open = true;
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let st = sg.status().await;
    let errors = metric(&sg, "sloguard_ratelimit_redis_errors_total").await;
    let (opened, failed_calls) = (at_fix.0 - at_break.0, at_fix.1 - at_break.1);
    // Back for good: the first sample after the fix from which every sample says "redis".
    let back_after = after_fix
        .iter()
        .rposition(|(_, redis)| !redis)
        .map_or(after_fix.first(), |last_bad| after_fix.get(last_bad + 1))
        .map(|(t, _)| *t);
    eprintln!(
        "redis errors: per phase (quiet ok, quiet other, greedy ok, greedy 429, greedy other, \
         slowest) {seen:?}; modes seen {modes:?}; fallback gauge seen open {gauge_open}; \
         redis errors {errors:?}; while Redis failed: breaker opened {opened} times, \
         {failed_calls} failed calls; back to redis for good {back_after:?} after the fix; {}",
        st["ratelimit"]
    );
    for (p, s) in seen.iter().enumerate() {
        assert_eq!(s.1, 0, "phase {p}: quiet tenants refused");
        assert_eq!(s.4, 0, "phase {p}: greedy got something else than 202/429");
        assert!(s.3 > 0, "phase {p}: the greedy tenant was not limited");
        // timeout_ms = 20: nothing waits on Redis much longer than that.
        assert!(
            s.5 < Duration::from_millis(150),
            "phase {p}: a request took {:?}",
            s.5
        );
    }
    // The greedy tenant's allowance while Redis failed: the local fallback's 20/s (+ burst).
    assert!(
        (20..=90).contains(&seen[1].2),
        "greedy allowed {} in 2.5 s",
        seen[1].2
    );
    assert!(errors.unwrap_or(0.0) >= 1.0, "no Redis error counted");
    // While Redis failed, the breaker opened once (or was already open: a busy machine can
    // time out a call before) and stayed open: its health check runs the limiter's script,
    // which an erroring Redis fails, not a PING, which it answers. So requests paid at most
    // `failures_to_open` (3) failed calls. (With a PING it flapped: 25 openings and 75
    // failed calls in 2.5 s.)
    assert!(opened <= 1, "the breaker flapped: opened {opened} times");
    assert!(
        failed_calls <= 3,
        "{failed_calls} failed Redis calls while it failed"
    );
    assert!(gauge_open, "the breaker never showed open in /metrics");
    assert!(modes[1].contains_key("fallback"), "{modes:?}");
    // Fixed: shared limiting is back and stays.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rl = sg.status().await["ratelimit"].clone();
        if rl["mode"] == "redis" {
            break;
        }
        assert!(Instant::now() < deadline, "never back to redis: {rl}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = sg.status().await["ratelimit"].clone();
    for j in 0..20 {
        let (status, _) = sg.post_event(&http, &format!("after-fix-{j}"), j).await;
        assert_eq!(status, 202);
    }
    let after = sg.status().await["ratelimit"].clone();
    assert_eq!(after["mode"], "redis", "{after}");
    assert_eq!(
        after["redis_errors"], before["redis_errors"],
        "Redis still failing after the fix: {after}"
    );
    assert!(
        after["redis_calls"].as_u64() > before["redis_calls"].as_u64(),
        "decisions not made in Redis: {after}"
    );
    assert!(
        back_after.is_some(),
        "no sample back in redis mode: {after_fix:?}"
    );
    // The gauge follows (refreshed every 250 ms).
    let deadline = Instant::now() + Duration::from_secs(3);
    while metric(&sg, "sloguard_ratelimit_fallback_active").await != Some(0.0) {
        assert!(Instant::now() < deadline, "fallback gauge still set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
