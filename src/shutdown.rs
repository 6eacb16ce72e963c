//! How sloguard stops, and a stop that always ends.
//!
//! [`StopOnSignal`] is the server's signal watch. SIGTERM drains: the proxy stops
//! accepting, `/readyz` says draining, keep-alive connections close after their current
//! answer, and once nothing is in flight (or the drain timeout passed) Pingora is told to
//! terminate; it stops the other services and its runtimes and `Server::run` returns, so
//! the binary exits from `main`. Pingora's own graceful stop would instead sleep out a
//! fixed grace period whatever is in flight, which is why the drain used to end the
//! process from inside the library. SIGINT stops at once, and cuts a drain short.
//!
//! A runtime that does not come down, an accept loop
//! spinning on "A Tokio 1.x context was found, but it is being shutdown" (seen: it logged
//! for minutes and never exited), or a task that never yields would keep the process up
//! forever, and a kubelet waits `terminationGracePeriodSeconds` before killing it. The
//! watchdog here is outside every runtime: a thread of its own that, once a stop signal
//! arrives, gives the process its bound ([`bound`]) and then ends it with status 2 and one
//! line saying why.

// The stop: timers on the wall clock, and the watchdog that ends a stuck process.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::state::State;

/// What the process was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT: stop now.
    Fast,
    /// SIGTERM: drain in-flight requests first.
    Graceful,
}

/// Time allowed beyond the drain (or for a fast stop): Pingora's runtime shutdown timeout
/// (1 s) and a margin for the exit itself.
pub const SLACK: Duration = Duration::from_secs(5);

/// How long a stop may take before the watchdog ends the process.
pub fn bound(stop: Stop, drain_timeout: Duration) -> Duration {
    match stop {
        Stop::Fast => SLACK,
        Stop::Graceful => drain_timeout + SLACK,
    }
}

/// The server's signal watch (see the module doc). SIGQUIT, Pingora's zero-downtime
/// upgrade, drains like SIGTERM: sloguard hands no listeners over.
pub struct StopOnSignal {
    state: Arc<State>,
}

impl StopOnSignal {
    pub fn new(state: Arc<State>) -> StopOnSignal {
        StopOnSignal { state }
    }
}

#[async_trait]
impl ShutdownSignalWatch for StopOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut int), Ok(mut term), Ok(mut quit)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot watch SIGINT/SIGTERM/SIGQUIT: only a kill stops sloguard");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
            _ = term.recv() => {}
            _ = quit.recv() => {}
        }
        tokio::select! {
            biased;
            _ = int.recv() => {
                tracing::warn!(
                    left = self.state.lifecycle.requests_in_flight(),
                    begun = self.state.lifecycle.requests_begun(),
                    "SIGINT while draining: stopping now"
                );
                ShutdownSignal::FastShutdown
            }
            () = drain(&self.state) => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// Stops the proxy taking requests and waits until none is in flight, or the drain
/// timeout: in-flight requests are answered, and an idle proxy does not linger.
async fn drain(state: &State) {
    state.lifecycle.stop_proxy();
    let timeout = state.policy().listen.drain_timeout;
    let started = Instant::now();
    tracing::info!(
        in_flight = state.lifecycle.requests_in_flight(),
        begun = state.lifecycle.requests_begun(),
        timeout_ms = timeout.as_millis() as u64,
        "SIGTERM: draining"
    );
    // Nothing held, seen twice a tick apart: a connection whose next head arrived at the
    // moment of the stop counts it (`Lifecycle::request_begun`) within that tick.
    let mut idle_ticks = 0;
    while idle_ticks < 2 && started.elapsed() < timeout {
        if !state.lifecycle.holds_requests() {
            idle_ticks += 1;
        } else {
            idle_ticks = 0;
        }
        if idle_ticks < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let left = state
        .lifecycle
        .requests_in_flight()
        .max(state.lifecycle.requests_begun());
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout: stopping with requests still in flight"
        );
    } else {
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "drained; stopping"
        );
    }
}

/// Starts the watchdog thread. `drain_timeout` is the policy's `listen.drain_timeout_ms`.
pub fn arm_watchdog(drain_timeout: Duration) {
    let spawned = std::thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "stop watchdog: no runtime; a stuck stop will not be ended");
                    return;
                }
            };
            rt.block_on(watch(drain_timeout));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "stop watchdog: cannot start its thread");
    }
}

async fn watch(drain_timeout: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("stop watchdog: cannot watch SIGINT/SIGTERM");
        return;
    };
    let stop = tokio::select! {
        _ = int.recv() => Stop::Fast,
        _ = term.recv() => Stop::Graceful,
    };
    let limit = bound(stop, drain_timeout);
    // A SIGINT after a SIGTERM shortens the wait to the fast bound.
    let started = tokio::time::Instant::now();
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut stop = stop;
    loop {
        tokio::select! {
            () = &mut deadline => break,
            _ = int.recv(), if stop == Stop::Graceful => {
                stop = Stop::Fast;
                deadline.as_mut().reset(tokio::time::Instant::now() + SLACK);
            }
        }
    }
    let waited = started.elapsed();
    eprintln!(
        "sloguard: still running {:.1} s after {} (bound {:.1} s); exiting (stop watchdog)",
        waited.as_secs_f64(),
        match stop {
            Stop::Fast => "SIGINT",
            Stop::Graceful => "SIGTERM",
        },
        limit.as_secs_f64()
    );
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graceful_stop_may_take_the_drain_and_the_slack_a_fast_one_only_the_slack() {
        let drain = Duration::from_secs(10);
        assert_eq!(bound(Stop::Graceful, drain), Duration::from_secs(15));
        assert_eq!(bound(Stop::Fast, drain), SLACK);
    }
}
