//! `profile`: closed-loop load on one contender for a while, optionally recorded by
//! `perf record -g` on the proxy's pid, to see where its CPU per request goes. Prints the
//! throughput of each contender; writes nothing but the perf data file.
//!
//! With `--syscalls`, each contender gets one more pass, not measured for throughput, under
//! `perf stat`: context switches, CPU and system calls (in all and one by one) per request.
//! With `--pool RATE`, the same counts again under the lifecycle scenario's traffic shape:
//! an open loop at RATE requests/s spread over 1250 client connections (each request its
//! own wake-up, nothing batched), where a closed loop on 32 connections is the best case.
//! They compare across contenders where a CPU profile of a loopback hop mostly shows the
//! kernel. (`strace -c` slows a proxy so much that its loop turns over fewer events per
//! wake-up, and its counts per request are not the real ones.)

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{say, Env, ProxyKind, SLOGUARD_OFF};
use crate::configs::Balance;
use crate::loadgen::{self, ClosedLoop, Mix, PoolLoop, Stretch};

/// Runs sloguard (enforce, limit pinned), sloguard (off), bare Pingora and nginx for `secs`
/// each, closed loop on `GET /healthz`; with `perf_out`, records sloguard (enforce) with
/// perf (and bare Pingora to `perf_out.bare`); with `syscalls`, counts their system calls
/// per request.
pub fn run(
    env: &Env,
    secs: u64,
    perf_out: Option<&str>,
    syscalls: bool,
    pool_rate: Option<f64>,
) -> anyhow::Result<()> {
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
        ("HAProxy leastconn", ProxyKind::Haproxy(Balance::LeastConn)),
    ];
    let mut tables = Vec::new();
    let mut pooled = Vec::new();
    for (name, kind) in kinds {
        if !env.available(Some(kind)) {
            say(format!("profile: {name} not available, skipped"));
            continue;
        }
        let running = env.proxy(kind, &backend.addrs)?;
        // sloguard (enforce) to FILE, bare Pingora to FILE.bare: the two profiles side by
        // side say which of sloguard's functions cost more than Pingora's own path.
        let perf_file = match (kind, perf_out) {
            (
                ProxyKind::Sloguard {
                    mode: "enforce", ..
                },
                Some(out),
            ) => Some(out.to_string()),
            (ProxyKind::BarePingora, Some(out)) => Some(format!("{out}.bare")),
            _ => None,
        };
        let perf = match perf_file {
            Some(out) => Some(
                Command::new("perf")
                    .args(["record", "-g", "-F", "2000", "-o", &out, "-p"])
                    .arg(running.proc.pid().to_string())
                    .spawn()?,
            ),
            None => None,
        };
        let pids = running.proc.tree_pids();
        let cpu_before = crate::foreign::user_and_system_secs(&pids);
        let s = env.closed(&[running.addr], &cfg)?;
        let cpu_after = crate::foreign::user_and_system_secs(&pids);
        if let Some(p) = perf {
            stop_tool(p)?;
        }
        // The warm-up's requests are not counted; at a steady rate it made as many per
        // second as the measured stretch.
        let sent = s.rps * (cfg.warmup + cfg.duration).as_secs_f64();
        let per_request = |before: f64, after: f64| {
            if sent > 0.0 {
                (after - before) / sent * 1e6
            } else {
                f64::NAN
            }
        };
        let user_us = per_request(cpu_before.0, cpu_after.0);
        let system_us = per_request(cpu_before.1, cpu_after.1);
        let cpu_us = user_us + system_us;
        say(format!(
            "profile: {name}: {:.0} req/s, errors {}, {cpu_us:.1} us of proxy CPU per request, \
             system-under-test CPU {:?}, generator CPU {:?}",
            s.rps, s.errors, s.cpu_sut, s.cpu_gen
        ));
        if syscalls {
            // No warm-up: every request the counters see is counted.
            let closed = ClosedLoop {
                warmup: Duration::ZERO,
                duration: Duration::from_secs(secs.clamp(2, 10)),
                ..cfg
            };
            let mut counts = count_per_request(&pids, &env.path("perf-stat.csv"), || {
                Ok(env.closed(&[running.addr], &closed)?.requests)
            })?;
            counts.user_us = user_us;
            counts.system_us = system_us;
            say(format!("profile: {name}: {counts}"));
            tables.push((name, counts));
        }
        if let Some(rate) = pool_rate {
            let pool = PoolLoop {
                connections: super::lifecycle::CONNECTIONS,
                schedule: vec![Stretch {
                    rate,
                    secs: secs.clamp(2, 10) as f64,
                }],
                mix: Mix::Health,
                timeout: env.plan.timeout,
            };
            let answered = || -> anyhow::Result<u64> {
                let outcomes = env.rt.block_on(loadgen::pool_loop(running.addr, &pool))?;
                Ok(outcomes.iter().filter(|o| o.outcome.status == 200).count() as u64)
            };
            // CPU first, untraced; then the counters.
            let before = crate::foreign::user_and_system_secs(&pids);
            let n = answered()?.max(1) as f64;
            let after = crate::foreign::user_and_system_secs(&pids);
            let mut counts = count_per_request(&pids, &env.path("perf-stat-pool.csv"), answered)?;
            counts.user_us = (after.0 - before.0) / n * 1e6;
            counts.system_us = (after.1 - before.1) / n * 1e6;
            say(format!(
                "profile: {name}, {rate} req/s on {} connections: {counts}",
                pool.connections
            ));
            pooled.push((name, counts));
        }
    }
    if !tables.is_empty() {
        say(format!("per request, closed loop:\n{}", render(&tables)));
    }
    if let Some(rate) = pool_rate {
        say(format!(
            "per request, open loop at {rate} req/s on {} connections:\n{}",
            super::lifecycle::CONNECTIONS,
            render(&pooled)
        ));
    }
    Ok(())
}

/// What one contender does per request, from the two traced passes.
struct PerRequest {
    context_switches: f64,
    /// CPU in user space and in the kernel, from the measured pass (no tracer: the
    /// tracepoints make each system call dearer).
    user_us: f64,
    system_us: f64,
    syscalls: f64,
    /// System call name -> calls per request.
    by_name: BTreeMap<String, f64>,
}

impl std::fmt::Display for PerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} syscalls, {:.2} context switches, {:.1} + {:.1} us CPU (user + kernel) per request",
            self.syscalls, self.context_switches, self.user_us, self.system_us
        )
    }
}

/// System calls counted one by one (their `syscalls:sys_enter_*` tracepoints): what a
/// proxy hop can make per request. Others show only in the total.
const TRACED_SYSCALLS: [&str; 22] = [
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "accept4",
    "connect",
    "socket",
    "close",
    "setsockopt",
    "getsockopt",
    "getpeername",
    "getsockname",
    "futex",
    "sched_yield",
    "clock_nanosleep",
];

/// Runs `load` (which returns how many requests were answered) under `perf stat` on `pids`,
/// its counts written to `stat_out` (in the run's directory, kept with `--keep-temp`).
fn count_per_request(
    pids: &[u32],
    stat_out: &std::path::Path,
    load: impl FnOnce() -> anyhow::Result<u64>,
) -> anyhow::Result<PerRequest> {
    let pid_list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut events = String::from("context-switches,raw_syscalls:sys_enter");
    for name in TRACED_SYSCALLS {
        events += &format!(",syscalls:sys_enter_{name}");
    }
    let stat = Command::new("perf")
        .args(["stat", "-x", ",", "-e", &events, "-o"])
        .arg(stat_out)
        .args(["-p", &pid_list])
        .stderr(Stdio::null())
        .spawn()?;
    // perf attaches in well under this; a request it misses is one fewer counted.
    std::thread::sleep(Duration::from_millis(300));
    let answered = load();
    stop_tool(stat)?;
    let requests = answered?.max(1) as f64;
    let text = std::fs::read_to_string(stat_out)?;
    let per = |event: &str| parse_perf_stat(&text, event).map(|v| v / requests);
    let by_name = TRACED_SYSCALLS
        .iter()
        .filter_map(|name| {
            Some((
                name.to_string(),
                per(&format!("syscalls:sys_enter_{name}"))?,
            ))
        })
        .collect();
    Ok(PerRequest {
        context_switches: per("context-switches").unwrap_or(f64::NAN),
        user_us: f64::NAN,
        system_us: f64::NAN,
        syscalls: per("raw_syscalls:sys_enter").unwrap_or(f64::NAN),
        by_name,
    })
}

/// SIGINT makes perf write its output and exit. Waits as long as that takes: a `Proc`'s
/// drop would kill it after 5 s, cutting a large `perf record` file short.
fn stop_tool(mut child: Child) -> anyhow::Result<()> {
    // SAFETY: kill has no memory preconditions; the pid is our own un-reaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait()?;
    Ok(())
}

/// The value of `event` in `perf stat -x,` output (`value,unit,event,...`).
fn parse_perf_stat(text: &str, event: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f.len() > 2 && f[2] == event).then(|| f[0].parse().ok())?
    })
}

/// A table: one column per contender, rows for the totals and each system call that some
/// contender makes at least once per 20 requests.
fn render(tables: &[(&str, PerRequest)]) -> String {
    let mut s = String::from("| per request |");
    for (name, _) in tables {
        s += &format!(" {name} |");
    }
    s += "\n| --- |";
    s += &" --- |".repeat(tables.len());
    s += "\n";
    let mut row = |label: &str, cell: &dyn Fn(&PerRequest) -> f64, digits: usize| {
        s += &format!("| {label} |");
        for (_, t) in tables {
            s += &format!(" {:.*} |", digits, cell(t));
        }
        s += "\n";
    };
    row("CPU, user (us)", &|t| t.user_us, 1);
    row("CPU, kernel (us)", &|t| t.system_us, 1);
    row("context switches", &|t| t.context_switches, 2);
    row("system calls", &|t| t.syscalls, 2);
    let mut names: Vec<&String> = tables
        .iter()
        .flat_map(|(_, t)| t.by_name.iter())
        .filter(|(_, per)| **per >= 0.05)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names.dedup();
    for n in names {
        row(
            &format!("`{n}`"),
            &|t| t.by_name.get(n).copied().unwrap_or(0.0),
            2,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_stat_csv() {
        let text = "# started on Mon\n\n1234,,context-switches,5000,100.00,,\n\
                    2500.5,msec,task-clock,5000,100.00,0.5,CPUs utilized\n\
                    99,,raw_syscalls:sys_enter,5000,100.00,,\n";
        assert_eq!(parse_perf_stat(text, "context-switches"), Some(1234.0));
        assert_eq!(parse_perf_stat(text, "task-clock"), Some(2500.5));
        assert_eq!(parse_perf_stat(text, "raw_syscalls:sys_enter"), Some(99.0));
        assert_eq!(parse_perf_stat(text, "cycles"), None);
    }
}
