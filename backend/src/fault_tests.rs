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
fn stall_set_at_runtime_is_returned_once_not_kept() {
    let mut state = FaultState::default();
    assert_eq!(state.set("stall=2s".parse().unwrap()), Some(ms(2000)));
    assert_eq!(state.on_request(RequestKind::Other).stall, None);
    assert_eq!(state.spec().stall, None);
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
