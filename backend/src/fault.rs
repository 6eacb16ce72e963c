//! Fault switches that reproduce the incident's blocking handlers, and the
//! connection faults a proxy in front must survive (a trickled answer, a
//! reset, a keep-alive connection closed under it): their spec (CLI text and
//! admin JSON forms) and the pure per-worker decision of which request gets
//! which fault.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a worker does wrong, and how often.
///
/// - `block`: the events handlers sleep the thread (the loop) this long, like
///   a synchronous ORM write or a legacy SDK's blocking HTTP call.
/// - `cpu`: the events handlers busy-spin this long, like heavy JSON
///   normalisation.
/// - `every`: 1 in `every` matching requests gets the fault: the 1st, the
///   `every+1`th, ... (0 is treated as 1, so the default hits every request).
/// - `stall`: the whole loop is blocked once for this long, so the worker
///   answers nothing, `/healthz` included. Set at runtime
///   ([`crate::Backend::set_fault`] or `POST /admin/fault`) it starts right
///   away (just after the admin answer is written); set at start
///   ([`crate::BackendConfig::faults`]) it starts at the worker's first
///   request, whatever its route. It is consumed once it starts.
/// - `status`: `/v1/*` requests (1 in `every`) are answered with this status
///   and not processed (an event answered 503 is not stored).
/// - `query_block`: every metrics query sleeps the loop this long, like an
///   expensive aggregation (so queries, not ingestion, dominate the cost).
/// - `trickle`: the answer to a `/v1/*` request (1 in `every`) is written one
///   byte at a time, this long apart, status line and headers included (a
///   congested or overloaded worker). The loop is not blocked: other
///   connections of the worker are served meanwhile. The handler has already
///   run (an event is stored) before the first byte goes out.
/// - `reset`: a `/v1/*` request (1 in `every`) is handled (an event is
///   stored), then instead of its answer the connection is reset (`SO_LINGER`
///   0, so the client gets a TCP RST), like a worker crashing after acting on
///   the request. The request does not count in `analytics_requests_total`;
///   it counts in `analytics_faults_total{fault="reset"}`.
/// - `close_keepalive`: every connection is closed right after its Nth
///   answer (any route; 1 = after every answer), without a `Connection:
///   close` header, so a client that pooled the connection finds it dead
///   when it reuses it (a worker with a tiny keep-alive limit or timeout).
/// - `close_late`: with `close_keepalive`, the connection is not closed right
///   after the Nth answer but when the next request arrives on it, unread
///   (an RST, since the request is left unread): the pooled connection looks
///   alive to the client until it uses it. This is a keep-alive timeout
///   racing the client's reuse, made to happen every time.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct FaultSpec {
    pub block: Option<Duration>,
    pub cpu: Option<Duration>,
    pub every: u32,
    pub stall: Option<Duration>,
    pub status: Option<u16>,
    pub query_block: Option<Duration>,
    #[serde(default)]
    pub trickle: Option<Duration>,
    #[serde(default)]
    pub reset: bool,
    #[serde(default)]
    pub close_keepalive: Option<u32>,
    #[serde(default)]
    pub close_late: bool,
}

/// Why a fault spec (`block=250ms,every=4`) or `WORKER:SPEC` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultParseError {
    #[error(
        "unknown fault key `{key}` (expected block, cpu, every, stall, status, query_block, \
         trickle, reset, close_keepalive or close_late)"
    )]
    UnknownKey { key: String },
    #[error("fault key `{key}` has no value (write `{key}=...`)")]
    MissingValue { key: String },
    #[error("fault key `{key}` is given twice")]
    Duplicate { key: String },
    #[error("fault key `{key}`: `{value}` is not a duration (write e.g. 250ms, 2s or 500us)")]
    BadDuration { key: String, value: String },
    #[error("fault key `{key}`: `{value}` is not a whole number")]
    BadNumber { key: String, value: String },
    #[error("fault key `{key}` must be at least 1")]
    Zero { key: String },
    #[error("fault key `{key}`: `{value}` is not `true` or `false`")]
    BadBool { key: String, value: String },
    #[error("fault key `close_late` only applies with `close_keepalive=N`")]
    CloseLateAlone,
    #[error("fault key `status`: `{value}` is not an HTTP status (100-599)")]
    BadStatus { value: String },
    #[error("`{value}` does not start with a worker number (write e.g. `3:block=250ms`)")]
    BadWorker { value: String },
}

/// Parses `250ms`, `2s`, `500us` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "us" | "µs" => Some(Duration::from_micros(n)),
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        _ => None,
    }
}

fn valid_status(n: u16) -> bool {
    (100..=599).contains(&n)
}

impl FromStr for FaultSpec {
    type Err = FaultParseError;

    /// `key=value` pairs separated by commas; an empty string or `none`
    /// is "no fault".
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut spec = FaultSpec::default();
        let mut seen: Vec<&str> = Vec::new();
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(spec);
        }
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or(FaultParseError::MissingValue {
                key: pair.to_string(),
            })?;
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(FaultParseError::Duplicate { key: key.into() });
            }
            seen.push(key);
            let duration = || {
                parse_duration(value).ok_or_else(|| FaultParseError::BadDuration {
                    key: key.into(),
                    value: value.into(),
                })
            };
            match key {
                "block" => spec.block = Some(duration()?),
                "cpu" => spec.cpu = Some(duration()?),
                "stall" => spec.stall = Some(duration()?),
                "query_block" => spec.query_block = Some(duration()?),
                "trickle" => spec.trickle = Some(duration()?),
                "every" => {
                    spec.every = value.parse().map_err(|_| FaultParseError::BadNumber {
                        key: key.into(),
                        value: value.into(),
                    })?
                }
                "reset" | "close_late" => {
                    let on = value.parse().map_err(|_| FaultParseError::BadBool {
                        key: key.into(),
                        value: value.into(),
                    })?;
                    if key == "reset" {
                        spec.reset = on;
                    } else {
                        spec.close_late = on;
                    }
                }
                "close_keepalive" => {
                    let n: u32 = value.parse().map_err(|_| FaultParseError::BadNumber {
                        key: key.into(),
                        value: value.into(),
                    })?;
                    if n == 0 {
                        return Err(FaultParseError::Zero { key: key.into() });
                    }
                    spec.close_keepalive = Some(n);
                }
                "status" => {
                    let bad = || FaultParseError::BadStatus {
                        value: value.into(),
                    };
                    let n: u16 = value.parse().map_err(|_| bad())?;
                    if !valid_status(n) {
                        return Err(bad());
                    }
                    spec.status = Some(n);
                }
                _ => return Err(FaultParseError::UnknownKey { key: key.into() }),
            }
        }
        if spec.close_late && spec.close_keepalive.is_none() {
            return Err(FaultParseError::CloseLateAlone);
        }
        Ok(spec)
    }
}

/// Parses the CLI form `WORKER:SPEC`, e.g. `3:block=250ms,every=4`.
pub fn parse_worker_fault(text: &str) -> Result<(usize, FaultSpec), FaultParseError> {
    let bad = || FaultParseError::BadWorker { value: text.into() };
    let (worker, spec) = text.split_once(':').ok_or_else(bad)?;
    let worker: usize = worker.trim().parse().map_err(|_| bad())?;
    if worker == 0 {
        return Err(bad());
    }
    Ok((worker, spec.parse()?))
}

/// The JSON form used by `POST /admin/fault`, in whole milliseconds:
/// `{"block_ms": 250, "every": 4}`, `{"trickle_ms": 5}`, `{"reset": true}`,
/// `{"close_keepalive": 1, "close_late": true}`; `{}` clears the fault.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_block_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trickle_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_keepalive: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close_late: bool,
}

impl FaultBody {
    /// Converts to a spec; `Err` names the offending field.
    pub fn into_spec(self) -> Result<FaultSpec, &'static str> {
        if let Some(status) = self.status {
            if !valid_status(status) {
                return Err("status");
            }
        }
        if self.close_keepalive == Some(0) {
            return Err("close_keepalive");
        }
        if self.close_late && self.close_keepalive.is_none() {
            return Err("close_late");
        }
        Ok(FaultSpec {
            block: self.block_ms.map(Duration::from_millis),
            cpu: self.cpu_ms.map(Duration::from_millis),
            every: self.every.unwrap_or(1),
            stall: self.stall_ms.map(Duration::from_millis),
            status: self.status,
            query_block: self.query_block_ms.map(Duration::from_millis),
            trickle: self.trickle_ms.map(Duration::from_millis),
            reset: self.reset,
            close_keepalive: self.close_keepalive,
            close_late: self.close_late,
        })
    }
}

impl From<&FaultSpec> for FaultBody {
    fn from(spec: &FaultSpec) -> Self {
        let ms = |d: Duration| d.as_millis() as u64;
        FaultBody {
            block_ms: spec.block.map(ms),
            cpu_ms: spec.cpu.map(ms),
            every: (spec.every > 1).then_some(spec.every),
            stall_ms: spec.stall.map(ms),
            status: spec.status,
            query_block_ms: spec.query_block.map(ms),
            trickle_ms: spec.trickle.map(ms),
            reset: spec.reset,
            close_keepalive: spec.close_keepalive,
            close_late: spec.close_late,
        }
    }
}

/// Which faults one request must suffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultActions {
    pub stall: Option<Duration>,
    pub block: Option<Duration>,
    pub cpu: Option<Duration>,
    pub status: Option<u16>,
    /// Write the answer one byte at a time, this long apart.
    pub trickle: Option<Duration>,
    /// Reset the connection instead of answering (after the handler ran).
    pub reset: bool,
    /// Close the connection after its Nth answer (see [`closes_after_answer`]).
    pub close_keepalive: Option<u32>,
    /// ... not right after it, but when the next request arrives, unread.
    pub close_late: bool,
}

/// Whether a connection that has now given `answered` answers (this one
/// included) must be closed under `close_keepalive = n`.
pub fn closes_after_answer(close_keepalive: Option<u32>, answered: u64) -> bool {
    close_keepalive.is_some_and(|n| answered >= u64::from(n))
}

/// What kind of request is asking, for fault matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `POST /v1/events` and `/v1/events/batch`: block, cpu and status.
    Events,
    /// Other `/v1/*` routes: status only.
    V1,
    /// Everything else (health, metrics, admin): no fault but a pending stall.
    Other,
}

/// A worker's current fault and its counters. Pure: the worker calls
/// [`FaultState::on_request`] and performs the returned actions itself.
#[derive(Debug, Clone, Default)]
pub struct FaultState {
    spec: FaultSpec,
    events_seen: u64,
    v1_seen: u64,
    trickle_seen: u64,
    reset_seen: u64,
    /// A stall waiting to start: given at start, it waits for the first request; set at
    /// run time, it is taken by whichever comes first, the worker's next request or the
    /// task [`crate::worker`] spawns to start it at once (a request already arriving when
    /// the stall is set may be polled before that task, and must not slip past it).
    stall_armed: Option<Duration>,
}

impl FaultState {
    /// State for a fault given at start: a stall waits for the first request.
    pub fn at_start(mut spec: FaultSpec) -> Self {
        let stall_armed = spec.stall.take();
        FaultState {
            spec,
            stall_armed,
            ..FaultState::default()
        }
    }

    /// Replaces the fault and resets the counters. A stall in it is armed (see
    /// `stall_armed`); returns whether one was.
    pub fn set(&mut self, mut spec: FaultSpec) -> bool {
        let stall_armed = spec.stall.take();
        *self = FaultState {
            spec,
            stall_armed,
            ..FaultState::default()
        };
        stall_armed.is_some()
    }

    /// Takes the armed stall, if no request has yet.
    pub fn take_stall(&mut self) -> Option<Duration> {
        self.stall_armed.take()
    }

    /// The fault as it stands (a stall already started is not shown).
    pub fn spec(&self) -> FaultSpec {
        let mut spec = self.spec.clone();
        spec.stall = spec.stall.or(self.stall_armed);
        spec
    }

    /// Decides the faults for one request and advances the counters.
    pub fn on_request(&mut self, kind: RequestKind) -> FaultActions {
        let every = u64::from(self.spec.every.max(1));
        let mut actions = FaultActions {
            stall: self.stall_armed.take(),
            ..FaultActions::default()
        };
        if kind == RequestKind::Events && (self.spec.block.is_some() || self.spec.cpu.is_some()) {
            if self.events_seen.is_multiple_of(every) {
                actions.block = self.spec.block;
                actions.cpu = self.spec.cpu;
            }
            self.events_seen += 1;
        }
        if kind == RequestKind::V1 {
            actions.block = self.spec.query_block;
        }
        if kind != RequestKind::Other && self.spec.status.is_some() {
            if self.v1_seen.is_multiple_of(every) {
                actions.status = self.spec.status;
            }
            self.v1_seen += 1;
        }
        // The connection faults count their own requests, so each combines
        // with the others independently.
        if kind != RequestKind::Other && self.spec.trickle.is_some() {
            if self.trickle_seen.is_multiple_of(every) {
                actions.trickle = self.spec.trickle;
            }
            self.trickle_seen += 1;
        }
        if kind != RequestKind::Other && self.spec.reset {
            actions.reset = self.reset_seen.is_multiple_of(every);
            self.reset_seen += 1;
        }
        actions.close_keepalive = self.spec.close_keepalive;
        actions.close_late = self.spec.close_late;
        actions
    }
}

#[cfg(test)]
#[path = "fault_tests.rs"]
mod tests;
