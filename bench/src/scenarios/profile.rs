//! `profile`: closed-loop load on one contender for a while, optionally recorded by
//! `perf record -g` on the proxy's pid, to see where its CPU per request goes. Prints the
//! throughput of each contender; writes nothing but the perf data file.

use std::process::Command;
use std::time::Duration;

use super::{say, Env, ProxyKind, SLOGUARD_OFF};
use crate::configs::Balance;
use crate::loadgen::{ClosedLoop, Mix};

/// Runs sloguard (enforce, limit pinned), sloguard (off) and nginx for `secs` each, closed
/// loop on `GET /healthz`; with `perf_out`, records sloguard (enforce) with perf.
pub fn run(env: &Env, secs: u64, perf_out: Option<&str>) -> anyhow::Result<()> {
    let backend = env.backend(4, &[])?;
    let cfg = ClosedLoop {
        connections: env.plan.closed_connections,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(secs),
        mix: Mix::Health,
    };
    let kinds = [
        (
            "sloguard (enforce)",
            ProxyKind::Sloguard {
                mode: "enforce",
                fixed_limit: Some(1024),
            },
        ),
        ("sloguard (off)", SLOGUARD_OFF),
        ("Pingora (bare)", ProxyKind::BarePingora),
        ("nginx round-robin", ProxyKind::Nginx(Balance::RoundRobin)),
    ];
    for (i, (name, kind)) in kinds.into_iter().enumerate() {
        if !env.available(Some(kind)) {
            say(format!("profile: {name} not available, skipped"));
            continue;
        }
        let running = env.proxy(kind, &backend.addrs)?;
        let perf = match (i, perf_out) {
            (0, Some(out)) => Some(
                Command::new("perf")
                    .args(["record", "-g", "-F", "2000", "-o", out, "-p"])
                    .arg(running.proc.pid().to_string())
                    .spawn()?,
            ),
            _ => None,
        };
        let s = env.closed(&[running.addr], &cfg)?;
        if let Some(mut p) = perf {
            // SIGINT makes perf write its file and exit.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            p.wait()?;
        }
        say(format!(
            "profile: {name}: {:.0} req/s, errors {}, system-under-test CPU {:?}, generator CPU {:?}",
            s.rps, s.errors, s.cpu_sut, s.cpu_gen
        ));
    }
    Ok(())
}
