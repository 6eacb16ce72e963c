//! A CPU limit on one process, as a Kubernetes `resources.limits.cpu` sets it: a CFS quota
//! in a cgroup of its own (period 100 ms, the kubelet's default), cgroup v2 (`cpu.max`) or
//! v1 (`cpu.cfs_quota_us`). Removed on drop (the process goes back to the root group).

use std::path::{Path, PathBuf};

/// Kubernetes' CFS period, µs.
const PERIOD_US: u64 = 100_000;

#[derive(Debug)]
pub struct CpuLimit {
    dir: PathBuf,
    root_procs: PathBuf,
    pid: u32,
}

impl CpuLimit {
    /// Limits process `pid` (all its threads) to `cores` CPUs.
    pub fn apply(pid: u32, cores: f64) -> anyhow::Result<CpuLimit> {
        let quota = ((cores * PERIOD_US as f64) as u64).max(1000);
        let name = format!("sloguard-bench-{}-{pid}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists();
        let (root, dir) = if v1 {
            let root = PathBuf::from("/sys/fs/cgroup/cpu");
            (root.clone(), root.join(name))
        } else {
            let root = PathBuf::from("/sys/fs/cgroup");
            let controllers = std::fs::read_to_string(root.join("cgroup.subtree_control"))?;
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                std::fs::write(root.join("cgroup.subtree_control"), "+cpu")?;
            }
            (root.clone(), root.join(name))
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create cgroup {}: {e}", dir.display()))?;
        if v1 {
            std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
        } else {
            std::fs::write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))?;
        }
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        Ok(CpuLimit {
            dir,
            root_procs: root.join("cgroup.procs"),
            pid,
        })
    }

    /// How many times the group was throttled, and for how long in all (ms), so far.
    pub fn throttled(&self) -> Option<(u64, f64)> {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        let periods = field("nr_throttled")?;
        let ms = field("throttled_time")
            .map(|ns| ns as f64 / 1e6)
            .or_else(|| field("throttled_usec").map(|us| us as f64 / 1e3))?;
        Some((periods, ms))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.root_procs, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
