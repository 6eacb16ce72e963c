//! Property tests for the health state machine over many random workers and signal
//! sequences (a deterministic generator, no extra crate): never more than
//! `max_ejected_percent` ejected at once, and a worker that turns healthy always comes back.

use std::time::{Duration, Instant};

use super::health::{may_eject, HealthConfig, HealthState, WorkerHealth};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn never_more_ejected_than_allowed_and_every_recovered_worker_comes_back() {
    let cfg = HealthConfig::default();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for case in 0..200 {
        let n = 1 + (rng.next() % 8) as usize;
        let pct = [0u8, 25, 50, 75, 100][(rng.next() % 5) as usize];
        let t0 = Instant::now();
        let mut now = t0;
        let mut workers: Vec<WorkerHealth> = (0..n).map(|_| WorkerHealth::new(&cfg, t0)).collect();
        // Phase 1: random bad signals for 20 s of synthetic time.
        for _ in 0..2000 {
            now += Duration::from_millis(rng.next() % 20);
            let i = (rng.next() % n as u64) as usize;
            match rng.next() % 6 {
                0 => workers[i].on_response(
                    &cfg,
                    200,
                    MS,
                    Some(Duration::from_millis(rng.next() % 300)),
                    now,
                ),
                1 => workers[i].on_response(&cfg, 503, MS, None, now),
                2 => workers[i].on_connect_failure(&cfg),
                3 => workers[i].on_probe(&cfg, Err(()), now),
                4 => workers[i].on_probe(&cfg, Ok((MS, Some(Duration::ZERO))), now),
                _ => workers[i].on_dispatch(0, now),
            }
            // The ticker: evaluate every worker under the bound.
            for j in 0..n {
                let ejected = workers
                    .iter()
                    .filter(|w| w.state() == HealthState::Ejected)
                    .count();
                let may = may_eject(ejected, n, pct);
                let in_flight = (rng.next() % 2) as usize;
                workers[j].evaluate(&cfg, in_flight, may, now);
                let after = workers
                    .iter()
                    .filter(|w| w.state() == HealthState::Ejected)
                    .count();
                assert!(
                    after * 100 <= n * usize::from(pct),
                    "case {case}: {after} of {n} ejected at {pct}%"
                );
            }
        }
        // Phase 2: every worker is healthy now (fast probes, no lag, nothing in flight).
        // Within the longest ejection plus slow start, all are back in service.
        let back_by = now + cfg.max_ejection + cfg.slow_start + Duration::from_secs(1);
        while now < back_by {
            now += 50 * MS;
            for w in workers.iter_mut() {
                w.on_probe(&cfg, Ok((MS, Some(Duration::ZERO))), now);
                w.evaluate(&cfg, 0, true, now);
            }
        }
        for (j, w) in workers.iter().enumerate() {
            assert_eq!(
                w.state(),
                HealthState::Healthy,
                "case {case}: worker {j} never came back"
            );
        }
    }
}
