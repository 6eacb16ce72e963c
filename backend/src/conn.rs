//! The connection faults: one worker connection's socket wrapped so that its
//! handlers can have an answer trickled byte by byte, the connection reset
//! instead of answered, or closed right after an answer (see
//! [`crate::fault::FaultSpec`] for what each fault means).
//!
//! A handler decides (the pure decision is in [`crate::fault`]) and tells the
//! connection through its [`ConnFaults`]; the [`FaultIo`] under hyper does the
//! socket work, and `worker::serve_connection` drops the connection when
//! [`ConnFaults::ended`] fires. HTTP/1.1 answers on a connection go out one at
//! a time, in order, so "the answer being written" is well defined.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::fault::closes_after_answer;

/// What the handlers of one connection asked of its socket.
#[derive(Debug, Default)]
pub(crate) struct ConnFaults {
    /// Delay between two bytes of the answer being written, in µs (0: none).
    trickle_us: AtomicU64,
    /// Reset (RST) instead of answering.
    reset: AtomicBool,
    /// Close once the answer being written is flushed.
    close_after_answer: AtomicBool,
    /// ... or rather, once flushed, when the next request arrives (unread).
    close_late: AtomicBool,
    /// The connection must end now: read nothing more, drop it.
    ending: AtomicBool,
    end: Notify,
    /// Answers given on this connection.
    answered: AtomicU64,
}

impl ConnFaults {
    /// The answer about to be written is trickled (`Some`) or not.
    pub(crate) fn set_trickle(&self, per_byte: Option<Duration>) {
        let us = per_byte.map_or(0, |d| d.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
        self.trickle_us.store(us, Ordering::Relaxed);
    }

    fn trickle(&self) -> Option<Duration> {
        match self.trickle_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Resets the connection now, without answering.
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::Relaxed);
        self.end_now();
    }

    pub(crate) fn is_reset(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }

    /// Counts one answer about to be written; under `close_keepalive` the
    /// connection is closed once it is flushed (with `late`, once the next
    /// request arrives after that). Returns whether it will be.
    pub(crate) fn answering(&self, close_keepalive: Option<u32>, late: bool) -> bool {
        let answered = self.answered.fetch_add(1, Ordering::Relaxed) + 1;
        let close = closes_after_answer(close_keepalive, answered);
        if close {
            self.close_late.store(late, Ordering::Relaxed);
            self.close_after_answer.store(true, Ordering::Relaxed);
        }
        close
    }

    /// Whether the connection closes once the answer being written is out.
    pub(crate) fn closes_after_answer(&self) -> bool {
        self.close_after_answer.load(Ordering::Relaxed)
    }

    fn end_now(&self) {
        self.ending.store(true, Ordering::Relaxed);
        // A stored permit: fires even if the connection task is not waiting yet.
        self.end.notify_one();
    }

    fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Relaxed)
    }

    /// Resolves when the connection must be dropped (reset, or closed after an
    /// answer). One waiter: the connection task.
    pub(crate) async fn ended(&self) {
        if !self.is_ending() {
            self.end.notified().await;
        }
    }
}

/// A worker connection's socket, doing what its [`ConnFaults`] ask.
pub(crate) struct FaultIo {
    stream: TcpStream,
    faults: std::sync::Arc<ConnFaults>,
    /// The next trickled byte may go out when this ends.
    pause: Option<Pin<Box<Sleep>>>,
    /// Bytes were written since a close-after-answer was asked: the next
    /// completed flush has put the whole answer on the wire.
    wrote_answer: bool,
    /// The last answer is out and the connection closes (unread) as soon as
    /// anything arrives (`close_late`).
    close_on_arrival: bool,
}

impl FaultIo {
    pub(crate) fn new(stream: TcpStream, faults: std::sync::Arc<ConnFaults>) -> FaultIo {
        FaultIo {
            stream,
            faults,
            pause: None,
            wrote_answer: false,
            close_on_arrival: false,
        }
    }

    /// Trickling: waits out the pause, then lets at most one byte through.
    fn poll_trickle_byte(
        &mut self,
        cx: &mut Context<'_>,
        per_byte: Duration,
        byte: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let n = ready!(Pin::new(&mut self.stream).poll_write(cx, byte))?;
        self.pause = Some(Box::pin(tokio::time::sleep(per_byte)));
        Poll::Ready(Ok(n))
    }

    fn note_write(&mut self, n: usize) {
        if n > 0 && self.faults.closes_after_answer() {
            self.wrote_answer = true;
        }
    }
}

impl AsyncRead for FaultIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Ending: read no further request; the connection task drops us.
        if self.faults.is_ending() {
            return Poll::Pending;
        }
        if self.close_on_arrival {
            // Wait for the next request (or the client's close) without
            // reading it: closing with it unread makes the kernel send an RST.
            // (A peek, not readiness alone: readiness may be reported spuriously.)
            let mut byte = [0u8; 1];
            ready!(self.stream.poll_peek(cx, &mut ReadBuf::new(&mut byte)))?;
            self.faults.end_now();
            return Poll::Pending;
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = match this.faults.trickle() {
            Some(per_byte) if !buf.is_empty() => {
                ready!(this.poll_trickle_byte(cx, per_byte, &buf[..1]))?
            }
            _ => ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?,
        };
        this.note_write(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = match (this.faults.trickle(), bufs.iter().find(|b| !b.is_empty())) {
            (Some(per_byte), Some(first)) => {
                let byte = &first[..1];
                ready!(this.poll_trickle_byte(cx, per_byte, byte))?
            }
            _ => ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))?,
        };
        this.note_write(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        // hyper flushes only once its whole buffer is written: the answer is out.
        if self.wrote_answer {
            self.wrote_answer = false;
            if self.faults.close_late.load(Ordering::Relaxed) {
                self.close_on_arrival = true;
            } else {
                self.faults.end_now();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Drop for FaultIo {
    fn drop(&mut self) {
        if self.faults.is_reset() {
            // Linger 0: closing sends RST and discards anything unsent.
            if let Err(e) = self.stream.set_zero_linger() {
                tracing::debug!(error = %e, "could not set SO_LINGER 0 for a reset fault");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: (our FaultIo side, the peer's plain stream).
    async fn pair() -> (FaultIo, Arc<ConnFaults>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let faults = Arc::new(ConnFaults::default());
        (FaultIo::new(ours, faults.clone()), faults, peer)
    }

    #[tokio::test]
    async fn a_trickled_answer_arrives_whole_one_byte_at_a_time() {
        let (mut io, faults, mut peer) = pair().await;
        faults.set_trickle(Some(Duration::from_millis(5)));
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            io.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
            io
        });
        let mut got = vec![0u8; 17];
        let mut reads = 0;
        let mut filled = 0;
        while filled < got.len() {
            let n = peer.read(&mut got[filled..]).await.unwrap();
            assert!(n > 0);
            filled += n;
            reads += 1;
        }
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n");
        // 16 pauses of 5 ms between 17 bytes, each read seeing about one byte.
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
        assert!(reads >= 10, "{reads} reads");
        // Untrickled again for the next answer.
        let mut io = writer.await.unwrap();
        faults.set_trickle(None);
        let start = Instant::now();
        io.write_all(&[b'x'; 1000]).await.unwrap();
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_reset_connection_sends_rst_not_fin() {
        let (io, faults, mut peer) = pair().await;
        faults.reset();
        assert!(faults.is_ending());
        faults.ended().await; // fires even though reset came first
        drop(io);
        let mut buf = [0u8; 8];
        let err = peer.read(&mut buf).await.expect_err("a reset, not an EOF");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn close_after_answer_ends_once_the_answer_is_flushed_and_reads_nothing_more() {
        let (mut io, faults, mut peer) = pair().await;
        // Before the answer: flushing an empty buffer ends nothing.
        io.flush().await.unwrap();
        assert!(!faults.answering(Some(2), false));
        io.write_all(b"first").await.unwrap();
        io.flush().await.unwrap();
        assert!(!faults.is_ending(), "first of two answers");
        assert!(faults.answering(Some(2), false));
        io.flush().await.unwrap();
        assert!(!faults.is_ending(), "nothing written yet");
        io.write_all(b"second").await.unwrap();
        assert!(!faults.is_ending(), "not flushed yet");
        io.flush().await.unwrap();
        assert!(faults.is_ending());
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"firstsecond");
        // A request arriving now is never read.
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(100), io.read(&mut buf)).await;
        assert!(read.is_err(), "read {read:?}");
        // Dropping it closes the socket; the peer sees the end (an EOF, or a
        // reset since its request was left unread), never more bytes.
        drop(io);
        let mut rest = Vec::new();
        let _ = peer.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn close_late_waits_for_the_next_request_and_resets_it_unread() {
        let (mut io, faults, mut peer) = pair().await;
        assert!(faults.answering(Some(1), true));
        io.write_all(b"answer").await.unwrap();
        io.flush().await.unwrap();
        assert!(
            !faults.is_ending(),
            "still open: it looks alive to the client"
        );
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).await.unwrap();
        // Idle: nothing to read, the connection stays.
        let mut buf = [0u8; 64];
        let idle = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await;
        assert!(idle.is_err() && !faults.is_ending());
        // The next request arrives: never read, the connection ends.
        peer.write_all(b"POST /v1/events HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let read = tokio::time::timeout(Duration::from_millis(200), io.read(&mut buf)).await;
        assert!(read.is_err(), "read {read:?}");
        assert!(faults.is_ending() && !faults.is_reset());
        drop(io);
        let err = peer
            .read(&mut buf)
            .await
            .expect_err("closed with the request unread: RST");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
