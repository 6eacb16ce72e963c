//! The criterion micro-benchmarks of the decision paths (`benches/decisions.rs` in the root
//! crate): run them with short measurement times and read criterion's own estimates.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::scenarios::say;
use crate::setup;

/// One micro-benchmark's estimate, nanoseconds per iteration.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Micro {
    pub id: String,
    pub median_ns: f64,
    pub mean_ns: f64,
}

/// `cargo bench -p sloguard --bench decisions` with short warm-up and measurement times,
/// then the estimates criterion wrote during this run.
pub fn run(root: &Path, quick: bool) -> anyhow::Result<Vec<Micro>> {
    say("micro-benchmarks: cargo bench -p sloguard --bench decisions");
    let started = SystemTime::now();
    let (warm, measure) = if quick { ("0.2", "0.5") } else { ("0.5", "1") };
    let status = Command::new(setup::cargo())
        .args(["bench", "-p", "sloguard", "--bench", "decisions", "--"])
        .args(["--warm-up-time", warm, "--measurement-time", measure])
        .current_dir(root)
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    let dir = setup::target_dir(root).join("criterion");
    let mut out = Vec::new();
    collect(&dir, started, &mut out);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Walks criterion's output for `new/` dirs written since `since`.
fn collect(dir: &Path, since: SystemTime, out: &mut Vec<Micro>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let est = path.join("estimates.json");
            let fresh = std::fs::metadata(&est)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            let read = |f: &str| std::fs::read_to_string(path.join(f)).ok();
            if let (true, Some(b), Some(e)) =
                (fresh, read("benchmark.json"), read("estimates.json"))
            {
                out.extend(parse(&b, &e));
            }
        } else {
            collect(&path, since, out);
        }
    }
}

/// One benchmark from criterion's `benchmark.json` (its id) and `estimates.json`.
pub fn parse(benchmark: &str, estimates: &str) -> Option<Micro> {
    let b: serde_json::Value = serde_json::from_str(benchmark).ok()?;
    let e: serde_json::Value = serde_json::from_str(estimates).ok()?;
    Some(Micro {
        id: b["full_id"].as_str()?.to_string(),
        median_ns: e["median"]["point_estimate"].as_f64()?,
        mean_ns: e["mean"]["point_estimate"].as_f64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_estimates() {
        let b = r#"{"group_id":"route","function_id":"match","full_id":"route/match","directory_name":"route/match"}"#;
        let e = r#"{"mean":{"point_estimate":12.5,"standard_error":0.1},"median":{"point_estimate":12.0}}"#;
        assert_eq!(
            parse(b, e),
            Some(Micro {
                id: "route/match".into(),
                median_ns: 12.0,
                mean_ns: 12.5
            })
        );
        assert_eq!(parse("{}", e), None);
    }
}
