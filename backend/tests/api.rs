//! End-to-end tests of the backend over real sockets: start it in-process on
//! ephemeral ports, talk plain HTTP/1.1 to its workers, and check what a
//! client (or sloguard) would see.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use analytics_backend::{Backend, BackendConfig, BackendError, FaultSpec};
use serde_json::Value;

/// Every socket read or write gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

const EVENT: &str = r#"{"customer_id":"c1","event":"page_view","ts":1732550000000,
    "dimensions":{"country":"fr","device":"ios"},"value":12.5}"#;

/// One keep-alive HTTP/1.1 connection, just enough client for these tests.
struct Conn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    elapsed: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn lag_ms(&self) -> u64 {
        self.header("x-loop-lag-ms")
            .expect("x-loop-lag-ms header")
            .parse()
            .expect("integer lag")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            addr,
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<Answer> {
        let start = Instant::now();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((k, v)) = trimmed.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8(body).expect("UTF-8 body"),
            elapsed: start.elapsed(),
        })
    }
}

/// One request on a fresh connection.
fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    Conn::open(addr)
        .and_then(|mut c| c.send(method, path, body))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

fn start(workers: usize, faults: Vec<(usize, FaultSpec)>) -> Backend {
    Backend::start(BackendConfig {
        workers,
        faults,
        ..BackendConfig::default()
    })
    .expect("backend starts")
}

fn spec(text: &str) -> FaultSpec {
    text.parse().expect("fault spec")
}

#[test]
fn an_event_posted_to_one_worker_is_seen_by_another() {
    let backend = start(4, vec![]);
    let addrs = backend.addrs();
    assert_eq!(addrs.len(), 4);
    assert!(addrs.iter().all(|a| a.port() != 0 && a.ip().is_loopback()));

    let a = call(addrs[0], "POST", "/v1/events", EVENT);
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.header("x-worker-id"), Some("1"));

    let q = call(
        addrs[1],
        "GET",
        "/v1/metrics?customer=c1&event=page_view&bucket=1m",
        "",
    );
    assert_eq!(q.status, 200);
    assert_eq!(q.header("x-worker-id"), Some("2"));
    let point = &q.json()["series"][0]["points"][0];
    assert_eq!(point["count"], 1);
    assert_eq!(point["sum"], 12.5);
    assert_eq!(point["ts"], 1_732_550_000_000i64 / 60_000 * 60_000);
    assert_eq!(backend.store().total_events(), 1);

    let h = call(addrs[2], "GET", "/healthz", "");
    assert_eq!(h.json()["worker"], 3);
    assert_eq!(h.json()["port"], addrs[2].port());
    backend.shutdown();
}

#[test]
fn a_malformed_event_gets_400_naming_the_field() {
    let backend = start(1, vec![]);
    let addr = backend.addrs()[0];
    let a = call(
        addr,
        "POST",
        "/v1/events",
        r#"{"customer_id":"c1","event":"e"}"#,
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["field"], "ts");
    assert!(a.header("x-loop-lag-ms").is_some());
    let a = call(addr, "POST", "/v1/events", "{not json");
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["field"], Value::Null);
    assert_eq!(call(addr, "GET", "/v1/events", "").status, 405);
    assert_eq!(call(addr, "GET", "/nothing", "").status, 404);
    assert_eq!(backend.store().total_events(), 0);
}

#[test]
fn a_batch_is_accepted_whole_or_not_at_all() {
    let backend = start(2, vec![]);
    let addr = backend.addrs()[1];
    let bad = format!(r#"[{EVENT},{EVENT},{EVENT},{{"customer_id":"c1","event":"e","ts":1.5}}]"#);
    let a = call(addr, "POST", "/v1/events/batch", &bad);
    assert_eq!(
        (a.status, a.json()["field"].clone()),
        (400, "[3].ts".into())
    );
    assert_eq!(backend.store().total_events(), 0);
    let good = format!("[{EVENT},{EVENT},{EVENT}]");
    let a = call(addr, "POST", "/v1/events/batch", &good);
    assert_eq!((a.status, a.json()["accepted"].clone()), (202, 3.into()));
    assert_eq!(backend.store().total_events(), 3);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let backend = start(1, vec![]);
    let mut conn = Conn::open(backend.addrs()[0]).unwrap();
    for _ in 0..5 {
        assert_eq!(conn.send("POST", "/v1/events", EVENT).unwrap().status, 202);
    }
    let m = conn.send("GET", "/metrics", "").unwrap();
    assert!(m
        .body
        .contains("analytics_events_accepted_total{worker=\"1\"} 5"));
    assert_eq!(backend.store().total_events(), 5);
}

#[test]
fn a_block_fault_slows_only_its_worker_and_shows_as_lag() {
    // Given at start, like `--fault 2:block=400ms`.
    let backend = start(2, vec![(2, spec("block=400ms"))]);
    let addrs = backend.addrs();
    let w2 = addrs[1];
    let slow = thread::spawn(move || call(w2, "POST", "/v1/events", EVENT));
    thread::sleep(Duration::from_millis(100));
    // Worker 1 answers at once while worker 2's loop is blocked.
    let fast = call(addrs[0], "GET", "/healthz", "");
    assert!(
        fast.elapsed < Duration::from_millis(200),
        "{:?}",
        fast.elapsed
    );
    assert!(fast.lag_ms() < 100, "worker 1 lag {}", fast.lag_ms());

    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 202);
    assert!(
        slow.elapsed >= Duration::from_millis(350),
        "{:?}",
        slow.elapsed
    );
    // The blocked answer itself reports the block...
    assert!(slow.lag_ms() >= 200, "blocked answer lag {}", slow.lag_ms());
    // ...and so does the worker's health for the next second.
    let health = call(addrs[1], "GET", "/healthz", "");
    assert!(health.elapsed < Duration::from_millis(200));
    assert!(health.json()["loop_lag_ms"].as_u64().unwrap() >= 200);
    let prom = call(addrs[1], "GET", "/metrics", "");
    let max_lag: f64 = prom
        .body
        .lines()
        .find_map(|l| l.strip_prefix("analytics_loop_lag_max_seconds{worker=\"2\"} "))
        .and_then(|v| v.parse().ok())
        .expect("lag max gauge");
    assert!(max_lag >= 0.2, "{}", prom.body);
    assert_eq!(backend.store().total_events(), 1);
}

#[test]
fn a_stall_set_at_runtime_blocks_everything_on_that_worker_once() {
    let backend = start(2, vec![]);
    let addrs = backend.addrs();
    let set_at = Instant::now();
    backend.set_fault(1, spec("stall=800ms"));
    let w1 = addrs[0];
    let stalled = thread::spawn(move || call(w1, "GET", "/healthz", ""));
    let other = call(addrs[1], "GET", "/healthz", "");
    assert!(other.elapsed < Duration::from_millis(200));
    let stalled = stalled.join().unwrap();
    assert_eq!(stalled.status, 200);
    assert!(set_at.elapsed() >= Duration::from_millis(750));
    assert!(stalled.lag_ms() >= 500, "lag {}", stalled.lag_ms());
    // Consumed: the next request is served at once.
    assert!(call(addrs[0], "GET", "/healthz", "").elapsed < Duration::from_millis(200));
}

#[test]
fn a_stall_posted_to_admin_is_answered_before_it_starts() {
    let backend = start(1, vec![]);
    let addr = backend.addrs()[0];
    let a = call(addr, "POST", "/admin/fault", r#"{"stall_ms":700}"#);
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["stall_ms"], 700);
    assert!(a.elapsed < Duration::from_millis(300), "{:?}", a.elapsed);
    let h = call(addr, "GET", "/healthz", "");
    assert!(h.elapsed >= Duration::from_millis(400), "{:?}", h.elapsed);
}

#[test]
fn a_stall_given_at_start_waits_for_the_first_request() {
    let backend = start(1, vec![(1, spec("stall=500ms"))]);
    let addr = backend.addrs()[0];
    let first = call(addr, "GET", "/healthz", "");
    assert!(
        first.elapsed >= Duration::from_millis(450),
        "{:?}",
        first.elapsed
    );
    let second = call(addr, "GET", "/healthz", "");
    assert!(second.elapsed < Duration::from_millis(200));
}

#[test]
fn kill_worker_closes_its_port_and_connections() {
    let backend = start(2, vec![]);
    let addrs = backend.addrs();
    let mut open = Conn::open(addrs[1]).unwrap();
    assert_eq!(open.send("GET", "/healthz", "").unwrap().status, 200);

    backend.kill_worker(2);
    let err = TcpStream::connect_timeout(&addrs[1], IO_TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(open.send("GET", "/healthz", "").is_err());
    // The others carry on; killing twice is harmless.
    assert_eq!(call(addrs[0], "GET", "/healthz", "").status, 200);
    backend.kill_worker(2);
    backend.set_fault(2, spec("stall=1s"));
}

#[test]
fn kill_and_shutdown_do_not_wait_out_a_stall() {
    let backend = start(2, vec![]);
    let addrs = backend.addrs();
    backend.set_fault(1, spec("stall=30s"));
    backend.set_fault(2, spec("stall=30s"));
    let w1 = addrs[0];
    let hung =
        thread::spawn(move || Conn::open(w1).and_then(|mut c| c.send("GET", "/healthz", "")));
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    backend.kill_worker(1);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        hung.join().unwrap().is_err(),
        "the stalled request's connection is closed"
    );
    backend.shutdown();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(
        TcpStream::connect_timeout(&addrs[1], IO_TIMEOUT)
            .unwrap_err()
            .kind(),
        ErrorKind::ConnectionRefused
    );
}

#[test]
fn start_refuses_bad_configs() {
    let cfg = |workers, faults| BackendConfig {
        workers,
        faults,
        ..BackendConfig::default()
    };
    assert!(matches!(
        Backend::start(cfg(0, vec![])),
        Err(BackendError::NoWorkers)
    ));
    assert!(matches!(
        Backend::start(cfg(2, vec![(3, FaultSpec::default())])),
        Err(BackendError::NoSuchWorker {
            worker: 3,
            workers: 2
        })
    ));
    // A port already taken: the error names the worker and nothing is left running.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Backend::start(BackendConfig {
        workers: 1,
        base_port: port,
        ..BackendConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, BackendError::Bind { worker: 1, .. }), "{err}");
}

#[test]
fn a_backend_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Backend>();
    assert_send_sync::<analytics_backend::Store>();
}
