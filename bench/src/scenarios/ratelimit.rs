//! Scenario 4, rate limits: what sloguard's per-tenant limits cost. Four healthy workers,
//! `POST /v1/events` naming its tenant in `x-tenant-id` (50 tenants), and five sloguards
//! (guard enforcing, shipped policy) that differ only in `[ratelimit]`: none; a rule in
//! Redis that never trips, with concurrent requests sharing calls (the default) and with a
//! call per request (`batch_calls = false`); the same rule in-process; and a rule in Redis that one hot
//! tenant, sending half the traffic, is several times over (to show that a denial answered from
//! the deny cache costs no Redis round trip). The harness starts its own `redis-server`,
//! pinned on the system under test's core. Every contender is started once and measured in
//! turn, round after round: open loop at a fifth of the no-limits capacity (measured
//! first; see [`OPEN_SHARE`]), then closed loop; Redis's own counters (`INFO`) are read
//! around each measurement.

use std::time::Duration;

use serde::Serialize;

use super::overhead::undisturbed;
use super::{say, ClosedResult, Env, MemSample, OpenResult, Running};
use crate::configs::RateLimitSpec;
use crate::loadgen::{ClosedLoop, Mix};
use crate::redis::{RedisServer, Usage};
use crate::stats::{self, ClosedSummary, OpenSummary};

/// The no-limits baseline's name (ratios and added latencies are against it).
pub const BASELINE: &str = "no limits";
/// The contender the targets are about.
pub const REDIS_NEVER: &str = "Redis rule, never trips";
/// The same with `batch_calls = false`: each request its own script call.
pub const REDIS_NEVER_UNBATCHED: &str = "Redis rule, never trips, a call per request";
pub const LOCAL_NEVER: &str = "in-process rule, never trips";
pub const REDIS_HOT: &str = "Redis rule, hot tenant over";

/// A rule that never trips: far above anything one tenant can send here.
pub const NEVER_RATE: f64 = 100_000.0;
pub const NEVER_BURST: u64 = 1000;

/// The open-loop rate as a share of the measured closed-loop capacity. Not a half: open
/// loop opens a new connection whenever none is idle, and on the 2-core development
/// machine half the keep-alive capacity tipped even the no-limits contender into a
/// connection storm and 2 s timeouts in some runs (a quarter left the Redis contender's
/// p99 in the hundreds of ms in some); a fifth held in every run.
pub const OPEN_SHARE: f64 = 0.2;

/// The hot rule's rate as a share of the measured capacity: the hot tenant offers half the
/// open-loop rate (a tenth of the capacity), about 7 times this; the other 49 tenants
/// share the other half, under it even in closed loop unless the answers exceed 1.4 times
/// the capacity (refusals are cheap, but each one closes its connection).
pub const HOT_RATE_SHARE: f64 = 0.015;

/// The open-loop rate: a fifth of the capacity, in steps of 100, between 200 and 20000.
pub fn rate_for(capacity_rps: f64) -> f64 {
    ((capacity_rps * OPEN_SHARE / 100.0).floor() * 100.0).clamp(200.0, 20_000.0)
}

/// The hot rule's rate (requests per second per tenant), at least 10.
pub fn hot_rule_rate(capacity_rps: f64) -> f64 {
    (capacity_rps * HOT_RATE_SHARE).round().max(10.0)
}

/// One contender's configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub name: &'static str,
    pub mix: Mix,
    /// `None`: no `[ratelimit]` section.
    pub ratelimit: Option<RateLimitSpec>,
}

fn spec(redis_url: Option<String>, prefix: &str, rate: f64, burst: u64) -> RateLimitSpec {
    RateLimitSpec {
        redis_url,
        key_prefix: prefix.into(),
        timeout_ms: None,
        unbatched: false,
        routes: vec!["ingest".into()],
        rate,
        burst,
    }
}

/// The contenders, given the measured capacity and Redis's URL (`None`: not available).
pub fn setups(capacity_rps: f64, redis_url: Option<&str>) -> Vec<Setup> {
    let url = redis_url.map(String::from);
    let hot = hot_rule_rate(capacity_rps);
    let mut v = vec![Setup {
        name: BASELINE,
        mix: Mix::TenantIngest,
        ratelimit: None,
    }];
    if url.is_some() {
        v.push(Setup {
            name: REDIS_NEVER,
            mix: Mix::TenantIngest,
            ratelimit: Some(spec(url.clone(), "bench-never", NEVER_RATE, NEVER_BURST)),
        });
        v.push(Setup {
            name: REDIS_NEVER_UNBATCHED,
            mix: Mix::TenantIngest,
            ratelimit: Some(RateLimitSpec {
                unbatched: true,
                ..spec(url.clone(), "bench-never-1", NEVER_RATE, NEVER_BURST)
            }),
        });
    }
    v.push(Setup {
        name: LOCAL_NEVER,
        mix: Mix::TenantIngest,
        ratelimit: Some(spec(None, "bench-local", NEVER_RATE, NEVER_BURST)),
    });
    if url.is_some() {
        v.push(Setup {
            name: REDIS_HOT,
            mix: Mix::HotTenant,
            ratelimit: Some(spec(url, "bench-hot", hot, (hot / 10.0).ceil() as u64)),
        });
    }
    v
}

/// What the limiter did during one measurement, from sloguard's `/status` (deltas).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LimiterCounts {
    /// Requests the limiter let through (each cost one Redis call with a Redis rule).
    pub allowed: u64,
    pub limited: u64,
    /// Refusals answered from the deny cache, without asking Redis.
    pub limited_from_cache: u64,
    pub redis_calls: u64,
    pub redis_errors: u64,
    /// Decisions taken by the local fallback (Redis slow or down).
    pub fallback_decisions: u64,
}

impl LimiterCounts {
    /// sloguard's counters now (zeros if `/status` cannot be read).
    pub fn read(r: &Running) -> LimiterCounts {
        let s = r.status().unwrap_or_default();
        let n = |k: &str| s["ratelimit"][k].as_u64().unwrap_or(0);
        LimiterCounts {
            allowed: n("allowed"),
            limited: n("limited"),
            limited_from_cache: n("limited_from_cache"),
            redis_calls: n("redis_calls"),
            redis_errors: n("redis_errors"),
            fallback_decisions: n("fallback_decisions"),
        }
    }

    /// What happened since `before`. A policy reload that rebuilds the limiter (a changed
    /// Redis setting) restarts its counters: a counter below its earlier value counts from
    /// zero.
    pub fn since(&self, before: &LimiterCounts) -> LimiterCounts {
        let d = |now: u64, then: u64| if now < then { now } else { now - then };
        LimiterCounts {
            allowed: d(self.allowed, before.allowed),
            limited: d(self.limited, before.limited),
            limited_from_cache: d(self.limited_from_cache, before.limited_from_cache),
            redis_calls: d(self.redis_calls, before.redis_calls),
            redis_errors: d(self.redis_errors, before.redis_errors),
            fallback_decisions: d(self.fallback_decisions, before.fallback_decisions),
        }
    }
}

/// Redis's and the limiter's work during one measurement.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct RoundExtra {
    /// `None` for contenders without Redis.
    pub redis: Option<Usage>,
    pub limiter: LimiterCounts,
}

/// One contender, open and closed loop, every round.
#[derive(Debug, Clone, Serialize)]
pub struct RateResult {
    pub setup: Setup,
    pub open: OpenResult,
    pub open_extra: Vec<RoundExtra>,
    pub closed: ClosedResult,
    pub closed_extra: Vec<RoundExtra>,
}

impl RateResult {
    /// Median Redis commands/s and script calls/s of the open (`closed == false`) or
    /// closed-loop rounds.
    pub fn redis_median(&self, closed: bool) -> Option<Usage> {
        let extra = if closed {
            &self.closed_extra
        } else {
            &self.open_extra
        };
        let u: Vec<Usage> = extra.iter().filter_map(|e| e.redis).collect();
        if u.is_empty() {
            return None;
        }
        Some(Usage {
            commands_per_s: stats::median(&u.iter().map(|x| x.commands_per_s).collect::<Vec<_>>()),
            script_calls: stats::median(
                &u.iter().map(|x| x.script_calls as f64).collect::<Vec<_>>(),
            )
            .round() as u64,
            script_calls_per_s: stats::median(
                &u.iter().map(|x| x.script_calls_per_s).collect::<Vec<_>>(),
            ),
        })
    }

    /// Redis script calls summed over the rounds (`None` without Redis).
    fn script_calls(&self, closed: bool) -> Option<u64> {
        let extra = if closed {
            &self.closed_extra
        } else {
            &self.open_extra
        };
        let calls: Vec<u64> = extra
            .iter()
            .filter_map(|e| e.redis.map(|u| u.script_calls))
            .collect();
        (!calls.is_empty()).then(|| calls.iter().sum())
    }

    /// Redis script calls per request the limiter decided (Redis's count over sloguard's).
    pub fn calls_per_request(&self, closed: bool) -> Option<f64> {
        let l = self.limiter_total(closed);
        let decided = l.allowed + l.limited;
        Some(self.script_calls(closed)? as f64 / (decided > 0).then_some(decided)? as f64)
    }

    /// Share of 429s that cost no Redis call, from Redis's side: every allowed request
    /// costs one call, so the refusals that did are the calls beyond the allowed ones.
    pub fn limited_without_redis(&self, closed: bool) -> Option<f64> {
        let l = self.limiter_total(closed);
        let calls = self.script_calls(closed)?;
        let refused_via_redis = calls.saturating_sub(l.allowed).min(l.limited);
        (l.limited > 0).then(|| 1.0 - refused_via_redis as f64 / l.limited as f64)
    }

    /// Share of 429s sloguard answered from its deny cache (its own `/status` counters).
    pub fn limited_from_cache(&self, closed: bool) -> Option<f64> {
        let l = self.limiter_total(closed);
        (l.limited > 0).then(|| l.limited_from_cache as f64 / l.limited as f64)
    }

    /// Limiter counters summed over the open (`closed == false`) or closed-loop rounds.
    pub fn limiter_total(&self, closed: bool) -> LimiterCounts {
        let extra = if closed {
            &self.closed_extra
        } else {
            &self.open_extra
        };
        extra
            .iter()
            .fold(LimiterCounts::default(), |a, e| LimiterCounts {
                allowed: a.allowed + e.limiter.allowed,
                limited: a.limited + e.limiter.limited,
                limited_from_cache: a.limited_from_cache + e.limiter.limited_from_cache,
                redis_calls: a.redis_calls + e.limiter.redis_calls,
                redis_errors: a.redis_errors + e.limiter.redis_errors,
                fallback_decisions: a.fallback_decisions + e.limiter.fallback_decisions,
            })
    }
}

/// What the rate-limit scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimits {
    /// Closed-loop throughput of sloguard without limits on the tenant mix.
    pub capacity_rps: f64,
    pub capacity: ClosedSummary,
    pub rate: f64,
    pub hot_rule_rate: f64,
    pub connections: usize,
    pub open_secs: u64,
    pub results: Vec<RateResult>,
    /// Contenders not run, with the reason.
    pub skipped: Vec<String>,
    /// Measurements run again because other processes took CPU meanwhile.
    pub reruns: u32,
    #[serde(skip)]
    pub memory: Vec<MemSample>,
}

/// Runs one measurement with Redis's and sloguard's counters read around it.
fn with_counters<T>(
    redis: Option<&RedisServer>,
    proxy: &Running,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, RoundExtra)> {
    let redis_before = redis.map(RedisServer::counters).transpose()?;
    let lim_before = LimiterCounts::read(proxy);
    let out = measure()?;
    let lim = LimiterCounts::read(proxy).since(&lim_before);
    let redis_use = match (redis, redis_before) {
        (Some(r), Some(b)) => Some(b.until(&r.counters()?)),
        _ => None,
    };
    Ok((
        out,
        RoundExtra {
            redis: redis_use,
            limiter: lim,
        },
    ))
}

pub fn run(env: &Env) -> anyhow::Result<RateLimits> {
    let plan = &env.plan;
    say("rate limits: starting the backend (4 workers, no fault)");
    let backend = env.backend(4, &[])?;
    let mut skipped = Vec::new();
    let redis = match env.redis.as_ref() {
        None => {
            skipped.push(format!(
                "{REDIS_NEVER}, {REDIS_HOT} (redis-server is not installed)"
            ));
            None
        }
        Some(_) => match env.redis_server() {
            Ok(r) => Some(r),
            Err(e) => {
                say(format!("rate limits: redis-server did not start: {e:#}"));
                skipped.push(format!(
                    "{REDIS_NEVER}, {REDIS_HOT} (redis-server did not start: {e})"
                ));
                None
            }
        },
    };

    say("rate limits: measuring sloguard's capacity without limits (closed loop, tenant mix)");
    let baseline = env.sloguard_limited("enforce", &backend.addrs, None)?;
    let capacity = env.closed(
        &[baseline.addr],
        &ClosedLoop {
            connections: plan.closed_connections,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(plan.capacity_secs),
            mix: Mix::TenantIngest,
        },
    )?;
    let capacity_rps = capacity.rps;
    let rate = rate_for(capacity_rps);
    let hot = hot_rule_rate(capacity_rps);
    say(format!(
        "rate limits: capacity {capacity_rps:.0} req/s; offering {rate:.0} req/s open loop; \
         hot rule {hot:.0} req/s per tenant"
    ));

    let mut live: Vec<(Setup, Running)> = Vec::new();
    let mut baseline = Some(baseline);
    for s in setups(
        capacity_rps,
        redis.as_ref().map(RedisServer::url).as_deref(),
    ) {
        let running = match (&s.ratelimit, baseline.take()) {
            (None, Some(b)) => b,
            _ => env.sloguard_limited("enforce", &backend.addrs, s.ratelimit.as_ref())?,
        };
        live.push((s, running));
    }
    let redis_for = |s: &Setup| {
        s.ratelimit
            .as_ref()
            .and_then(|r| r.redis_url.as_ref())
            .and(redis.as_ref())
    };

    let mut reruns = 0;
    let precise = env.gen_cpu.is_some();
    let mut open: Vec<Vec<(OpenSummary, RoundExtra)>> = vec![Vec::new(); live.len()];
    for round in 0..plan.rounds {
        for (i, (s, r)) in live.iter().enumerate() {
            say(format!(
                "rate limits: open loop, round {}, {}",
                round + 1,
                s.name
            ));
            let cfg = plan.open(rate, plan.overhead_secs, s.mix, precise);
            let what = format!("rate limits, open loop, {}", s.name);
            let m = undisturbed(
                &mut reruns,
                &what,
                || with_counters(redis_for(s), r, || env.open(&[r.addr], &cfg)),
                |m| m.0.foreign_cpu,
            )?;
            open[i].push(m);
        }
    }
    let mut closed: Vec<Vec<(ClosedSummary, RoundExtra)>> = vec![Vec::new(); live.len()];
    for round in 0..plan.rounds {
        for (i, (s, r)) in live.iter().enumerate() {
            say(format!(
                "rate limits: closed loop, round {}, {}",
                round + 1,
                s.name
            ));
            let cfg = ClosedLoop {
                connections: plan.closed_connections,
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs(plan.closed_secs),
                mix: s.mix,
            };
            let what = format!("rate limits, closed loop, {}", s.name);
            let m = undisturbed(
                &mut reruns,
                &what,
                || with_counters(redis_for(s), r, || env.closed(&[r.addr], &cfg)),
                |m| m.0.foreign_cpu,
            )?;
            closed[i].push(m);
        }
    }

    let memory = live
        .iter()
        .map(|(s, r)| MemSample::of("rate limits", s.name, r))
        .collect();
    let results = live
        .into_iter()
        .zip(open.into_iter().zip(closed))
        .map(|((s, _), (o, c))| {
            let (o_rounds, open_extra): (Vec<_>, Vec<_>) = o.into_iter().unzip();
            let (c_rounds, closed_extra): (Vec<_>, Vec<_>) = c.into_iter().unzip();
            RateResult {
                open: OpenResult {
                    contender: s.name.into(),
                    median: stats::median_open(&o_rounds),
                    rounds: o_rounds,
                    ejections: Vec::new(),
                },
                closed: ClosedResult {
                    contender: s.name.into(),
                    median: stats::median_closed(&c_rounds),
                    rounds: c_rounds,
                },
                open_extra,
                closed_extra,
                setup: s,
            }
        })
        .collect();
    Ok(RateLimits {
        capacity_rps,
        capacity,
        rate,
        hot_rule_rate: hot,
        connections: plan.closed_connections,
        open_secs: plan.overhead_secs,
        results,
        skipped,
        reruns,
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_a_fifth_of_capacity_and_the_hot_rule_sits_between_the_tenants() {
        assert_eq!(rate_for(12_345.0), 2400.0);
        assert_eq!(rate_for(100.0), 200.0);
        assert_eq!(rate_for(1e7), 20_000.0);
        let cap = 20_000.0;
        let (rate, hot) = (rate_for(cap), hot_rule_rate(cap));
        assert_eq!((rate, hot), (4000.0, 300.0));
        // The hot tenant (half the open-loop rate) is several times over its limit...
        assert!(rate * 0.5 > 6.0 * hot);
        // ...and every other tenant under it, in open loop by far, and in closed loop
        // even at 1.4 times the capacity answered.
        assert!(rate * 0.5 / 49.0 < hot / 5.0);
        assert!(1.4 * cap * 0.5 / 49.0 < hot);
        assert_eq!(hot_rule_rate(10.0), 10.0);
    }

    #[test]
    fn redis_contenders_need_redis() {
        let with = setups(10_000.0, Some("redis://127.0.0.1:1"));
        let names: Vec<_> = with.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                BASELINE,
                REDIS_NEVER,
                REDIS_NEVER_UNBATCHED,
                LOCAL_NEVER,
                REDIS_HOT
            ]
        );
        assert!(with[0].ratelimit.is_none());
        let (batched, unbatched) = (
            with[1].ratelimit.as_ref().unwrap(),
            with[2].ratelimit.as_ref().unwrap(),
        );
        assert!(!batched.unbatched && unbatched.unbatched);
        assert_ne!(batched.key_prefix, unbatched.key_prefix);
        assert!(with[3].ratelimit.as_ref().unwrap().redis_url.is_none());
        let hot = with[4].ratelimit.as_ref().unwrap();
        assert_eq!((hot.rate, hot.burst), (150.0, 15));
        assert_eq!(with[4].mix, Mix::HotTenant);
        // Contenders sharing one Redis keep their keys apart.
        assert_ne!(
            with[1].ratelimit.as_ref().unwrap().key_prefix,
            hot.key_prefix
        );
        let without = setups(10_000.0, None);
        let names: Vec<_> = without.iter().map(|s| s.name).collect();
        assert_eq!(names, [BASELINE, LOCAL_NEVER]);
    }

    #[test]
    fn deny_cache_shares_from_both_sides() {
        let extra = |calls: u64, allowed: u64, limited: u64, cached: u64| RoundExtra {
            redis: Some(Usage {
                script_calls: calls,
                ..Usage::default()
            }),
            limiter: LimiterCounts {
                allowed,
                limited,
                limited_from_cache: cached,
                ..LimiterCounts::default()
            },
        };
        let r = RateResult {
            setup: setups(10_000.0, Some("redis://x"))[4].clone(),
            open: OpenResult {
                contender: REDIS_HOT.into(),
                rounds: vec![],
                median: OpenSummary::default(),
                ejections: vec![],
            },
            // 1000 allowed, 1000 refused of which 900 from the cache: 1100 calls.
            open_extra: vec![extra(600, 500, 400, 350), extra(500, 500, 600, 550)],
            closed: ClosedResult {
                contender: REDIS_HOT.into(),
                rounds: vec![],
                median: ClosedSummary::default(),
            },
            closed_extra: vec![],
        };
        assert!((r.calls_per_request(false).unwrap() - 0.55).abs() < 1e-9);
        assert!((r.limited_without_redis(false).unwrap() - 0.9).abs() < 1e-9);
        assert!((r.limited_from_cache(false).unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(r.calls_per_request(true), None);
        assert_eq!(r.limited_from_cache(true), None);
    }

    #[test]
    fn limiter_deltas() {
        let a = LimiterCounts {
            allowed: 7,
            limited: 10,
            limited_from_cache: 5,
            redis_calls: 100,
            redis_errors: 0,
            fallback_decisions: 1,
        };
        let b = LimiterCounts {
            allowed: 9,
            limited: 30,
            limited_from_cache: 20,
            redis_calls: 150,
            redis_errors: 2,
            fallback_decisions: 1,
        };
        assert_eq!(
            b.since(&a),
            LimiterCounts {
                allowed: 2,
                limited: 20,
                limited_from_cache: 15,
                redis_calls: 50,
                redis_errors: 2,
                fallback_decisions: 0,
            }
        );
        // A rebuilt limiter starts from zero.
        let restarted = LimiterCounts {
            allowed: 3,
            ..LimiterCounts::default()
        };
        assert_eq!(restarted.since(&b).allowed, 3);
    }
}
