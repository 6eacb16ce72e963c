//! The process's life, apart from what it serves: when it started, whether it is stopping
//! (SIGTERM), the requests and client connections it holds, and its last reload attempt.
//! Read by the admin listener (`/readyz`, `/status`) and by the drain at shutdown.

// Process state: stamps the start.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::stages::connection::OpenConnections;

pub struct Lifecycle {
    /// When this process started serving.
    pub started: Instant,
    /// Set at SIGTERM: the proxy's listener stops accepting and its keep-alive connections
    /// close after their current answer (see `shutdown::StopOnSignal`). Its receivers stand
    /// in for Pingora's shutdown watch on the proxy service, which fires only once the
    /// drain is over.
    stop: watch::Sender<bool>,
    /// Requests between `new_ctx` and the end of `logging` (held by [`InFlightRequest`]).
    in_flight: Arc<AtomicUsize>,
    /// Requests on the HTTP/1 connection loop, from the first bytes of their head until
    /// Pingora is done with them (see [`Lifecycle::request_begun`]); a request counts here
    /// before `new_ctx`, and in both counts after.
    begun: Arc<AtomicUsize>,
    /// Open client connections, against `[listen] max_connections`.
    pub connections: Arc<OpenConnections>,
    /// The connection cap when the policy sets none: from the open-file limit at start.
    pub default_connection_cap: u32,
    /// The outcome of the last reload attempt, for the status page.
    last_reload: Mutex<Option<ReloadRecord>>,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            started: Instant::now(),
            stop: watch::Sender::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            begun: Arc::new(AtomicUsize::new(0)),
            connections: OpenConnections::new(),
            default_connection_cap: crate::resources::default_max_connections(
                crate::resources::fd_limit(),
            ),
            last_reload: Mutex::new(None),
        }
    }
}

impl Lifecycle {
    /// SIGTERM: tells the proxy's listener and connections to stop (see
    /// [`Lifecycle::stop_watch`]); from then on the process is draining, and not ready.
    pub fn stop_proxy(&self) {
        self.stop.send_replace(true);
    }

    /// SIGTERM received ([`Lifecycle::stop_proxy`]): draining, not ready.
    pub fn draining(&self) -> bool {
        *self.stop.borrow()
    }

    /// A watch that turns true when the proxy must stop taking requests: what the proxy's
    /// accept loop and connections follow instead of Pingora's shutdown watch.
    pub fn stop_watch(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Counts a request in flight until the returned token drops.
    pub fn request_started(&self) -> InFlightRequest {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightRequest(self.in_flight.clone())
    }

    /// Requests in flight in sloguard (queued, proxying or being answered).
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request from the first bytes of its head until the returned token drops
    /// (the connection loop holds it until Pingora is done with the request). Without it a
    /// drain could see nothing in flight while a head was being read, stop, and take the
    /// request down after it reached a worker: stored there, never answered (seen once in
    /// `sloguard_restarted_on_its_port_loses_nothing`).
    pub fn request_begun(&self) -> InFlightRequest {
        self.begun.fetch_add(1, Ordering::Relaxed);
        InFlightRequest(self.begun.clone())
    }

    /// Requests counted from their head's first bytes (see [`Lifecycle::request_begun`]).
    pub fn requests_begun(&self) -> usize {
        self.begun.load(Ordering::Relaxed)
    }

    /// Whether any request is held: begun on a connection, or in flight. The drain waits
    /// until none is.
    pub fn holds_requests(&self) -> bool {
        self.requests_in_flight() > 0 || self.requests_begun() > 0
    }

    /// Keeps the outcome of a reload attempt for the status page.
    pub fn record_reload(&self, record: ReloadRecord) {
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// The last reload attempt, if any.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One request's place in [`Lifecycle::requests_in_flight`], released on drop.
#[derive(Debug)]
pub struct InFlightRequest(Arc<AtomicUsize>);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last reload attempt, for the status page.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    /// What asked for it: `file`, `sighup` or `admin`.
    pub trigger: &'static str,
    pub result: Result<ReloadApplied, String>,
}

/// A reload that was applied (or found nothing to change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadApplied {
    pub version: String,
    /// Nothing changed (same bytes as the running policy).
    pub unchanged: bool,
    pub notes: Vec<String>,
}
