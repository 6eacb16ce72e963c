//! The kubelet's part in the on-call timeline: it sets the sloguard container's CPU and
//! memory limits (real cgroups, see `cgroup`) and serves the container metrics its cAdvisor
//! would, which `SloguardCPUThrottled` and `SloguardMemoryNearLimit` read: the names, the
//! labels (`namespace`, `pod`, `container`, as kube-prometheus-stack scrapes them) and the
//! values cAdvisor computes from the same cgroup files (CFS periods and throttled periods
//! from `cpu.stat`, the working set as usage less inactive file pages, the limit, 0 when
//! there is none). A CPU series exists only while a quota is set, as with cAdvisor. The
//! numbers are the kernel's; only the exporter is ours, because cAdvisor itself is in none
//! of the registries reachable here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::cgroup::{CpuLimit, MemoryLimit};

/// The labels every series carries (the Prometheus job keeps them: `honor_labels`).
const LABELS: &str = r#"namespace="oncall",pod="sloguard-0",container="sloguard""#;

#[derive(Debug, Default)]
struct Limits {
    cpu: Option<CpuLimit>,
    memory: Option<MemoryLimit>,
    /// The share of the memory limit the working set is held at, while
    /// [`Kubelet::hold_memory_at`] is in force.
    memory_held_at: Option<f64>,
}

/// How far the working set may drift from the held share before the limit follows it.
const HELD_BAND: f64 = 0.02;

pub struct Kubelet {
    /// Where Prometheus scrapes the container metrics.
    pub addr: SocketAddr,
    limits: Arc<Mutex<Limits>>,
    server: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Starts serving on a free port (no limit set yet).
    pub async fn spawn() -> Kubelet {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Arc::new(Mutex::new(Limits::default()));
        let served = limits.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let limits = served.clone();
                tokio::spawn(async move {
                    // One scrape per connection: read the request head, answer, close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = exposition(&limits.lock().unwrap_or_else(PoisonError::into_inner));
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        Kubelet {
            addr,
            limits,
            server,
        }
    }

    fn limits(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `resources.limits.cpu` of `cores` on process `pid`.
    pub fn limit_cpu(&self, pid: u32, cores: f64) -> anyhow::Result<()> {
        self.limits().cpu = Some(CpuLimit::apply(pid, cores)?);
        Ok(())
    }

    /// The CPU limit lifted; how often it throttled (periods, ms), if it was set.
    pub fn lift_cpu(&self) -> Option<(u64, f64)> {
        let limit = self.limits().cpu.take()?;
        limit.throttled()
    }

    /// Moves process `pid` into a memory group with no limit yet (as it starts: only pages
    /// touched after count); its working set, bytes.
    pub fn join_memory(&self, pid: u32) -> anyhow::Result<u64> {
        let group = MemoryLimit::join(pid)?;
        let working_set = group
            .working_set()
            .ok_or_else(|| anyhow::anyhow!("no memory usage readable for the group"))?;
        self.limits().memory = Some(group);
        Ok(working_set)
    }

    /// `resources.limits.memory` on the process joined by [`Kubelet::join_memory`], held so
    /// that its working set is `share` of the limit: set to working set / `share` now, then
    /// checked every second and moved with the working set when the share drifts more than
    /// two points. A container whose footprint sits at its limit, as the memory alert is
    /// written for; without the following, an allocator handing a burst's memory back over
    /// minutes dips the share under the alert's threshold and its `for: 5m` starts again
    /// (the first run at real time). Returns the first limit.
    pub fn hold_memory_at(&self, share: f64) -> anyhow::Result<u64> {
        let limit = {
            let mut limits = self.limits();
            let group = limits
                .memory
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no memory group joined"))?;
            let working_set = group
                .working_set()
                .ok_or_else(|| anyhow::anyhow!("no memory usage readable for the group"))?;
            let limit = (working_set as f64 / share) as u64;
            group.set(limit)?;
            limits.memory_held_at = Some(share);
            limit
        };
        let limits = self.limits.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let limits = limits.lock().unwrap_or_else(PoisonError::into_inner);
                let (Some(group), Some(share)) = (&limits.memory, limits.memory_held_at) else {
                    return;
                };
                if let (Some(working_set), Some(limit)) = (group.working_set(), group.limit()) {
                    if (working_set as f64 / limit as f64 - share).abs() > HELD_BAND {
                        let _ = group.set((working_set as f64 / share) as u64);
                    }
                }
            }
        });
        Ok(limit)
    }

    /// The memory limit of the joined group, bytes, if one is set.
    pub fn memory_limit(&self) -> Option<u64> {
        self.limits().memory.as_ref()?.limit()
    }

    /// The working set of the joined group, bytes.
    pub fn working_set(&self) -> Option<u64> {
        self.limits().memory.as_ref()?.working_set()
    }

    /// The memory limit lifted (the process leaves the group).
    pub fn lift_memory(&self) {
        let mut limits = self.limits();
        limits.memory = None;
        limits.memory_held_at = None;
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The container metrics for the limits in place now.
fn exposition(limits: &Limits) -> String {
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, value: u64| {
        out.push_str(&format!(
            "# TYPE {name} {kind}\n{name}{{{LABELS}}} {value}\n"
        ));
    };
    if let Some((periods, throttled)) = limits.cpu.as_ref().and_then(CpuLimit::periods) {
        series("container_cpu_cfs_periods_total", "counter", periods);
        series(
            "container_cpu_cfs_throttled_periods_total",
            "counter",
            throttled,
        );
    }
    if let Some(group) = &limits.memory {
        if let Some(working_set) = group.working_set() {
            series("container_memory_working_set_bytes", "gauge", working_set);
        }
        series(
            "container_spec_memory_limit_bytes",
            "gauge",
            group.limit().unwrap_or(0),
        );
    }
    out
}
