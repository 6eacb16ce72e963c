//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), as every Prometheus
//! client library exports them, so the usual "pod restarted", "near its memory limit" and "fd
//! exhaustion" queries work on sloguard unchanged. Read from `/proc` when `/metrics` is
//! scraped, not on a timer: nothing is spent while nobody looks. The parsing is pure and
//! tested on fixed text; only [`render`] touches the file system.

use std::fmt::Write;

/// What `/proc/self/stat` and `/proc/stat` say about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, clock ticks.
    pub start_ticks: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parses a `/proc/PID/stat` line: fields 14-15 (utime, stime), 22 (starttime) and 24 (rss),
/// counted with the state after the `(comm)` as field 3 (a comm may hold spaces and `)`).
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let after = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The process metrics in Prometheus text format, from parsed values.
pub fn format(
    stat: &ProcStat,
    boot_time: u64,
    ticks_per_sec: u64,
    page_size: u64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
) -> String {
    let hz = ticks_per_sec.max(1) as f64;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stat.cpu_ticks as f64 / hz,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        (stat.rss_pages * page_size) as f64,
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        boot_time as f64 + stat.start_ticks as f64 / hz,
    );
    if let Some(n) = open_fds {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            n as f64,
        );
    }
    if let Some(n) = max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            n as f64,
        );
    }
    out
}

/// The process metrics of this process, read now; empty where `/proc` is not there.
pub fn render() -> String {
    let (Some(stat), Some(boot)) = (
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s)),
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s)),
    ) else {
        return String::new();
    };
    // SAFETY: sysconf has no memory preconditions.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    format(
        &stat,
        boot,
        hz.max(1) as u64,
        page.max(1) as u64,
        open_fds,
        crate::resources::fd_limit(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss ...
    const STAT: &str = "4242 (sloguard (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                        250 50 7 3 20 0 3 0 12345 1500000000 5120 18446744073709551615";

    #[test]
    fn reads_cpu_start_and_rss_even_with_a_paren_in_the_name() {
        assert_eq!(
            parse_stat(STAT),
            Some(ProcStat {
                cpu_ticks: 300,
                start_ticks: 12345,
                rss_pages: 5120,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1764700000\nprocesses 9\n"),
            Some(1_764_700_000)
        );
        assert_eq!(parse_boot_time("cpu  1 2 3\n"), None);
    }

    #[test]
    fn formats_the_standard_names_with_help_and_type() {
        let text = format(
            &parse_stat(STAT).unwrap(),
            1_764_700_000,
            100,
            4096,
            Some(17),
            Some(20000),
        );
        for line in [
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total 3\n",
            "process_resident_memory_bytes 20971520\n",
            "process_start_time_seconds 1764700123.45\n",
            "process_open_fds 17\n",
            "process_max_fds 20000\n",
            "# HELP process_open_fds Number of open file descriptors.",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(!format(&parse_stat(STAT).unwrap(), 0, 100, 4096, None, None).contains("fds"));
    }

    #[test]
    fn this_process_reports_itself() {
        let text = render();
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
    }
}
