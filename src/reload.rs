//! Policy hot reload: a changed file, SIGHUP or `POST /reload` parses and validates the file
//! aside, then swaps the whole snapshot in (`State::apply`). A policy that fails validation is
//! refused: the running one keeps serving, and the error (file, line, key) is logged, counted
//! and shown on the status page.
//!
//! The file is polled (its bytes fingerprinted every second) rather than watched with
//! inotify: Kubernetes updates a ConfigMap by swapping a `..data` symlink in the parent
//! directory, editors save by renaming, and both defeat a watch on the file itself; reading a
//! few kilobytes a second costs nothing and sees every one of these.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{Policy, PolicyError};
use crate::state::{ReloadApplied, ReloadRecord, State};

/// How often the policy file is checked for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// Loads `path`, validates it and applies it; records the outcome either way.
pub fn reload(
    state: &State,
    path: &Path,
    trigger: &'static str,
) -> Result<ReloadApplied, PolicyError> {
    let outcome = Policy::load(path).map(|new| {
        let version = new.version.clone();
        if version == state.policy().version {
            return ReloadApplied {
                version,
                unchanged: true,
                notes: vec![],
            };
        }
        let notes = state.apply(new);
        ReloadApplied {
            version,
            unchanged: false,
            notes,
        }
    });
    match &outcome {
        Ok(applied) if !applied.unchanged => {
            state.telemetry.metrics().record_reload(true);
            tracing::info!(file = %path.display(), version = %applied.version, trigger, notes = ?applied.notes, "policy reloaded");
        }
        Ok(_) => {}
        Err(e) => {
            state.telemetry.metrics().record_reload(false);
            tracing::error!(error = %e, trigger, "policy refused; the running policy stays");
        }
    }
    let record = ReloadRecord {
        at: SystemTime::now(),
        trigger,
        result: outcome
            .as_ref()
            .map(Clone::clone)
            .map_err(ToString::to_string),
    };
    if outcome.as_ref().map_or(true, |a| !a.unchanged) {
        state.lifecycle.record_reload(record);
    }
    outcome
}

/// Watches the policy file and SIGHUP; runs until the task is dropped.
pub async fn watch(state: std::sync::Arc<State>, path: PathBuf) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads by file change and POST /reload only");
            None
        }
    };
    // The fingerprint of a file that failed: not retried (nor logged again) until it changes.
    let mut refused: Option<String> = None;
    loop {
        let by_signal = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if by_signal {
            let _ = reload(&state, &path, "sighup");
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            // Deleted or mid-swap: keep serving; a missing file is reported once.
            if refused.as_deref() != Some("missing") {
                tracing::warn!(file = %path.display(), "policy file unreadable; the running policy stays");
                refused = Some("missing".into());
            }
            continue;
        };
        let print = crate::config::locate::fingerprint(&bytes);
        if print == state.policy().version || refused.as_deref() == Some(print.as_str()) {
            continue;
        }
        refused = reload(&state, &path, "file").err().map(|_| print);
    }
}
