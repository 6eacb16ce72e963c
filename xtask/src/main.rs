//! `cargo xtask`: the README's two commands, each doing its own set-up on a fresh machine.
//!
//! - `cargo xtask demo [ARGS]`: install what building needs (cmake, a C compiler), build
//!   sloguard and the analytics backend (release), and become `sloguard demo [ARGS]`.
//! - `cargo xtask test [ARGS]`: install what the tests need too (redis-server, chromium and
//!   fonts, python3-venv, prometheus), and become `cargo test --workspace [ARGS]`.
//! - `cargo xtask setup demo|test`: only the installing (what `.ci/run` calls first).
//!
//! Installing takes root and apt-get (Debian, Ubuntu); without them it says plainly what to
//! install and stops. The list of packages is `packages::NEEDS`, and nowhere else.

mod packages;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use packages::{Plan, Purpose};

const USAGE: &str = "usage: cargo xtask demo [ARGS for sloguard demo]
       cargo xtask test [ARGS for cargo test]
       cargo xtask setup demo|test";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        "demo" => setup(Purpose::Demo).and_then(|()| demo(rest)),
        "test" => setup(Purpose::Test).and_then(|()| test(rest)),
        "setup" => match rest {
            [p] if p == "demo" => setup(Purpose::Demo),
            [p] if p == "test" => setup(Purpose::Test),
            _ => Err(USAGE.to_string()),
        },
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {}", msg.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate's parent directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, else `target/` at the root.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { root().join(d) } else { d })
        .unwrap_or_else(|| root().join("target"))
}

/// The cargo that runs us (so the same toolchain builds the rest).
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Whether this process runs as root (Linux: the real uid in /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            == Some("0")
    })
}

/// Installs what `purpose` needs and the machine lacks, or says what to install.
fn setup(purpose: Purpose) -> Result<(), String> {
    let path = std::env::var("PATH").unwrap_or_default();
    let missing = |path: &str| -> Vec<&'static packages::Need> {
        packages::needs(purpose)
            .filter(|n| !packages::probe(n, path))
            .collect()
    };
    let lacking = missing(&path);
    let apt_get = packages::on_path("apt-get", &path).is_some();
    match packages::plan(&lacking, is_root(), apt_get) {
        Plan::Ready => Ok(()),
        Plan::Tell(msg) => Err(msg),
        Plan::Install(pkgs) => {
            let names: Vec<&str> = lacking.iter().map(|n| n.what).collect();
            println!(
                "xtask: installing {} ({}) with apt-get",
                pkgs.join(" "),
                names.join(", ")
            );
            apt(&["update", "-qq"])?;
            let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
            install.extend(pkgs.iter().copied());
            apt(&install)?;
            let still: Vec<&str> = missing(&path).iter().map(|n| n.what).collect();
            if still.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "apt-get installed {} but this is still missing (not on the PATH?): {}",
                    pkgs.join(" "),
                    still.join(", ")
                ))
            }
        }
    }
}

fn apt(args: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} failed ({status})", args.join(" ")))
    }
}

/// Builds sloguard and the backend (release), then becomes `sloguard demo`: Ctrl-C reaches
/// it (and the backend it starts) directly, and it stops both.
fn demo(args: &[String]) -> Result<(), String> {
    let status = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "sloguard",
            "-p",
            "analytics-backend",
        ])
        .args(["--bin", "sloguard", "--bin", "analytics-backend"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the build failed ({status})"));
    }
    let bin = target_dir().join("release").join("sloguard");
    let err = Command::new(&bin)
        .arg("demo")
        .args(args)
        .current_dir(root())
        .exec();
    Err(format!("cannot run {}: {err}", bin.display()))
}

/// Becomes `cargo test --workspace [ARGS]`.
fn test(args: &[String]) -> Result<(), String> {
    let err = cargo().args(["test", "--workspace"]).args(args).exec();
    Err(format!("cannot run cargo test: {err}"))
}
