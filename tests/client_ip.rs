//! The real client IP (`[listen] trusted_proxies`): from an untrusted peer,
//! `X-Forwarded-For` is ignored, whatever it claims; through trusted proxies, the
//! right-most untrusted entry is the client. The resolved address keys `client_ip` rate
//! limits, leads the `X-Forwarded-For` the worker gets, and is in the access log.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;

/// A `client_ip` rule that lets each client 2 requests a minute (burst 1), on every route.
const PER_CLIENT: &str = r#"
[log]
access = "all"

[ratelimit]
[[ratelimit.rule]]
name = "per-client"
key = "client_ip"
rate = 1
period_ms = 60000
burst = 1
"#;

/// GETs the echo endpoint with `xff` (if any) as `X-Forwarded-For`: the status and, on a 200,
/// the `X-Forwarded-For` values the worker received.
async fn echo(sg: &Sloguard, xff: Option<&str>, id: &str) -> (u16, Vec<String>) {
    let mut req = client()
        .get(sg.url("/debug/echo"))
        .header("x-request-id", id);
    if let Some(v) = xff {
        req = req.header("x-forwarded-for", v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        return (status, vec![]);
    }
    let doc: serde_json::Value = r.json().await.unwrap();
    let seen = doc["headers"]["x-forwarded-for"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (status, seen)
}

/// The access line of request `id`.
fn access_line(sg: &Sloguard, id: &str) -> serde_json::Value {
    sg.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "sloguard::access" && v["request_id"] == id)
        .unwrap_or_default()
}

/// Waits (bounded) until the access line of `id` is written.
async fn wait_access_line(sg: &Sloguard, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let line = access_line(sg, id);
        if !line.is_null() || std::time::Instant::now() > deadline {
            return line;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn from_an_untrusted_peer_a_spoofed_forwarded_for_is_ignored_everywhere() {
    let be = backend(1);
    // Only 10/8 is trusted; the test connects from 127.0.0.1.
    let sg = Sloguard::spawn_with_listen(
        &be.addrs(),
        "trusted_proxies = [\"10.0.0.0/8\"]\n",
        PER_CLIENT,
        "warn,sloguard::access=info",
    );
    // Each request claims another client: all are 127.0.0.1 to the limit, the worker and
    // the log.
    let (s1, xff1) = echo(&sg, Some("203.0.113.1"), "u-1").await;
    let (s2, xff2) = echo(&sg, Some("203.0.113.2, 10.0.0.9"), "u-2").await;
    let (s3, _) = echo(&sg, Some("203.0.113.3"), "u-3").await;
    assert_eq!(
        (s1, s2, s3),
        (200, 200, 429),
        "one shared limit: 2 a minute"
    );
    assert_eq!(xff1, vec!["127.0.0.1"], "the forged entry is dropped");
    assert_eq!(xff2, vec!["127.0.0.1"]);
    let line = wait_access_line(&sg, "u-2").await;
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    let line = wait_access_line(&sg, "u-3").await;
    assert_eq!(line["decision"], "limited", "{line}");
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    // The 429's line and /status name the key that was limited: the real client, not a
    // claimed one.
    assert_eq!(line["key"], "127.0.0.1", "{line}");
    let top = &sg.status().await["ratelimit"]["top_keys"];
    let limited = top[line["rule"].as_str().unwrap()]["limited"].clone();
    assert_eq!(limited[0]["key"], "127.0.0.1", "{top}");
    assert_eq!(limited[0]["count"], 1, "{top}");
}

#[tokio::test]
async fn through_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
    let be = backend(1);
    // The test's own connections stand for an ingress (127.0.0.1) behind a node proxy
    // range (10/8): both trusted.
    let sg = Sloguard::spawn_with_listen(
        &be.addrs(),
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
        PER_CLIENT,
        "warn,sloguard::access=info",
    );
    // Client 198.51.100.4 came through 10.0.0.7; it forged 6.6.6.6 on the left.
    let (s, xff) = echo(&sg, Some("6.6.6.6, 198.51.100.4, 10.0.0.7"), "t-1").await;
    assert_eq!(s, 200);
    assert_eq!(xff, vec!["198.51.100.4, 10.0.0.7, 127.0.0.1"]);
    let line = wait_access_line(&sg, "t-1").await;
    assert_eq!(line["client_ip"], "198.51.100.4", "{line}");
    // Its second request, with another forgery on the left: the same client, now at its
    // limit of 2; a third is refused.
    let (s, _) = echo(&sg, Some("1.1.1.1, 198.51.100.4, 10.0.0.7"), "t-2").await;
    assert_eq!(s, 200);
    let (s, _) = echo(&sg, Some("198.51.100.4"), "t-3").await;
    assert_eq!(s, 429, "same client, over its limit");
    // Another client through the same proxies has its own limit.
    let (s, xff) = echo(&sg, Some("198.51.100.5, 10.0.0.7"), "t-4").await;
    assert_eq!(s, 200, "another client is not limited by the first");
    assert_eq!(xff, vec!["198.51.100.5, 10.0.0.7, 127.0.0.1"]);
    // No header from a trusted peer: the peer itself.
    let (s, xff) = echo(&sg, None, "t-5").await;
    assert_eq!(s, 200);
    assert_eq!(xff, vec!["127.0.0.1"]);
}
