//! The limiter against a simulated worker: true concurrency `c` (beyond it, requests queue
//! on the event loop), base latency `base`; the queueing part is reported as loop lag.

use super::*;

const MS: Duration = Duration::from_millis(1);

/// A deterministic noise source.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Sim {
    cfg: LimiterConfig,
    lim: ConcurrencyLimiter,
    now: Instant,
    /// Limit after each window.
    history: Vec<(Duration, u32)>,
    t0: Instant,
    report_lag: bool,
}

impl Sim {
    fn new(cfg: LimiterConfig) -> Sim {
        // The simulated lag is exact: no timer noise to discount.
        let cfg = LimiterConfig {
            lag_noise: Duration::ZERO,
            ..cfg
        };
        let now = Instant::now();
        Sim {
            lim: ConcurrencyLimiter::new(&cfg, now),
            cfg,
            now,
            history: vec![],
            t0: now,
            report_lag: true,
        }
    }

    /// Runs `secs` of traffic from `offered` concurrent clients against a worker of true
    /// concurrency `c` and base latency `base`, with multiplicative noise `noise(rng)`.
    fn run(
        &mut self,
        secs: f64,
        offered: usize,
        c: f64,
        base: Duration,
        rng: &mut Rng,
        noise: f64,
    ) {
        let end = self.now + Duration::from_secs_f64(secs);
        while self.now < end {
            let n = offered.min(self.lim.limit() as usize).max(1);
            let queue_factor = (n as f64 / c).max(1.0);
            let jitter = 1.0 + noise * (rng.next() - 0.5) * 2.0;
            let rtt = base.mul_f64(queue_factor * jitter);
            let lag = base.mul_f64(queue_factor - 1.0);
            // n requests complete every rtt; advance time per completion.
            self.now += rtt / n as u32;
            let s = Sample {
                rtt,
                in_flight_before: n - 1,
                lag: self.report_lag.then_some(lag),
            };
            if let Some(l) = self.lim.on_sample(&self.cfg, s, self.now) {
                self.history.push((self.now - self.t0, l));
            }
        }
    }

    /// Limits seen in the window [from, to) seconds.
    fn limits(&self, from: f64, to: f64) -> Vec<f64> {
        self.history
            .iter()
            .filter(|(t, _)| t.as_secs_f64() >= from && t.as_secs_f64() < to)
            .map(|(_, l)| f64::from(*l))
            .collect()
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn cv(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt() / m
}

#[test]
fn converges_backs_off_after_a_step_and_holds_steady() {
    let mut sim = Sim::new(LimiterConfig::default());
    let mut rng = Rng(42);
    sim.run(5.0, 200, 10.0, 2 * MS, &mut rng, 0.1);
    let before = sim.limits(3.0, 5.0);
    let m1 = mean(&before);
    // tolerance 2 lets in-flight reach about twice the true concurrency.
    assert!(
        (15.0..=30.0).contains(&m1),
        "steady limit {m1} for true concurrency 10"
    );
    assert!(cv(&before) < 0.1, "limit oscillates: cv {}", cv(&before));

    // The worker halves its capacity (a slower dependency, a noisy neighbour).
    sim.run(5.0, 200, 5.0, 2 * MS, &mut rng, 0.1);
    let after = sim.limits(7.0, 10.0);
    let m2 = mean(&after);
    assert!(
        m2 < m1 * 0.65 && m2 >= 7.0,
        "limit {m1} -> {m2} after capacity halved"
    );
    // Within 2 s of the step the limit is already within 25% of where it settles.
    let at_2s = sim.limits(6.8, 7.0);
    assert!(
        !at_2s.is_empty() && (at_2s[0] - m2).abs() / m2 < 0.25,
        "{at_2s:?} vs {m2}"
    );
    assert!(cv(&after) < 0.1, "cv {}", cv(&after));

    // Capacity comes back: the limit recovers within about 2 s.
    sim.run(4.0, 200, 10.0, 2 * MS, &mut rng, 0.1);
    let recovered = sim.limits(12.0, 14.0);
    assert!(
        mean(&recovered) > m1 * 0.8,
        "recovered to {} of {m1}",
        mean(&recovered)
    );
}

#[test]
fn noise_without_queueing_does_not_collapse_the_limit() {
    let cfg = LimiterConfig::default();
    let mut sim = Sim::new(cfg.clone());
    let mut rng = Rng(7);
    // +-60% jitter, far below true capacity.
    sim.run(10.0, 16, 1000.0, MS, &mut rng, 0.6);
    let l = sim.limits(2.0, 10.0);
    assert!(
        l.iter().all(|x| *x >= 16.0),
        "collapsed under noise: {:?}",
        &l[..10.min(l.len())]
    );
    assert!(cv(&l) < 0.15, "cv {}", cv(&l));
}

#[test]
fn an_idle_worker_limit_does_not_creep_up() {
    let mut sim = Sim::new(LimiterConfig::default());
    let mut rng = Rng(9);
    sim.run(10.0, 2, 1000.0, MS, &mut rng, 0.1);
    let l = sim.limits(0.0, 10.0);
    assert!(
        l.iter().all(|x| *x <= 8.0),
        "limit grew without use: max {:?}",
        l.iter().cloned().fold(0.0, f64::max)
    );
}

#[test]
fn a_slower_service_without_queueing_moves_the_baseline_not_the_limit_floor() {
    // The no-queue latency triples (a slower query), with no queueing: the baseline follows
    // and the limit does not fall to the floor.
    let mut sim = Sim::new(LimiterConfig::default());
    let mut rng = Rng(11);
    sim.run(3.0, 8, 1000.0, MS, &mut rng, 0.1);
    let before = sim.lim.baseline().unwrap();
    sim.run(3.0, 8, 1000.0, 3 * MS, &mut rng, 0.1);
    let after = sim.lim.baseline().unwrap();
    assert!(after > before * 2, "baseline {before:?} -> {after:?}");
    assert!(
        sim.limits(4.0, 6.0).iter().all(|x| *x >= 8.0),
        "{:?}",
        sim.limits(4.0, 6.0)
    );
}

#[test]
fn without_a_lag_report_only_idle_samples_set_the_baseline() {
    let cfg = LimiterConfig::default();
    let t0 = Instant::now();
    let mut lim = ConcurrencyLimiter::new(&cfg, t0);
    lim.on_sample(
        &cfg,
        Sample {
            rtt: 50 * MS,
            in_flight_before: 5,
            lag: None,
        },
        t0,
    );
    assert_eq!(
        lim.baseline(),
        None,
        "a sample taken behind others is not a no-queue sample"
    );
    lim.on_sample(
        &cfg,
        Sample {
            rtt: 2 * MS,
            in_flight_before: 0,
            lag: None,
        },
        t0,
    );
    assert_eq!(lim.baseline(), Some(2 * MS));
}

#[test]
fn aimd_backs_off_when_slow_and_grows_when_busy() {
    let cfg = LimiterConfig {
        algorithm: Algorithm::Aimd { backoff: 0.9 },
        ..LimiterConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut rng = Rng(5);
    sim.run(6.0, 200, 10.0, 2 * MS, &mut rng, 0.05);
    let l = sim.limits(3.0, 6.0);
    let m = mean(&l);
    assert!(
        (12.0..=28.0).contains(&m),
        "aimd settles near tolerance x capacity: {m}"
    );
    sim.run(4.0, 200, 4.0, 2 * MS, &mut rng, 0.05);
    assert!(mean(&sim.limits(8.0, 10.0)) < m * 0.7);
}

#[test]
fn limits_stay_within_bounds() {
    let cfg = LimiterConfig {
        min_limit: 3,
        max_limit: 12,
        ..LimiterConfig::default()
    };
    let mut sim = Sim::new(cfg);
    let mut rng = Rng(3);
    sim.run(4.0, 500, 100.0, MS, &mut rng, 0.1);
    assert!(sim.limits(0.0, 4.0).iter().all(|x| *x <= 12.0));
    sim.run(4.0, 500, 0.5, MS, &mut rng, 0.1);
    assert!(sim.limits(4.0, 8.0).iter().all(|x| *x >= 3.0));
    let tail = sim.limits(7.0, 8.0);
    assert!(tail.iter().all(|x| *x <= 4.0), "{tail:?}");
}

#[test]
fn lag_within_the_noise_floor_is_not_queueing() {
    // Workers report whole milliseconds and a healthy loop shows 1-2 ms: a 1 ms request with
    // a 2 ms lag report is a no-queue sample, not a zero-length one.
    let cfg = LimiterConfig::default();
    let t0 = Instant::now();
    let mut lim = ConcurrencyLimiter::new(&cfg, t0);
    lim.on_sample(
        &cfg,
        Sample {
            rtt: MS,
            in_flight_before: 3,
            lag: Some(2 * MS),
        },
        t0,
    );
    assert_eq!(lim.baseline(), Some(MS));
    // Lag beyond the floor is subtracted as queueing.
    let mut lim = ConcurrencyLimiter::new(&cfg, t0);
    lim.on_sample(
        &cfg,
        Sample {
            rtt: 30 * MS,
            in_flight_before: 3,
            lag: Some(25 * MS),
        },
        t0,
    );
    assert_eq!(lim.baseline(), Some(10 * MS));
}
