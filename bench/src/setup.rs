//! Getting ready: where the workspace and its binaries are, building them with cargo, and
//! finding nginx, HAProxy and redis-server (installing the Debian packages when missing and
//! we are root).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::procs;
use crate::scenarios::say;

/// The workspace root (this crate lives in `bench/`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Cargo's target dir: `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

/// The cargo that runs us (`$CARGO` under `cargo run`), else `cargo` from the PATH.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo build --release -p sloguard -p analytics-backend` in the workspace.
pub fn build(root: &Path) -> anyhow::Result<()> {
    say("building sloguard, analytics-backend and the bare Pingora baseline (release)");
    let status = Command::new(cargo())
        .args([
            "build",
            "--release",
            "-p",
            "sloguard",
            "-p",
            "analytics-backend",
            "--bins",
            "--example",
            "bare_pingora",
        ])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(())
}

/// A program on the PATH, or in /usr/sbin or /sbin (where Debian puts nginx and haproxy).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `Candidate:` version in `apt-cache policy` output, if there is one.
pub fn apt_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(String::from)
}

fn candidate(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    apt_candidate(&String::from_utf8_lossy(&out.stdout))
}

/// Finds nginx and haproxy; installs the missing ones from Debian packages when allowed
/// (root, `apt-get` present). A tool still missing afterwards is `None`: its contenders
/// are skipped and the report says so.
pub fn proxies(install: bool) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut nginx, mut haproxy) = (find_tool("nginx"), find_tool("haproxy"));
    if (nginx.is_none() || haproxy.is_none()) && install {
        let want_nginx = nginx.is_none();
        let result = apt_install("nginx and haproxy", || {
            let mut packages = Vec::new();
            if want_nginx {
                // nginx-light (nginx plus one module on Debian 12) as the issue asks, else nginx.
                packages.push(if candidate("nginx-light").is_some() {
                    "nginx-light"
                } else {
                    "nginx"
                });
            }
            if haproxy.is_none() {
                packages.push("haproxy");
            }
            packages
        });
        if let Err(e) = result {
            say(format!("could not install nginx/haproxy: {e:#}"));
        }
        nginx = find_tool("nginx");
        haproxy = find_tool("haproxy");
    }
    (nginx, haproxy)
}

/// Finds redis-server; installs Debian's `redis-server` package when missing and allowed.
/// `None` afterwards: the Redis contenders are skipped (and the soak refuses to run).
pub fn redis(install: bool) -> Option<PathBuf> {
    let found = find_tool("redis-server");
    if found.is_some() || !install {
        return found;
    }
    if let Err(e) = apt_install("redis-server", || vec!["redis-server"]) {
        say(format!("could not install redis-server: {e:#}"));
    }
    find_tool("redis-server")
}

/// `apt-get update`, then `apt-get install -y` of the packages `packages` names (asked
/// after the update, so candidates are current); root only.
fn apt_install(what: &str, packages: impl FnOnce() -> Vec<&'static str>) -> anyhow::Result<()> {
    if !procs::is_root() {
        bail!("not root: run `apt-get install -y {what}` yourself");
    }
    say(format!("apt-get update (for {what})"));
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("running apt-get")?;
    if !ok.success() {
        bail!("apt-get update failed ({ok})");
    }
    let packages = packages();
    for p in &packages {
        if candidate(p).is_none() {
            bail!("no Debian package candidate for {p}");
        }
    }
    say(format!("apt-get install -y {}", packages.join(" ")));
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !ok.success() {
        bail!("apt-get install failed ({ok})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_apt_candidate() {
        let p =
            "nginx-light:\n  Installed: (none)\n  Candidate: 1.22.1-9+deb12u11\n  Version table:\n";
        assert_eq!(apt_candidate(p).as_deref(), Some("1.22.1-9+deb12u11"));
        assert_eq!(
            apt_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(apt_candidate(""), None);
    }

    #[test]
    fn root_is_the_parent_of_bench() {
        assert!(workspace_root().join("bench").join("Cargo.toml").is_file());
    }
}
