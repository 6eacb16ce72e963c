//! Managed Redis: rate limits through a real `redis-server` that speaks only TLS and only to
//! an ACL user, with certificates this test makes (a CA and a server certificate for
//! 127.0.0.1), the password from a file or an environment variable, and the password in no
//! log line and no status document.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const USER: &str = "sloguard";
const PASSWORD: &str = "Zq7-right-horse-battery";

/// A `redis-server` listening on TLS only (plain port off), requiring a client to log in as
/// [`USER`] (the `default` user is off). Stopped on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost, as PEM files in
/// `dir`: (ca.crt, server.crt, server.key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sloguard test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

impl TlsRedis {
    fn spawn() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_certificates(dir.path());
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(&ca)
                .args(["--tls-auth-clients", "no"])
                .args(["--user", "default", "off"])
                .args(["--user", USER, "on", &format!(">{PASSWORD}"), "~*", "+@all"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (is it installed?)");
            let deadline = Instant::now() + Duration::from_secs(5);
            last = "not answering PING over TLS after 5 s".into();
            while Instant::now() < deadline {
                if cli(&ca, port, &["PING"]).trim() == "PONG" {
                    return TlsRedis {
                        child,
                        port,
                        ca,
                        dir,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("exited {status}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("TLS redis-server did not start: {last}");
    }

    /// Runs one command with `redis-cli` over TLS as [`USER`]; its output.
    fn cli(&self, args: &[&str]) -> String {
        cli(&self.ca, self.port, args)
    }

    /// A `[ratelimit]` section using this Redis, with `auth` (the password keys) added, and
    /// a rule of 2 requests a minute per tenant (burst 1) on the ingest route.
    fn policy(&self, auth: &str) -> String {
        format!(
            "{ROUTES}\n[ratelimit]\nredis_url = \"rediss://127.0.0.1:{port}\"\n\
             redis_ca_file = \"{ca}\"\nredis_username = \"{USER}\"\n{auth}\n\
             timeout_ms = 1000\nfailures_to_open = 3\n\n\
             [[ratelimit.rule]]\nname = \"per-tenant\"\nroutes = [\"ingest\"]\n\
             key = \"header:x-tenant\"\nrate = 1\nperiod_ms = 60000\nburst = 1\n",
            port = self.port,
            ca = self.ca.display(),
        )
    }
}

/// Runs one command with `redis-cli` over TLS (verifying with `ca`) as [`USER`].
fn cli(ca: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-p", &port.to_string()])
        .args(["--user", USER, "--pass", PASSWORD, "--no-auth-warning"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything sloguard shows about itself: its log so far, `/status` and `/metrics`.
async fn everything_shown(sg: &Sloguard) -> String {
    format!(
        "{}\n{}\n{}",
        sg.log(),
        sg.status().await,
        get_text(&sg.admin_url("/metrics")).await
    )
}

#[tokio::test]
async fn rate_limits_run_in_a_tls_redis_as_an_acl_user_with_the_password_from_a_file() {
    let redis = TlsRedis::spawn();
    let be = backend(1);
    let secret = redis.dir.path().join("password");
    // As a Kubernetes Secret mounted from a file written with `echo`: a trailing newline.
    std::fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
    let auth = format!("redis_password_file = \"{}\"", secret.display());
    // Everything at debug, so a password logged anywhere (ours, the redis client's,
    // rustls's) would show.
    let sg = Sloguard::spawn_logging(&be.addrs(), &redis.policy(&auth), "debug");
    let http = client();
    let mut statuses = vec![];
    for i in 0..3 {
        statuses.push(sg.post_event(&http, "acme", i).await.0);
    }
    assert_eq!(statuses, vec![202, 202, 429], "2 a minute for acme");
    assert_eq!(sg.post_event(&http, "globex", 9).await.0, 202);
    // Decided in Redis, not by the in-process fallback: the state is in Redis under the
    // rule's key, and no call failed.
    let keys = redis.cli(&["--scan", "--pattern", "{sloguard:per-tenant:*"]);
    assert!(keys.contains("{sloguard:per-tenant:acme}"), "keys: {keys}");
    assert!(
        keys.contains("{sloguard:per-tenant:globex}"),
        "keys: {keys}"
    );
    let status = sg.status().await;
    let rl = &status["ratelimit"];
    assert_eq!(rl["mode"], "redis", "{rl}");
    assert_eq!(rl["redis_errors"], 0, "{rl}");
    assert_eq!(rl["fallback_decisions"], 0, "{rl}");
    assert_eq!(rl["redis_tls"], true, "{rl}");
    assert_eq!(rl["redis_username"], USER, "{rl}");
    let shown = everything_shown(&sg).await;
    assert!(!shown.contains(PASSWORD), "the password was shown");
}

#[tokio::test]
async fn a_wrong_password_from_the_environment_is_refused_by_redis_and_never_shown() {
    let redis = TlsRedis::spawn();
    let be = backend(1);
    let wrong = "wrong-Kx81-password";
    let auth = "redis_password_env = \"SLOGUARD_TEST_REDIS_PASSWORD\"";
    let sg = Sloguard::spawn_with_env(
        &be.addrs(),
        "",
        &redis.policy(auth),
        "debug",
        &[("SLOGUARD_TEST_REDIS_PASSWORD", wrong)],
    );
    let http = client();
    // Redis refuses the login, so every decision falls back in-process (the default
    // `on_redis_error = "local"`): requests are still answered, and limited locally.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        let (s, _) = sg.post_event(&http, &format!("t{i}"), i).await;
        assert_eq!(s, 202);
        i += 1;
        let rl = sg.status().await["ratelimit"].clone();
        if rl["redis_errors"].as_u64() > Some(0) && rl["fallback_decisions"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "redis never refused: {rl}");
    }
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "nothing was written");
    let shown = everything_shown(&sg).await;
    assert!(!shown.contains(wrong), "the password was shown");
}

#[test]
fn a_password_variable_that_is_not_set_fails_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sloguard.toml");
    let policy = policy_text(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        &[format!("127.0.0.1:{}", free_port()).parse().unwrap()],
        "[ratelimit]\nredis_url = \"rediss://127.0.0.1:6380\"\n\
         redis_password_env = \"SLOGUARD_TEST_UNSET_PASSWORD\"\n",
    );
    std::fs::write(&path, policy).unwrap();
    // `sloguard check` validates the shape only: the Secret lives in the pod, not in CI.
    assert!(check(&[&path]).status.success());
    let out = Command::new(sloguard_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("SLOGUARD_TEST_UNSET_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("key `ratelimit.redis_password_env`")
            && stderr.contains("SLOGUARD_TEST_UNSET_PASSWORD"),
        "{stderr}"
    );
}
