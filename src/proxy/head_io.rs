//! The proxy listener's stream with a deadline on each request head: the I/O edge of
//! `stages::conn_guard::head`.
//!
//! Pingora only times each read of a head (60 s), so a client sending a byte every few
//! seconds could hold a connection forever. [`HeadGuardIo`] wraps the accepted stream
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

use crate::stages::conn_guard::{HeadEvent, HeadWatch};

/// A stream whose request heads must each arrive whole within a deadline.
pub struct HeadGuardIo {
    /// `None` once handed over after a head timeout.
    inner: Option<Stream>,
    watch: HeadWatch,
    /// The deadline of the head being read, from the policy when it was armed.
    timeout: Duration,
    /// Armed only while a head spans reads; dropped (and deregistered) at its end.
    deadline: Option<Pin<Box<Sleep>>>,
    expiry: Arc<Expiry>,
}

/// A head timed out: the stream, handed from [`HeadGuardIo`] (inside Pingora's session) to
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

impl HeadGuardIo {
    /// Wraps a newly accepted stream, waiting for its first request head.
    pub fn new(inner: Stream, timeout: Duration) -> (HeadGuardIo, Arc<Expiry>) {
        let expiry = Arc::new(Expiry::default());
        let io = HeadGuardIo {
            inner: Some(inner),
            watch: HeadWatch::new(),
            timeout,
            deadline: None,
            expiry: expiry.clone(),
        };
        (io, expiry)
    }

    /// The connection is being reused: time the next head with `timeout`.
    pub fn expect_head(&mut self, timeout: Duration) {
        self.watch.expect_head();
        self.timeout = timeout;
        self.deadline = None;
    }

    /// Re-arms a stream Pingora hands back for reuse (it is ours: the same box we gave it).
    /// `None` if it is somehow not one of ours; the connection is then dropped.
    pub fn rearm(stream: Stream, timeout: Duration) -> Option<Stream> {
        match stream.into_any().downcast::<HeadGuardIo>() {
            Ok(mut io) => {
                io.expect_head(timeout);
                Some(io)
            }
            Err(_) => {
                tracing::error!("a reused downstream stream is not a HeadGuardIo; closing it");
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

impl AsyncRead for HeadGuardIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
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
            match this.watch.on_bytes(&buf.filled()[before..]) {
                HeadEvent::Started => {
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.timeout)));
                }
                HeadEvent::Ended => this.deadline = None,
                HeadEvent::Continued | HeadEvent::Ignored => {}
            }
        }
        polled
    }
}

impl AsyncWrite for HeadGuardIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

// The rest of Pingora's `IO` trait: the inner stream's answers (its digests feed the
// client address, timings and logs).

#[async_trait]
impl Shutdown for HeadGuardIo {
    async fn shutdown(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            Shutdown::shutdown(&mut **inner).await;
        }
    }
}

impl UniqueID for HeadGuardIo {
    fn id(&self) -> UniqueIDType {
        self.inner.as_ref().map_or(-1, |i| i.id())
    }
}

impl Ssl for HeadGuardIo {
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

impl GetTimingDigest for HeadGuardIo {
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

impl GetProxyDigest for HeadGuardIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.as_ref().and_then(|i| i.get_proxy_digest())
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        if let Some(i) = self.inner.as_mut() {
            i.set_proxy_digest(digest);
        }
    }
}

impl GetSocketDigest for HeadGuardIo {
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
impl Peek for HeadGuardIo {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.inner.as_mut() {
            Some(inner) => inner.try_peek(buf).await,
            None => Ok(false),
        }
    }
}

impl fmt::Debug for HeadGuardIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadGuardIo")
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
