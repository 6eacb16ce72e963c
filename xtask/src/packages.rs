//! What a machine needs beyond Rust, for the demo and for the tests: the one list of system
//! packages (Debian names), how to tell each is there, and what to do when some are not.
//! `.ci/run` and the README's commands all go through it. Pure, apart from [`probe`].

use std::path::Path;
use std::process::{Command, Stdio};

/// What a command needs the machine to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `cargo xtask demo`: build sloguard and the backend, run them.
    Demo,
    /// `cargo xtask test`: build everything, run every test.
    Test,
}

/// How to tell a need is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// An executable of this name on the PATH.
    Command(&'static str),
    /// A file that the package installs.
    File(&'static str),
    /// `python3` on the PATH can make a virtual environment (Debian splits `venv` and
    /// `ensurepip` out of `python3` into `python3-venv`).
    PythonVenv,
}

/// One thing the machine needs.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// What it is, for messages.
    pub what: &'static str,
    /// Why sloguard needs it.
    pub why: &'static str,
    pub probe: Probe,
    /// The Debian packages that provide it.
    pub packages: &'static [&'static str],
    /// Needed by the demo (the tests need everything the demo needs).
    pub demo: bool,
}

/// Everything, in install order. The only list of system packages in the repository
/// (k8s/ci.sh installs its own tools for the manifest checks).
pub const NEEDS: &[Need] = &[
    Need {
        what: "a C compiler",
        why: "builds the C parts of Pingora's dependencies",
        probe: Probe::Command("cc"),
        packages: &["gcc", "libc6-dev"],
        demo: true,
    },
    Need {
        what: "cmake",
        why: "builds zlib-ng for Pingora (libz-ng-sys)",
        probe: Probe::Command("cmake"),
        packages: &["cmake"],
        demo: true,
    },
    Need {
        what: "redis-server",
        why: "the rate-limit tests start their own Redis (plain, TLS, cluster) on free ports",
        probe: Probe::Command("redis-server"),
        packages: &["redis-server"],
        demo: false,
    },
    Need {
        what: "chromium",
        why: "renders the status page headless in tests/status_page.rs",
        probe: Probe::Command("chromium"),
        packages: &["chromium"],
        demo: false,
    },
    Need {
        what: "the DejaVu fonts",
        why: "text on the status page screenshots",
        probe: Probe::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        packages: &["fonts-dejavu-core"],
        demo: false,
    },
    Need {
        what: "python3 with venv",
        why: "the Python worker fleet the tests start runs in a virtual environment",
        probe: Probe::PythonVenv,
        packages: &["python3", "python3-venv"],
        demo: false,
    },
    Need {
        what: "prometheus",
        why: "an on-call test runs a real Prometheus (and promtool) against sloguard",
        probe: Probe::Command("prometheus"),
        packages: &["prometheus"],
        demo: false,
    },
];

/// The needs of `purpose`.
pub fn needs(purpose: Purpose) -> impl Iterator<Item = &'static Need> {
    NEEDS
        .iter()
        .filter(move |n| n.demo || purpose == Purpose::Test)
}

/// Whether `need` is met on this machine, with this `path` (the PATH's value).
pub fn probe(need: &Need, path: &str) -> bool {
    match need.probe {
        Probe::Command(name) => on_path(name, path).is_some(),
        Probe::File(file) => Path::new(file).is_file(),
        Probe::PythonVenv => on_path("python3", path).is_some_and(|python| {
            Command::new(python)
                .args(["-c", "import venv, ensurepip"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        }),
    }
}

/// The executable `name` in one of `path`'s directories.
pub fn on_path(name: &str, path: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What to do about the needs that are not met.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Everything is there.
    Ready,
    /// Install these Debian packages with apt-get (we are root and apt-get is there).
    Install(Vec<&'static str>),
    /// We cannot install: the message says what to install.
    Tell(String),
}

/// Decides what to do about `missing`, as `root` or not, with or without apt-get.
pub fn plan(missing: &[&Need], root: bool, apt_get: bool) -> Plan {
    if missing.is_empty() {
        return Plan::Ready;
    }
    let mut packages: Vec<&'static str> = Vec::new();
    for need in missing {
        for p in need.packages {
            if !packages.contains(p) {
                packages.push(p);
            }
        }
    }
    if root && apt_get {
        return Plan::Install(packages);
    }
    let mut msg = String::from("this machine lacks:\n");
    for need in missing {
        msg.push_str(&format!("  - {}: {}\n", need.what, need.why));
    }
    if apt_get {
        msg.push_str(&format!(
            "install them (as root), then run this again:\n  sudo apt-get install -y {}\n",
            packages.join(" ")
        ));
    } else {
        msg.push_str(&format!(
            "install them with your system's package manager (Debian names: {}), then run this again\n",
            packages.join(" ")
        ));
    }
    Plan::Tell(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(what: &str) -> &'static Need {
        NEEDS.iter().find(|n| n.what == what).unwrap()
    }

    #[test]
    fn the_demo_needs_a_compiler_and_cmake_and_the_tests_need_everything() {
        let demo: Vec<_> = needs(Purpose::Demo).map(|n| n.what).collect();
        assert_eq!(demo, vec!["a C compiler", "cmake"]);
        let test: Vec<&str> = needs(Purpose::Test)
            .flat_map(|n| n.packages.iter().copied())
            .collect();
        for p in [
            "cmake",
            "redis-server",
            "chromium",
            "fonts-dejavu-core",
            "python3-venv",
            "prometheus",
        ] {
            assert!(test.contains(&p), "{p} missing from the test needs");
        }
    }

    #[test]
    fn root_with_apt_get_installs_every_missing_package_once() {
        let missing = [need("cmake"), need("python3 with venv"), need("cmake")];
        assert_eq!(
            plan(&missing, true, true),
            Plan::Install(vec!["cmake", "python3", "python3-venv"])
        );
        assert_eq!(plan(&[], true, true), Plan::Ready);
        assert_eq!(plan(&[], false, false), Plan::Ready);
    }

    #[test]
    fn otherwise_it_says_plainly_what_to_install() {
        let missing = [need("cmake"), need("chromium")];
        let Plan::Tell(msg) = plan(&missing, false, true) else {
            panic!("expected a message");
        };
        assert!(
            msg.contains("sudo apt-get install -y cmake chromium"),
            "{msg}"
        );
        assert!(msg.contains("cmake: builds zlib-ng"), "{msg}");
        let Plan::Tell(msg) = plan(&missing, true, false) else {
            panic!("expected a message");
        };
        assert!(msg.contains("Debian names: cmake chromium"), "{msg}");
    }

    #[test]
    fn commands_are_found_on_the_given_path_only() {
        let dir = std::env::temp_dir().join(format!("xtask-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tool = dir.join("some-tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.display().to_string();
        assert_eq!(on_path("some-tool", &path), Some(tool));
        assert_eq!(on_path("cmake", &path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
