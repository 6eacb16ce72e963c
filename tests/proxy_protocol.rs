//! `[listen] proxy_protocol`: a load balancer in front (AWS NLB, HAProxy, Envoy, nginx's
//! `proxy_protocol on`) names the client in a PROXY header (v1 text or v2 binary) before
//! the request. sloguard takes that client as the connection's peer, for the per-client
//! connection cap and for each request's client address, and believes it only from
//! `trusted_proxies`.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A v2 header (PROXY command, TCP over IPv4) for the client `src:sport`.
fn v2_header(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(src);
    h.extend([127, 0, 0, 1]);
    h.extend(sport.to_be_bytes());
    h.extend(8080u16.to_be_bytes());
    h
}

/// The `X-Forwarded-For` the worker got, from an echo answer.
fn forwarded_for(raw: &str) -> String {
    let body = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    let doc: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
    doc["headers"]["x-forwarded-for"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const ECHO: &str = "GET /debug/echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n";

fn spawn(be: &Backend, trusted: &str, rest: &str) -> Sloguard {
    Sloguard::spawn_with_listen(
        &be.addrs(),
        &format!("trusted_proxies = [{trusted}]\nproxy_protocol = true\n"),
        rest,
        "warn,sloguard::access=info",
    )
}

#[tokio::test]
async fn the_client_named_by_a_v1_or_v2_header_is_the_client() {
    let be = backend(1);
    let sg = spawn(&be, "\"127.0.0.1\"", "[log]\naccess = \"all\"\n");
    // v1, with the request in the same write as the header.
    let raw =
        format!("PROXY TCP4 198.51.100.4 127.0.0.1 5555 8080\r\n{ECHO}x-request-id: pp-v1\r\n\r\n");
    let got = raw_exchange(sg.proxy, raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(forwarded_for(&got), "198.51.100.4");
    // v2, header and request in separate writes.
    let mut s = tokio::net::TcpStream::connect(sg.proxy).await.unwrap();
    s.write_all(&v2_header([203, 0, 113, 9], 4444))
        .await
        .unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(format!("{ECHO}x-request-id: pp-v2\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let got = String::from_utf8_lossy(&out).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(forwarded_for(&got), "203.0.113.9");
    // v1 UNKNOWN (a balancer's health check): the peer itself.
    let raw = format!("PROXY UNKNOWN\r\n{ECHO}\r\n");
    let got = raw_exchange(sg.proxy, raw.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(forwarded_for(&got), "127.0.0.1");
    // The access log names the clients.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = sg.log();
        if log.contains("\"client_ip\":\"198.51.100.4\"")
            && log.contains("\"client_ip\":\"203.0.113.9\"")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "access lines: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_connection_cap_counts_the_clients_behind_the_balancer() {
    let be = backend(1);
    let sg = spawn(
        &be,
        "\"127.0.0.1\"",
        "[limits]\nmax_connections_per_client_ip = 1\n",
    );
    // Two clients behind one balancer address: one connection each is fine.
    let mut a = tokio::net::TcpStream::connect(sg.proxy).await.unwrap();
    a.write_all(b"PROXY TCP4 198.51.100.4 127.0.0.1 1000 8080\r\n")
        .await
        .unwrap();
    let mut b = tokio::net::TcpStream::connect(sg.proxy).await.unwrap();
    b.write_all(b"PROXY TCP4 198.51.100.5 127.0.0.1 1001 8080\r\n")
        .await
        .unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(b"GET /debug/echo HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    // A second connection of the first client, while its first is open: refused.
    let raw = format!("PROXY TCP4 198.51.100.4 127.0.0.1 1002 8080\r\n{ECHO}\r\n");
    let got = raw_exchange(sg.proxy, raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 429"), "{got}");
    assert!(got.contains("too_many_connections"), "{got}");
    drop((a, b));
}

#[tokio::test]
async fn without_a_header_or_from_an_untrusted_peer_the_connection_is_refused() {
    let be = backend(1);
    let sg = spawn(&be, "\"127.0.0.1\"", "");
    let before = backend_seen(&be).await;
    // A client speaking HTTP straight to the listener.
    let got = raw_exchange(
        sg.proxy,
        format!("{ECHO}\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("\"reason\":\"bad_proxy_protocol\""), "{got}");
    assert!(got.contains("\"limit\":\"listen.proxy_protocol\""), "{got}");
    // A broken header.
    let got = raw_exchange(
        sg.proxy,
        b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    // Only 10/8 may name clients; this peer (127.0.0.1) may not, header or not.
    let untrusting = spawn(&be, "\"10.0.0.0/8\"", "");
    let raw = format!("PROXY TCP4 198.51.100.4 127.0.0.1 5555 8080\r\n{ECHO}\r\n");
    let got = raw_exchange(untrusting.proxy, raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("not in listen.trusted_proxies"), "{got}");
    assert_eq!(
        backend_seen(&be).await,
        before,
        "the backend saw none of them"
    );
}
