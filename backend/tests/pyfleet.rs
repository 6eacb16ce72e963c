//! The Python fleet starts, serves the API the Rust workers serve, reports its loop lag, and
//! takes faults at run time: what the guard's tests rely on when they use it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use analytics_backend::pyfleet::{PyFleet, PyFleetConfig};

fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    (status, out)
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        })
        .map(|(_, v)| v.trim())
}

#[test]
fn uvicorn_workers_serve_the_api_report_lag_and_take_faults() {
    let fleet = PyFleet::start(&PyFleetConfig {
        workers: 2,
        faults: vec![(2, "block=120ms,every=2".into())],
        ..PyFleetConfig::default()
    })
    .expect("the python fleet starts");
    let [w1, w2] = [fleet.addrs()[0], fleet.addrs()[1]];
    let event = r#"{"customer_id":"acme","event":"pv","ts":1700000000000,"dimensions":{"country":"fr"},"value":2}"#;
    let (status, answer) = request(w1, "POST", "/v1/events", event);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(header(&answer, "x-worker-id"), Some("1"));
    assert!(header(&answer, "x-loop-lag-ms").is_some(), "{answer}");
    // A bad event is a 422 naming the field, as FastAPI answers.
    let (status, answer) = request(w1, "POST", "/v1/events", r#"{"event":"pv","ts":1}"#);
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("customer_id"), "{answer}");
    let (status, answer) = request(
        w1,
        "GET",
        "/v1/metrics?customer=acme&event=pv&group_by=country",
        "",
    );
    assert_eq!(status, 200);
    assert!(answer.contains(r#""group":"fr""#), "{answer}");

    // Worker 2 blocks its loop on every second event: the answer after a block reports it.
    request(w2, "POST", "/v1/events", event);
    let t = Instant::now();
    let (_, answer) = request(w2, "POST", "/v1/events", event);
    assert!(t.elapsed() >= Duration::from_millis(120));
    let lag: u64 = header(&answer, "x-loop-lag-ms").unwrap().parse().unwrap();
    assert!(lag >= 100, "lag reported after a 120 ms block: {lag}");
    assert_eq!(fleet.total_events().unwrap(), 3);

    assert_eq!(fleet.counter(2, "faults").unwrap(), 1);

    // Cleared at run time: no more blocking.
    fleet.set_fault(2, "{}").unwrap();
    for _ in 0..4 {
        request(w2, "POST", "/v1/events", event);
    }
    assert_eq!(fleet.counter(2, "faults").unwrap(), 1);
    assert_eq!(fleet.total_events().unwrap(), 7);
}
