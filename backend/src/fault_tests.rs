//! Fault parsing and per-request fault decisions.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn query_block_holds_every_query_and_only_queries() {
    let spec: FaultSpec = "query_block=20ms".parse().unwrap();
    let mut state = FaultState::at_start(spec);
    assert_eq!(state.on_request(RequestKind::V1).block, Some(ms(20)));
    assert_eq!(state.on_request(RequestKind::V1).block, Some(ms(20)));
    assert_eq!(state.on_request(RequestKind::Events).block, None);
    assert_eq!(state.on_request(RequestKind::Other).block, None);
}

#[test]
fn parses_the_documented_forms() {
    let spec: FaultSpec = "block=250ms,every=4".parse().unwrap();
    assert_eq!(spec.block, Some(ms(250)));
    assert_eq!(spec.every, 4);
    assert_eq!("cpu=50ms".parse::<FaultSpec>().unwrap().cpu, Some(ms(50)));
    assert_eq!(
        "stall=5s".parse::<FaultSpec>().unwrap().stall,
        Some(Duration::from_secs(5))
    );
    assert_eq!("status=503".parse::<FaultSpec>().unwrap().status, Some(503));
    assert_eq!(
        "block=750us".parse::<FaultSpec>().unwrap().block,
        Some(Duration::from_micros(750))
    );
    assert_eq!("".parse::<FaultSpec>().unwrap(), FaultSpec::default());
}

#[test]
fn errors_name_the_key() {
    let err = "block=fast".parse::<FaultSpec>().unwrap_err();
    assert!(err.to_string().contains("`block`"), "{err}");
    let err = "every=x".parse::<FaultSpec>().unwrap_err();
    assert!(err.to_string().contains("`every`"), "{err}");
    let err = "status=42".parse::<FaultSpec>().unwrap_err();
    assert!(err.to_string().contains("status"), "{err}");
    let err = "slow=1s".parse::<FaultSpec>().unwrap_err();
    assert_eq!(err, FaultParseError::UnknownKey { key: "slow".into() });
    let err = "block".parse::<FaultSpec>().unwrap_err();
    assert!(matches!(err, FaultParseError::MissingValue { .. }));
    let err = "cpu=1ms,cpu=2ms".parse::<FaultSpec>().unwrap_err();
    assert!(matches!(err, FaultParseError::Duplicate { .. }));
    assert!("block=10m".parse::<FaultSpec>().is_err());
}

#[test]
fn worker_prefix() {
    let (worker, spec) = parse_worker_fault("3:block=250ms,every=4").unwrap();
    assert_eq!(worker, 3);
    assert_eq!(spec.every, 4);
    assert!(parse_worker_fault("block=1ms").is_err());
    assert!(parse_worker_fault("0:block=1ms").is_err());
}

#[test]
fn json_round_trip() {
    let body: FaultBody = serde_json::from_str(r#"{"block_ms":250,"every":4}"#).unwrap();
    let spec = body.clone().into_spec().unwrap();
    assert_eq!(spec.block, Some(ms(250)));
    assert_eq!(FaultBody::from(&spec), body);
    let cleared: FaultBody = serde_json::from_str("{}").unwrap();
    assert_eq!(cleared.into_spec().unwrap().block, None);
    assert!(serde_json::from_str::<FaultBody>(r#"{"blok_ms":1}"#).is_err());
    let bad = FaultBody {
        status: Some(1000),
        ..FaultBody::default()
    };
    assert_eq!(bad.into_spec(), Err("status"));
}

#[test]
fn one_in_every_events_request_is_hit_starting_with_the_first() {
    let mut state = FaultState::default();
    state.set("block=100ms,every=3".parse().unwrap());
    let hits: Vec<bool> = (0..7)
        .map(|_| state.on_request(RequestKind::Events).block.is_some())
        .collect();
    assert_eq!(hits, [true, false, false, true, false, false, true]);
    // Non-events requests neither suffer nor advance the counter.
    assert_eq!(state.on_request(RequestKind::V1), FaultActions::default());
    assert_eq!(
        state.on_request(RequestKind::Other),
        FaultActions::default()
    );
}

#[test]
fn status_applies_to_all_v1_requests() {
    let mut state = FaultState::default();
    state.set("status=503".parse().unwrap());
    assert_eq!(state.on_request(RequestKind::V1).status, Some(503));
    assert_eq!(state.on_request(RequestKind::Events).status, Some(503));
    assert_eq!(state.on_request(RequestKind::Other).status, None);
}

#[test]
fn stall_set_at_runtime_starts_once_whoever_takes_it_first() {
    let mut state = FaultState::default();
    assert!(state.set("stall=2s".parse().unwrap()));
    // The worker's task takes it: no request stalls again.
    assert_eq!(state.take_stall(), Some(ms(2000)));
    assert_eq!(state.on_request(RequestKind::Other).stall, None);
    assert_eq!(state.spec().stall, None);
    // A request arriving first takes it: the task then finds nothing.
    assert!(state.set("stall=2s".parse().unwrap()));
    assert_eq!(state.on_request(RequestKind::Other).stall, Some(ms(2000)));
    assert_eq!(state.take_stall(), None);
    assert!(!state.set("block=1ms".parse().unwrap()));
}

#[test]
fn stall_set_at_start_fires_at_the_first_request_only() {
    let mut state = FaultState::at_start("stall=2s".parse().unwrap());
    assert_eq!(state.spec().stall, Some(ms(2000)));
    assert_eq!(state.on_request(RequestKind::Other).stall, Some(ms(2000)));
    assert_eq!(state.on_request(RequestKind::Other).stall, None);
}

#[test]
fn every_zero_means_every_request() {
    let mut state = FaultState::default();
    state.set(FaultSpec {
        cpu: Some(ms(1)),
        every: 0,
        ..FaultSpec::default()
    });
    assert!((0..3).all(|_| state.on_request(RequestKind::Events).cpu.is_some()));
}

#[test]
fn parses_the_connection_faults() {
    let spec: FaultSpec = "trickle=5ms,reset=true,close_keepalive=3,every=2"
        .parse()
        .unwrap();
    assert_eq!(spec.trickle, Some(ms(5)));
    assert!(spec.reset);
    assert_eq!(spec.close_keepalive, Some(3));
    assert!(!"reset=false".parse::<FaultSpec>().unwrap().reset);
    let err = "reset=yes".parse::<FaultSpec>().unwrap_err();
    assert!(matches!(err, FaultParseError::BadBool { .. }), "{err}");
    let err = "close_keepalive=0".parse::<FaultSpec>().unwrap_err();
    assert_eq!(
        err,
        FaultParseError::Zero {
            key: "close_keepalive".into()
        }
    );
    assert!(err.to_string().contains("at least 1"), "{err}");
    let err = "trickle=fast".parse::<FaultSpec>().unwrap_err();
    assert!(err.to_string().contains("`trickle`"), "{err}");
    // The unknown-key message lists the new keys too.
    let err = "slow=1s".parse::<FaultSpec>().unwrap_err().to_string();
    assert!(
        err.contains("trickle, reset, close_keepalive or close_late"),
        "{err}"
    );
    let spec: FaultSpec = "close_keepalive=1,close_late=true".parse().unwrap();
    assert!(spec.close_late);
    let err = "close_late=true".parse::<FaultSpec>().unwrap_err();
    assert_eq!(err, FaultParseError::CloseLateAlone);
}

#[test]
fn connection_faults_round_trip_through_json() {
    let body: FaultBody = serde_json::from_str(
        r#"{"trickle_ms":5,"reset":true,"close_keepalive":2,"close_late":true}"#,
    )
    .unwrap();
    let spec = body.clone().into_spec().unwrap();
    assert_eq!(
        (
            spec.trickle,
            spec.reset,
            spec.close_keepalive,
            spec.close_late
        ),
        (Some(ms(5)), true, Some(2), true)
    );
    assert_eq!(FaultBody::from(&spec), body);
    // `reset: false` is the default and not echoed.
    let cleared = FaultBody::from(&FaultSpec::default());
    assert_eq!(serde_json::to_string(&cleared).unwrap(), "{}");
    let zero = FaultBody {
        close_keepalive: Some(0),
        ..FaultBody::default()
    };
    assert_eq!(zero.into_spec(), Err("close_keepalive"));
}

#[test]
fn trickle_and_reset_hit_one_in_every_v1_request_each_on_its_own_count() {
    let mut state = FaultState::default();
    state.set("trickle=2ms,reset=true,every=2".parse().unwrap());
    let seen: Vec<(bool, bool)> = [
        RequestKind::Events,
        RequestKind::V1,
        RequestKind::Other,
        RequestKind::Events,
        RequestKind::V1,
    ]
    .into_iter()
    .map(|k| {
        let a = state.on_request(k);
        (a.trickle.is_some(), a.reset)
    })
    .collect();
    // Health checks and scrapes neither suffer nor advance the counts.
    assert_eq!(
        seen,
        [
            (true, true),
            (false, false),
            (false, false),
            (true, true),
            (false, false)
        ]
    );
}

#[test]
fn close_keepalive_applies_to_every_route_and_closes_at_the_nth_answer() {
    let mut state = FaultState::default();
    state.set("close_keepalive=2".parse().unwrap());
    for kind in [RequestKind::Events, RequestKind::V1, RequestKind::Other] {
        assert_eq!(state.on_request(kind).close_keepalive, Some(2));
    }
    assert!(!closes_after_answer(Some(2), 1));
    assert!(closes_after_answer(Some(2), 2));
    assert!(closes_after_answer(Some(1), 1));
    assert!(!closes_after_answer(None, 1000));
}
