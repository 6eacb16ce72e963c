//! The Markdown of scenario 4 (rate limits): open and closed-loop tables against the
//! no-limits baseline, the hot tenant's deny-cache figures, and the targets judged.

use crate::report::{added_us, ms, pct, table};
use crate::scenarios::ratelimit::{
    RateLimits, RateResult, BASELINE, LOCAL_NEVER, NEVER_BURST, NEVER_RATE, REDIS_HOT, REDIS_NEVER,
    REDIS_NEVER_UNBATCHED,
};

/// Issue #3's targets for a Redis rule that never trips, against no limits.
pub const TARGET_THROUGHPUT_LOSS: f64 = 0.10;
pub const TARGET_ADDED_P99_MS: f64 = 1.0;

fn find<'a>(r: &'a RateLimits, name: &str) -> Option<&'a RateResult> {
    r.results.iter().find(|x| x.setup.name == name)
}

/// Answers per second in closed loop (2xx and 429: both are the proxy's answers).
fn answers(x: &RateResult) -> f64 {
    x.closed.median.rps + x.closed.median.limited_rps
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".into(), f)
}

/// Whether the Redis rule met the targets: (throughput ratio, added p99 ms, met both).
pub fn judge(r: &RateLimits) -> Option<(f64, f64, bool, bool)> {
    let (base, redis) = (find(r, BASELINE)?, find(r, REDIS_NEVER)?);
    let ratio = answers(redis) / answers(base).max(1e-9);
    let added = redis.open.median.p99_ms - base.open.median.p99_ms;
    Some((
        ratio,
        added,
        ratio >= 1.0 - TARGET_THROUGHPUT_LOSS,
        added < TARGET_ADDED_P99_MS,
    ))
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

pub fn section(r: &RateLimits) -> String {
    let base = find(r, BASELINE);
    let hot_burst = find(r, REDIS_HOT)
        .and_then(|h| h.setup.ratelimit.as_ref())
        .map_or(0, |s| s.burst);
    let over = r.rate * 0.5 / r.hot_rule_rate.max(1e-9);
    let mut s = format!(
        "Four healthy workers; every contender is sloguard (guard enforcing, shipped policy, one \
         thread) and they differ only in `[ratelimit]`: one rule on the `ingest` route, key \
         `header:x-tenant-id`, {NEVER_RATE:.0}/s per tenant with burst {NEVER_BURST} for the \
         rules that never trip, {:.0}/s with burst {hot_burst} for the hot one; Redis timeout at \
         its default (5 ms). `POST /v1/events` naming one of 50 tenants in `x-tenant-id` (on \
         the hot row `tenant-0` sends every other request, {over:.1} times its limit in open \
         loop). The harness's own `redis-server` listens on a free 127.0.0.1 port, pinned on \
         CPU 0 with the backend and sloguard. Capacity without limits, closed loop: {:.0} \
         requests/s; open loop at {:.0} requests/s, a fifth of it (medians of the rounds). \
         Redis calls are its `EVALSHA`s: requests that ask Redis while a call is under way \
         share the next one, so a call decides one request or several; Redis commands also \
         count the `TIME` (one per call), `GET` and `SET` (per request) the script runs:\n\n",
        r.hot_rule_rate, r.capacity_rps, r.rate
    );
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|x| {
            let m = &x.open.median;
            let (a50, a99) = match base {
                Some(b) if x.setup.name != BASELINE => (
                    added_us(m.p50_ms - b.open.median.p50_ms),
                    added_us(m.p99_ms - b.open.median.p99_ms),
                ),
                _ => ("-".into(), "-".into()),
            };
            vec![
                x.setup.name.to_string(),
                ms(m.p50_ms),
                ms(m.p99_ms),
                ms(m.p999_ms),
                a50,
                a99,
                pct(share(m.limited, m.sent)),
                m.errors.to_string(),
                opt(x.redis_median(false).map(|u| u.script_calls_per_s), |v| {
                    format!("{v:.0}")
                }),
                opt(x.calls_per_request(false), |v| format!("{v:.2}")),
                opt(x.redis_median(false).map(|u| u.commands_per_s), |v| {
                    format!("{v:.0}")
                }),
            ]
        })
        .collect();
    s += &table(
        &[
            "contender",
            "p50 (ms)",
            "p99 (ms)",
            "p99.9 (ms)",
            "added p50",
            "added p99",
            "429",
            "errors",
            "Redis calls/s",
            "Redis calls per request",
            "Redis commands/s",
        ],
        &rows,
    );

    let core = |v: Option<f64>| v.map_or("-".into(), pct);
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|x| {
            let m = &x.closed.median;
            vec![
                x.setup.name.to_string(),
                format!("{:.0}", answers(x)),
                opt(base.map(answers), |b| format!("{:.2}x", answers(x) / b)),
                format!("{:.0}", m.rps),
                format!("{:.0}", m.limited_rps),
                ms(m.p50_ms),
                ms(m.p99_ms),
                core(m.cpu_sut),
                opt(x.redis_median(true).map(|u| u.script_calls_per_s), |v| {
                    format!("{v:.0}")
                }),
                opt(x.redis_median(true).map(|u| u.commands_per_s), |v| {
                    format!("{v:.0}")
                }),
                m.errors.to_string(),
            ]
        })
        .collect();
    s += &format!(
        "\nClosed loop (max throughput), {} keep-alive connections; answers are 2xx and 429 \
         (latencies of the 2xx; a 429 drops the small request body and keeps the connection):\n\n",
        r.connections
    );
    s += &table(
        &[
            "contender",
            "answers/s",
            "vs no limits",
            "2xx/s",
            "429/s",
            "p50 (ms)",
            "p99 (ms)",
            "CPU 0 busy (backend, sloguard, Redis)",
            "Redis calls/s",
            "Redis commands/s",
            "errors",
        ],
        &rows,
    );

    if let Some(h) = find(r, REDIS_HOT) {
        let row =
            |name: &str, f: &dyn Fn(bool) -> String| vec![name.to_string(), f(false), f(true)];
        let share_429 = |closed: bool| {
            if closed {
                pct(h.closed.median.limited_rps / answers(h).max(1e-9))
            } else {
                pct(share(h.open.median.limited, h.open.median.sent))
            }
        };
        let rows = vec![
            row("429 share", &share_429),
            row("Redis calls per request", &|c| {
                opt(h.calls_per_request(c), |v| format!("{v:.2}"))
            }),
            row(
                "429s that cost no Redis call (Redis's count: 1 - (calls - allowed) / 429s)",
                &|c| opt(h.limited_without_redis(c), pct),
            ),
            row(
                "429s answered from the deny cache (sloguard's `/status`)",
                &|c| opt(h.limited_from_cache(c), pct),
            ),
        ];
        s += &format!("\nThe hot tenant (`{REDIS_HOT}`), over every round of each loop:\n\n");
        s += &table(&["", "open loop", "closed loop"], &rows);
    }

    let fallbacks: Vec<String> = r
        .results
        .iter()
        .filter(|x| {
            x.setup
                .ratelimit
                .as_ref()
                .is_some_and(|s| s.redis_url.is_some())
        })
        .filter_map(|x| {
            let n = x.limiter_total(false).fallback_decisions
                + x.limiter_total(true).fallback_decisions;
            (n > 0).then(|| format!("{} {n}", x.setup.name))
        })
        .collect();
    if !fallbacks.is_empty() {
        s += &format!(
            "\nDecisions taken by the in-process fallback because Redis did not answer within \
             its timeout (these requests cost no Redis round trip): {}.\n",
            fallbacks.join(", ")
        );
    }

    if let Some((ratio, added, ok_t, ok_l)) = judge(r) {
        let compare = |name: &str, label: &str| {
            find(r, name).zip(base).map(|(l, b)| {
                format!(
                    "; {label}: {:.2}x and {} at p99",
                    answers(l) / answers(b).max(1e-9),
                    added_us(l.open.median.p99_ms - b.open.median.p99_ms)
                )
            })
        };
        let local = [
            compare(
                REDIS_NEVER_UNBATCHED,
                "the same rule with a Redis call per request",
            ),
            compare(LOCAL_NEVER, "the same rule in-process"),
        ]
        .into_iter()
        .flatten()
        .collect::<String>();
        s += &format!(
            "\n**Targets** (issue #3; a Redis rule that never trips against no limits): max \
             throughput {ratio:.2}x, {:+.1}% (target: less than {:.0}% lower): {}; p99 at {:.0} \
             requests/s {} (target: under {:.0} ms): {}{}.\n",
            (ratio - 1.0) * 100.0,
            TARGET_THROUGHPUT_LOSS * 100.0,
            met(ok_t),
            r.rate,
            added_us(added),
            TARGET_ADDED_P99_MS,
            met(ok_l),
            local
        );
    }
    if !r.skipped.is_empty() {
        s += &format!("\nNot run: {}.\n", r.skipped.join("; "));
    }
    s
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
    use crate::scenarios::ratelimit::{setups, LimiterCounts, RoundExtra};
    use crate::scenarios::{ClosedResult, OpenResult};
    use crate::stats::{ClosedSummary, OpenSummary};

    fn result(name: &str, p99: f64, rps: f64) -> RateResult {
        let setup = setups(10_000.0, Some("redis://x"))
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        let o = OpenSummary {
            p99_ms: p99,
            sent: 1000,
            ..Default::default()
        };
        let c = ClosedSummary {
            rps,
            ..Default::default()
        };
        RateResult {
            setup,
            open: OpenResult {
                contender: name.into(),
                rounds: vec![o.clone()],
                median: o,
                ejections: vec![],
            },
            open_extra: vec![RoundExtra {
                redis: None,
                limiter: LimiterCounts::default(),
            }],
            closed: ClosedResult {
                contender: name.into(),
                rounds: vec![c.clone()],
                median: c,
            },
            closed_extra: vec![],
        }
    }

    fn limits(results: Vec<RateResult>) -> RateLimits {
        RateLimits {
            capacity_rps: 10_000.0,
            capacity: ClosedSummary::default(),
            rate: 5000.0,
            hot_rule_rate: 250.0,
            connections: 32,
            open_secs: 5,
            results,
            skipped: vec![],
            reruns: 0,
            memory: vec![],
        }
    }

    #[test]
    fn targets_are_judged_on_the_redis_rule_against_no_limits() {
        let r = limits(vec![
            result(BASELINE, 0.400, 10_000.0),
            result(REDIS_NEVER, 0.900, 9_300.0),
            result(LOCAL_NEVER, 0.450, 9_900.0),
        ]);
        let (ratio, added, ok_t, ok_l) = judge(&r).unwrap();
        assert!((ratio - 0.93).abs() < 1e-9 && (added - 0.5).abs() < 1e-9);
        assert!(ok_t && ok_l);
        let s = section(&r);
        assert!(s.contains("max throughput 0.93x, -7.0%"), "{s}");
        assert!(
            s.contains("p99 at 5000 requests/s +500 µs (target: under 1 ms): **met**"),
            "{s}"
        );
        assert!(s.contains("in-process: 0.99x and +50 µs at p99"), "{s}");
        assert!(
            s.contains("| Redis rule, never trips | 9300 | 0.93x |"),
            "{s}"
        );

        let slow = limits(vec![
            result(BASELINE, 0.400, 10_000.0),
            result(REDIS_NEVER, 1.500, 8_000.0),
        ]);
        let (_, _, ok_t, ok_l) = judge(&slow).unwrap();
        assert!(!ok_t && !ok_l);
        assert!(section(&slow).matches("**not met**").count() == 2);
        assert!(judge(&limits(vec![result(BASELINE, 0.4, 1.0)])).is_none());
    }
}
