//! Faults on the client side of sloguard, on real processes: clients aborting mid-body or
//! while queued, pipelined requests, many idle keep-alive connections, and sloguard itself
//! restarted under traffic. What the client sees, that nothing accepted is lost or stored
//! twice (the backend's store against the 2xx answers), and that sloguard stays healthy.
//!
//! One scenario at a time (a lock): several measure latency or file descriptors on a
//! shared 2-core machine.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A complete `POST /v1/events` for `customer`, as raw bytes.
fn raw_post(customer: &str) -> Vec<u8> {
    let body = event(customer, "e", 1_700_000_000_000, 1.0).to_string();
    format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One HTTP/1.1 response parsed off a byte stream.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `bytes` into the complete responses at its start (Content-Length framing, which
/// is all sloguard and the backend send here); the rest is returned unparsed.
fn parse_responses(mut bytes: &[u8]) -> (Vec<Response>, Vec<u8>) {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if bytes.len() < end + 4 + len {
            break;
        }
        out.push(Response {
            status,
            headers,
            body: bytes[end + 4..end + 4 + len].to_vec(),
        });
        bytes = &bytes[end + 4 + len..];
    }
    (out, bytes.to_vec())
}

/// Reads one response off `s` (Content-Length framing).
async fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (mut parsed, _) = parse_responses(&buf);
        if let Some(r) = parsed.pop() {
            return Ok(r);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `POST /v1/events` answered with `status` by the backend's workers (their own counters).
async fn backend_events_answered(be: &Backend, status: &str) -> u64 {
    let mut total = 0;
    for addr in be.addrs() {
        let text = get_text(&format!("http://{addr}/metrics")).await;
        let needle = format!("route=\"events\",status=\"{status}\"}} ");
        total += text
            .lines()
            .filter_map(|l| l.split_once(&needle)?.1.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// A client declares 100 000 bytes of body, sends half, and closes. The first half is a
/// complete, valid event padded with spaces: had sloguard ended the upstream body early as
/// if it were complete, the backend would have stored it. It streams (over the 64 KiB
/// replay buffer) with its declared length, so the backend sees a request cut short, fails
/// to read it and stores nothing. A client leaving is not the worker's failure: no worker
/// is charged with a 5xx for it, and the next requests are served normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_aborting_mid_body_stores_nothing_and_costs_the_workers_nothing() {
    let _serial = SERIAL.lock().await;
    let be = backend(2);
    let routes = r#"
[[route]]
name = "ingest"
match = { method = "POST", path_prefix = "/v1/events" }
max_body_bytes = 200000

# Not the subject here: keep a noisy machine's loop lag from ejecting anyone.
[upstream.health]
lag_eject_ms = 1000
"#;
    let sg = Sloguard::spawn(&be.addrs(), routes);
    let aborts = 8;
    for i in 0..aborts {
        let mut body = event(&format!("cut-{i}"), "e", 1_700_000_000_000, 1.0)
            .to_string()
            .into_bytes();
        body.resize(100_000, b' ');
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        let mut s = TcpStream::connect(sg.proxy).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..50_000]).await.unwrap();
        // Let the half reach the worker, then leave.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    // Everything the aborts started has ended: nothing in flight at sloguard or the workers.
    let settled = wait_until(Duration::from_secs(10), "in-flight back to 0", || async {
        let st = sg.status().await;
        st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["in_flight"] == 0)
            && st["admission"]["waiting"] == 0
    })
    .await;
    let st = sg.status().await;
    let workers: Vec<String> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            format!(
                "worker {}: {} requests, {} failures, {}",
                w["id"], w["requests"], w["failures"], w["state"]
            )
        })
        .collect();
    eprintln!(
        "client aborts mid-body: {aborts} aborted, settled in {settled:?}; the backend answered \
         {} of them 400 (a broken body); {workers:?}",
        backend_events_answered(&be, "400").await
    );
    // Nothing stored, not even the complete-looking first half: the backend saw broken
    // requests (or none), never a complete one.
    assert_eq!(be.store().total_events(), 0);
    assert_eq!(backend_events_answered(&be, "202").await, 0);
    for w in st["workers"].as_array().unwrap() {
        assert_eq!(w["state"], "healthy", "{w}");
        assert_eq!(
            w["failures"], 0,
            "a client abort was charged to the worker: {w}"
        );
    }
    // Still serving.
    let http = client();
    for i in 0..5 {
        let (status, _) = sg.post_event(&http, "t", i).await;
        assert_eq!(status, 202);
    }
    assert_eq!(be.store().total_events(), 5);
}

/// Policy for the queue test: one request at a time per worker, a long queue budget, and
/// health thresholds above the 300 ms blocks (so the workers stay in and the queue stays).
const QUEUEING: &str = r#"
[[route]]
name = "ingest"
match = { method = "POST", path_prefix = "/v1/events" }
priority = "critical"
queue_budget_ms = 8000

[concurrency]
min_limit = 1
initial_limit = 1
max_limit = 1

[shedding]
target_queue_ms = 8000

[upstream.health]
stall_after_ms = 10000
lag_eject_ms = 10000

[upstream.probe]
timeout_ms = 5000
"#;

/// Clients that give up while their request waits in the admission queue. Workers take
/// 300 ms per event and one at a time, so 2 requests are served and the next 10 queue; 8 of
/// those clients then close their connections, 2 stay. The queue empties, the gauges return
/// to 0, the 2 patient clients get their 202, no worker is blamed for the clients that
/// left, and sloguard serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_leaving_the_admission_queue_leave_no_trace_in_its_gauges() {
    let _serial = SERIAL.lock().await;
    let slow = FaultSpec {
        block: Some(Duration::from_millis(300)),
        ..FaultSpec::default()
    };
    let be = backend_with_faults(2, vec![(1, slow.clone()), (2, slow)]);
    let sg = Sloguard::spawn(&be.addrs(), QUEUEING);
    let seen_before = backend_seen(&be).await;
    let mut conns = Vec::new();
    for i in 0..12 {
        let mut s = TcpStream::connect(sg.proxy).await.unwrap();
        s.write_all(&raw_post(&format!("queued-{i}")))
            .await
            .unwrap();
        conns.push(s);
        // In arrival order.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_until(Duration::from_secs(5), "10 requests queued", || async {
        sg.status().await["admission"]["waiting"].as_u64() >= Some(9)
    })
    .await;
    let queued_at_abort = sg.status().await["admission"]["waiting"].clone();
    // Clients 2..=9 leave while queued; 0 and 1 are being served, 10 and 11 wait on.
    let mut kept = conns.split_off(10);
    let served = conns.drain(..2).collect::<Vec<_>>();
    let left = conns.len();
    let aborted_at = Instant::now();
    drop(conns);
    let emptied = wait_until(Duration::from_secs(15), "the queue to empty", || async {
        sg.status().await["admission"]["waiting"] == 0
    })
    .await;
    for s in &mut kept {
        let r = tokio::time::timeout(Duration::from_secs(15), read_response(s))
            .await
            .expect("a patient client got no answer")
            .unwrap();
        assert_eq!(r.status, 202, "{r:?}");
    }
    drop(served);
    // Gauges back to 0: queue depth, and every worker's in-flight count.
    let zeroed = wait_until(Duration::from_secs(15), "the gauges back to 0", || async {
        metric_sum(&sg, "sloguard_admission_queue_depth").await == 0.0
            && metric_sum(&sg, "sloguard_worker_in_flight").await == 0.0
    })
    .await;
    let reached: Vec<u64> = (2..10)
        .map(|i| stored(&be, &format!("queued-{i}")))
        .collect();
    let st = sg.status().await;
    let seen = backend_seen(&be).await - seen_before;
    let events_202 = backend_events_answered(&be, "202").await;
    eprintln!(
        "clients leaving the queue: {left} left with {queued_at_abort} queued; queue empty \
         {emptied:?} later, gauges 0 after {:?}; aborted requests stored per client \
         {reached:?}; the backend answered {seen} requests ({events_202} with 202); \
         rejections {}",
        aborted_at.elapsed().min(emptied + zeroed),
        st["rejections"]
    );
    // What the aborted requests became: sloguard does not watch a queued request's client,
    // so each was admitted in its turn and handed to Pingora, which saw the client gone as
    // soon as it started proxying and abandoned the upstream request mid-way: the worker got
    // a broken request (answered 400 into a closed connection) and stored nothing. Seen: all
    // 8 within a few ms. Only the 4 clients that waited got a 202 from the backend.
    assert!(reached.iter().all(|n| *n == 0), "{reached:?}");
    assert_eq!(events_202, 4);
    assert!(seen <= 12, "{seen}");
    // A client leaving is not the worker's failure: nobody was ejected for it.
    for w in st["workers"].as_array().unwrap() {
        assert_eq!(
            w["failures"], 0,
            "a client that left was charged to the worker: {w}"
        );
        assert_ne!(w["state"], "ejected", "{w}");
    }
    for i in [0, 1, 10, 11] {
        assert_eq!(stored(&be, &format!("queued-{i}")), 1, "queued-{i}");
    }
    // Still serving, without queueing.
    let http = client();
    let (status, took) = sg.post_event(&http, "after", 1).await;
    assert_eq!(status, 202);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(sg.status().await["admission"]["waiting"], 0);
}

/// Three GETs then three POSTs written in one `write` on one connection (HTTP/1.1
/// pipelining). Pingora 0.9 serves pipelining only when a session opts in
/// (`HttpSession::set_pipelining_enabled`), which sloguard does not: the first request is
/// answered, then the connection is closed and the requests behind it are dropped unread
/// (RFC 9112 §9.3.2: a client must be ready to resend pipelined requests left unanswered
/// when the connection closes). That is safe: nothing is answered twice or out of order, no
/// answer is attributed to another request, and the dropped requests never reach the
/// backend (so resending them duplicates nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_get_the_first_answered_and_the_rest_dropped_unread() {
    let _serial = SERIAL.lock().await;
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let before = backend_seen(&be).await;
    let mut batch = Vec::new();
    for i in 0..3 {
        batch.extend_from_slice(
            format!(
                "GET /v1/metrics?customer=pipe-get-{i}&event=e HTTP/1.1\r\nhost: x\r\n\
                 x-request-id: pipe-get-{i}\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    for i in 0..3 {
        let mut post = raw_post(&format!("pipe-post-{i}"));
        let at = post.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        post.splice(at..at, format!("x-request-id: pipe-post-{i}\r\n").bytes());
        batch.extend_from_slice(&post);
    }
    let t = Instant::now();
    let raw = raw_exchange(sg.proxy, &batch, Duration::from_secs(5)).await;
    let closed_after = t.elapsed();
    let (responses, rest) = parse_responses(raw.as_bytes());
    let ids: Vec<(&str, u16)> = responses
        .iter()
        .map(|r| (r.header("x-request-id").unwrap_or("?"), r.status))
        .collect();
    let seen = backend_seen(&be).await - before;
    eprintln!(
        "pipelining: {} responses {ids:?}, {} bytes unparsed, connection closed after \
         {closed_after:?}; backend saw {seen}; stored {}",
        responses.len(),
        rest.len(),
        be.store().total_events()
    );
    // The first request, answered once, with its own id, whole.
    assert_eq!(ids, [("pipe-get-0", 200)], "{raw:?}");
    let answer: Value = serde_json::from_slice(&responses[0].body).unwrap();
    assert_eq!(answer["customer"], "pipe-get-0");
    assert!(rest.is_empty(), "bytes after the first answer: {rest:?}");
    // Then the connection closed (not our 5 s wait running out).
    assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");
    // The others never reached the backend: nothing stored, one request seen.
    assert_eq!(seen, 1);
    assert_eq!(be.store().total_events(), 0);
    // The next connection is served normally.
    let r = client()
        .get(sg.url("/v1/metrics?customer=after&event=e"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The sloguard process of a test (found by its policy path in `/proc/*/cmdline`).
fn pid_of(policy: &Path) -> u32 {
    let needle = policy.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(&needle) && cmdline.contains("run") {
            return pid;
        }
    }
    panic!("no process serving {needle}");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Opens a connection, has one GET answered on it, and keeps it open (idle keep-alive).
async fn idle_keepalive(proxy: SocketAddr, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        format!("GET /v1/metrics?customer=idle-{i}&event=e HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 200);
    s
}

async fn latencies(sg: &Sloguard, n: usize) -> Vec<Duration> {
    let http = client();
    let mut out = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = http
            .get(sg.url(&format!("/v1/metrics?customer=lat-{i}&event=e")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// 500 idle keep-alive connections held open: new requests keep their normal latency, and
/// once the connections close, sloguard's file descriptors return to their baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_keepalive_connections_cost_no_latency_and_no_descriptors_once_closed() {
    let _serial = SERIAL.lock().await;
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), ROUTES);
    let pid = pid_of(&sg.policy_path);
    // Warm-up: fill the upstream pool the way the batches below will. (Batches of 4: the
    // query route's share of the workers' slots, so admission queues or sheds none.)
    for batch in 0..5 {
        let conns = futures_util::future::join_all(
            (0..4).map(|i| idle_keepalive(sg.proxy, 10_000 + batch * 4 + i)),
        )
        .await;
        drop(conns);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_fds = fd_count(pid);
    let base = latencies(&sg, 60).await;
    let mut idle = Vec::new();
    for batch in 0..125 {
        idle.extend(
            futures_util::future::join_all((0..4).map(|i| idle_keepalive(sg.proxy, batch * 4 + i)))
                .await,
        );
    }
    let held_fds = fd_count(pid);
    let during = latencies(&sg, 60).await;
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    drop(idle);
    let closed = Instant::now();
    let back = wait_until(
        Duration::from_secs(10),
        "descriptors back to baseline",
        || async { fd_count(pid) <= base_fds + 20 },
    )
    .await;
    let after_fds = fd_count(pid);
    eprintln!(
        "500 idle keep-alive connections: sloguard fds {base_fds} -> {held_fds} held -> \
         {after_fds} {back:?} after closing; latency p50/p99 before {:?}/{:?}, during \
         {:?}/{:?}",
        p(&base, 0.5),
        p(&base, 0.99),
        p(&during, 0.5),
        p(&during, 0.99)
    );
    let _ = closed;
    // The connections really were held by sloguard.
    assert!(held_fds >= base_fds + 450, "{base_fds} -> {held_fds}");
    // New requests unaffected: same order of latency as before.
    assert!(
        p(&during, 0.5) <= p(&base, 0.5) * 3 + Duration::from_millis(5),
        "p50 {:?} -> {:?}",
        p(&base, 0.5),
        p(&during, 0.5)
    );
    assert!(p(&during, 0.99) < Duration::from_millis(250), "{during:?}");
    // Still healthy.
    let st = sg.status().await;
    for w in st["workers"].as_array().unwrap() {
        assert_eq!(w["state"], "healthy", "{w}");
    }
}

/// A sloguard process of our own, on fixed (once free) ports, so it can be restarted on
/// them; killed on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn start(policy: &Path, log: &Path) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        let child = sloguard_command(policy, log, "info").spawn().unwrap();
        Proc { child }
    }

    fn term(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the proxy answers a request; how long it took.
async fn wait_serving(proxy: SocketAddr, within: Duration) -> Duration {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .unwrap();
    wait_until(within, "sloguard serving", || {
        let http = http.clone();
        async move {
            http.get(format!("http://{proxy}/v1/metrics?customer=up&event=e"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await
}

/// sloguard restarted with the same policy under traffic: SIGTERM, exit 0, a new process on
/// the same listen port. Requests before and after succeed; while no process listens,
/// requests fail to connect (one instance: nothing else can answer them); nothing answered
/// 2xx is lost, nothing is stored twice, and no request that failed was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloguard_restarted_on_its_port_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let be = backend(2);
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let policy: PathBuf = dir.path().join("sloguard.toml");
    std::fs::write(&policy, policy_text(proxy, admin, &be.addrs(), ROUTES)).unwrap();
    let mut first = Proc::start(&policy, &dir.path().join("first.log"));
    wait_serving(proxy, Duration::from_secs(15)).await;

    // Traffic: POSTs one after another on a keep-alive client, each its own event.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .unwrap();
            let mut out: Vec<(String, Option<u16>, Instant)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                let customer = format!("restart-{i}");
                let r = http
                    .post(format!("http://{proxy}/v1/events"))
                    .json(&event(&customer, "e", 1_700_000_000_000, 1.0))
                    .send()
                    .await;
                out.push((
                    customer,
                    r.ok().map(|r| r.status().as_u16()),
                    Instant::now(),
                ));
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let termed = Instant::now();
    first.term();
    let status = first.wait_exit(Duration::from_secs(10)).await;
    let exited = termed.elapsed();
    assert!(status.success(), "exit status {status}");
    let second = Proc::start(&policy, &dir.path().join("second.log"));
    let serving = wait_serving(proxy, Duration::from_secs(15)).await;
    let downtime = termed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = load.await.unwrap();
    drop(second);

    let ok: Vec<&(String, Option<u16>, Instant)> =
        outcomes.iter().filter(|o| o.1 == Some(202)).collect();
    let failed: Vec<&(String, Option<u16>, Instant)> =
        outcomes.iter().filter(|o| o.1 != Some(202)).collect();
    let before = ok.iter().filter(|o| o.2 < termed).count();
    let after = ok.iter().filter(|o| o.2 > termed + downtime).count();
    eprintln!(
        "restart: {} requests, {} ok ({before} before SIGTERM, {after} after the new \
         process served), {} failed {:?}; old process exited 0 in {exited:?}, new one \
         serving {serving:?} later: {downtime:?} without a listener",
        outcomes.len(),
        ok.len(),
        failed.len(),
        failed.iter().map(|o| o.1).collect::<Vec<_>>()
    );
    assert!(
        before >= 20 && after >= 20,
        "{before} before, {after} after"
    );
    // Failures only while no process served (plus the answer's own time).
    for (customer, status, at) in &failed {
        assert!(
            *at >= termed && *at <= termed + downtime + Duration::from_secs(1),
            "{customer} failed ({status:?}) outside the restart window"
        );
        assert_eq!(
            *status, None,
            "{customer}: an HTTP error rather than no connection"
        );
    }
    // Nothing lost, nothing twice, nothing failed yet stored.
    for (customer, status, _) in &outcomes {
        let n = stored(&be, customer);
        let want = u64::from(*status == Some(202));
        assert_eq!(n, want, "{customer} ({status:?}) stored {n} times");
    }
}
