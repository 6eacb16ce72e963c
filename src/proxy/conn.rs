//! The proxy listener's connections, before and between requests: the per-client
//! connection cap when a connection is accepted, and the head deadline on every request of
//! a keep-alive connection (`stages::connection` decides; this writes the answers).
//!
//! Pingora's `HttpProxy` runs a connection's whole keep-alive loop inside one
//! `ServerApp::process_new` call (its blanket impl for `HttpServerApp`). [`ConnectionApp`] is
//! our `ServerApp` in front of it: it wraps the stream in [`HeadDeadlineIo`] and runs that
//! loop itself (the same dozen lines as Pingora's HTTP/1 branch), so it knows exactly when
//! Pingora is about to read a new request head: at each reuse it re-arms the deadline, with
//! the policy of that moment. Guarding the loop rather than guessing request boundaries
//! from response bytes means a 101 upgrade, a `100 Continue` or a body still arriving after
//! the response can never be taken for the start of a head.

use std::net::IpAddr;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as InetOrUnix;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::head_io::{HeadDeadlineIo, CLOSE_GRACE, LINGER_BYTES};
use super::{new_request_id, respond, SloGuard};
use crate::stages::connection::proxy_header::{self, Parsed};
use crate::stages::connection::{self, ClientConnections, ClientPermit};
use crate::stages::Rejection;
use crate::state::State;
use crate::telemetry::NO_ROUTE;

/// The proxy service's application: connection limits around Pingora's HTTP proxy.
pub struct ConnectionApp {
    proxy: Arc<HttpProxy<SloGuard>>,
    state: Arc<State>,
    clients: Arc<ClientConnections>,
}

impl ConnectionApp {
    /// `proxy` must be initialised (`pingora::proxy::http_proxy` does it).
    pub fn new(proxy: HttpProxy<SloGuard>, state: Arc<State>) -> ConnectionApp {
        ConnectionApp {
            proxy: Arc::new(proxy),
            state,
            clients: ClientConnections::new(),
        }
    }

    /// Pingora's HTTP/1 handling of the request starting on `io` (its own loop's body,
    /// `pingora-core` `apps/mod.rs`): the first request of a connection takes the keep-alive
    /// settings, a later one those its predecessor left.
    fn serve_request<'a>(
        &'a self,
        io: Box<HeadDeadlineIo>,
        first: bool,
        carried: Option<HttpPersistentSettings>,
        shutdown: &'a ShutdownWatch,
    ) -> impl std::future::Future<Output = Option<ReusedHttpStream>> + 'a {
        let mut session = ServerSession::new_http1(io);
        if first {
            // Pingora's own idle wait is not used (`next_request` waits instead), but the
            // setting also decides whether the connection is kept at all.
            let idle = self.state.conn_limits().keepalive_timeout.as_secs().max(1);
            session.set_keepalive((!*shutdown.borrow()).then_some(idle));
            session.set_keepalive_reuses_remaining(
                self.proxy
                    .server_options()
                    .and_then(|o| o.keepalive_request_limit),
            );
        } else if let Some(settings) = carried {
            settings.apply_to_session(&mut session);
        }
        self.proxy.process_new_http(session, shutdown)
    }

    /// Whether this connection takes our HTTP/1 loop. TLS, h2c and custom protocols (none
    /// configured today) go to Pingora's own loop, unguarded.
    fn is_plain_http1(&self, stream: &Stream) -> bool {
        let special = self
            .proxy
            .server_options()
            .is_some_and(|o| o.h2c || o.force_custom);
        !special && stream.get_ssl_digest().is_none() && stream.selected_alpn_proto().is_none()
    }

    /// The per-client cap, with the policy of now: a permit held for the connection's life
    /// (`None` when the cap is off or the peer has no IP), or the refusal.
    fn admit(&self, client: Option<IpAddr>, cap: u32) -> Result<Option<ClientPermit>, Rejection> {
        let Some(ip) = client.filter(|_| cap > 0) else {
            return Ok(None);
        };
        match self.clients.try_open(ip, cap) {
            Ok(permit) => Ok(Some(permit)),
            Err(open) => Err(connection::too_many_connections(ip, open, cap)),
        }
    }

    /// Counts, logs and answers a refused connection, then closes it.
    async fn refuse(&self, stream: Stream, rejection: Rejection, client: Option<IpAddr>) {
        let request_id = new_request_id();
        self.state
            .telemetry
            .metrics()
            .record_refusal(usize::MAX, rejection.reason);
        let policy = self.state.policy();
        let log = &self.state.telemetry.access_log;
        if log.should_log(&policy.access_log, true, 0.0, Instant::now()) {
            let dropped = log.take_dropped();
            tracing::info!(
                target: "sloguard::access",
                request_id = %request_id,
                route = NO_ROUTE,
                decision = rejection.kind().decision(),
                reason = rejection.reason.as_str(),
                status = rejection.status,
                client_ip = client.map(|ip| ip.to_string()),
                limit = rejection.limit,
                value = rejection.value,
                refusal_lines_dropped = (dropped > 0).then_some(dropped),
                "access"
            );
        }
        let answer = respond::raw_rejection(
            &rejection,
            &respond::Context {
                route: NO_ROUTE,
                request_id: &request_id,
                rule: None,
                rate_headers: None,
            },
        );
        answer_and_close(stream, &answer).await;
    }
}

impl ConnectionApp {
    /// With `[listen] proxy_protocol`, reads the PROXY header a trusted balancer sends
    /// first, and makes the client it names the connection's peer for everything after (the
    /// per-client cap, then each request's client address). Without, the stream as it is.
    /// `Err(None)`: the connection ended; `Err(Some(..))`: answer it with that refusal.
    async fn proxy_header(
        &self,
        stream: Stream,
        limits: connection::ConnLimits,
    ) -> Result<(Stream, Option<IpAddr>), Option<(Stream, Rejection, Option<IpAddr>)>> {
        let peer = client_ip(&stream);
        let policy = self.state.policy();
        if !policy.listen.proxy_protocol {
            return Ok((stream, peer));
        }
        if !peer.is_some_and(|ip| policy.listen.trusted_proxies.contains(ip)) {
            let why = "this peer is not in listen.trusted_proxies";
            return Err(Some((stream, connection::bad_proxy_header(why), peer)));
        }
        let mut l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => l4,
            Err(_) => return Err(None), // plain HTTP/1 streams are L4 streams
        };
        let mut buf = Vec::with_capacity(128);
        let read = tokio::time::timeout(limits.header_read_timeout, async {
            loop {
                match proxy_header::parse(&buf) {
                    Parsed::Incomplete => {}
                    Parsed::Header { client, len } => return Ok(Some((client, len))),
                    Parsed::Invalid(why) => return Err(why),
                }
                let mut chunk = [0u8; 512];
                match l4.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        let (client, len) = match read {
            Ok(Ok(Some(header))) => header,
            Ok(Ok(None)) => return Err(None), // closed before a whole header
            Ok(Err(why)) => return Err(Some((l4, connection::bad_proxy_header(why), peer))),
            Err(_) => {
                let why = "none arrived within limits.header_read_timeout_ms";
                return Err(Some((l4, connection::bad_proxy_header(why), peer)));
            }
        };
        // What came after the header is the first request: Pingora reads it from here.
        l4.rewind(&buf[len..]);
        let Some(client) = client else {
            return Ok((l4, peer)); // LOCAL / UNKNOWN: the balancer's own connection
        };
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(InetOrUnix::Inet(client)));
        l4.set_socket_digest(digest);
        Ok((l4, Some(client.ip().to_canonical())))
    }
}

/// Waits, holding only the stream, until the client starts its next request: `true` then;
/// `false` when it closed, stayed idle past the keep-alive timeout, or the server is
/// stopping (an idle connection is closed at once, as Pingora closes those parked in its
/// own head read).
async fn next_request(io: &mut HeadDeadlineIo, idle: Duration, shutdown: &ShutdownWatch) -> bool {
    let mut stopping = shutdown.clone();
    if *stopping.borrow() {
        return false;
    }
    tokio::select! {
        // A request already arriving wins over a stop that lands at the same moment.
        biased;
        // Pingora's timer wheel, as for its own reads: tokio's would wake its driver through
        // the eventfd whenever a fresh idle deadline lands before its next timer (one
        // request in seven at 18 000 requests/s, a system call and a loop turn each).
        started = fast_timeout(idle, io.wait_for_head()) => {
            matches!(started, Ok(Ok(true)))
        }
        // Only a stop: `changed()` would also fire for a value this receiver has not seen.
        _ = stopping.wait_for(|stop| *stop) => false,
    }
}

/// The TCP peer's address, as the cap counts it.
fn client_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    Some(digest.peer_addr()?.as_inet()?.ip().to_canonical())
}

/// Writes `answer`, ends our side (FIN after it), then reads and drops what the client still
/// sends until it closes too, at most [`CLOSE_GRACE`] in all: closing a socket with unread
/// input resets the connection, and a reset can destroy the answer on its way (nginx's
/// `lingering_close` does the same).
async fn answer_and_close(mut stream: Stream, answer: &[u8]) {
    let answered = tokio::time::timeout(CLOSE_GRACE, async {
        stream.write_all(answer).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await?;
        let mut scratch = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if let Ok(Err(e)) = answered {
        tracing::debug!(error = %e, "could not answer a refused connection");
    }
}

#[async_trait]
impl ServerApp for ConnectionApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // This thread's measure of its own backlog, started by its first connection.
        super::self_lag::ensure_ticker(&self.state.admission);
        // Held until this function returns, whichever way the connection ends.
        let cap = self.state.connection_cap();
        let _place = match self.state.lifecycle.connections.try_open(cap) {
            Ok(place) => place,
            Err(open) => {
                let client = client_ip(&stream);
                Box::pin(self.refuse(stream, connection::proxy_full(open, cap), client)).await;
                return None;
            }
        };
        if !self.is_plain_http1(&stream) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let limits = self.state.conn_limits();
        // Boxed, like every refusal below: their buffers would otherwise be part of this
        // future, which lives (allocated) as long as the connection, idle or not.
        let (stream, client) = match Box::pin(self.proxy_header(stream, limits)).await {
            Ok(accepted) => accepted,
            Err(refused) => {
                if let Some((stream, rejection, peer)) = refused {
                    Box::pin(self.refuse(stream, rejection, peer)).await;
                }
                return None;
            }
        };
        // Held until this function returns, whichever way the connection ends.
        let _permit = match self.admit(client, limits.max_connections_per_client_ip) {
            Ok(permit) => permit,
            Err(rejection) => {
                Box::pin(self.refuse(stream, rejection, client)).await;
                return None;
            }
        };
        let (io, expiry) = HeadDeadlineIo::new(stream, limits.header_read_timeout);
        let mut io = Box::new(io);
        if !next_request(&mut io, limits.keepalive_timeout, shutdown).await {
            return None;
        }
        // From here on, Pingora's own HTTP/1 loop (pingora-core `apps/mod.rs`), with the
        // head deadline re-armed before each reuse, and nothing built until the next
        // request starts to arrive: Pingora's session (680 bytes) lives inside the future of
        // its request (`serve_request`), never in this one, which is allocated for the
        // connection's whole life, idle included.
        let mut carried: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            // Counted for the drain from the head's first bytes (`next_request` just saw
            // them) until Pingora is done with the request.
            let begun = self.state.lifecycle.request_begun();
            let request = self.serve_request(io, first, carried.take(), shutdown);
            first = false;
            let reused = tokio::select! {
                biased;
                reused = request => reused?,
                () = expiry.wait() => {
                    // Pingora's session (and its request, if any had begun) is dropped by
                    // now; nothing of this head reached a phase or the backend.
                    if let Some((stream, missed)) = expiry.take() {
                        let limits = connection::ConnLimits {
                            header_read_timeout: missed,
                            ..limits
                        };
                        Box::pin(self.refuse(stream, connection::header_timeout(&limits), client))
                            .await;
                    }
                    return None;
                }
            };
            drop(begun);
            let (stream, settings) = reused.consume();
            // The limits of the policy of now: a reload applies to open connections too.
            let now = self.state.conn_limits();
            io = HeadDeadlineIo::rearm(stream, now.header_read_timeout)?;
            if !next_request(&mut io, now.keepalive_timeout, shutdown).await {
                return None;
            }
            carried = settings;
        }
    }

    async fn cleanup(&self) {
        // Runs as the listener stops accepting (SIGTERM), at the start of the drain.
        // Pingora's cleanup wakes every request parked in its head read and drops it: meant
        // for keep-alive connections idling there (only those of Pingora's own loop, TLS and
        // h2c; ours idle in `next_request`, which closes them at the stop), it would also
        // drop a head already arriving on ours. So it waits until those are served, at most
        // a head's deadline (after which no head of theirs is still being read).
        let limits = self.state.conn_limits();
        let until = Instant::now() + limits.header_read_timeout;
        while self.state.lifecycle.requests_begun() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ServerApp::cleanup(&*self.proxy).await;
    }
}
