//! The accept loop of both listeners (proxy and admin), in place of Pingora's
//! `services::listening::Service`.
//!
//! Pingora's loop logs every failed `accept()`, sleeps one second after `EMFILE` (the
//! listener stays shut for that second even if descriptors free up at once) and retries
//! every other error at once: `ENFILE`, `ENOMEM`, and the error of a runtime being shut
//! down, which once logged 117 million lines in four minutes. Here a failure is classified
//! ([`AcceptFailure`]), counted per cause, and decides what the loop does next
//! ([`AcceptBackoff`]): a connection that died in the backlog is skipped, a shortage of ours
//! pauses the listener (5 ms, doubling to 100 ms, as HAProxy pauses a listener at its fd
//! limit; an accepted connection resets it), and an error from the runtime itself ends the
//! loop. The loop also ends when the server stops. Listeners are bound before Pingora starts
//! ([`bind_listener`]), so an address that cannot be bound fails the start with one line.

// I/O edge: accept loops and their backoff.
#![allow(clippy::disallowed_methods)]

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::net::TcpListener;

use crate::resources::LocalShortage;

/// The listen backlog: connections past what the process takes at once wait here, in the
/// kernel (Pingora's and nginx's figure on Linux; `net.core.somaxconn` caps it).
const LISTEN_BACKLOG: i32 = 65535;

/// First pause after a shortage, and the longest.
const PAUSE_FIRST: Duration = Duration::from_millis(5);
const PAUSE_MAX: Duration = Duration::from_millis(100);

/// Why one `accept()` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptFailure {
    /// A descriptor, kernel memory or a system-wide file slot of ours ran out.
    Shortage(LocalShortage),
    /// The connection died in the backlog before it was taken (`ECONNABORTED`, `EPROTO`, a
    /// firewall's `EPERM`, a signal): that connection is gone, the next one is fine.
    ConnectionGone,
    /// An error with no OS error behind it: the runtime the listener is registered with is
    /// shutting down. Nothing more will be accepted on it.
    Runtime,
    /// Any other OS error (a broken listener): paused on like a shortage, never spun on.
    Other,
}

/// The causes counted, in `/status` and metric label order.
const CAUSES: [&str; 6] = [
    "file_descriptors",
    "system_files",
    "memory",
    "connection_gone",
    "runtime",
    "other",
];

impl AcceptFailure {
    pub fn of(e: &io::Error) -> AcceptFailure {
        let Some(code) = e.raw_os_error() else {
            return AcceptFailure::Runtime;
        };
        if let Some(shortage) = LocalShortage::from_os_error(code) {
            return AcceptFailure::Shortage(shortage);
        }
        match code {
            libc::ECONNABORTED
            | libc::EPROTO
            | libc::EPERM
            | libc::EINTR
            | libc::EAGAIN
            | libc::ECONNRESET
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH => AcceptFailure::ConnectionGone,
            _ => AcceptFailure::Other,
        }
    }

    /// Where this failure is counted: its place in [`CAUSES`].
    fn cause(self) -> usize {
        match self {
            AcceptFailure::Shortage(LocalShortage::FileDescriptors) => 0,
            AcceptFailure::Shortage(LocalShortage::SystemFiles) => 1,
            AcceptFailure::Shortage(LocalShortage::Memory) => 2,
            AcceptFailure::ConnectionGone => 3,
            AcceptFailure::Runtime => 4,
            // No local port is a connect failure; accept should never see it.
            AcceptFailure::Shortage(LocalShortage::LocalPorts) | AcceptFailure::Other => 5,
        }
    }

    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        CAUSES[self.cause()]
    }
}

/// What the accept loop does after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Take the next connection now.
    Retry,
    /// Leave the listener alone this long (stopping still ends the wait).
    Pause(Duration),
    /// End the loop.
    Stop,
}

/// The pause that grows while accepts keep failing and resets on the first success.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: PAUSE_FIRST }
    }
}

impl AcceptBackoff {
    pub fn after(&mut self, failure: AcceptFailure) -> AfterFailure {
        match failure {
            AcceptFailure::ConnectionGone => AfterFailure::Retry,
            AcceptFailure::Runtime => AfterFailure::Stop,
            AcceptFailure::Shortage(_) | AcceptFailure::Other => {
                let pause = self.next;
                self.next = (self.next * 2).min(PAUSE_MAX);
                AfterFailure::Pause(pause)
            }
        }
    }

    /// A connection was taken: the next failure pauses briefly again.
    pub fn accepted(&mut self) {
        self.next = PAUSE_FIRST;
    }
}

static FAILURES: [AtomicU64; CAUSES.len()] = [const { AtomicU64::new(0) }; CAUSES.len()];

fn record(failure: AcceptFailure) {
    FAILURES[failure.cause()].fetch_add(1, Ordering::Relaxed);
}

/// Failed accepts since start, per cause, both listeners together (every cause listed).
pub fn failure_counts() -> Vec<(&'static str, u64)> {
    CAUSES
        .iter()
        .zip(&FAILURES)
        .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
        .collect()
}

/// A listener address that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct BindError {
    pub reason: String,
}

/// Time between two tries of an address in use.
const BIND_RETRY_STEP: Duration = Duration::from_millis(100);

/// Binds `addr`, retrying while it is in use for up to `retry`, with the long backlog.
/// Pingora's own bind retried an address in use for 30 s and then panicked in its service
/// thread while the process and its other listener stayed up: a pod Live and Ready with
/// nothing on its proxy port. Binding here, before Pingora starts, fails the start instead.
pub fn bind_listener(
    what: &str,
    addr: SocketAddr,
    retry: Duration,
) -> Result<StdTcpListener, BindError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        // std sets SO_REUSEADDR on Unix, so a port in TIME_WAIT binds at once.
        let err = match StdTcpListener::bind(addr) {
            Ok(listener) => return with_backlog(listener),
            Err(e) => e,
        };
        let in_use = err.kind() == io::ErrorKind::AddrInUse;
        if !in_use || started.elapsed() + BIND_RETRY_STEP > retry {
            let reason = if in_use {
                "address in use".to_string()
            } else {
                err.to_string().to_lowercase()
            };
            return Err(BindError { reason });
        }
        if !warned {
            tracing::warn!(%addr, retry_ms = retry.as_millis() as u64, "{what} listener: address in use; retrying");
            warned = true;
        }
        std::thread::sleep(BIND_RETRY_STEP);
    }
}

/// Sets the backlog (std listens with 128; a second `listen()` on Linux updates it) and
/// non-blocking mode for tokio.
fn with_backlog(listener: StdTcpListener) -> Result<StdTcpListener, BindError> {
    // SAFETY: listen() on a descriptor this listener owns and keeps open.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        let e = io::Error::last_os_error();
        return Err(BindError {
            reason: format!("listen: {e}"),
        });
    }
    listener.set_nonblocking(true).map_err(|e| BindError {
        reason: format!("non-blocking: {e}"),
    })?;
    Ok(listener)
}

/// A Pingora service that accepts on one bound listener and runs `app` on each connection.
pub struct AcceptLoop<A> {
    name: String,
    listener: Option<StdTcpListener>,
    app: Option<Arc<A>>,
    threads: Option<usize>,
    /// What stops this loop and its connections, if not Pingora's shutdown watch.
    stop: Option<ShutdownWatch>,
}

impl<A> AcceptLoop<A> {
    pub fn new(name: &str, listener: StdTcpListener, app: A) -> AcceptLoop<A> {
        AcceptLoop {
            name: name.to_string(),
            listener: Some(listener),
            app: Some(Arc::new(app)),
            threads: None,
            stop: None,
        }
    }

    /// Stops on `stop` instead of Pingora's shutdown watch: the proxy stops accepting at
    /// the start of a drain, which Pingora's watch only announces once the drain is over
    /// (see `shutdown::StopOnSignal`).
    pub fn stopping_on(mut self, stop: ShutdownWatch) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Runs this service on `n` threads of its own rather than the server's default.
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }
}

impl<A: ServerApp + Send + Sync + 'static> AcceptLoop<A> {
    /// Takes connections until the server stops or the runtime goes away.
    async fn run(name: String, listener: Arc<TcpListener>, app: Arc<A>, shutdown: ShutdownWatch) {
        let mut backoff = AcceptBackoff::default();
        let mut stopping = shutdown.clone();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => break,
                r = listener.accept() => r,
            };
            let failure = match accepted {
                Ok((tcp, peer)) => {
                    backoff.accepted();
                    serve(tcp, peer, app.clone(), shutdown.clone());
                    continue;
                }
                Err(e) => {
                    let failure = AcceptFailure::of(&e);
                    record(failure);
                    tracing::warn!(listener = %name, cause = failure.as_str(), "accept failed: {e}");
                    failure
                }
            };
            match backoff.after(failure) {
                AfterFailure::Retry => {}
                AfterFailure::Pause(pause) => tokio::select! {
                    biased;
                    _ = stopping.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(pause) => {}
                },
                AfterFailure::Stop => {
                    tracing::info!(listener = %name, "runtime shutting down: accept loop ends");
                    break;
                }
            }
        }
    }
}

/// Runs `app` on one accepted connection, on a thread of the pool chosen at random (as
/// Pingora's loop does: its threads are single-threaded runtimes that steal no work, so a
/// plain spawn would put every connection on the accepting thread).
fn serve<A: ServerApp + Send + Sync + 'static>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) {
    let mut stream = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    // Small answers go out now, not after the peer's delayed ACK (Pingora sets it too).
    let _ = stream.set_nodelay();
    pingora_runtime::current_handle().spawn(async move {
        let mut next = app.process_new(Box::new(stream), &shutdown).await;
        while let Some(reused) = next {
            next = app.process_new(reused, &shutdown).await;
        }
    });
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for AcceptLoop<A> {
    /// `_fds` carries listeners from an old process in Pingora's zero-downtime upgrade,
    /// which sloguard does not use (no upgrade socket is configured): ours are bound at start.
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let shutdown = self.stop.clone().unwrap_or(shutdown);
        let std_listener = self.listener.take().expect("start_service() runs once");
        let app = self.app.take().expect("start_service() runs once");
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => Arc::new(l),
            Err(e) => panic!("{}: cannot register the listener: {e}", self.name),
        };
        let loops: Vec<_> = (0..listeners_per_fd.max(1))
            .map(|_| {
                let run = Self::run(
                    self.name.clone(),
                    listener.clone(),
                    app.clone(),
                    shutdown.clone(),
                );
                tokio::spawn(run)
            })
            .collect();
        for l in loops {
            let _ = l.await;
        }
        // Closed before the app's cleanup, which may wait for requests still arriving: a
        // stopped listener must refuse new connections at once, not leave them in the
        // kernel's backlog.
        drop(listener);
        app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
