//! Unit tests for the worker health state machine, driven with synthetic time.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn setup() -> (HealthConfig, WorkerHealth, Instant) {
    let cfg = HealthConfig::default();
    let t0 = Instant::now();
    let h = WorkerHealth::new(&cfg, t0);
    (cfg, h, t0)
}

fn ok_probe(cfg: &HealthConfig, h: &mut WorkerHealth, now: Instant) {
    h.on_probe(cfg, Ok((MS, Some(Duration::ZERO))), now);
}

#[test]
fn a_stall_is_seen_while_it_happens() {
    let (cfg, mut h, t0) = setup();
    h.on_dispatch(0, t0);
    assert_eq!(h.evaluate(&cfg, 1, true, t0 + 50 * MS), None);
    match h.evaluate(&cfg, 1, true, t0 + 110 * MS) {
        Some(Transition::Ejected {
            reason: EjectReason::Stalled(d),
            for_,
        }) => {
            assert!(d >= 100 * MS);
            assert_eq!(for_, cfg.base_ejection);
        }
        other => panic!("expected a stall ejection, got {other:?}"),
    }
    assert_eq!(h.state(), HealthState::Ejected);
    assert_eq!(h.weight(&cfg, t0 + 110 * MS), 0.0);
}

#[test]
fn a_busy_worker_that_keeps_completing_is_not_stalled() {
    let (cfg, mut h, t0) = setup();
    h.on_dispatch(0, t0);
    let mut t = t0;
    for _ in 0..50 {
        t += 20 * MS;
        h.on_response(&cfg, 200, 20 * MS, Some(Duration::ZERO), t);
        assert_eq!(h.evaluate(&cfg, 3, true, t), None);
    }
    assert_eq!(h.state(), HealthState::Healthy);
}

#[test]
fn a_slow_request_on_a_responsive_loop_is_not_a_stall() {
    // An async worker awaiting a slow database: its probes still come back fast.
    let (cfg, mut h, t0) = setup();
    h.on_dispatch(0, t0);
    let mut t = t0;
    for _ in 0..20 {
        t += 50 * MS;
        ok_probe(&cfg, &mut h, t);
        assert_eq!(h.evaluate(&cfg, 1, true, t), None, "at {:?}", t - t0);
    }
}

#[test]
fn reported_loop_lag_ejects() {
    let (cfg, mut h, t0) = setup();
    h.on_response(&cfg, 202, 250 * MS, Some(250 * MS), t0);
    assert!(matches!(
        h.evaluate(&cfg, 0, true, t0),
        Some(Transition::Ejected {
            reason: EjectReason::LoopLag(_),
            ..
        })
    ));
}

#[test]
fn consecutive_5xx_and_connect_failures_eject_but_a_success_resets_the_count() {
    let (cfg, mut h, t0) = setup();
    for _ in 0..cfg.consecutive_failures - 1 {
        h.on_response(&cfg, 503, MS, None, t0);
    }
    h.on_response(&cfg, 200, MS, None, t0);
    for _ in 0..cfg.consecutive_failures - 1 {
        h.on_response(&cfg, 503, MS, None, t0);
    }
    assert_eq!(h.evaluate(&cfg, 0, true, t0), None);
    h.on_response(&cfg, 500, MS, None, t0);
    assert!(matches!(
        h.evaluate(&cfg, 0, true, t0),
        Some(Transition::Ejected {
            reason: EjectReason::ServerErrors(5),
            ..
        })
    ));

    let (cfg, mut h, t0) = setup();
    for _ in 0..cfg.consecutive_failures {
        h.on_connect_failure(&cfg);
    }
    assert!(matches!(
        h.evaluate(&cfg, 0, true, t0),
        Some(Transition::Ejected {
            reason: EjectReason::ConnectFailures(5),
            ..
        })
    ));
}

#[test]
fn readmission_needs_the_time_served_and_a_good_probe_then_ramps_up() {
    let (cfg, mut h, t0) = setup();
    h.on_response(&cfg, 202, MS, Some(200 * MS), t0);
    h.evaluate(&cfg, 0, true, t0);
    // A good probe, but the ejection time is not served yet.
    ok_probe(&cfg, &mut h, t0 + 500 * MS);
    assert_eq!(h.evaluate(&cfg, 0, true, t0 + 500 * MS), None);
    // Time served, but the last probe was bad.
    h.on_probe(&cfg, Err(()), t0 + 1100 * MS);
    assert_eq!(h.evaluate(&cfg, 0, true, t0 + 1100 * MS), None);
    assert_eq!(h.state(), HealthState::Ejected);
    // Time served and a good probe: back on probation, with a small share.
    let back = t0 + 1200 * MS;
    ok_probe(&cfg, &mut h, back);
    assert_eq!(
        h.evaluate(&cfg, 0, true, back),
        Some(Transition::Readmitted)
    );
    assert_eq!(h.state(), HealthState::Suspect);
    assert!((h.weight(&cfg, back) - 0.1).abs() < 1e-9);
    assert!((h.weight(&cfg, back + cfg.slow_start / 2) - 0.5).abs() < 0.01);
    // A clean slow start makes it healthy again.
    assert_eq!(
        h.evaluate(&cfg, 0, true, back + cfg.slow_start),
        Some(Transition::Recovered)
    );
    assert_eq!(h.weight(&cfg, back + cfg.slow_start), 1.0);
}

#[test]
fn repeat_offenders_stay_out_longer_up_to_the_cap() {
    let (cfg, mut h, t0) = setup();
    let mut t = t0;
    let mut lengths = vec![];
    for _ in 0..8 {
        h.on_response(&cfg, 202, MS, Some(300 * MS), t);
        match h.evaluate(&cfg, 0, true, t) {
            Some(Transition::Ejected { for_, .. }) => lengths.push(for_),
            other => panic!("{other:?}"),
        }
        t += lengths.last().copied().unwrap();
        ok_probe(&cfg, &mut h, t);
        assert_eq!(h.evaluate(&cfg, 0, true, t), Some(Transition::Readmitted));
    }
    let secs: Vec<u64> = lengths.iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(h.ejections, 8);
}

#[test]
fn past_ejections_are_forgiven_after_a_long_clean_run() {
    let (cfg, mut h, t0) = setup();
    h.on_response(&cfg, 202, MS, Some(300 * MS), t0);
    h.evaluate(&cfg, 0, true, t0);
    let t = t0 + cfg.base_ejection;
    ok_probe(&cfg, &mut h, t);
    h.evaluate(&cfg, 0, true, t);
    h.evaluate(&cfg, 0, true, t + cfg.slow_start);
    assert_eq!(h.state(), HealthState::Healthy);
    h.evaluate(
        &cfg,
        0,
        true,
        t0 + cfg.forgive_after + Duration::from_secs(1),
    );
    // The next ejection is a first one again.
    let later = t0 + cfg.forgive_after + Duration::from_secs(2);
    h.on_response(&cfg, 202, MS, Some(300 * MS), later);
    assert_eq!(
        h.evaluate(&cfg, 0, true, later),
        Some(Transition::Ejected {
            reason: EjectReason::LoopLag(300 * MS),
            for_: cfg.base_ejection
        })
    );
}

#[test]
fn when_ejection_is_not_allowed_the_worker_stays_in_as_suspect() {
    let (cfg, mut h, t0) = setup();
    h.on_response(&cfg, 202, MS, Some(300 * MS), t0);
    assert_eq!(h.evaluate(&cfg, 0, false, t0), None);
    assert_eq!(h.state(), HealthState::Suspect);
    assert!(h.weight(&cfg, t0) > 0.0);
    assert_eq!(h.last_reason(), Some(EjectReason::LoopLag(300 * MS)));
}

#[test]
fn max_ejected_percent_bounds_how_many_are_out() {
    assert!(may_eject(0, 4, 50));
    assert!(may_eject(1, 4, 50));
    assert!(!may_eject(2, 4, 50));
    assert!(
        !may_eject(0, 1, 50),
        "the only worker is never ejected at 50%"
    );
    assert!(may_eject(0, 1, 100));
    assert!(!may_eject(0, 4, 0));
}

#[test]
fn a_worker_stands_out_only_when_the_fleet_does_not_share_its_trouble() {
    // The incident: worker 3 blocked 250 ms (lag 3.3x its threshold), the others fine.
    assert_eq!(
        outliers(&[0.02, 0.03, 3.3, 0.01]),
        [false, false, true, false]
    );
    // Every loop lags behind its own queue of dear requests, or the pod is starved: the
    // worst is no outlier.
    assert_eq!(outliers(&[1.8, 1.0, 0.7, 0.6]), [false; 4]);
    assert!(outliers(&[2.0, 2.0, 2.0, 2.0]).iter().all(|o| !o));
    // Two blocked of four: both stand out from the two healthy ones.
    assert_eq!(
        outliers(&[3.0, 3.0, 0.05, 0.05]),
        [true, true, false, false]
    );
    // A lone worker stands out (max_ejected_percent keeps it in anyway).
    assert_eq!(outliers(&[5.0]), [true]);
    assert!(outliers(&[]).is_empty());
}

#[test]
fn a_shared_lag_is_set_aside_but_errors_still_eject() {
    let cfg = HealthConfig::default();
    let t0 = Instant::now();
    let mut h = WorkerHealth::new(&cfg, t0);
    h.on_response(&cfg, 200, 5 * MS, Some(120 * MS), t0);
    assert!(h.severity(&cfg, 0, t0) > 1.5);
    assert!(!h.ejection_pending(), "a lag waits for the tick's verdict");
    assert_eq!(h.evaluate_in_fleet(&cfg, 0, true, false, t0), None);
    assert_eq!(h.state(), HealthState::Healthy);
    for _ in 0..cfg.consecutive_failures {
        h.on_response(&cfg, 500, 5 * MS, None, t0);
    }
    assert!(h.ejection_pending());
    assert!(matches!(
        h.evaluate_in_fleet(&cfg, 0, true, false, t0),
        Some(Transition::Ejected {
            reason: EjectReason::ServerErrors(_),
            ..
        })
    ));
}

#[test]
fn a_probe_slow_only_by_sloguards_own_hold_is_not_the_workers() {
    // Default lag_eject is well under 100 ms: a 100 ms probe ejects on its own.
    let (cfg, mut h, t0) = setup();
    assert!(cfg.lag_eject < 100 * MS);
    let slow = Ok((100 * MS, Some(Duration::ZERO)));

    // The hold was noticed (a late tick) before the answer was read.
    let sent = h.held_up();
    h.excuse_own_delay(97 * MS, t0 + 100 * MS);
    h.on_probe_sent_at(&cfg, slow, sent, t0 + 100 * MS);
    assert_eq!(h.ejection_signal(&cfg, 0, t0 + 100 * MS), None);
    assert_eq!(h.last_probe(), Some(Ok(3 * MS)));

    // The answer was read first, the hold noticed at the next tick: the pending ejection
    // is taken back before the evaluation.
    let sent = h.held_up();
    h.on_probe_sent_at(&cfg, slow, sent, t0 + 300 * MS);
    assert!(matches!(
        h.ejection_signal(&cfg, 0, t0 + 300 * MS),
        Some(EjectReason::SlowProbe(_))
    ));
    h.excuse_own_delay(98 * MS, t0 + 310 * MS);
    assert_eq!(h.evaluate(&cfg, 0, true, t0 + 310 * MS), None);
    assert_eq!(h.state(), HealthState::Healthy);
}

#[test]
fn a_probe_slow_beyond_sloguards_hold_still_ejects_and_later_holds_change_nothing() {
    let (cfg, mut h, t0) = setup();
    let sent = h.held_up();
    h.on_probe_sent_at(&cfg, Ok((300 * MS, None)), sent, t0 + 300 * MS);
    // Held up 50 ms meanwhile: 250 ms are still the worker's.
    h.excuse_own_delay(50 * MS, t0 + 305 * MS);
    assert_eq!(h.last_probe(), Some(Ok(250 * MS)));
    match h.evaluate(&cfg, 0, true, t0 + 310 * MS) {
        Some(Transition::Ejected {
            reason: EjectReason::SlowProbe(_),
            ..
        }) => {}
        other => panic!("expected a slow-probe ejection, got {other:?}"),
    }
    // A hold after the evaluation does not rewrite the probe that ejected.
    h.excuse_own_delay(400 * MS, t0 + 800 * MS);
    assert_eq!(h.last_probe(), Some(Ok(250 * MS)));
    assert_eq!(h.state(), HealthState::Ejected);
}
