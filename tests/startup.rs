//! Starting up: a listener address that cannot be bound ends `sloguard run` at once, non-zero,
//! with one line naming the listener and the address (Pingora alone retried for 30 s, then
//! its proxy thread panicked while the process stayed up, Live and Ready, with no proxy).

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts `sloguard run` on `policy` and waits up to `within` for it to exit: its exit
/// status (`None`: still running, then killed), stderr, and how long it ran.
fn run_until_exit(
    policy: &str,
    within: Duration,
) -> (Option<std::process::ExitStatus>, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sloguard.toml");
    std::fs::write(&path, policy).unwrap();
    let err = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(sloguard_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    while started.elapsed() < within {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ran = started.elapsed();
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    (status, std::fs::read_to_string(err).unwrap(), ran)
}

fn held_port() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[test]
fn a_proxy_port_in_use_ends_the_process_within_the_retry_window_with_one_clear_line() {
    let (_held, proxy) = held_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let worker: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The default retry window (2 s): the process must be gone well within Pingora's 30 s.
    let (status, stderr, ran) = run_until_exit(
        &policy_text(proxy, admin, &[worker], ""),
        Duration::from_secs(10),
    );
    let status = status.unwrap_or_else(|| panic!("still running after 10 s: {stderr}"));
    println!("exited {status} after {ran:?}");
    assert!(!status.success(), "{stderr}");
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr
            .lines()
            .any(|l| l == format!("proxy listener {proxy}: address in use")),
        "{stderr}"
    );
    assert!(
        ran >= Duration::from_millis(1900),
        "retried for the window: {ran:?}"
    );
    // Nothing was served meanwhile: the admin port was never bound.
    assert!(TcpListener::bind(admin).is_ok());
}

#[test]
fn an_admin_port_in_use_ends_it_too_and_bind_retry_ms_sets_the_window() {
    let (_held, admin) = held_port();
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let worker: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let policy = policy_text(proxy, admin, &[worker], "").replace(
        "drain_timeout_ms = 5000\n",
        "drain_timeout_ms = 5000\nbind_retry_ms = 0\n",
    );
    let (status, stderr, ran) = run_until_exit(&policy, Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("still running after 10 s: {stderr}"));
    println!("exited {status} after {ran:?}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l == format!("admin listener {admin}: address in use")),
        "{stderr}"
    );
    assert!(ran < Duration::from_secs(2), "one try only: {ran:?}");
}

#[test]
fn a_port_freed_within_the_retry_window_is_served() {
    let (held, proxy) = held_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let be = backend(1);
    let policy = policy_text(proxy, admin, &be.addrs(), "").replace(
        "drain_timeout_ms = 5000\n",
        "drain_timeout_ms = 5000\nbind_retry_ms = 20000\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sloguard.toml");
    std::fs::write(&path, policy).unwrap();
    let mut child = Command::new(sloguard_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The previous owner lets go while sloguard retries (a restart whose old process is
    // still closing).
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served = false;
    while Instant::now() < deadline && !served {
        assert!(child.try_wait().unwrap().is_none(), "sloguard exited");
        served = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(100)).is_ok()
            && std::net::TcpStream::connect_timeout(&proxy, Duration::from_millis(100)).is_ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "both listeners up once the port was free");
}
