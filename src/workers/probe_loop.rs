//! The probe loop: every worker probed on `[upstream.probe] interval`, one probe per worker
//! at a time (a stalled worker does not pile them up), each keeping its connection for the
//! next. What a probe finds goes to the worker's health; a probe that failed for want of a
//! local resource is counted as ours, never held against the worker.

// I/O edge: stamps each probe's answer with the clock.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::probe::{probe, KeptConn, ProbeOutcome};
use super::{UpstreamConfig, WorkerSet};

/// How often a policy without `[upstream.probe]` is looked at again.
const PROBES_OFF_RECHECK: Duration = Duration::from_secs(1);

/// Probes the fleet `current` returns (read again each round, so a reload's workers and
/// settings apply at the next round); returns only with the runtime.
pub async fn run(current: impl Fn() -> (Arc<WorkerSet>, UpstreamConfig)) {
    let mut slots: Vec<Arc<ProbeSlot>> = Vec::new();
    loop {
        let (workers, upstream) = current();
        let Some(cfg) = upstream.probe.clone() else {
            tokio::time::sleep(PROBES_OFF_RECHECK).await;
            continue;
        };
        slots.resize_with(workers.len(), Default::default);
        for (w, slot) in workers.iter().zip(&slots) {
            if slot.busy.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (w, slot, cfg, header, health) = (
                w.clone(),
                slot.clone(),
                cfg.clone(),
                upstream.lag_header.clone(),
                upstream.health.clone(),
            );
            tokio::spawn(async move {
                let held_at_send = w.held_up();
                // The busy flag makes this task the slot's only user until it clears it.
                let mut kept = slot.take_conn();
                let outcome = probe(&w.addr, &cfg, &header, &mut kept).await;
                slot.put_conn(kept);
                match outcome {
                    ProbeOutcome::Answered(result) => {
                        w.on_probe_sent_at(&health, result, held_at_send, Instant::now())
                    }
                    ProbeOutcome::Local(shortage) => crate::resources::record(shortage),
                }
                slot.busy.store(false, Ordering::Release);
            });
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One worker's place in the probe loop: whether a probe of it is in flight, and the
/// connection its last probe left open for the next one.
#[derive(Debug, Default)]
struct ProbeSlot {
    busy: AtomicBool,
    conn: Mutex<Option<KeptConn>>,
}

impl ProbeSlot {
    fn take_conn(&self) -> Option<KeptConn> {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn put_conn(&self, conn: Option<KeptConn>) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
    }
}
