//! Summaries of runs: percentiles (hdrhistogram), errors, shedding, time over SLO and
//! goodput from open-loop outcomes; medians across rounds. Pure, unit-tested.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::loadgen::{self, ClosedRun, Outcome, ERR_TIMEOUT};

/// One open-loop run, summarised. Latency percentiles are over every request, as the
/// client saw it: errors and sheds included, a timeout counted at the timeout (a lower
/// bound).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OpenSummary {
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 503 answers (shed).
    pub shed: u64,
    /// 429 answers (rate limited).
    pub limited: u64,
    /// Everything else: other statuses, transport errors, timeouts, requests not sent.
    pub errors: u64,
    pub timeouts: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Share of requests of routes with an SLO whose latency was over it, whatever the
    /// answer.
    pub over_slo: f64,
    /// 2xx answers within their SLO (any 2xx on routes without one), per second.
    pub goodput_rps: f64,
    pub shed_share: f64,
    pub shed_p50_ms: f64,
    pub shed_p99_ms: f64,
    pub error_share: f64,
    /// The generator's own send lag, p99 (already inside the latencies).
    pub send_lag_p99_ms: f64,
    /// CPU other processes used meanwhile, in cores (see `foreign`).
    pub foreign_cpu: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        ms(h.value_at_quantile(q))
    }
}

pub fn summarize_open(
    outcomes: &[Outcome],
    duration: Duration,
    send_lag: &Histogram<u64>,
) -> OpenSummary {
    let mut all = loadgen::histogram();
    let mut shed = loadgen::histogram();
    let (mut ok, mut limited, mut errors, mut timeouts) = (0, 0, 0, 0);
    let (mut with_slo, mut over, mut good) = (0, 0, 0);
    for o in outcomes {
        let us = (o.latency.as_micros() as u64).max(1);
        let _ = all.record(us);
        let success = (200..300).contains(&o.status);
        match o.status {
            200..=299 => ok += 1,
            503 => {
                let _ = shed.record(us);
            }
            429 => limited += 1,
            s => {
                errors += 1;
                timeouts += u64::from(s == ERR_TIMEOUT);
            }
        }
        match o.kind.slo() {
            Some(slo) => {
                with_slo += 1;
                let late = o.latency > slo;
                over += u64::from(late);
                good += u64::from(success && !late);
            }
            None => good += u64::from(success),
        }
    }
    let sent = outcomes.len() as u64;
    OpenSummary {
        sent,
        ok,
        shed: shed.len(),
        limited,
        errors,
        timeouts,
        p50_ms: pct(&all, 0.5),
        p95_ms: pct(&all, 0.95),
        p99_ms: pct(&all, 0.99),
        p999_ms: pct(&all, 0.999),
        max_ms: if all.is_empty() { 0.0 } else { ms(all.max()) },
        over_slo: share(over, with_slo),
        goodput_rps: good as f64 / duration.as_secs_f64().max(1e-9),
        shed_share: share(shed.len(), sent),
        shed_p50_ms: pct(&shed, 0.5),
        shed_p99_ms: pct(&shed, 0.99),
        error_share: share(errors, sent),
        send_lag_p99_ms: pct(send_lag, 0.99),
        foreign_cpu: 0.0,
    }
}

/// One closed-loop run, summarised.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClosedSummary {
    /// Answers (2xx) in the measured stretch.
    pub requests: u64,
    pub rps: f64,
    /// 429 answers (rate limited), and per second; not in `requests`, not errors.
    pub limited: u64,
    pub limited_rps: f64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Busy share of the system-under-test's CPU and of the generator's CPU (pinned runs).
    pub cpu_sut: Option<f64>,
    pub cpu_gen: Option<f64>,
    /// CPU other processes used meanwhile, in cores (see `foreign`).
    pub foreign_cpu: f64,
}

pub fn summarize_closed(
    r: &ClosedRun,
    sut_cpu: Option<usize>,
    gen_cpu: Option<usize>,
) -> ClosedSummary {
    ClosedSummary {
        requests: r.completed,
        rps: r.rps.round(),
        limited: r.limited,
        limited_rps: r.limited_rps.round(),
        errors: r.errors,
        p50_ms: pct(&r.latency, 0.5),
        p99_ms: pct(&r.latency, 0.99),
        cpu_sut: sut_cpu.and_then(|c| r.cpu_busy.get(c).copied()),
        cpu_gen: gen_cpu.and_then(|c| r.cpu_busy.get(c).copied()),
        foreign_cpu: 0.0,
    }
}

/// The median of some numbers (the mean of the middle two for an even count; 0 if none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn med<T>(rounds: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&rounds.iter().map(f).collect::<Vec<_>>())
}

fn med_u(rounds: &[OpenSummary], f: impl Fn(&OpenSummary) -> u64) -> u64 {
    med(rounds, |s| f(s) as f64).round() as u64
}

/// Field by field median of several rounds' summaries.
pub fn median_open(rounds: &[OpenSummary]) -> OpenSummary {
    OpenSummary {
        sent: med_u(rounds, |s| s.sent),
        ok: med_u(rounds, |s| s.ok),
        shed: med_u(rounds, |s| s.shed),
        limited: med_u(rounds, |s| s.limited),
        errors: med_u(rounds, |s| s.errors),
        timeouts: med_u(rounds, |s| s.timeouts),
        p50_ms: med(rounds, |s| s.p50_ms),
        p95_ms: med(rounds, |s| s.p95_ms),
        p99_ms: med(rounds, |s| s.p99_ms),
        p999_ms: med(rounds, |s| s.p999_ms),
        max_ms: med(rounds, |s| s.max_ms),
        over_slo: med(rounds, |s| s.over_slo),
        goodput_rps: med(rounds, |s| s.goodput_rps),
        shed_share: med(rounds, |s| s.shed_share),
        shed_p50_ms: med(rounds, |s| s.shed_p50_ms),
        shed_p99_ms: med(rounds, |s| s.shed_p99_ms),
        error_share: med(rounds, |s| s.error_share),
        send_lag_p99_ms: med(rounds, |s| s.send_lag_p99_ms),
        foreign_cpu: med(rounds, |s| s.foreign_cpu),
    }
}

/// Field by field median of several closed-loop rounds.
pub fn median_closed(rounds: &[ClosedSummary]) -> ClosedSummary {
    let opt = |f: fn(&ClosedSummary) -> Option<f64>| {
        let v: Vec<f64> = rounds.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    ClosedSummary {
        requests: med(rounds, |s| s.requests as f64).round() as u64,
        rps: med(rounds, |s| s.rps).round(),
        limited: med(rounds, |s| s.limited as f64).round() as u64,
        limited_rps: med(rounds, |s| s.limited_rps).round(),
        errors: med(rounds, |s| s.errors as f64).round() as u64,
        p50_ms: med(rounds, |s| s.p50_ms),
        p99_ms: med(rounds, |s| s.p99_ms),
        cpu_sut: opt(|s| s.cpu_sut),
        cpu_gen: opt(|s| s.cpu_gen),
        foreign_cpu: med(rounds, |s| s.foreign_cpu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{Kind, ERR_TRANSPORT};

    fn o(kind: Kind, status: u16, ms: u64) -> Outcome {
        Outcome {
            kind,
            status,
            latency: Duration::from_millis(ms),
            reason: None,
        }
    }

    #[test]
    fn percentiles_slo_and_goodput() {
        // 100 ingest requests: 90 fast, 5 slow successes, 3 fast sheds, 2 timeouts.
        let mut v: Vec<Outcome> = (1..=90).map(|i| o(Kind::Ingest, 202, i % 10 + 1)).collect();
        v.extend((0..5).map(|_| o(Kind::Ingest, 202, 400)));
        v.extend((0..3).map(|_| o(Kind::Ingest, 503, 1)));
        v.extend((0..2).map(|_| o(Kind::Ingest, ERR_TIMEOUT, 2000)));
        let s = summarize_open(&v, Duration::from_secs(2), &loadgen::histogram());
        assert_eq!(
            (s.sent, s.ok, s.shed, s.errors, s.timeouts),
            (100, 95, 3, 2, 2)
        );
        assert!((s.over_slo - 0.07).abs() < 1e-9, "{}", s.over_slo);
        assert!((s.goodput_rps - 45.0).abs() < 1e-9, "{}", s.goodput_rps);
        assert!((s.shed_share - 0.03).abs() < 1e-9);
        assert!((s.error_share - 0.02).abs() < 1e-9);
        assert!((4.9..=6.1).contains(&s.p50_ms), "{}", s.p50_ms);
        assert!((399.0..=401.0).contains(&s.p95_ms), "{}", s.p95_ms);
        assert!((1990.0..=2010.0).contains(&s.p99_ms), "{}", s.p99_ms);
        assert!((0.9..=1.1).contains(&s.shed_p50_ms));
        // A 429 is counted apart: not an error, not a shed.
        let mut w = v.clone();
        w.push(o(Kind::Ingest, 429, 1));
        let s = summarize_open(&w, Duration::from_secs(2), &loadgen::histogram());
        assert_eq!((s.limited, s.errors, s.shed, s.sent), (1, 2, 3, 101));
    }

    #[test]
    fn routes_without_slo_count_every_success_as_goodput() {
        let v = vec![o(Kind::Health, 200, 500), o(Kind::Health, ERR_TRANSPORT, 1)];
        let s = summarize_open(&v, Duration::from_secs(1), &loadgen::histogram());
        assert_eq!(s.over_slo, 0.0);
        assert_eq!(s.goodput_rps, 1.0);
        assert_eq!(s.errors, 1);
    }

    #[test]
    fn empty_runs_summarise_to_zeros() {
        let s = summarize_open(&[], Duration::from_secs(1), &loadgen::histogram());
        assert_eq!(s, OpenSummary::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let a = OpenSummary {
            p99_ms: 10.0,
            sent: 10,
            ..Default::default()
        };
        let b = OpenSummary {
            p99_ms: 30.0,
            sent: 30,
            ..Default::default()
        };
        let c = OpenSummary {
            p99_ms: 20.0,
            sent: 20,
            ..Default::default()
        };
        let m = median_open(&[a, b, c]);
        assert_eq!((m.p99_ms, m.sent), (20.0, 20));
        let cl = median_closed(&[
            ClosedSummary {
                rps: 100.0,
                cpu_sut: Some(0.5),
                ..Default::default()
            },
            ClosedSummary {
                rps: 300.0,
                cpu_sut: None,
                ..Default::default()
            },
            ClosedSummary {
                rps: 200.0,
                cpu_sut: Some(0.7),
                ..Default::default()
            },
        ]);
        assert_eq!(cl.rps, 200.0);
        assert_eq!(cl.cpu_sut, Some(0.6));
        assert_eq!(cl.cpu_gen, None);
    }
}
