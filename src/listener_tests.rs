//! Tests of `listener.rs` (a child module, kept apart to keep that file readable).

use super::*;

fn os(code: i32) -> AcceptFailure {
    AcceptFailure::of(&io::Error::from_raw_os_error(code))
}

#[test]
fn failures_are_told_apart_by_their_os_error() {
    assert_eq!(
        os(libc::EMFILE),
        AcceptFailure::Shortage(LocalShortage::FileDescriptors)
    );
    assert_eq!(
        os(libc::ENFILE),
        AcceptFailure::Shortage(LocalShortage::SystemFiles)
    );
    assert_eq!(os(libc::ENOBUFS).as_str(), "memory");
    assert_eq!(os(libc::ECONNABORTED), AcceptFailure::ConnectionGone);
    assert_eq!(os(libc::EPROTO), AcceptFailure::ConnectionGone);
    assert_eq!(os(libc::EBADF), AcceptFailure::Other);
    // What tokio returns once its runtime is shutting down: no OS error behind it.
    let shutting = io::Error::other("A Tokio 1.x context was found, but it is being shutdown.");
    assert_eq!(AcceptFailure::of(&shutting), AcceptFailure::Runtime);
}

#[test]
fn each_kind_of_failure_is_counted_under_its_own_cause() {
    let labels: Vec<_> = [
        os(libc::EMFILE),
        os(libc::ENFILE),
        os(libc::ENOMEM),
        os(libc::ECONNABORTED),
        AcceptFailure::Runtime,
        os(libc::EBADF),
    ]
    .iter()
    .map(|f| f.as_str())
    .collect();
    assert_eq!(labels, CAUSES);
}

#[test]
fn a_shortage_pauses_longer_each_time_up_to_a_bound_and_a_success_resets_it() {
    let mut b = AcceptBackoff::default();
    let emfile = os(libc::EMFILE);
    let mut pauses = Vec::new();
    for _ in 0..10 {
        match b.after(emfile) {
            AfterFailure::Pause(p) => pauses.push(p),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pauses[0], PAUSE_FIRST);
    assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*pauses.last().unwrap(), PAUSE_MAX);
    // At most 1/PAUSE_MAX failures a second once it is steady: never a spin.
    assert!(pauses.iter().all(|p| *p >= PAUSE_FIRST));
    b.accepted();
    assert_eq!(b.after(emfile), AfterFailure::Pause(PAUSE_FIRST));
}

#[test]
fn a_dead_connection_is_skipped_and_a_dying_runtime_ends_the_loop() {
    let mut b = AcceptBackoff::default();
    assert_eq!(b.after(AcceptFailure::ConnectionGone), AfterFailure::Retry);
    assert_eq!(b.after(AcceptFailure::Runtime), AfterFailure::Stop);
    // A broken listener is paused on, not spun on.
    assert!(matches!(
        b.after(AcceptFailure::Other),
        AfterFailure::Pause(_)
    ));
}

#[test]
fn a_bound_listener_takes_the_long_backlog_and_a_taken_port_is_named() {
    let l = bind_listener("test", "127.0.0.1:0".parse().unwrap(), Duration::ZERO).unwrap();
    let addr = l.local_addr().unwrap();
    let e = bind_listener("test", addr, Duration::ZERO).unwrap_err();
    assert_eq!(e.reason, "address in use");
}
