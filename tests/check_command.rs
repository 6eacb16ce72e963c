//! `sloguard check`: every shipped policy passes; every file in `config/invalid/` is refused
//! with the file, line and key its first line promises (`# expect: line N, key `K``).

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use std::path::PathBuf;

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_policies_pass() {
    let mut files = toml_files("config/examples");
    files.push(repo_root().join("config/sloguard.toml"));
    for f in files {
        let out = check(&[&f]);
        assert!(
            out.status.success(),
            "{} refused: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn invalid_policies_are_refused_with_file_line_and_key() {
    let files = toml_files("config/invalid");
    assert!(files.len() >= 8, "the must-fail set shrank: {files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .expect("an expect line");
        let (line, key) = expect.split_once(", key ").unwrap();
        let line: usize = line.strip_prefix("line ").unwrap().parse().unwrap();
        let out = check(&[&f]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", f.display());
        assert!(
            stderr.contains(&format!("{}:{line}:", f.display())),
            "{}: expected line {line} in {stderr}",
            f.display()
        );
        assert!(
            stderr.contains(&format!("key {key}")),
            "{}: expected key {key} in {stderr}",
            f.display()
        );
    }
}

#[test]
fn a_missing_file_is_refused_by_name() {
    let out = check(&[std::path::Path::new("/nonexistent/policy.toml")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/policy.toml"));
}
