//! `soak`: not part of `all`. Four backend workers, our own `redis-server`, and sloguard
//! with the shipped policy plus a Redis rate-limit rule, under open-loop load at half the
//! capacity (the incident's 80/20 mix, naming 50 tenants) for N minutes, with one fault a
//! minute in turn: a worker blocking its loop, Redis killed and restarted 10 s later, a
//! valid policy change written to the file, a worker killed and restarted 10 s later. The
//! load runs in one-minute chunks (each within the generator's bounds), which gives the
//! per-minute figures: requests, answers and errors by cause, p50/p99, and sloguard's RSS
//! and open file descriptors; at the end, whether RSS and fds stayed flat.
//!
//! Each worker is its own `analytics-backend --workers 1` process (the backend cannot
//! restart a worker of its own), so one can be killed outright and started again on its
//! port. Every process is started from the main thread (the parent-death signal follows the
//! thread that started a process); the load runs on a second thread, on the generator's
//! core like the main one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::env::{http, Backend};
use super::ratelimit::LimiterCounts;
use super::{say, Env, Running};
use crate::configs::{self, PolicyOverrides, RateLimitSpec};
use crate::loadgen::{
    self, ClosedLoop, Mix, OpenLoop, Outcome, ERR_DROPPED, ERR_TIMEOUT, ERR_TRANSPORT,
};
use crate::redis::RedisServer;
use crate::report::{ms, pct, table};

/// Longest soak (`--minutes`).
pub const MAX_MINUTES: u32 = 60;
/// How long Redis and the killed worker stay down.
pub const OUTAGE: Duration = Duration::from_secs(10);
/// RSS and fds count as flat when the last minute's are within this of minute 2's.
pub const FLAT_TOLERANCE: f64 = 0.10;
/// ... or, for descriptors, within this many (a few connections come and go).
pub const FD_SLACK: u64 = 8;
/// The blocked worker (1-based) and the killed one.
pub const BLOCKED_WORKER: usize = 3;
pub const KILLED_WORKER: usize = 4;
/// The rule: far above what any tenant sends here, so it never trips (every request still
/// costs its Redis call).
pub const RULE_RATE: f64 = 100_000.0;

/// One of the faults, injected in turn, one a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// Worker 3 blocks its event loop 250 ms on one event in four, for a third of the
    /// minute (backend fault API, `POST /admin/fault`).
    BlockWorker,
    /// `redis-server` killed (SIGKILL), restarted on its port 10 s later (data lost).
    RedisOutage,
    /// A valid change written to the policy file (sloguard polls it every second).
    PolicyReload,
    /// Worker 4's process killed (SIGKILL), restarted on its port 10 s later.
    WorkerCrash,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::BlockWorker => "worker 3 blocks",
            Fault::RedisOutage => "Redis killed, restarted",
            Fault::PolicyReload => "policy reload",
            Fault::WorkerCrash => "worker 4 killed, restarted",
        }
    }
}

/// The fault of minute `minute` (1-based): the four in turn.
pub fn fault_for(minute: u32) -> Fault {
    const ORDER: [Fault; 4] = [
        Fault::BlockWorker,
        Fault::RedisOutage,
        Fault::PolicyReload,
        Fault::WorkerCrash,
    ];
    ORDER[(minute.saturating_sub(1) % 4) as usize]
}

/// When a fault starts within a minute, and how long the block lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub start: Duration,
    /// The blocking worker's fault is cleared after this.
    pub block_for: Duration,
}

/// A sixth into the minute (10 s of 60); blocks last a third of it.
pub fn timing(minute: Duration) -> Timing {
    Timing {
        start: minute / 6,
        block_for: minute / 3,
    }
}

/// The rule as rewritten by the `n`th reload (1-based): odd ones lower the rate by one
/// and the Redis timeout to 6 ms, even ones put both back; either way the policy changes,
/// and the limiter (and its Redis connection) is rebuilt, since the timeout changed.
pub fn reload_spec(base: &RateLimitSpec, n: u32) -> RateLimitSpec {
    let mut s = base.clone();
    if n % 2 == 1 {
        s.rate = base.rate - 1.0;
        s.timeout_ms = Some(base.timeout_ms.unwrap_or(5) + 1);
    }
    s
}

/// Answers and failures of one minute, by cause.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tally {
    pub requests: u64,
    pub ok: u64,
    pub limited_429: u64,
    pub shed_503: u64,
    pub other_4xx: u64,
    pub other_5xx: u64,
    pub transport: u64,
    pub timeouts: u64,
    pub not_sent: u64,
    /// Every HTTP status seen, and how often.
    pub statuses: BTreeMap<u16, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Counts outcomes by cause, and their latency percentiles (failures included).
pub fn tally(outcomes: &[Outcome]) -> Tally {
    let mut t = Tally {
        requests: outcomes.len() as u64,
        ..Tally::default()
    };
    let mut h = loadgen::histogram();
    for o in outcomes {
        let _ = h.record((o.latency.as_micros() as u64).max(1));
        match o.status {
            ERR_TRANSPORT => t.transport += 1,
            ERR_TIMEOUT => t.timeouts += 1,
            ERR_DROPPED => t.not_sent += 1,
            s => {
                *t.statuses.entry(s).or_default() += 1;
                match s {
                    200..=299 => t.ok += 1,
                    429 => t.limited_429 += 1,
                    503 => t.shed_503 += 1,
                    500..=599 => t.other_5xx += 1,
                    _ => t.other_4xx += 1,
                }
            }
        }
    }
    if !h.is_empty() {
        let q = |x| h.value_at_quantile(x) as f64 / 1000.0;
        t.p50_ms = q(0.5);
        t.p99_ms = q(0.99);
        t.max_ms = h.max() as f64 / 1000.0;
    }
    t
}

/// One minute of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakMinute {
    pub minute: u32,
    pub fault: Fault,
    /// What was done when, seconds into the minute.
    pub events: Vec<String>,
    #[serde(flatten)]
    pub tally: Tally,
    /// sloguard's VmRSS and open fds at the end of the minute.
    pub rss_kib: Option<u64>,
    pub fds: Option<u64>,
    /// Ejections so far (from `/status`).
    pub ejections: Option<u64>,
    /// The rate limiter during the minute (from `/status`).
    pub limiter: LimiterCounts,
    /// sloguard's own refusals during the minute, `route/reason` (from `/status`).
    pub refusals: BTreeMap<String, u64>,
}

/// sloguard's refusal counters from its `/status` (`rejections`), as `route/reason`.
pub fn refusals(status: &serde_json::Value) -> BTreeMap<String, u64> {
    status["rejections"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    let name = format!("{}/{}", r["route"].as_str()?, r["reason"].as_str()?);
                    Some((name, r["count"].as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The refusals between two readings (only the non-zero ones).
pub fn refusals_since(
    now: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, &n)| {
            (
                k.clone(),
                n.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Whether RSS and fds stayed flat: the last minute against minute 2 (minute 1 warms up).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flatness {
    /// `None`: fewer than 3 minutes, not judged.
    pub rss_flat: Option<bool>,
    pub fds_flat: Option<bool>,
    pub rss_ref_kib: Option<u64>,
    pub rss_last_kib: Option<u64>,
    pub fds_ref: Option<u64>,
    pub fds_last: Option<u64>,
}

/// Judges flatness from each minute's (RSS KiB, fds): the last within +10% of minute 2's
/// (fds: or within 8); fewer than 3 minutes, or a missing reading, is not judged.
pub fn judge_flat(samples: &[(Option<u64>, Option<u64>)]) -> Flatness {
    let judged = samples.len() >= 3;
    let reference = samples.get(1).copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    let rss_flat = match (judged, reference.0, last.0) {
        (true, Some(r), Some(l)) => Some(l as f64 <= r as f64 * (1.0 + FLAT_TOLERANCE)),
        _ => None,
    };
    let fds_flat = match (judged, reference.1, last.1) {
        (true, Some(r), Some(l)) => {
            let slack = ((r as f64 * FLAT_TOLERANCE).ceil() as u64).max(FD_SLACK);
            Some(l <= r + slack)
        }
        _ => None,
    };
    Flatness {
        rss_flat,
        fds_flat,
        rss_ref_kib: reference.0,
        rss_last_kib: last.0,
        fds_ref: reference.1,
        fds_last: last.1,
    }
}

/// The whole soak, as written to `bench/soak.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub generated_at: String,
    pub command: String,
    pub minutes: u32,
    pub minute_secs: u64,
    /// Closed-loop throughput through sloguard (with its rule) on the same mix, measured
    /// first.
    pub capacity_rps: f64,
    /// The offered load as a percentage of that capacity (`--load-percent`).
    pub load_percent: u32,
    pub rate: f64,
    pub rule: RateLimitSpec,
    pub pinning: String,
    pub busy_before: f64,
    pub sloguard_idle_rss_kib: Option<u64>,
    pub rows: Vec<SoakMinute>,
    pub flat: Flatness,
}

/// The open-loop rate: `percent` of the capacity, in steps of 100, between 200 and 20000.
pub fn rate_for(capacity_rps: f64, percent: u32) -> f64 {
    ((capacity_rps * f64::from(percent) / 100.0 / 100.0).floor() * 100.0).clamp(200.0, 20_000.0)
}

/// What the soak runs on, and the state its faults change.
struct Rig<'a> {
    env: &'a Env,
    workers: Vec<Backend>,
    addrs: Vec<SocketAddr>,
    redis: RedisServer,
    sloguard: Running,
    rule: RateLimitSpec,
    reloads: u32,
}

/// What the caller knows about the run, for the record.
pub struct SoakContext<'a> {
    pub generated_at: String,
    pub command: String,
    pub pinning: String,
    pub busy_before: f64,
    pub root: &'a Path,
}

/// How long and how hard.
#[derive(Debug, Clone, Copy)]
pub struct SoakPlan {
    pub minutes: u32,
    /// Seconds per "minute" (60; less to try the schedule quickly).
    pub minute_secs: u64,
    /// Offered load, percent of the capacity measured first.
    pub load_percent: u32,
}

pub fn run(env: &Env, plan: SoakPlan, ctx: &SoakContext) -> anyhow::Result<Soak> {
    let SoakPlan {
        minutes,
        minute_secs,
        load_percent,
    } = plan;
    if !(1..=MAX_MINUTES).contains(&minutes) {
        bail!("--minutes must be between 1 and {MAX_MINUTES}");
    }
    if !(20..=60).contains(&minute_secs) {
        bail!("--minute-secs must be between 20 and 60");
    }
    if env.redis.is_none() {
        bail!("the soak needs redis-server (apt-get install redis-server, or run without --no-install as root)");
    }
    let minute = Duration::from_secs(minute_secs);
    say("soak: starting 4 backend workers (one process each) and redis-server");
    let workers = (0..4)
        .map(|_| env.backend(1, &[]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = workers.iter().map(|b| b.addrs[0]).collect();
    let redis = env.redis_server()?;
    let rule = RateLimitSpec {
        unbatched: false,
        redis_url: Some(redis.url()),
        key_prefix: "soak".into(),
        timeout_ms: Some(5),
        routes: vec!["ingest".into(), "query".into()],
        rate: RULE_RATE,
        burst: 1000,
    };
    let sloguard = env.sloguard_limited("enforce", &addrs, Some(&rule))?;
    let idle = sloguard.idle_rss_kib;
    let mut rig = Rig {
        env,
        workers,
        addrs,
        redis,
        sloguard,
        rule,
        reloads: 0,
    };

    say("soak: measuring the capacity through sloguard (closed loop, 80/20 tenant mix)");
    let cap = env.closed(
        &[rig.sloguard.addr],
        &ClosedLoop {
            connections: env.plan.closed_connections,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(env.plan.capacity_secs),
            mix: Mix::TenantIncident,
        },
    )?;
    let rate = rate_for(cap.rps, load_percent);
    say(format!(
        "soak: capacity {:.0} req/s; {minutes} minute(s) of {minute_secs} s at {rate:.0} req/s",
        cap.rps
    ));
    let cfg = OpenLoop {
        rate,
        warmup: Duration::ZERO,
        duration: minute,
        mix: Mix::TenantIncident,
        timeout: env.plan.timeout,
        max_in_flight: 6000,
        precise: env.gen_cpu.is_some(),
    };

    let mut rows = Vec::new();
    for m in 1..=minutes {
        let fault = fault_for(m);
        say(format!(
            "soak: minute {m}/{minutes}, fault: {}",
            fault.label()
        ));
        let before = LimiterCounts::read(&rig.sloguard);
        let refused_before = rig
            .sloguard
            .status()
            .map(|s| refusals(&s))
            .unwrap_or_default();
        let target = [rig.sloguard.addr];
        let rt = &env.rt;
        let (run, events) = std::thread::scope(|s| {
            let load = s.spawn(|| rt.block_on(loadgen::open_loop(&target, &cfg)));
            let events = inject(&mut rig, fault, Instant::now(), timing(minute));
            let run = load.join();
            (run, events)
        });
        let run = match run {
            Ok(r) => r?,
            Err(_) => bail!("the load thread panicked"),
        };
        rig.sloguard
            .proc
            .check_alive()
            .context("sloguard died during the soak")?;
        let status = rig.sloguard.status();
        let row = SoakMinute {
            minute: m,
            fault,
            events,
            tally: tally(&run.outcomes),
            rss_kib: rig.sloguard.proc.rss_kib(),
            fds: rig.sloguard.proc.open_fds(),
            ejections: status.as_ref().and_then(|s| {
                s["workers"]
                    .as_array()?
                    .iter()
                    .map(|w| w["ejections"].as_u64())
                    .sum()
            }),
            limiter: LimiterCounts::read(&rig.sloguard).since(&before),
            refusals: refusals_since(
                &status.as_ref().map(refusals).unwrap_or_default(),
                &refused_before,
            ),
        };
        say(format!(
            "soak: minute {m}: {} requests, {} 2xx, {} 503, {} other errors, p99 {} ms, RSS {} MiB, {} fds",
            row.tally.requests,
            row.tally.ok,
            row.tally.shed_503,
            row.tally.requests - row.tally.ok - row.tally.shed_503,
            ms(row.tally.p99_ms),
            mib(row.rss_kib),
            row.fds.map_or("-".into(), |f| f.to_string()),
        ));
        for e in &row.events {
            say(format!("soak:   {e}"));
        }
        rows.push(row);
    }
    let samples: Vec<_> = rows.iter().map(|r| (r.rss_kib, r.fds)).collect();
    let soak = Soak {
        generated_at: ctx.generated_at.clone(),
        command: ctx.command.clone(),
        minutes,
        minute_secs,
        capacity_rps: cap.rps,
        load_percent,
        rate,
        rule: rig.rule.clone(),
        pinning: ctx.pinning.clone(),
        busy_before: ctx.busy_before,
        sloguard_idle_rss_kib: idle,
        flat: judge_flat(&samples),
        rows,
    };
    let json = ctx.root.join("bench/soak.json");
    std::fs::write(&json, serde_json::to_string_pretty(&soak)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    say(format!("wrote {}", json.display()));
    Ok(soak)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Injects `fault` into the minute that started at `t0`; returns what happened, when.
fn inject(rig: &mut Rig, fault: Fault, t0: Instant, t: Timing) -> Vec<String> {
    let at = || format!("{:.1} s", t0.elapsed().as_secs_f64());
    let mut ev = Vec::new();
    sleep_until(t0 + t.start);
    match fault {
        Fault::BlockWorker => {
            let w = rig.addrs[BLOCKED_WORKER - 1];
            let body = r#"{"block_ms":250,"every":4}"#;
            let r = http(w, "POST", "/admin/fault", body).map(|(s, _)| s);
            ev.push(format!(
                "{}: worker {BLOCKED_WORKER} blocks its loop 250 ms on 1 event in 4 \
                 (POST /admin/fault: {})",
                at(),
                answer(&r)
            ));
            sleep_until(t0 + t.start + t.block_for);
            let r = http(w, "POST", "/admin/fault", "{}").map(|(s, _)| s);
            ev.push(format!("{}: fault cleared ({})", at(), answer(&r)));
        }
        Fault::RedisOutage => {
            rig.redis.kill();
            ev.push(format!("{}: redis-server killed (SIGKILL)", at()));
            sleep_until(t0 + t.start + OUTAGE);
            match rig.redis.restart() {
                Ok(()) => ev.push(format!(
                    "{}: redis-server restarted on its port (empty), answering PING",
                    at()
                )),
                Err(e) => ev.push(format!("{}: redis-server did not restart: {e:#}", at())),
            }
        }
        Fault::PolicyReload => ev.extend(reload(rig, t0)),
        Fault::WorkerCrash => {
            let i = KILLED_WORKER - 1;
            let port = rig.addrs[i].port();
            rig.workers[i].kill_now();
            ev.push(format!(
                "{}: worker {KILLED_WORKER}'s process killed (SIGKILL)",
                at()
            ));
            sleep_until(t0 + t.start + OUTAGE);
            match rig.env.backend_on(1, &[], port) {
                Ok(b) => {
                    rig.workers[i] = b;
                    ev.push(format!(
                        "{}: worker {KILLED_WORKER} restarted on its port",
                        at()
                    ));
                }
                Err(e) => ev.push(format!(
                    "{}: worker {KILLED_WORKER} could not restart on port {port}: {e:#}",
                    at()
                )),
            }
        }
    }
    ev
}

fn answer(r: &anyhow::Result<u16>) -> String {
    match r {
        Ok(s) => format!("HTTP {s}"),
        Err(e) => format!("failed: {e:#}"),
    }
}

/// Writes a changed policy (atomically, as editors and ConfigMaps do) and waits for
/// sloguard's `/status` to show the new version.
fn reload(rig: &mut Rig, t0: Instant) -> Vec<String> {
    let at = || format!("{:.1} s", t0.elapsed().as_secs_f64());
    let version = |r: &Running| {
        r.status()
            .and_then(|s| s["policy"]["version"].as_str().map(String::from))
    };
    let Some(file) = rig.sloguard.policy_file.clone() else {
        return vec!["no policy file to rewrite".into()];
    };
    let Some(admin) = rig.sloguard.admin else {
        return vec!["no admin listener".into()];
    };
    let before = version(&rig.sloguard);
    rig.reloads += 1;
    let spec = reload_spec(&rig.rule, rig.reloads);
    let text = configs::sloguard_policy(
        &rig.env.policy_template,
        &PolicyOverrides {
            proxy: rig.sloguard.addr,
            admin,
            workers: &super::env::names(&rig.addrs),
            mode: "enforce",
            threads: 1,
            fixed_limit: None,
            ratelimit: Some(&spec),
        },
    );
    let tmp = file.with_extension("toml.new");
    let written = text
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(std::fs::write(&tmp, t)?))
        .and_then(|()| Ok(std::fs::rename(&tmp, &file)?));
    let what = format!(
        "rule rate {:.0}/s, Redis timeout {} ms",
        spec.rate,
        spec.timeout_ms.unwrap_or(5)
    );
    if let Err(e) = written {
        return vec![format!("{}: could not write the policy: {e:#}", at())];
    }
    let mut ev = vec![format!("{}: policy file rewritten ({what})", at())];
    let written_at = Instant::now();
    while written_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        let now = version(&rig.sloguard);
        if now.is_some() && now != before {
            ev.push(format!(
                "{}: sloguard reloaded it after {:.1} s (version {})",
                at(),
                written_at.elapsed().as_secs_f64(),
                now.unwrap_or_default()
            ));
            return ev;
        }
    }
    ev.push(format!(
        "{}: sloguard had not reloaded it after 5 s (version still {})",
        at(),
        before.unwrap_or_default()
    ));
    ev
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// The soak as Markdown: the per-minute table, each minute's events, the flatness verdict.
pub fn section(s: &Soak) -> String {
    let t = timing(Duration::from_secs(s.minute_secs));
    let mut out = format!(
        "Generated {} by `{}`. {} minute(s) of {} s, open loop at {:.0} requests/s ({}% of the \
         capacity measured first through sloguard, closed loop: {:.0} requests/s): 80% `POST \
         /v1/events`, 20% `GET /v1/metrics`, 50 tenants named in `x-tenant-id`. sloguard runs \
         the shipped policy plus one Redis rule (`header:x-tenant-id` on `ingest` and `query`, \
         {:.0}/s per tenant: never trips, every request asks Redis); four backend workers, \
         each its own `analytics-backend --workers 1` process; the harness's own \
         `redis-server`. Pinning: {}. Faults, one a minute in turn, {} s into the minute: \
         worker 3 blocks its loop 250 ms on 1 event in 4 for {} s; redis-server killed, \
         restarted {} s later; a valid policy change written to the file; worker 4's process \
         killed, restarted {} s later. Latency from the intended send time, failures \
         included; the generator gives up after 2 s (a timeout).\n\n",
        s.generated_at,
        s.command,
        s.minutes,
        s.minute_secs,
        s.rate,
        s.load_percent,
        s.capacity_rps,
        s.rule.rate,
        s.pinning,
        t.start.as_secs(),
        t.block_for.as_secs(),
        OUTAGE.as_secs(),
        OUTAGE.as_secs(),
    );
    let rows: Vec<Vec<String>> = s
        .rows
        .iter()
        .map(|r| {
            let t = &r.tally;
            vec![
                r.minute.to_string(),
                r.fault.label().to_string(),
                t.requests.to_string(),
                format!("{} ({})", t.ok, pct(share(t.ok, t.requests))),
                t.limited_429.to_string(),
                t.shed_503.to_string(),
                t.other_4xx.to_string(),
                t.other_5xx.to_string(),
                t.transport.to_string(),
                (t.timeouts + t.not_sent).to_string(),
                ms(t.p50_ms),
                ms(t.p99_ms),
                mib(r.rss_kib),
                r.fds.map_or("-".into(), |f| f.to_string()),
            ]
        })
        .collect();
    out += &table(
        &[
            "minute",
            "fault",
            "requests",
            "2xx",
            "429",
            "503",
            "other 4xx",
            "other 5xx",
            "transport errors",
            "timeouts",
            "p50 (ms)",
            "p99 (ms)",
            "sloguard RSS (MiB)",
            "open fds",
        ],
        &rows,
    );
    out += "\nWhat happened in each minute (seconds into the minute):\n\n";
    for r in &s.rows {
        let fallback = if r.limiter.fallback_decisions > 0 {
            format!(
                "; {} rate-limit decisions by the in-process fallback, {} Redis errors",
                r.limiter.fallback_decisions, r.limiter.redis_errors
            )
        } else {
            String::new()
        };
        let refused = if r.refusals.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = r.refusals.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("; sloguard refused (route/reason): {}", list.join(", "))
        };
        out += &format!(
            "- minute {}: {}; ejections so far {}{fallback}{refused}.\n",
            r.minute,
            r.events.join("; "),
            r.ejections.map_or("-".into(), |e| e.to_string())
        );
    }
    let f = &s.flat;
    let backlog: Vec<String> = [s.rows.get(1), s.rows.last()]
        .into_iter()
        .flatten()
        .filter(|r| r.tally.timeouts + r.tally.not_sent > 0)
        .map(|r| r.minute.to_string())
        .collect();
    out += &match (f.rss_flat, f.fds_flat) {
        (Some(rss), Some(fds)) => {
            format!(
                "\n**Flat?** sloguard's RSS {} MiB in minute 2, {} MiB in minute {}: {}; open fds \
             {} then {}: {} (flat: the last minute within +{:.0}% of minute 2, fds also within \
             {FD_SLACK}).\n",
                mib(f.rss_ref_kib),
                mib(f.rss_last_kib),
                s.minutes,
                if rss { "**flat**" } else { "**grew**" },
                f.fds_ref.unwrap_or(0),
                f.fds_last.unwrap_or(0),
                if fds { "**flat**" } else { "**grew**" },
                FLAT_TOLERANCE * 100.0
            ) + &if backlog.is_empty() {
                String::new()
            } else {
                format!(
                "Minute(s) {} had requests that waited out the generator's 2 s: RSS and fds then \
                 include that backlog (connections, requests in flight), so they say little \
                 about leaks.\n",
                backlog.join(" and ")
            )
            }
        }
        _ => "\n**Flat?** Not judged: it takes at least 3 minutes (minute 2 against the last).\n"
            .into(),
    };
    out
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::Kind;

    #[test]
    fn faults_come_in_turn_one_a_minute() {
        let seq: Vec<Fault> = (1..=9).map(fault_for).collect();
        assert_eq!(
            seq,
            [
                Fault::BlockWorker,
                Fault::RedisOutage,
                Fault::PolicyReload,
                Fault::WorkerCrash,
                Fault::BlockWorker,
                Fault::RedisOutage,
                Fault::PolicyReload,
                Fault::WorkerCrash,
                Fault::BlockWorker,
            ]
        );
        // Every outage ends (and leaves time to recover) within the shortest minute.
        for secs in [20, 60] {
            let m = Duration::from_secs(secs);
            let t = timing(m);
            assert!(t.start + OUTAGE + Duration::from_secs(5) <= m, "{secs}");
            assert!(t.start + t.block_for < m);
        }
        assert_eq!(
            timing(Duration::from_secs(60)).start,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn reloads_change_the_policy_and_put_it_back() {
        let base = RateLimitSpec {
            unbatched: false,
            redis_url: Some("redis://127.0.0.1:1".into()),
            key_prefix: "soak".into(),
            timeout_ms: Some(5),
            routes: vec!["ingest".into()],
            rate: 1000.0,
            burst: 10,
        };
        let first = reload_spec(&base, 1);
        assert_ne!(first, base);
        assert_eq!((first.rate, first.timeout_ms), (999.0, Some(6)));
        assert_eq!(reload_spec(&base, 2), base);
        assert_eq!(reload_spec(&base, 3), first);
    }

    fn o(status: u16, ms: u64) -> Outcome {
        Outcome {
            kind: Kind::Ingest,
            status,
            latency: Duration::from_millis(ms),
            reason: None,
        }
    }

    #[test]
    fn tallies_by_cause() {
        let mut v: Vec<Outcome> = (0..90).map(|_| o(202, 1)).collect();
        v.extend([
            o(429, 1),
            o(503, 1),
            o(503, 1),
            o(400, 1),
            o(502, 3),
            o(504, 80),
            o(ERR_TRANSPORT, 1),
            o(ERR_TIMEOUT, 2000),
            o(ERR_DROPPED, 2000),
            o(200, 1),
        ]);
        let t = tally(&v);
        assert_eq!(t.requests, 100);
        assert_eq!(
            (t.ok, t.limited_429, t.shed_503, t.other_4xx, t.other_5xx),
            (91, 1, 2, 1, 2)
        );
        assert_eq!((t.transport, t.timeouts, t.not_sent), (1, 1, 1));
        assert_eq!(t.statuses[&503], 2);
        assert_eq!(t.statuses[&202], 90);
        assert!(!t.statuses.contains_key(&ERR_TIMEOUT));
        assert!((0.99..=1.01).contains(&t.p50_ms), "{}", t.p50_ms);
        // The two requests given up at 2 s are the top 2%.
        assert!((1999.0..=2002.0).contains(&t.p99_ms), "{}", t.p99_ms);
        assert!((1999.0..=2002.0).contains(&t.max_ms), "{}", t.max_ms);
        assert_eq!(tally(&[]), Tally::default());
    }

    #[test]
    fn refusals_come_from_the_status_page_as_deltas() {
        let status = serde_json::json!({"rejections": [
            {"route": "ingest", "reason": "shed", "count": 12},
            {"route": "query", "reason": "rate_limited", "count": 3},
            {"route": "query", "bad": true}
        ]});
        let now = refusals(&status);
        assert_eq!(now.len(), 2);
        assert_eq!(now["ingest/shed"], 12);
        let before = BTreeMap::from([("ingest/shed".to_string(), 10)]);
        let d = refusals_since(&now, &before);
        assert_eq!(d["ingest/shed"], 2);
        assert_eq!(d["query/rate_limited"], 3);
        assert!(refusals_since(&now, &now).is_empty());
        assert!(refusals(&serde_json::json!({})).is_empty());
        assert_eq!(rate_for(11_318.0, 50), 5600.0);
        assert_eq!(rate_for(11_318.0, 30), 3300.0);
        assert_eq!(rate_for(100.0, 50), 200.0);
    }

    #[test]
    fn flatness_is_the_last_minute_against_minute_two() {
        let mib = |m: u64| Some(m * 1024);
        let flat = judge_flat(&[
            (mib(10), Some(20)),
            (mib(20), Some(30)),
            (mib(25), Some(40)),
            (mib(21), Some(38)),
        ]);
        assert_eq!((flat.rss_flat, flat.fds_flat), (Some(true), Some(true)));
        assert_eq!((flat.rss_ref_kib, flat.fds_last), (mib(20), Some(38)));
        let grew = judge_flat(&[
            (mib(10), Some(20)),
            (mib(20), Some(30)),
            (mib(23), Some(39)),
        ]);
        assert_eq!((grew.rss_flat, grew.fds_flat), (Some(false), Some(false)));
        // Shrinking is flat; 10% of many fds is the slack when it is more than 8.
        let big = judge_flat(&[
            (mib(30), Some(200)),
            (mib(30), Some(200)),
            (mib(20), Some(220)),
        ]);
        assert_eq!((big.rss_flat, big.fds_flat), (Some(true), Some(true)));
        let short = judge_flat(&[(mib(1), Some(1)), (mib(9), Some(90))]);
        assert_eq!((short.rss_flat, short.fds_flat), (None, None));
        let missing = judge_flat(&[(mib(1), None), (mib(1), None), (None, None)]);
        assert_eq!((missing.rss_flat, missing.fds_flat), (None, None));
    }

    #[test]
    fn section_shows_every_minute_and_the_verdict() {
        let row = |minute: u32, rss: u64| SoakMinute {
            minute,
            fault: fault_for(minute),
            events: vec![format!("{minute}0.0 s: something")],
            tally: tally(&[o(202, 1), o(503, 2)]),
            rss_kib: Some(rss),
            fds: Some(30),
            ejections: Some(1),
            limiter: LimiterCounts::default(),
            refusals: BTreeMap::from([("ingest/shed".to_string(), 3)]),
        };
        let rows = vec![row(1, 10240), row(2, 20480), row(3, 21504)];
        let s = Soak {
            generated_at: "now".into(),
            command: "soak".into(),
            minutes: 3,
            minute_secs: 60,
            capacity_rps: 10_000.0,
            load_percent: 50,
            rate: 5000.0,
            rule: reload_spec(
                &RateLimitSpec {
                    unbatched: false,
                    redis_url: None,
                    key_prefix: "soak".into(),
                    timeout_ms: None,
                    routes: vec![],
                    rate: RULE_RATE,
                    burst: 1,
                },
                2,
            ),
            pinning: "none".into(),
            busy_before: 0.0,
            sloguard_idle_rss_kib: None,
            flat: judge_flat(&rows.iter().map(|r| (r.rss_kib, r.fds)).collect::<Vec<_>>()),
            rows,
        };
        let md = section(&s);
        assert!(
            md.contains("| 2 | Redis killed, restarted | 2 | 1 (50.0%) | 0 | 1 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "- minute 3: 30.0 s: something; ejections so far 1; sloguard refused \
                 (route/reason): ingest/shed 3."
            ),
            "{md}"
        );
        assert!(md.contains("(50% of the capacity"), "{md}");
        assert!(!md.contains("backlog"), "{md}");
        let mut late = s.clone();
        late.rows[2].tally.timeouts = 5;
        assert!(section(&late).contains("Minute(s) 3 had requests that waited out"));
        assert!(
            md.contains("20.0 MiB in minute 2, 21.0 MiB in minute 3: **flat**"),
            "{md}"
        );
    }
}
