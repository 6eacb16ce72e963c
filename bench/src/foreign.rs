//! How much CPU processes that are not ours used during a measurement: the noise detector.
//! On a shared machine a compiler starting on the generator's core halves a closed-loop
//! result; we would rather measure again than publish that.
//!
//! Sums user+system time, children's included (a short-lived process's time lands in its
//! parent's when it is reaped), over every process outside our tree (this harness and its
//! descendants) and outside the kernel's threads (their softirq work is our own traffic's).

use std::collections::HashMap;
use std::time::Instant;

/// pid -> (parent pid, CPU ticks of the process and its reaped children).
pub type ProcTable = HashMap<u32, (u32, u64)>;

/// Parent pid and `utime + stime + cutime + cstime` from a /proc/PID/stat line.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
    let (user, system) = parse_user_system(stat)?;
    Some((ppid, user + system))
}

/// `utime + cutime` and `stime + cstime` from a /proc/PID/stat line, in clock ticks.
pub fn parse_user_system(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 4).then(|| (f[0] + f[2], f[1] + f[3]))
}

/// User and system CPU seconds `pids` have used so far (their reaped children's included).
pub fn user_and_system_secs(pids: &[u32]) -> (f64, f64) {
    let (mut user, mut system) = (0u64, 0u64);
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((u, s)) = parse_user_system(&stat) {
            user += u;
            system += s;
        }
    }
    (user as f64 / hz(), system as f64 / hz())
}

/// Every process now.
pub fn table() -> ProcTable {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return ProcTable::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&s)?))
        })
        .collect()
}

/// Whether `pid` descends from `root` (or is it).
fn descends(t: &ProcTable, mut pid: u32, root: u32) -> bool {
    for _ in 0..64 {
        if pid == root {
            return true;
        }
        match t.get(&pid) {
            Some(&(ppid, _)) if ppid != 0 && ppid != pid => pid = ppid,
            _ => return false,
        }
    }
    false
}

/// Ticks of every process that is neither in `me`'s tree nor a kernel thread (kthreadd,
/// pid 2, and its children).
pub fn foreign_ticks(t: &ProcTable, me: u32) -> u64 {
    t.iter()
        .filter(|(&pid, &(ppid, _))| pid != 2 && ppid != 2 && !descends(t, pid, me))
        .map(|(_, &(_, ticks))| ticks)
        .sum()
}

/// CPU time process `pid` and its children have used so far, seconds: user and system
/// time of each, with the children they reaped (nginx's workers replaced by a reload).
pub fn tree_secs(pid: u32) -> Option<f64> {
    let t = table();
    let own = t.get(&pid)?.1;
    let kids: u64 = t
        .values()
        .filter(|&&(ppid, _)| ppid == pid)
        .map(|&(_, ticks)| ticks)
        .sum();
    Some((own + kids) as f64 / hz())
}

/// Clock ticks per second (USER_HZ).
fn hz() -> f64 {
    // SAFETY: sysconf has no memory preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

/// A measurement window: [`Window::share`] is the foreign CPU used since it opened, in cores
/// (0.1 = a tenth of one core).
pub struct Window {
    ticks: u64,
    since: Instant,
}

impl Window {
    pub fn open() -> Window {
        Window {
            ticks: foreign_ticks(&table(), std::process::id()),
            since: Instant::now(),
        }
    }

    pub fn share(&self) -> f64 {
        let now = foreign_ticks(&table(), std::process::id());
        let secs = self.since.elapsed().as_secs_f64().max(1e-3);
        now.saturating_sub(self.ticks) as f64 / hz() / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_times() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let s = "42 (rustc (x)) R 7 42 42 0 -1 0 1 2 3 4 100 20 5 1 20 0";
        assert_eq!(parse_stat(s), Some((7, 126)));
        assert_eq!(parse_user_system(s), Some((105, 21)));
        assert_eq!(parse_stat("nonsense"), None);
        assert_eq!(parse_user_system("42 (x) S 1 2"), None);
    }

    #[test]
    fn only_processes_outside_our_tree_and_the_kernel_count() {
        let t: ProcTable = [
            (1, (0, 1000)),   // init: foreign
            (2, (0, 50)),     // kthreadd
            (30, (2, 70)),    // a kernel thread
            (100, (1, 5)),    // us
            (101, (100, 40)), // our backend
            (102, (101, 9)),  // its child
            (200, (1, 300)),  // someone's cargo
        ]
        .into_iter()
        .collect();
        assert_eq!(foreign_ticks(&t, 100), 1300);
    }
}
