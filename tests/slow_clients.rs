//! Slow and greedy clients on real sockets: a request head trickled past its deadline gets a
//! JSON 408 and a closed connection, on the first request of a connection as on a later
//! keep-alive one; an idle keep-alive connection is never a header timeout; one client IP
//! over its connection cap gets a JSON 429. The backend's own counters show it saw none of
//! the refused requests, and `/metrics` counts each refusal by reason.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const DEADLINE_MS: u64 = 300;

fn policy(extra: &str) -> String {
    format!("{ROUTES}\n[limits]\nheader_read_timeout_ms = {DEADLINE_MS}\n{extra}")
}

const FAST: &[u8] = b"GET /debug/echo/fast HTTP/1.1\r\nhost: x\r\n\r\n";
const SLOW: &[u8] = b"GET /debug/echo/slow HTTP/1.1\r\nhost: x\r\nx-one: 1\r\nx-two: 2\r\n\r\n";

/// Sends `head` a byte every 100 ms until the server closes (or the head is out).
fn trickle(mut w: OwnedWriteHalf, head: &'static [u8]) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for b in head {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// One whole response (head and `content-length` body), within 5 s.
async fn response(r: &mut OwnedReadHalf) -> String {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + len {
                    return;
                }
            }
            let n = r.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s");
    String::from_utf8(got).unwrap()
}

/// Everything until the server closes; panics if it has not closed within 3 s.
async fn until_closed(r: &mut OwnedReadHalf) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), r.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8(got).unwrap()
}

/// A keep-alive connection that has had one fast request answered 200.
async fn served_once(sg: &Sloguard) -> (OwnedReadHalf, OwnedWriteHalf) {
    let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    w.write_all(FAST).await.unwrap();
    assert!(response(&mut r).await.starts_with("HTTP/1.1 200"));
    (r, w)
}

fn body_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// `sloguard_rejections_total{route="-",reason=...}` from the admin `/metrics`.
async fn refusals(sg: &Sloguard, reason: &str) -> u64 {
    let text = client()
        .get(sg.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("sloguard_rejections_total{{route=\"-\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn assert_header_timeout(got: &str) {
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.contains("\r\nconnection: close\r\n"), "{got:?}");
    let v = body_of(got);
    assert_eq!(v["limit"], "limits.header_read_timeout_ms", "{got}");
    assert_eq!(v["value"], DEADLINE_MS, "{got}");
    assert_eq!(v["reason"], "header_timeout", "{got}");
    assert!(v["request_id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn a_head_trickled_past_the_deadline_gets_a_json_408_and_the_connection_closes() {
    let be = backend(1);
    let sg = Sloguard::spawn_logging(&be.addrs(), &policy(""), "info");
    let before = backend_seen(&be).await;
    let (mut r, w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    let first_byte = Instant::now();
    let writer = trickle(w, SLOW);
    let got = until_closed(&mut r).await;
    let took = first_byte.elapsed();
    writer.abort();
    println!("first request: 408 after {took:?}: {got}");
    assert_header_timeout(&got);
    assert!(
        took >= Duration::from_millis(DEADLINE_MS)
            && took < Duration::from_millis(DEADLINE_MS + 700),
        "answered after {took:?}"
    );
    assert_eq!(
        backend_seen(&be).await - before,
        0,
        "the backend saw nothing"
    );
    assert_eq!(refusals(&sg, "header_timeout").await, 1);
    // One access line at info for the refusal, and nothing at error level (Pingora never
    // saw the head break off: its session was dropped, not failed).
    let log = sg.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"reason\":\"header_timeout\""))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("\"level\":\"INFO\""), "{}", lines[0]);
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
}

#[tokio::test]
async fn the_second_request_of_a_keep_alive_connection_has_its_own_deadline() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), &policy(""));
    let before = backend_seen(&be).await;
    let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    w.write_all(FAST).await.unwrap();
    let first = response(&mut r).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle longer than the deadline first: waiting is not reading a head.
    tokio::time::sleep(Duration::from_millis(2 * DEADLINE_MS)).await;
    let first_byte = Instant::now();
    let writer = trickle(w, SLOW);
    let got = until_closed(&mut r).await;
    let took = first_byte.elapsed();
    writer.abort();
    println!("second request: 408 after {took:?}");
    assert_header_timeout(&got);
    assert!(
        took < Duration::from_millis(DEADLINE_MS + 700),
        "answered after {took:?}"
    );
    assert_eq!(
        backend_seen(&be).await - before,
        1,
        "the backend saw only the fast request"
    );
    assert_eq!(refusals(&sg, "header_timeout").await, 1);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_not_a_header_timeout() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), &policy(""));
    // A keep-alive connection after its first answer, and a new one that has sent nothing.
    let (mut r, mut w) = served_once(&sg).await;
    let (mut r2, mut w2) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    // Three deadlines of silence: nothing arrives on either, and neither is closed.
    let (mut buf, mut buf2) = ([0u8; 64], [0u8; 64]);
    let quiet = Duration::from_millis(3 * DEADLINE_MS);
    let (a, b) = tokio::join!(
        tokio::time::timeout(quiet, r.read(&mut buf)),
        tokio::time::timeout(quiet, r2.read(&mut buf2)),
    );
    assert!(a.is_err(), "the keep-alive connection got {a:?}");
    assert!(b.is_err(), "the new connection got {b:?}");
    // Both still serve.
    w.write_all(FAST).await.unwrap();
    assert!(response(&mut r).await.starts_with("HTTP/1.1 200"));
    w2.write_all(FAST).await.unwrap();
    assert!(response(&mut r2).await.starts_with("HTTP/1.1 200"));
    assert_eq!(refusals(&sg, "header_timeout").await, 0);
}

/// `limits.keepalive_timeout_ms`: an idle keep-alive connection, and one that never sent a
/// request, are closed quietly (no answer, no refusal counted) once idle that long; a
/// connection reused within it is served. (It was a fixed 60 s.)
#[tokio::test]
async fn an_idle_connection_is_closed_after_keepalive_timeout_ms_and_not_before() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), &policy("keepalive_timeout_ms = 1500\n"));
    let (mut r, mut w) = served_once(&sg).await;
    // Reused well within the timeout: served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.write_all(FAST).await.unwrap();
    assert!(response(&mut r).await.starts_with("HTTP/1.1 200"));
    let (mut r2, _w2) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    // Then idle: both closed with nothing written (read_to_end ends at the close).
    let started = Instant::now();
    let (idle, never) = tokio::join!(until_closed(&mut r), until_closed(&mut r2));
    assert_eq!(idle, "", "an idle connection gets no answer, just a close");
    assert_eq!(never, "");
    // Not before the timeout (1.5 s from the last answer; the join started after it).
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(refusals(&sg, "header_timeout").await, 0);
}

#[tokio::test]
async fn fast_requests_split_heads_and_slow_bodies_are_not_header_timeouts() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), &policy(""));
    let http = client();
    for _ in 0..20 {
        let r = http.get(sg.url("/debug/echo/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, _) = sg.post_event(&http, "t", 1).await;
    assert_eq!(status, 202);
    // A head in two writes well within the deadline.
    let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    w.write_all(&SLOW[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(DEADLINE_MS / 3)).await;
    w.write_all(&SLOW[20..]).await.unwrap();
    assert!(response(&mut r).await.starts_with("HTTP/1.1 200"));
    // A complete head, then its body after more than the head deadline: the body has its
    // own timeout (10 s by default), so this is served.
    let body = serde_json::to_vec(&event("c", "e", 2, 1.0)).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2 * DEADLINE_MS)).await;
    w.write_all(&body).await.unwrap();
    let got = response(&mut r).await;
    assert!(got.starts_with("HTTP/1.1 202"), "{got}");
    assert_eq!(be.store().total_events(), 2);
    assert_eq!(refusals(&sg, "header_timeout").await, 0);
}

#[tokio::test]
async fn a_client_over_its_connection_cap_gets_a_json_429_until_one_closes_or_the_cap_goes() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), &policy("max_connections_per_client_ip = 2\n"));
    let before = backend_seen(&be).await;
    // Two connections, each known to be open (it has been answered).
    let mut open = Vec::new();
    for _ in 0..2 {
        let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
        w.write_all(FAST).await.unwrap();
        assert!(response(&mut r).await.starts_with("HTTP/1.1 200"));
        open.push((r, w));
    }
    // The third, from the same 127.0.0.1, is refused at once and closed.
    let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    w.write_all(FAST).await.unwrap();
    let got = until_closed(&mut r).await;
    assert!(got.starts_with("HTTP/1.1 429"), "{got:?}");
    let v = body_of(&got);
    assert_eq!(v["limit"], "limits.max_connections_per_client_ip", "{got}");
    assert_eq!(v["value"], 3, "{got}");
    assert_eq!(v["reason"], "too_many_connections", "{got}");
    assert_eq!(
        backend_seen(&be).await - before,
        2,
        "the refused one never reached it"
    );
    let mut refused = 1;
    assert_eq!(refusals(&sg, "too_many_connections").await, refused);
    // Close one: a new connection gets through once sloguard has seen the close.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
        w.write_all(FAST).await.unwrap();
        let got = response(&mut r).await;
        if got.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(got.starts_with("HTTP/1.1 429"), "{got}");
        refused += 1;
        assert!(Instant::now() < deadline, "still refused 3 s after a close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{refused} refusal(s) before a connection was let in after a close");
    assert_eq!(refusals(&sg, "too_many_connections").await, refused);
    // The connection still open is unaffected.
    let (r, w) = &mut open[0];
    w.write_all(FAST).await.unwrap();
    assert!(response(r).await.starts_with("HTTP/1.1 200"));
    // A reload that turns the cap off applies to the next connection accepted.
    let text = policy_text(sg.proxy, sg.admin, &be.addrs(), &policy(""));
    std::fs::write(&sg.policy_path, text).unwrap();
    let reload = client().post(sg.admin_url("/reload")).send().await.unwrap();
    assert_eq!(reload.status(), 200);
    let mut more = Vec::new();
    for _ in 0..3 {
        let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
        w.write_all(FAST).await.unwrap();
        assert!(response(&mut r).await.starts_with("HTTP/1.1 200"));
        more.push((r, w));
    }
    assert_eq!(refusals(&sg, "too_many_connections").await, refused);
}

#[tokio::test]
async fn a_client_whose_body_comes_after_its_refusal_still_reads_the_refusal() {
    let be = backend(1);
    let rule = "[[ratelimit.rule]]\nname = \"per-tenant\"\nkey = \"header:x-tenant\"\n\
                rate = 1\nperiod_ms = 600000\n";
    let sg = Sloguard::spawn(&be.addrs(), &policy(rule));
    assert_eq!(
        sg.post_event(&client(), "t", 0).await.0,
        202,
        "the one allowed"
    );
    // A tenant over its limit whose upload stalls halfway: the proxy reads what came of the
    // body for a while, then answers 429 and closes. The rest of the body reaches a closed
    // connection; had the proxy not lingered on it (read and dropped the rest), the kernel
    // would answer it with a reset: the client's next write fails (broken pipe, 2 runs in 3
    // here without the linger), and a client that reports its failed write, as HTTP
    // libraries do, never shows the 429 it was sent.
    let (mut r, mut w) = TcpStream::connect(sg.proxy).await.unwrap().into_split();
    w.write_all(
        b"POST /v1/events HTTP/1.1\r\nhost: x\r\nx-tenant: t\r\n\
          content-type: application/json\r\ncontent-length: 4000\r\n\r\n",
    )
    .await
    .unwrap();
    w.write_all(&[b' '; 2000]).await.unwrap();
    // The answer is on its way (not read yet) when the rest of the body is sent.
    let mut first = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), r.peek(&mut first))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    for _ in 0..2 {
        w.write_all(&[b' '; 1000]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let got = until_closed(&mut r).await;
    assert!(got.starts_with("HTTP/1.1 429"), "{got:?}");
    assert!(
        got.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{got:?}"
    );
    assert_eq!(body_of(&got)["rule"], "per-tenant", "{got}");
}
