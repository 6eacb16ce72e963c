//! `cargo xtask setup` on a machine without cmake, seen through a PATH made for the test (the
//! real machine keeps its packages): with apt-get it installs what is missing and checks it
//! is there after; without, it says what to install and fails.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn executable(path: &Path, script: &str) {
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A bin directory with a C compiler and a shell, and no cmake.
fn bin_without_cmake() -> tempfile_dir::Dir {
    let dir = tempfile_dir::Dir::new();
    for tool in ["cc", "sh"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(real, dir.path().join(tool)).unwrap();
    }
    dir
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn without_cmake_it_runs_apt_get_for_it_and_checks_it_arrived() {
    if !is_root() {
        eprintln!("skipped: installing is only tried as root");
        return;
    }
    let bin = bin_without_cmake();
    let log = bin.path().join("apt-get.log");
    // A stand-in apt-get: logs its arguments and "installs" cmake as a stub.
    executable(
        &bin.path().join("apt-get"),
        &format!(
            "#!/bin/sh\necho \"$@\" >> {log}\ncase \"$*\" in *cmake*) printf '#!/bin/sh\\n' > {dir}/cmake; /bin/chmod +x {dir}/cmake;; esac\n",
            log = log.display(),
            dir = bin.path().display()
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["setup", "demo"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("installing cmake (cmake)"), "{stdout}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        vec!["update -qq", "install -y -qq --no-install-recommends cmake"]
    );
}

#[test]
fn when_apt_get_leaves_it_missing_it_fails_saying_so() {
    if !is_root() {
        return;
    }
    let bin = bin_without_cmake();
    executable(&bin.path().join("apt-get"), "#!/bin/sh\nexit 0\n");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["setup", "demo"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("still missing") && stderr.contains("cmake"),
        "{stderr}"
    );
}

#[test]
fn without_apt_get_it_says_what_to_install_and_fails() {
    let bin = bin_without_cmake();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["setup", "demo"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cmake: builds zlib-ng") && stderr.contains("Debian names: cmake"),
        "{stderr}"
    );
}

/// A temporary directory removed on drop (std only: xtask has no dependencies).
mod tempfile_dir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "xtask-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
