//! The serde mirror of the policy TOML: exactly what a platform team writes, nothing checked
//! beyond types. `policy.rs` turns it into the validated [`super::Policy`] the proxy uses.
//!
//! Every table denies unknown fields, so a typo (`p59_ms`) is an error, not a silent default.
//! Values checked after parsing are wrapped in [`Spanned`] so their errors carry a line.

use serde::Deserialize;
use toml::Spanned;

pub use super::file_guard::*;
pub use super::file_ratelimit::*;
pub use super::file_request::*;

/// The whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub listen: ListenFile,
    pub upstream: UpstreamFile,
    /// Routes in match order; the first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub guard: GuardFile,
    #[serde(default)]
    pub concurrency: ConcurrencyFile,
    #[serde(default)]
    pub shedding: SheddingFile,
    #[serde(default)]
    pub retry: RetryFile,
    #[serde(default)]
    pub ratelimit: RateLimitFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub log: LogFile,
}

/// `[listen]`: where sloguard accepts traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Proxy listener, `ip:port`.
    pub proxy: Spanned<String>,
    /// Admin listener (health, status, metrics), `ip:port`. Keep it on localhost.
    pub admin: Spanned<String>,
    /// Proxy worker threads. Default 2: a sidecar should not take the pod's cores.
    #[serde(default = "default_threads")]
    pub threads: Spanned<u64>,
    /// How long SIGTERM waits for in-flight requests before exiting, ms. Default 10 000.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: Spanned<u64>,
    /// How long to keep retrying a listener address that is in use at start, ms. Default
    /// 2000; 0 = one try.
    #[serde(default = "default_bind_retry_ms")]
    pub bind_retry_ms: Spanned<u64>,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs or plain addresses). Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming the client;
    /// only from `trusted_proxies`. Default false.
    #[serde(default = "default_false")]
    pub proxy_protocol: Spanned<bool>,
    /// Most client connections open at once (HAProxy's `maxconn`); beyond it a new
    /// connection gets a 503 at once and is closed. Default: derived from the open-file limit
    /// (half of it after a reserve: each client connection may hold a worker connection).
    pub max_connections: Option<Spanned<u64>>,
}

fn default_threads() -> Spanned<u64> {
    Spanned::new(0..0, 2)
}
fn default_drain_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 10_000)
}
fn default_false() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
/// Long enough for a previous process still closing its listener (a quick restart), short
/// enough that a port taken for good fails the start within seconds, not Pingora's 30 s.
fn default_bind_retry_ms() -> Spanned<u64> {
    Spanned::new(0..0, 2_000)
}

/// `[upstream]`: the workers of the service sloguard guards.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// One `ip:port` per worker process (e.g. one per uvicorn worker).
    pub workers: Spanned<Vec<Spanned<String>>>,
    /// TCP connect timeout, ms. Default 200: workers are on the same host.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: Spanned<u64>,
    /// Longest wait for response bytes from a worker, ms. Default 30 000.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: Spanned<u64>,
    /// Longest wait to write request bytes to a worker, ms. Default 30 000.
    #[serde(default = "default_read_timeout_ms")]
    pub write_timeout_ms: Spanned<u64>,
    /// How long an idle upstream keep-alive connection is kept in the pool, ms. Default 60 000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: Spanned<u64>,
    /// Idle upstream connections kept in the pool, all workers together. Default 128.
    #[serde(default = "default_keepalive_pool_size")]
    pub keepalive_pool_size: Spanned<u64>,
    /// Response header with the worker's event-loop lag in ms. Default `x-loop-lag-ms`.
    pub lag_header: Option<Spanned<String>>,
    #[serde(default)]
    pub health: HealthFile,
    #[serde(default)]
    pub probe: ProbeFile,
}

fn default_connect_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 200)
}
fn default_read_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}
/// Below uvicorn's default keep-alive (5 s): a pooled connection must be dropped by us
/// before the worker closes it, or a POST sent on it as the close arrives fails with a 502
/// it cannot be retried from (`tests/faults_workers.rs` shows it).
fn default_idle_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 4_000)
}
fn default_keepalive_pool_size() -> Spanned<u64> {
    Spanned::new(0..0, 128)
}

/// `[[route]]`: a class of requests with its own SLO, priority and caps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name used in metrics, logs and error bodies. `default` names the catch-all.
    pub name: Spanned<String>,
    /// What the route matches. Absent only on the route named `default`.
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<MatchFile>>,
    /// Latency objective; absent = no SLO (nothing is shed to protect it).
    pub slo: Option<Spanned<SloFile>>,
    /// Shedding order under overload. Default `normal`.
    #[serde(default)]
    pub priority: PriorityFile,
    /// Largest request body accepted, bytes. Absent = no cap.
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Longest wait for a worker slot, ms. Default: p95 target minus the expected service
    /// time, or `[shedding] default_queue_ms` without an SLO.
    pub queue_budget_ms: Option<Spanned<u64>>,
    /// JSON shape limits for the body: `json = { max_depth, max_keys, max_array_len,
    /// max_string_bytes }`.
    pub json: Option<Spanned<JsonFile>>,
    /// Per-attempt response timeout, ms; see `config/README.md`.
    pub per_try_timeout_ms: Option<Spanned<u64>>,
    /// Send a bodiless idempotent request to a second worker after this long without an
    /// answer, ms; see `config/README.md`.
    pub hedge_after_ms: Option<Spanned<u64>>,
    /// Retry this route's requests whatever their method (they must be safe to repeat).
    #[serde(default)]
    pub retry_idempotent: bool,
}

/// `match = { method = "POST", path_prefix = "/v1/events" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// An HTTP method (`GET`, `POST`, ...); absent = any.
    pub method: Option<String>,
    /// Path prefix, matched on `/` boundaries is NOT implied: `/v1/events` matches `/v1/events/batch`.
    pub path_prefix: Option<String>,
    /// Exact path.
    pub path: Option<String>,
}

/// `json = { max_depth = 32, max_keys = 256, max_array_len = 1000, max_string_bytes = 4096 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFile {
    pub max_depth: Option<u64>,
    pub max_keys: Option<u64>,
    pub max_array_len: Option<u64>,
    pub max_string_bytes: Option<u64>,
}

/// `slo = { p95_ms = 150, p99_ms = 400 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloFile {
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// `priority = "critical" | "normal" | "sheddable"`.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PriorityFile {
    Critical,
    #[default]
    Normal,
    Sheddable,
}
