//! Container limits on one process, as Kubernetes sets them, each in a cgroup of its own and
//! removed on drop (the process goes back to the root group):
//! - [`CpuLimit`], `resources.limits.cpu`: a CFS quota (period 100 ms, the kubelet's
//!   default), cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`);
//! - [`MemoryLimit`], `resources.limits.memory`: cgroup v1 `memory.limit_in_bytes`.

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

    // The test harness's kubelet (tests/common/kubelet.rs, which shares this file) reads it.
    #[allow(dead_code)]
    /// The CFS periods in which the group had work, and those in which it was throttled, so
    /// far: what cAdvisor exports as `container_cpu_cfs_periods_total` and
    /// `container_cpu_cfs_throttled_periods_total`.
    pub fn periods(&self) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        Some((
            stat_field(&text, "nr_periods")?,
            stat_field(&text, "nr_throttled")?,
        ))
    }

    /// How many times the group was throttled, and for how long in all (ms), so far.
    pub fn throttled(&self) -> Option<(u64, f64)> {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let field = |name: &str| stat_field(&text, name);
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

/// A `name value` line of a cgroup stat file.
fn stat_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// A memory limit on one process (cgroup v1). The group is joined with no limit first;
/// [`MemoryLimit::set`] then sets the limit. The kernel charges a group the pages its
/// processes touch after they join (it no longer moves earlier charges), so a process should
/// join as it starts, as a container's does.
// Used by the test harness's kubelet (tests/common/kubelet.rs, which shares this file).
#[allow(dead_code)]
#[derive(Debug)]
pub struct MemoryLimit {
    dir: PathBuf,
    root_procs: PathBuf,
    pid: u32,
}

#[allow(dead_code)]
impl MemoryLimit {
    /// Moves process `pid` into a memory group of its own, with no limit yet.
    pub fn join(pid: u32) -> anyhow::Result<MemoryLimit> {
        let root = PathBuf::from("/sys/fs/cgroup/memory");
        if !root.join("memory.limit_in_bytes").exists() {
            anyhow::bail!("no cgroup v1 memory controller at {}", root.display());
        }
        let dir = root.join(format!("sloguard-bench-{}-{pid}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create cgroup {}: {e}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        Ok(MemoryLimit {
            dir,
            root_procs: root.join("cgroup.procs"),
            pid,
        })
    }

    /// The working set, bytes: usage less the inactive file pages the kernel can drop at
    /// once, as cAdvisor computes `container_memory_working_set_bytes`.
    pub fn working_set(&self) -> Option<u64> {
        let usage: u64 = std::fs::read_to_string(self.dir.join("memory.usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).ok()?;
        Some(usage.saturating_sub(stat_field(&stat, "total_inactive_file").unwrap_or(0)))
    }

    /// The limit, bytes; `None` while there is none (the kernel's "unlimited" is a huge
    /// number, which cAdvisor reports as 0).
    pub fn limit(&self) -> Option<u64> {
        let bytes: u64 = std::fs::read_to_string(self.dir.join("memory.limit_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (bytes < 1 << 60).then_some(bytes)
    }

    /// Sets the limit, bytes.
    pub fn set(&self, bytes: u64) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("memory.limit_in_bytes"), bytes.to_string())?;
        Ok(())
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("memory.limit_in_bytes"), "-1");
        let _ = std::fs::write(&self.root_procs, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
