//! Probe tests: answer parsing, and probes over real sockets to small test workers.

use super::*;
use std::sync::Arc;

#[test]
fn parses_status_and_lag_header_case_insensitively() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Loop-Lag-Ms: 251\r\n\r\n";
    assert_eq!(
        parse_reply(head, "x-loop-lag-ms"),
        Some(ProbeReply {
            status: 200,
            lag: Some(Duration::from_millis(251))
        })
    );
}

#[test]
fn a_missing_or_bad_lag_header_is_no_lag_report() {
    let head = b"HTTP/1.1 503 Service Unavailable\r\nx-loop-lag-ms: soon\r\n\r\n";
    assert_eq!(
        parse_reply(head, "x-loop-lag-ms"),
        Some(ProbeReply {
            status: 503,
            lag: None
        })
    );
    let head = b"HTTP/1.0 204 No Content\r\n\r\n";
    assert_eq!(parse_reply(head, "x-loop-lag-ms").unwrap().lag, None);
}

#[test]
fn garbage_is_not_a_reply() {
    assert_eq!(parse_reply(b"SSH-2.0-OpenSSH\r\n\r\n", "x"), None);
    assert_eq!(parse_reply(b"HTTP/1.1 abc\r\n\r\n", "x"), None);
    assert_eq!(parse_reply(&[0xff, 0xfe], "x"), None);
}

#[test]
fn an_answer_with_a_known_short_length_keeps_its_connection() {
    let kept = |head: &str| kept_body_len(head.as_bytes());
    assert_eq!(
        kept("HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n"),
        Some(15)
    );
    assert_eq!(kept("HTTP/1.1 204 No Content\r\n\r\n"), Some(0));
    assert_eq!(
        kept("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"),
        Some(0)
    );
    assert_eq!(
        kept("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\n\r\n"),
        Some(2)
    );
    // The worker closes it, or only the close would end the body.
    assert_eq!(
        kept("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n"),
        None
    );
    assert_eq!(
        kept("HTTP/1.1 200 OK\r\nConnection: upgrade, Close\r\n\r\n"),
        None
    );
    assert_eq!(kept("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n"), None);
    assert_eq!(
        kept("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        None
    );
    assert_eq!(kept("HTTP/1.1 200 OK\r\n\r\n"), None);
    assert_eq!(
        kept("HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n"),
        None
    );
    // Longer than a health answer.
    assert_eq!(
        kept("HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n"),
        None
    );
}

/// How a test worker treats its connections.
#[derive(Clone, Copy, PartialEq)]
enum Conns {
    /// Keeps them open between requests.
    Keep,
    /// Closes each once it has answered (as when its keep-alive timeout runs out).
    CloseAfterAnswer,
    /// Closes it without answering when a second request comes on it.
    DropSecondRequest,
}

/// A worker on 127.0.0.1 that answers `answer` to requests. Returns its address and
/// the count of connections it accepted.
async fn worker(
    answer: &'static str,
    conns: Conns,
) -> (WorkerAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                for n in 1.. {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.clear();
                    if n == 2 && conns == Conns::DropSecondRequest {
                        return;
                    }
                    if s.write_all(answer.as_bytes()).await.is_err()
                        || conns == Conns::CloseAfterAnswer
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr.into(), accepted)
}

const KEEP: &str =
    "HTTP/1.1 200 OK\r\nx-loop-lag-ms: 3\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";

fn answered_ok(r: &ProbeOutcome) -> bool {
    matches!(r, ProbeOutcome::Answered(Ok(_)))
}

#[tokio::test]
async fn probes_of_one_worker_share_one_connection() {
    use std::sync::atomic::Ordering;
    let (addr, accepted) = worker(KEEP, Conns::Keep).await;
    let cfg = ProbeConfig::default();
    let mut kept = None;
    for _ in 0..5 {
        let r = probe(&addr, &cfg, "x-loop-lag-ms", &mut kept).await;
        let ProbeOutcome::Answered(Ok((_, lag))) = r else {
            panic!("{r:?}");
        };
        assert_eq!(lag, Some(Duration::from_millis(3)));
        assert!(kept.is_some(), "the connection is kept for the next probe");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // A connection kept for another address (a reload replaced the worker) is not used.
    let (other, other_accepted) = worker(KEEP, Conns::Keep).await;
    assert!(answered_ok(&probe(&other, &cfg, "x", &mut kept).await));
    assert_eq!(other_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_kept_connection_the_worker_closed_is_replaced_not_failed() {
    use std::sync::atomic::Ordering;
    let (addr, accepted) = worker(KEEP, Conns::CloseAfterAnswer).await;
    let cfg = ProbeConfig::default();
    let mut kept = None;
    for n in 1..=4 {
        // The probe loop's pause between probes, in which the worker's close arrives.
        tokio::time::sleep(cfg.interval).await;
        let r = probe(&addr, &cfg, "x", &mut kept).await;
        assert!(answered_ok(&r), "probe {n}: {r:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}

/// A close in answer to a probe is the worker's failure, kept connection or not.
#[tokio::test]
async fn a_worker_closing_the_connection_on_a_probe_fails_it() {
    let (addr, _) = worker(KEEP, Conns::DropSecondRequest).await;
    let cfg = ProbeConfig::default();
    let mut kept = None;
    assert!(answered_ok(&probe(&addr, &cfg, "x", &mut kept).await));
    assert!(kept.is_some());
    let r = probe(&addr, &cfg, "x", &mut kept).await;
    assert_eq!(r, ProbeOutcome::Answered(Err(())));
    assert!(kept.is_none(), "a failed connection is not kept");
    assert!(answered_ok(&probe(&addr, &cfg, "x", &mut kept).await));
}

#[tokio::test]
async fn an_answer_that_closes_its_connection_is_not_kept() {
    use std::sync::atomic::Ordering;
    let close = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    let (addr, accepted) = worker(close, Conns::Keep).await;
    let mut kept = None;
    for _ in 0..3 {
        let r = probe(&addr, &ProbeConfig::default(), "x", &mut kept).await;
        assert!(answered_ok(&r), "{r:?}");
        assert!(kept.is_none());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // A 5xx on a kept connection fails the probe and still keeps the connection.
    let (sick, _) = worker(
        "HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
        Conns::Keep,
    )
    .await;
    let r = probe(&sick, &ProbeConfig::default(), "x", &mut kept).await;
    assert_eq!(r, ProbeOutcome::Answered(Err(())));
    assert!(kept.is_some());
}

#[tokio::test]
async fn a_closed_port_fails_the_probe_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = probe(
        &port.into(),
        &ProbeConfig::default(),
        "x-loop-lag-ms",
        &mut None,
    )
    .await;
    assert_eq!(r, ProbeOutcome::Answered(Err(())));
}

/// A worker on a Unix socket is probed like one on TCP: its status and lag are read,
/// and a socket file nobody listens on fails the probe.
#[tokio::test]
async fn probes_a_unix_socket_worker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w1.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let served = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nx-loop-lag-ms: 7\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8(got).unwrap()
    });
    let addr: WorkerAddr = format!("unix:{}", path.display()).parse().unwrap();
    let r = probe(&addr, &ProbeConfig::default(), "x-loop-lag-ms", &mut None).await;
    let ProbeOutcome::Answered(Ok((_, lag))) = r else {
        panic!("{r:?}");
    };
    assert_eq!(lag, Some(Duration::from_millis(7)));
    let request = served.await.unwrap();
    assert!(
        request.starts_with("GET /healthz HTTP/1.1\r\nhost: localhost\r\n"),
        "{request}"
    );

    let gone: WorkerAddr = format!("unix:{}", dir.path().join("none.sock").display())
        .parse()
        .unwrap();
    let r = probe(&gone, &ProbeConfig::default(), "x-loop-lag-ms", &mut None).await;
    assert_eq!(r, ProbeOutcome::Answered(Err(())));
}
