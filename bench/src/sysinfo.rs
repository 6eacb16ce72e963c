//! What the machine is (cores, CPU model, memory, tool versions) and how busy each CPU was
//! over a stretch, from /proc; the parsing is pure and unit-tested.

use std::process::Command;

use serde::Serialize;

/// Busy and total jiffies of one CPU (`cpuN` line of /proc/stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub cpu: usize,
    pub busy: u64,
    pub total: u64,
}

/// Parses the per-CPU lines of /proc/stat: busy is user, nice, system, irq and softirq;
/// the total adds idle, iowait and steal (time the hypervisor gave to someone else).
pub fn parse_proc_stat(text: &str) -> Vec<CpuTimes> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            let f = |i: usize| v.get(i).copied().unwrap_or(0);
            let busy = f(0) + f(1) + f(2) + f(5) + f(6);
            Some(CpuTimes {
                cpu,
                busy,
                total: busy + f(3) + f(4) + f(7),
            })
        })
        .collect()
}

/// The per-CPU times now (empty if /proc/stat cannot be read).
pub fn cpu_times() -> Vec<CpuTimes> {
    std::fs::read_to_string("/proc/stat")
        .map(|t| parse_proc_stat(&t))
        .unwrap_or_default()
}

/// Busy share (0..1) of each CPU between two readings.
pub fn busy_shares(before: &[CpuTimes], after: &[CpuTimes]) -> Vec<f64> {
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.cpu == a.cpu)?;
            let total = a.total.saturating_sub(b.total);
            (total > 0).then(|| a.busy.saturating_sub(b.busy) as f64 / total as f64)
        })
        .collect()
}

/// The machine and tools, as written at the top of BENCHMARKS.md.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub nginx: String,
    pub haproxy: String,
    pub redis: String,
}

/// Everything after the first `:` of the `lscpu` line that starts with `key`.
pub fn lscpu_field(lscpu: &str, key: &str) -> Option<String> {
    lscpu
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `MemTotal` of /proc/meminfo, as GiB with one decimal.
pub fn mem_total_gib(meminfo: &str) -> Option<f64> {
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}

fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("unknown").trim().to_string()
}

pub fn describe(nginx: Option<&str>, haproxy: Option<&str>, redis: Option<&str>) -> Machine {
    let lscpu = run("lscpu", &[]);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: lscpu_field(&lscpu, "Model name").unwrap_or_else(|| "unknown".into()),
        memory: mem_total_gib(&meminfo).map_or("unknown".into(), |g| format!("{g} GiB")),
        kernel: first_line(&run("uname", &["-sr"])),
        rustc: first_line(&run("rustc", &["--version"])),
        nginx: nginx.map_or("not available".into(), |n| first_line(&run(n, &["-v"]))),
        haproxy: haproxy.map_or("not available".into(), |h| first_line(&run(h, &["-v"]))),
        redis: redis.map_or("redis-server not available".into(), |r| {
            first_line(&run(r, &["--version"]))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10 0 10 80 0 0 0 0 0 0\n\
                        cpu0 5 0 5 40 0 0 0 0 0 0\n\
                        cpu1 5 0 5 38 1 0 0 1 0 0\nintr 1 2 3\n";

    #[test]
    fn parses_per_cpu_lines_only() {
        let t = parse_proc_stat(STAT);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            CpuTimes {
                cpu: 0,
                busy: 10,
                total: 50
            }
        );
        assert_eq!(
            t[1],
            CpuTimes {
                cpu: 1,
                busy: 10,
                total: 50
            }
        );
    }

    #[test]
    fn busy_share_is_the_busy_part_of_elapsed_time() {
        let before = parse_proc_stat(STAT);
        let after = vec![
            CpuTimes {
                cpu: 0,
                busy: 60,
                total: 150,
            },
            CpuTimes {
                cpu: 1,
                busy: 10,
                total: 150,
            },
        ];
        let s = busy_shares(&before, &after);
        assert!((s[0] - 0.5).abs() < 1e-9 && s[1].abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn reads_lscpu_and_meminfo() {
        let l = "Architecture: x86_64\nModel name:      AMD EPYC 7B13\n";
        assert_eq!(
            lscpu_field(l, "Model name").as_deref(),
            Some("AMD EPYC 7B13")
        );
        assert_eq!(mem_total_gib("MemTotal:       25165824 kB\n"), Some(24.0));
    }
}
