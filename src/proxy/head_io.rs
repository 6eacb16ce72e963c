//! The proxy listener's stream with a deadline on each request head: the I/O edge of
//! `stages::connection::head`.
//!
//! Pingora only times each read of a head (60 s), so a client sending a byte every few
//! seconds could hold a connection forever. [`HeadDeadlineIo`] wraps the accepted stream
//! before Pingora sees it: the first byte of a head arms a deadline (a timer polled inside
//! `poll_read`, so a read waiting for bytes still wakes at the deadline), the empty line
//! that ends the head disarms it, and the connection loop (`proxy::conn`) re-arms it before
//! each reuse of the connection for another request. While waiting between requests
//! nothing is timed. When the deadline passes, the stream is handed to the connection loop
//! through [`Expiry`], which drops Pingora's session and answers the 408 itself, so Pingora
//! sees no error (it would log one at error level for a head that broke off).
//!
//! Hot path: once a head is complete, a read costs one branch; a head read whole costs a few
//! compares and no timer; only a head spanning reads allocates and arms a timer.
//!
//! Why one file of ~520 lines: the deadline is one poll-driven state machine over the stream
//! (`poll_read` arms, scans and disarms; `Expiry` hands the stream over), and its states only
//! make sense read together; its tests are in `head_io_tests.rs`.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::stages::connection::{HeadEvent, HeadWatch};

/// A stream whose request heads must each arrive whole within a deadline.
pub struct HeadDeadlineIo {
    /// `None` once handed over after a head timeout.
    inner: Option<Stream>,
    watch: HeadWatch,
    /// The deadline of the head being read, from the policy when it was armed.
    timeout: Duration,
    /// Armed only while a head spans reads; dropped (and deregistered) at its end.
    deadline: Option<Pin<Box<Sleep>>>,
    expiry: Arc<Expiry>,
    /// The start of the next head, read by [`HeadDeadlineIo::wait_for_head`] while the
    /// connection waited holding no buffer; handed to Pingora by its next reads, then freed.
    arrived: Vec<u8>,
    /// The wait's read filled its buffer, so more of the head (or pipelined requests) may be
    /// waiting in the socket: read with the hand-over, as one read of Pingora's would have.
    more_waiting: bool,
    /// Small writes gathered until a flush (a response's head and a short body leave in one
    /// send), allocated at the first write and freed at the flush: Pingora's own write
    /// buffer is off on this listener because it is allocated for the connection's life.
    out: Vec<u8>,
    /// Set once Pingora closes the connection (see `poll_shutdown`).
    linger: Option<Box<Linger>>,
}

/// A connection being closed: our FIN is sent, and what the client still sends is read and
/// dropped until it closes too (see [`HeadDeadlineIo::poll_linger`]).
struct Linger {
    fin_sent: bool,
    drained: usize,
    until: Pin<Box<Sleep>>,
}

/// Longest time a closing connection lingers (nginx: `lingering_time`, 30 s, and
/// `lingering_timeout`, 5 s; a sidecar's clients are a hop away, and a closing connection
/// keeps its descriptor meanwhile).
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Most bytes read and dropped while lingering.
pub const LINGER_BYTES: usize = 64 * 1024;

/// The most of a head read while waiting for it. It is part of every connection's future,
/// so of its memory idle or not (1024 cost 0.5 KiB more per idle connection, measured), and
/// holds most heads whole (a client library's GET is 100 to 400 bytes); a longer one (an
/// ingress adds forwarding and tracing headers) is read on in the same hand-over.
const HEAD_START: usize = 512;

/// Writes up to this many bytes are gathered into one send (Pingora's default L4 write
/// buffer, one Ethernet segment's payload).
const WRITE_GATHER: usize = 1460;

/// A head timed out: the stream, handed from [`HeadDeadlineIo`] (inside Pingora's session) to
/// the connection loop that answers it.
#[derive(Default)]
pub struct Expiry {
    fired: AtomicBool,
    handover: Mutex<Option<(Stream, Duration)>>,
}

impl Expiry {
    /// Resolves once a head has timed out.
    ///
    /// Checked, not woken: the stream is read only from within Pingora's session future,
    /// which the connection loop polls in the same `select!` just before this, so the poll
    /// that fires the deadline is always followed by a poll of this (and `poll_read` wakes
    /// its task too).
    pub async fn wait(&self) {
        poll_fn(|_| {
            if self.fired.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The timed-out connection's stream and the deadline it missed.
    pub fn take(&self) -> Option<(Stream, Duration)> {
        self.handover
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl HeadDeadlineIo {
    /// Wraps a newly accepted stream, waiting for its first request head.
    pub fn new(inner: Stream, timeout: Duration) -> (HeadDeadlineIo, Arc<Expiry>) {
        let expiry = Arc::new(Expiry::default());
        let io = HeadDeadlineIo {
            inner: Some(inner),
            watch: HeadWatch::new(),
            timeout,
            deadline: None,
            expiry: expiry.clone(),
            arrived: Vec::new(),
            more_waiting: false,
            out: Vec::new(),
            linger: None,
        };
        (io, expiry)
    }

    /// Waits for the client's next request head to start arriving: `Ok(true)` once it has,
    /// `Ok(false)` if the client closed the connection.
    ///
    /// Memory per idle connection: Pingora's session, its head buffer and the whole
    /// request-path future (tens of KiB) are built only once this returns, so a keep-alive
    /// connection waiting between requests holds this stream and little else, as nginx frees
    /// its buffers between requests. The read that ends the wait takes up to
    /// [`HEAD_START`] bytes (most heads whole), kept for Pingora's next reads, so a request
    /// costs no more reads than before.
    pub async fn wait_for_head(&mut self) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        if !self.arrived.is_empty() {
            return Ok(true);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Ok(false);
        };
        let mut start = [0u8; HEAD_START];
        let n = inner.read(&mut start).await?;
        if n == 0 {
            return Ok(false);
        }
        self.arrived = start[..n].to_vec();
        self.more_waiting = n == HEAD_START;
        Ok(true)
    }

    /// The connection is being reused: time the next head with `timeout`.
    pub fn expect_head(&mut self, timeout: Duration) {
        self.watch.expect_head();
        self.timeout = timeout;
        self.deadline = None;
    }

    /// Re-arms a stream Pingora hands back for reuse (it is ours: the same box we gave it).
    /// `None` if it is somehow not one of ours; the connection is then dropped.
    pub fn rearm(stream: Stream, timeout: Duration) -> Option<Box<HeadDeadlineIo>> {
        match stream.into_any().downcast::<HeadDeadlineIo>() {
            Ok(mut io) => {
                io.expect_head(timeout);
                Some(io)
            }
            Err(_) => {
                tracing::error!("a reused downstream stream is not a HeadDeadlineIo; closing it");
                None
            }
        }
    }

    /// The deadline passed: hand the stream over and leave Pingora's read pending; the
    /// connection loop drops Pingora's session next.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.deadline = None;
        if let Some(stream) = self.inner.take() {
            *self
                .expiry
                .handover
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some((stream, self.timeout));
        }
        self.expiry.fired.store(true, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was handed over after a header timeout",
    )
}

impl AsyncRead for HeadDeadlineIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.arrived.is_empty() {
            return this.hand_over_arrived(cx, buf);
        }
        if !this.watch.watching() {
            return match this.inner.as_mut() {
                Some(inner) => Pin::new(inner).poll_read(cx, buf),
                None => Poll::Pending,
            };
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return this.expire(cx);
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Pending;
        };
        let before = buf.filled().len();
        let polled = Pin::new(inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.observe(buf, before);
        }
        polled
    }
}

impl HeadDeadlineIo {
    /// Feeds the bytes read since `before` to the head watch, arming or disarming the
    /// deadline.
    fn observe(&mut self, buf: &ReadBuf<'_>, before: usize) {
        if !self.watch.watching() {
            return;
        }
        match self.watch.on_bytes(&buf.filled()[before..]) {
            HeadEvent::Started => {
                self.deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
            }
            HeadEvent::Ended => self.deadline = None,
            HeadEvent::Continued | HeadEvent::Ignored => {}
        }
    }

    /// Hands on what [`HeadDeadlineIo::wait_for_head`] read, freeing it once all is taken.
    /// When that read filled its buffer, what else the socket holds goes along in the same
    /// call: Pingora takes bytes past the head it did not ask for as overread (pipelined
    /// requests: dropped with the connection), but bytes it reads later, while the request
    /// is being proxied, as a client sending after its request ended (a 400).
    fn hand_over_arrived(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.arrived.len().min(buf.remaining());
        let before = buf.filled().len();
        buf.put_slice(&self.arrived[..n]);
        if n == self.arrived.len() {
            self.arrived = Vec::new();
            if std::mem::take(&mut self.more_waiting) && buf.remaining() > 0 {
                if let Some(inner) = self.inner.as_mut() {
                    // Pending: nothing more yet; an error shows again on the next read.
                    let _ = Pin::new(inner).poll_read(cx, buf);
                }
            }
        } else {
            self.arrived.drain(..n);
        }
        self.observe(buf, before);
        Poll::Ready(Ok(()))
    }
}

impl HeadDeadlineIo {
    /// Sends what was gathered, then frees the buffer.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(inner) = self.inner.as_mut() else {
            self.out = Vec::new();
            return Poll::Ready(Err(gone()));
        };
        while !self.out.is_empty() {
            match Pin::new(&mut *inner).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.out.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeadDeadlineIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            return Poll::Ready(Err(gone()));
        }
        if this.out.len() + buf.len() > WRITE_GATHER {
            match this.poll_send_gathered(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if buf.len() >= WRITE_GATHER {
            return match this.inner.as_mut() {
                Some(inner) => Pin::new(inner).poll_write(cx, buf),
                None => Poll::Ready(Err(gone())),
            };
        }
        if this.out.capacity() == 0 {
            this.out.reserve_exact(WRITE_GATHER);
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send_gathered(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match this.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            return Poll::Ready(Ok(()));
        }
        match this.poll_send_gathered(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        this.poll_linger(cx)
    }
}

impl HeadDeadlineIo {
    /// Pingora closes a connection it will not reuse (the client asked to close, a 400, a
    /// refusal that left a request body unread, a drain) by shutting its stream down. Closing
    /// a socket with unread input, or one that input reaches later (a body sent after the
    /// refusal that was its answer), makes the kernel reset the connection, and the reset
    /// can destroy the answer before the client reads it: the client sees "connection reset"
    /// instead of its 429. So, as nginx's `lingering_close`: send our FIN, then read and drop
    /// what the client still sends until it closes too, at most [`CLOSE_GRACE`] and
    /// [`LINGER_BYTES`]. A client that closes on reading the answer ends this at once.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let linger = self.linger.get_or_insert_with(|| {
            Box::new(Linger {
                fin_sent: false,
                drained: 0,
                until: Box::pin(tokio::time::sleep(CLOSE_GRACE)),
            })
        });
        if !linger.fin_sent {
            match Pin::new(&mut *inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => linger.fin_sent = true,
                other => return other,
            }
        }
        let mut scratch = [0u8; 1024];
        loop {
            if linger.until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    linger.drained += buf.filled().len();
                    if linger.drained >= LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                // The client closed (or reset): nothing left to protect.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// The rest of Pingora's `IO` trait: the inner stream's answers (its digests feed the
// client address, timings and logs).

#[async_trait]
impl Shutdown for HeadDeadlineIo {
    async fn shutdown(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            Shutdown::shutdown(&mut **inner).await;
        }
    }
}

impl UniqueID for HeadDeadlineIo {
    fn id(&self) -> UniqueIDType {
        self.inner.as_ref().map_or(-1, |i| i.id())
    }
}

impl Ssl for HeadDeadlineIo {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.as_ref().and_then(|i| i.get_ssl())
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.as_ref().and_then(|i| i.get_ssl_digest())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.as_ref().and_then(|i| i.selected_alpn_proto())
    }
}

impl GetTimingDigest for HeadDeadlineIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner
            .as_ref()
            .map(|i| i.get_timing_digest())
            .unwrap_or_default()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |i| i.get_read_pending_time())
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |i| i.get_write_pending_time())
    }
}

impl GetProxyDigest for HeadDeadlineIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.as_ref().and_then(|i| i.get_proxy_digest())
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        if let Some(i) = self.inner.as_mut() {
            i.set_proxy_digest(digest);
        }
    }
}

impl GetSocketDigest for HeadDeadlineIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.as_ref().and_then(|i| i.get_socket_digest())
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        if let Some(i) = self.inner.as_mut() {
            i.set_socket_digest(digest);
        }
    }
}

#[async_trait]
impl Peek for HeadDeadlineIo {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.inner.as_mut() {
            Some(inner) => inner.try_peek(buf).await,
            None => Ok(false),
        }
    }
}

impl fmt::Debug for HeadDeadlineIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadDeadlineIo")
            .field("inner", &self.inner)
            .field("watch", &self.watch)
            .field("timeout", &self.timeout)
            .field("armed", &self.deadline.is_some())
            .finish()
    }
}

#[cfg(test)]
#[path = "head_io_tests.rs"]
mod tests;
