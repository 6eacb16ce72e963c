//! sloguard: a reverse-proxy sidecar that holds a service's latency SLO when one of its
//! event-loop workers stalls, a burst arrives or a tenant misbehaves.
//!
//! Where a request goes, in order:
//!
//! - [`server`] builds the Pingora server: the proxy listener and the admin listener, each
//!   bound at start and served by [`listener`]'s accept loop (failures counted and paused
//!   on, never spun on).
//! - [`proxy`] holds the Pingora phases; they sequence the stages and write answers. Around
//!   them, `proxy::ConnectionApp` runs each connection: the per-client connection cap and the
//!   deadline on reading each request head ([`stages::connection`] decides), and with
//!   `[listen] proxy_protocol` the PROXY header that names the client.
//! - [`stages::client_ip`] resolves each request's client through `trusted_proxies`
//!   (`X-Forwarded-For`, right-most untrusted entry) for rate-limit keys, logs and upstream.
//! - [`stages`] decide, in this order: [`stages::route`] (which route),
//!   [`stages::payload`] (head and body caps), [`stages::ratelimit`] (per-tenant limits in
//!   Redis), [`stages::json_scan`] (the body's shape), [`stages::admission`] (wait for a
//!   worker slot within the deadline, or be shed); once a worker is tried,
//!   [`stages::retry`] (another worker, within a budget) and [`stages::hedge`] (a second
//!   attempt for a slow answer). Each refusal names a [`stages::Reason`], which the
//!   metrics, the access log and `/status` all count by.
//! - [`workers`] choose the upstream worker (on TCP or a Unix socket) and hold in-flight
//!   leases; each worker's health, limiter and probes live there.
//! - [`telemetry`] counts what happened, once, where it is decided: the metrics the request
//!   path records, sloguard's refusals by route and reason, the access log; the figures
//!   other modules keep (worker health, retries, hedges, the queue) are read at scrape time.
//! - [`admin`] serves `/healthz`, `/readyz`, `/metrics`, `/status` and the status page; it
//!   only reads.
//! - [`monitor`] ticks worker health every 10 ms and starts the background loops the other
//!   modules own (probes, drain-rate ticks, the rate limiter's and the exporter's upkeep,
//!   the policy watch).
//! - [`config`] reads and validates the TOML policy; [`state`] holds the live state, one
//!   field per concern (policy, workers, admission, rate limits, telemetry, lifecycle);
//!   [`reload`] swaps in a changed policy (file change, SIGHUP, `POST /reload`).
//! - [`demo`] runs the analytics backend and sloguard together for a newcomer.
//! - [`resources`] raises the open-file limit and tells our own shortages (EMFILE, no local
//!   port) from a worker's failures; [`logging`] bounds every repeating log line per site;
//!   [`shutdown`] drains on SIGTERM before the server returns from `run`, and ends a stop
//!   that does not end by itself.

// Unit tests drive real timers and synthetic clocks started from the wall clock.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod admin;
pub mod config;
pub mod demo;
pub mod listener;
pub mod logging;
pub mod monitor;
pub mod proxy;
pub mod reload;
pub mod resources;
pub mod server;
pub mod shutdown;
pub mod stages;
pub mod state;
pub mod telemetry;
pub mod workers;

pub use config::{Policy, PolicyError};
