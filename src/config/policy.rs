//! The validated policy the proxy runs on, and the checks that turn a [`PolicyFile`] into it.
//!
//! Each stage owns the type of its own section (routes in `stages::route`, upstream settings
//! in `workers`); this file only sequences parsing and validation and locates errors.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{Location, PolicyError};
use super::file::PolicyFile;
use super::locate::{fingerprint, key_path_at};
use crate::stages::admission::SheddingConfig;
use crate::stages::client_ip::TrustedProxies;
use crate::stages::connection::ConnLimits;
use crate::stages::payload::HeadLimits;
use crate::stages::ratelimit::RateLimitConfig;
use crate::stages::retry::RetryConfig;
use crate::stages::route::RouteTable;
use crate::telemetry::access_log::AccessLogConfig;
use crate::telemetry::{MetricsLayout, RouteLayout};
use crate::workers::{
    GuardMode, LimiterConfig, UpstreamConfig, WorkerAddr, WorkerAddrError, MAX_WORKERS,
};

#[path = "policy_guard.rs"]
mod guard;
#[path = "policy_ratelimit.rs"]
mod ratelimit;
#[path = "policy_request.rs"]
mod request;
#[path = "policy_routes.rs"]
mod routes;
#[path = "policy_values.rs"]
mod values;

/// A complete, validated policy. Immutable: a reload builds a new one and swaps it in.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    /// A short stable fingerprint of the file's bytes (FNV-1a 64, hex), shown in metrics and
    /// on the status page so on-call can tell which policy a replica runs.
    pub version: String,
    pub listen: Listen,
    pub upstream: UpstreamConfig,
    pub routes: RouteTable,
    /// `[guard] mode`: enforce, shadow or off.
    pub guard: GuardMode,
    pub concurrency: LimiterConfig,
    pub shedding: SheddingConfig,
    pub retry: RetryConfig,
    pub ratelimit: RateLimitConfig,
    /// `[limits]`: URL, header and body-timeout limits for every request.
    pub limits: HeadLimits,
    /// `[limits]`: the head deadline and the per-client connection cap, for every connection.
    pub conn: ConnLimits,
    /// `[log]`: the access log.
    pub access_log: AccessLogConfig,
}

/// `[listen]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Proxy worker threads (>= 1).
    pub threads: usize,
    /// Time SIGTERM allows in-flight requests to finish.
    pub drain_timeout: Duration,
    /// How long a listener address found in use at start is retried before giving up.
    pub bind_retry: Duration,
    /// Peers whose `X-Forwarded-For` is believed (the one key here a reload applies).
    pub trusted_proxies: TrustedProxies,
    /// Connections start with a PROXY protocol header from a trusted balancer.
    pub proxy_protocol: bool,
    /// Most client connections at once; `None`: derived from the open-file limit at start
    /// (`resources::default_max_connections`).
    pub max_connections: Option<u32>,
}

impl Policy {
    /// What the metrics are bound to: routes and their targets, rules, workers, version.
    pub fn metrics_layout(&self) -> MetricsLayout {
        MetricsLayout {
            routes: self
                .routes
                .iter()
                .map(|r| RouteLayout {
                    name: r.name.clone(),
                    slo: r.slo.map_or([None, None], |s| [s.p95, s.p99]),
                })
                .collect(),
            rules: self
                .ratelimit
                .rules
                .iter()
                .map(|r| r.name.clone())
                .collect(),
            workers: self.upstream.workers.len(),
            version: self.version.clone(),
        }
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&src, path)
    }

    /// Parses and validates policy text; `file` is only used in messages.
    pub fn parse(src: &str, file: &Path) -> Result<Policy, PolicyError> {
        let raw: PolicyFile = toml::from_str(src).map_err(|e| syntax_error(src, file, &e))?;
        let v = Validator { src, file };
        let listen = v.listen(&raw)?;
        let upstream = v.upstream(&raw)?;
        let routes = v.routes(&raw.routes)?;
        let ratelimit = v.ratelimit(&raw.ratelimit, &routes)?;
        Ok(Policy {
            source: file.to_path_buf(),
            version: fingerprint(src.as_bytes()),
            listen,
            upstream,
            routes,
            guard: v.guard_mode(raw.guard.mode),
            concurrency: v.concurrency(&raw.concurrency)?,
            shedding: v.shedding(&raw.shedding)?,
            retry: v.retry(&raw.retry)?,
            ratelimit,
            limits: v.limits(&raw.limits)?,
            conn: v.conn_limits(&raw.limits)?,
            access_log: v.access_log(&raw.log)?,
        })
    }
}

/// Checks values and builds internal types; every error is located in `src`.
struct Validator<'a> {
    src: &'a str,
    file: &'a Path,
}

impl Validator<'_> {
    fn invalid(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> PolicyError {
        // Defaulted values carry the empty span 0..0: they cannot be wrong, but if one were,
        // pointing at line 1 would mislead, so no location is given.
        let at = (span != (0..0)).then(|| Location::from_offset(self.src, span.start));
        PolicyError::Invalid {
            file: self.file.to_path_buf(),
            at,
            key: key.into(),
            message: msg.into(),
        }
    }

    fn worker_addr(&self, value: &Spanned<String>, key: &str) -> Result<WorkerAddr, PolicyError> {
        value
            .get_ref()
            .parse()
            .map_err(|e: WorkerAddrError| self.invalid(value.span(), key, e.to_string()))
    }

    fn addr(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr, PolicyError> {
        value.get_ref().parse().map_err(|_| {
            self.invalid(
                value.span(),
                key,
                format!("`{}` is not an ip:port address", value.get_ref()),
            )
        })
    }

    fn positive(&self, value: &Spanned<u64>, key: &str) -> Result<u64, PolicyError> {
        match *value.get_ref() {
            0 => Err(self.invalid(value.span(), key, "must be greater than 0")),
            n => Ok(n),
        }
    }

    fn millis(&self, value: &Spanned<u64>, key: &str) -> Result<Duration, PolicyError> {
        self.positive(value, key).map(Duration::from_millis)
    }

    fn listen(&self, raw: &PolicyFile) -> Result<Listen, PolicyError> {
        let l = &raw.listen;
        let proxy = self.addr(&l.proxy, "listen.proxy")?;
        let admin = self.addr(&l.admin, "listen.admin")?;
        if proxy == admin && proxy.port() != 0 {
            return Err(self.invalid(
                l.admin.span(),
                "listen.admin",
                "must differ from listen.proxy",
            ));
        }
        let threads = self.positive(&l.threads, "listen.threads")?;
        if threads > 64 {
            return Err(self.invalid(l.threads.span(), "listen.threads", "must be at most 64"));
        }
        if *l.bind_retry_ms.get_ref() > 600_000 {
            return Err(self.invalid(
                l.bind_retry_ms.span(),
                "listen.bind_retry_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        let mut trusted = Vec::with_capacity(l.trusted_proxies.len());
        for (i, t) in l.trusted_proxies.iter().enumerate() {
            let net = TrustedProxies::parse_entry(t.get_ref())
                .map_err(|m| self.invalid(t.span(), format!("listen.trusted_proxies[{i}]"), m))?;
            trusted.push(net);
        }
        if *l.proxy_protocol.get_ref() && trusted.is_empty() {
            return Err(self.invalid(
                l.proxy_protocol.span(),
                "listen.proxy_protocol",
                "needs listen.trusted_proxies: the balancers whose PROXY headers are believed",
            ));
        }
        let max_connections = match &l.max_connections {
            None => None,
            Some(v) if (1..=1_000_000).contains(v.get_ref()) => Some(*v.get_ref() as u32),
            Some(v) => {
                return Err(self.invalid(
                    v.span(),
                    "listen.max_connections",
                    "must be between 1 and 1000000 (leave it out to derive it from the open-file limit)",
                ))
            }
        };
        Ok(Listen {
            proxy,
            admin,
            threads: threads as usize,
            drain_timeout: self.millis(&l.drain_timeout_ms, "listen.drain_timeout_ms")?,
            bind_retry: Duration::from_millis(*l.bind_retry_ms.get_ref()),
            trusted_proxies: TrustedProxies::new(trusted),
            proxy_protocol: *l.proxy_protocol.get_ref(),
            max_connections,
        })
    }

    fn upstream(&self, raw: &PolicyFile) -> Result<UpstreamConfig, PolicyError> {
        let u = &raw.upstream;
        if u.workers.get_ref().is_empty() {
            return Err(self.invalid(
                u.workers.span(),
                "upstream.workers",
                "needs at least one worker",
            ));
        }
        if u.workers.get_ref().len() > MAX_WORKERS {
            return Err(self.invalid(
                u.workers.span(),
                "upstream.workers",
                format!("at most {MAX_WORKERS} workers (one sidecar guards one pod's workers)"),
            ));
        }
        let mut workers = Vec::with_capacity(u.workers.get_ref().len());
        for (i, w) in u.workers.get_ref().iter().enumerate() {
            let key = format!("upstream.workers[{i}]");
            let addr = self.worker_addr(w, &key)?;
            if workers.contains(&addr) {
                return Err(self.invalid(w.span(), key, format!("worker {addr} is listed twice")));
            }
            workers.push(addr);
        }
        let (health, max_ejected_percent) = self.health(&u.health)?;
        let lag_header = match &u.lag_header {
            None => "x-loop-lag-ms".to_string(),
            Some(h) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => name.as_str().to_string(),
                Err(_) => {
                    return Err(self.invalid(
                        h.span(),
                        "upstream.lag_header",
                        "is not a valid header name",
                    ))
                }
            },
        };
        Ok(UpstreamConfig {
            lag_header,
            health,
            max_ejected_percent,
            probe: self.probe(&u.probe)?,
            workers,
            connect_timeout: self.millis(&u.connect_timeout_ms, "upstream.connect_timeout_ms")?,
            read_timeout: self.millis(&u.read_timeout_ms, "upstream.read_timeout_ms")?,
            write_timeout: self.millis(&u.write_timeout_ms, "upstream.write_timeout_ms")?,
            idle_timeout: self.millis(&u.idle_timeout_ms, "upstream.idle_timeout_ms")?,
            keepalive_pool_size: self
                .positive(&u.keepalive_pool_size, "upstream.keepalive_pool_size")?
                as usize,
        })
    }
}

/// Turns a toml/serde error into a located [`PolicyError::Syntax`] naming the key.
fn syntax_error(src: &str, file: &Path, e: &toml::de::Error) -> PolicyError {
    let at = e.span().map(|s| Location::from_offset(src, s.start));
    let key = e.span().and_then(|s| key_path_at(src, s.start));
    PolicyError::Syntax {
        file: file.to_path_buf(),
        at,
        key,
        message: e.message().trim().to_string(),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
