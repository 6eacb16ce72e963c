//! A real Prometheus server (Debian's `prometheus`) on a free port, scraping one sloguard's
//! admin port and evaluating the shipped alerting and recording rules
//! (`k8s/monitoring/prometheus-rules.yaml`), time-scaled so an incident plays out in
//! seconds (see [`time_scaled_rules`]). Stopped on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, get_json, repo_root};

/// How much faster than real time the rules run: 5 minutes become 30 s. Not faster: sloguard's
/// own timings are real (an ejection lasts 1 s, then 2, 4...; slow start takes 3 s), and at
/// 30 times the 1-minute window of the ejection alert (2 s) was shorter than the gap between
/// two ejections of a worker that relapses, so the alert flapped where in real time it holds.
pub const TIME_SCALE: u64 = 10;

/// The scale of this run: [`TIME_SCALE`], unless `SLOGUARD_ONCALL_TIME_SCALE` says otherwise
/// (1 to 10; 1 is the shipped rules at real time, the full form `sloguard-bench oncall`
/// runs). Waits in the timelines stretch with it.
pub fn time_scale() -> u64 {
    std::env::var("SLOGUARD_ONCALL_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s| (1..=TIME_SCALE).contains(s))
        .unwrap_or(TIME_SCALE)
}

/// Range windows are never scaled below this: with a scrape every 500 ms it holds four
/// samples, and `rate` needs two.
const MIN_WINDOW_MS: u64 = 2000;

/// The shipped rules as a plain Prometheus rule file, every duration divided by `factor`:
/// the `for:` of each alert, each group's `interval:`, and every range window in the
/// expressions (`[5m]`; at least [`MIN_WINDOW_MS`]). The file in `k8s/` is the Prometheus
/// Operator's `PrometheusRule`; its `spec:` is the rule file Prometheus reads, one indent
/// deeper. Nothing else changes: the expressions, thresholds and labels are the shipped ones.
pub fn time_scaled_rules(factor: u64) -> String {
    let path = repo_root().join("k8s/monitoring/prometheus-rules.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let spec = text
        .split_once("\nspec:\n")
        .unwrap_or_else(|| panic!("{}: no spec", path.display()))
        .1;
    let mut out = String::new();
    for line in spec.lines() {
        let line = line.strip_prefix("  ").unwrap_or(line);
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let scaled = if let Some(ms) = trimmed.strip_prefix("for: ").and_then(millis) {
            format!("{indent}for: {}ms", scaled(ms, factor, 0))
        } else if let Some(ms) = trimmed.strip_prefix("interval: ").and_then(millis) {
            format!("{indent}interval: {}ms", scaled(ms, factor, 1000))
        } else {
            scale_windows(line, factor)
        };
        out.push_str(&scaled);
        out.push('\n');
    }
    out
}

/// A Prometheus duration of one unit (`30s`, `5m`, `1h`) in ms; `None` if `d` is not one.
fn millis(d: &str) -> Option<u64> {
    let d = d.trim();
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    })
}

fn scaled(ms: u64, factor: u64, floor: u64) -> u64 {
    (ms / factor).max(floor)
}

/// Every `[duration]` range window in `line`, scaled.
pub fn scale_windows(line: &str, factor: u64) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        let inside = &rest[open + 1..close];
        out.push_str(&rest[..open]);
        if let Some(ms) = millis(inside) {
            out.push_str(&format!("[{}ms]", scaled(ms, factor, MIN_WINDOW_MS)));
        } else {
            out.push_str(&rest[open..=close]);
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

pub struct Prometheus {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// How often [`Prometheus::spawn`] scrapes, ms.
pub const SCRAPE_MS: u64 = 500;

impl Prometheus {
    /// Starts Prometheus scraping `admin` (sloguard's admin port) every 500 ms, with the
    /// labels the PodMonitor would add, evaluating the rules at [`time_scale`] every second.
    /// Waits until it is ready.
    pub fn spawn(admin: SocketAddr) -> Prometheus {
        Prometheus::spawn_scraping(admin, None)
    }

    /// As [`Prometheus::spawn`], and also the container metrics `kubelet` serves (cAdvisor's
    /// job: the series carry their own labels, kept with `honor_labels`).
    pub fn spawn_with_kubelet(admin: SocketAddr, kubelet: SocketAddr) -> Prometheus {
        Prometheus::spawn_scraping(admin, Some(kubelet))
    }

    fn spawn_scraping(admin: SocketAddr, kubelet: Option<SocketAddr>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.yml"),
            time_scaled_rules(time_scale()),
        )
        .unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: {SCRAPE_MS}ms\n  scrape_timeout: {}ms\n  \
             evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  \
             - job_name: sloguard\n    static_configs:\n      - targets: [\"{admin}\"]\n        \
             labels: {{namespace: oncall, pod: sloguard-0, container: sloguard}}\n",
            SCRAPE_MS * 4 / 5
        );
        if let Some(kubelet) = kubelet {
            config.push_str(&format!(
                "  - job_name: kubelet-cadvisor\n    honor_labels: true\n    \
                 static_configs:\n      - targets: [\"{kubelet}\"]\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian: apt-get install prometheus)");
        let p = Prometheus {
            child: Some(child),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 16];
                s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.0 200"))
            });
            if ready {
                return p;
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    async fn api(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/{path}", self.port);
        let v = get_json(&url).await;
        assert_eq!(v["status"], "success", "{url}: {v}");
        v["data"].clone()
    }

    /// The alerts pending or firing now: (name, state), sorted.
    pub async fn alerts(&self) -> Vec<(String, String)> {
        let data = self.api("alerts").await;
        let mut out: Vec<(String, String)> = data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The names of the alerts firing now.
    pub async fn firing(&self) -> Vec<String> {
        self.alerts()
            .await
            .into_iter()
            .filter(|(_, state)| state == "firing")
            .map(|(name, _)| name)
            .collect()
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = url_encode(promql);
        let data = self.api(&format!("query?query={q}")).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Whether the scrape of sloguard has succeeded at least once.
    /// What Prometheus says of each of its scrape targets (URL, health, last error): for a
    /// test's message when a scrape it waits for never comes.
    pub async fn targets(&self) -> String {
        let data = self.api("targets").await;
        data["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {} {:?} (last scrape {}, took {}s)",
                            t["scrapeUrl"],
                            t["health"],
                            t["lastError"],
                            t["lastScrape"],
                            t["lastScrapeDuration"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| format!("no targets: {data}"))
    }

    /// Waits until `scraped` says Prometheus has scraped sloguard, at most `within`; if it
    /// never does, fails saying what Prometheus knows of its targets.
    pub async fn wait_first_scrape<F, Fut>(&self, within: Duration, mut scraped: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !scraped().await {
            if start.elapsed() > within {
                panic!(
                    "no first scrape of sloguard in {within:?}; Prometheus' targets: {}",
                    self.targets().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn scraped(&self) -> bool {
        !self
            .query("up{container=\"sloguard\"} == 1")
            .await
            .is_empty()
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
