//! The head deadline on an in-memory stream, on tokio's paused clock: no sockets, no sleeps.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::{sleep, Instant};

use super::*;

const DEADLINE: Duration = Duration::from_millis(300);

fn guarded() -> (DuplexStream, HeadDeadlineIo, Arc<Expiry>) {
    let (client, server) = tokio::io::duplex(4096);
    let (io, expiry) = HeadDeadlineIo::new(Box::new(server), DEADLINE);
    (client, io, expiry)
}

/// What happened first: a read finished (its bytes), the head timed out, or `within` passed.
#[derive(Debug, PartialEq)]
enum First {
    Read(Vec<u8>),
    TimedOut(Duration),
    Nothing,
}

async fn next(io: &mut HeadDeadlineIo, expiry: &Expiry, within: Duration) -> First {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    tokio::select! {
        biased;
        n = io.read(&mut buf) => First::Read(buf[..n.unwrap()].to_vec()),
        () = expiry.wait() => First::TimedOut(start.elapsed()),
        () = sleep(within) => First::Nothing,
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_never_timed() {
    let (_client, mut io, expiry) = guarded();
    assert_eq!(
        next(&mut io, &expiry, Duration::from_secs(30)).await,
        First::Nothing
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_trickling_past_its_deadline_is_handed_over_to_be_answered() {
    let (mut client, mut io, expiry) = guarded();
    client.write_all(b"GET /v1/metrics HT").await.unwrap();
    assert_eq!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(b"GET /v1/metrics HT".to_vec())
    );
    sleep(Duration::from_millis(200)).await;
    client.write_all(b"TP/1.1\r\n").await.unwrap();
    assert!(matches!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(_)
    ));
    // 200 ms already gone: the deadline is 300 ms from the first byte, not from the last.
    match next(&mut io, &expiry, Duration::from_secs(5)).await {
        First::TimedOut(after) => assert_eq!(after, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The real stream comes out, with the deadline it missed, to write the 408 on.
    let (mut stream, missed) = expiry.take().expect("handed over");
    assert_eq!(missed, DEADLINE);
    stream.write_all(b"HTTP/1.1 408").await.unwrap();
    let mut got = [0u8; 12];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HTTP/1.1 408");
    // Left behind in Pingora's session: reads stay pending (nothing for Pingora to log an
    // error about) until the connection loop drops the session.
    assert_eq!(
        next(&mut io, &expiry, Duration::from_secs(1)).await,
        First::TimedOut(Duration::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn a_complete_head_disarms_until_the_connection_is_reused() {
    let (mut client, mut io, expiry) = guarded();
    client
        .write_all(b"POST /v1/events HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(matches!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(_)
    ));
    sleep(Duration::from_millis(250)).await;
    client
        .write_all(b"content-length: 5\r\n\r\nhel")
        .await
        .unwrap();
    assert!(matches!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(_)
    ));
    // A slow body is the body timeout's business, not this deadline's.
    assert_eq!(
        next(&mut io, &expiry, Duration::from_secs(5)).await,
        First::Nothing
    );
    client.write_all(b"lo").await.unwrap();
    assert_eq!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(b"lo".to_vec())
    );
    // Responses pass through untouched.
    io.write_all(b"HTTP/1.1 202 Accepted\r\n\r\n")
        .await
        .unwrap();
    io.flush().await.unwrap();
    let mut got = [0u8; 25];
    client.read_exact(&mut got).await.unwrap();
    // Reused: idle is still not timed; the next head's first byte arms a new deadline, with
    // the timeout of the policy at that time.
    let mut io = *HeadDeadlineIo::rearm(Box::new(io), Duration::from_millis(500)).unwrap();
    assert_eq!(
        next(&mut io, &expiry, Duration::from_secs(30)).await,
        First::Nothing
    );
    client.write_all(b"G").await.unwrap();
    assert!(matches!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(_)
    ));
    match next(&mut io, &expiry, Duration::from_secs(5)).await {
        First::TimedOut(after) => assert_eq!(after, Duration::from_millis(500)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_head_read_whole_never_arms_a_timer() {
    let (mut client, mut io, expiry) = guarded();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(matches!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(_)
    ));
    assert!(io.deadline.is_none());
    assert_eq!(
        next(&mut io, &expiry, Duration::from_secs(5)).await,
        First::Nothing
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_head_hands_what_arrived_to_the_next_read_and_arms_the_deadline() {
    let (mut client, mut io, expiry) = guarded();
    client.write_all(b"GET / HT").await.unwrap();
    assert!(io.wait_for_head().await.unwrap());
    // Nothing is lost or repeated: the next read gets exactly what the wait took in.
    assert_eq!(
        next(&mut io, &expiry, DEADLINE).await,
        First::Read(b"GET / HT".to_vec())
    );
    assert!(io.arrived.capacity() == 0, "freed once handed over");
    // The head started with those bytes: its deadline runs from them.
    match next(&mut io, &expiry, Duration::from_secs(5)).await {
        First::TimedOut(after) => assert_eq!(after, DEADLINE),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_head_on_a_closed_connection_says_so() {
    let (client, mut io, _expiry) = guarded();
    drop(client);
    assert!(!io.wait_for_head().await.unwrap());
}

#[tokio::test]
async fn a_long_head_is_handed_over_in_pieces_as_the_reads_ask() {
    let (mut client, mut io, _expiry) = guarded();
    let head = vec![b'a'; 600];
    client.write_all(&head).await.unwrap();
    assert!(io.wait_for_head().await.unwrap());
    let mut small = [0u8; 256];
    let mut got = Vec::new();
    while got.len() < 600 {
        let n = io.read(&mut small).await.unwrap();
        got.extend_from_slice(&small[..n]);
    }
    assert_eq!(got, head);
}

#[tokio::test]
async fn small_writes_leave_together_at_the_flush_and_the_buffer_is_freed() {
    let (mut client, mut io, _expiry) = guarded();
    io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        .await
        .unwrap();
    io.write_all(b"ok").await.unwrap();
    // Gathered, not sent yet.
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf))
            .await
            .is_err(),
        "nothing leaves before the flush"
    );
    io.flush().await.unwrap();
    assert_eq!(io.out.capacity(), 0, "freed at the flush");
    let sent = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".len();
    let mut got = Vec::new();
    while got.len() < sent {
        let n = client.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.ends_with(b"\r\n\r\nok"), "{got:?}");
    // A write too big to gather goes straight out.
    let big = vec![b'x'; 2000];
    io.write_all(&big).await.unwrap();
    assert_eq!(io.out.capacity(), 0);
}
