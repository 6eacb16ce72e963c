//! Policy hot reload and lifecycle, on the real process: a valid change applies under load
//! without failing a request; a broken file is refused with file, line and key while the
//! old policy keeps serving; a ConfigMap-style symlink swap is seen; SIGTERM drains.

// Tests run real processes on the wall clock: they read it, sleep and wait as they need to.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn routes(cap: u32) -> String {
    format!(
        r#"
[[route]]
name = "ingest"
match = {{ method = "POST", path_prefix = "/v1/events" }}
max_body_bytes = {cap}
"#
    )
}

/// Rewrites the policy file the way an editor does: a new file renamed over the old one.
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for(sg: &Sloguard, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = sg.status().await;
        if pred(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends events in a loop until stopped; counts the answers that were not 202.
fn background_load(
    url: String,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let http = client();
        let mut i = 0u64;
        while !s.load(Ordering::Relaxed) && i < 20_000 {
            let r = http
                .post(format!("{url}/v1/events"))
                .json(&event("c", "e", i, 1.0))
                .send()
                .await;
            n.fetch_add(1, Ordering::Relaxed);
            if !matches!(r, Ok(ref r) if r.status() == 202) {
                f.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
        }
    });
    (stop, sent, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_change_applies_under_load_and_a_broken_file_is_refused_while_the_old_policy_serves(
) {
    let be = backend(2);
    let sg = Sloguard::spawn(&be.addrs(), &routes(4096));
    let (stop, sent, failed, task) = background_load(format!("http://{}", sg.proxy));
    let http = client();
    let small_enough = "x".repeat(1000);
    assert_eq!(
        http.post(sg.url("/v1/events"))
            .body(small_enough.clone())
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // A valid change: the cap drops to 500 bytes.
    let text = std::fs::read_to_string(&sg.policy_path).unwrap();
    rewrite(
        &sg.policy_path,
        &text.replace("max_body_bytes = 4096", "max_body_bytes = 500"),
    );
    let st = wait_for(&sg, "the reload", |st| {
        st["routes"][0]["max_body_bytes"] == 500
    })
    .await;
    assert_eq!(st["last_reload"]["ok"], true, "{st}");
    assert_eq!(st["last_reload"]["trigger"], "file");
    let r = http
        .post(sg.url("/v1/events"))
        .body(small_enough)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "the new cap applies");
    // Worker state survived (same worker list): counters were not reset.
    assert!(
        st["workers"][0]["requests"].as_u64().unwrap()
            + st["workers"][1]["requests"].as_u64().unwrap()
            > 0
    );

    // One policy version in the metrics, the new one: the old one is not left at 0 (the
    // dashboard counts versions to show pods that disagree).
    let version = st["policy"]["version"].clone();
    let metrics = get_text(&sg.admin_url("/metrics")).await;
    let info: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("sloguard_config_info"))
        .collect();
    assert_eq!(
        info,
        [format!("sloguard_config_info{{version={version}}} 1")],
        "{metrics}"
    );

    // Garbage over the live file: refused, named by file, line and key; the old policy stays.
    let broken = std::fs::read_to_string(&sg.policy_path)
        .unwrap()
        .replace("max_body_bytes = 500", "max_body_bytes = -1");
    rewrite(&sg.policy_path, &broken);
    let st = wait_for(&sg, "the refusal", |st| st["last_reload"]["ok"] == false).await;
    let error = st["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("sloguard.toml:") && error.contains("route[0].max_body_bytes"),
        "{error}"
    );
    assert_eq!(st["policy"]["version"], version, "the running policy stays");
    let r = http.post(sg.url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 404, "reload is on the admin listener only");
    let r = http.post(sg.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["key"], "route[0].max_body_bytes");
    assert!(body["line"].as_u64().is_some());

    // A file truncated mid-write, then deleted: still serving the last good policy.
    rewrite(&sg.policy_path, &broken[..broken.len() / 2]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    std::fs::remove_file(&sg.policy_path).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(sg.status().await["policy"]["version"], version);

    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{sent} requests during the reloads, {failed} failed");
    assert!(sent > 50);
    assert_eq!(failed, 0, "no request failed because of a reload");
    let metrics = client()
        .get(sg.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sloguard_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("sloguard_config_reloads_total{result=\"error\"} 0"));
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_seen() {
    let be = backend(1);
    let sg = Sloguard::spawn(&be.addrs(), &routes(4096));
    // Lay out the file as Kubernetes does: sloguard.toml -> ..data/sloguard.toml,
    // ..data -> ..v1, and swap ..data to ..v2 with an atomic rename.
    let dir = sg.policy_path.parent().unwrap().join("cm");
    std::fs::create_dir_all(dir.join("..v1")).unwrap();
    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    let text = std::fs::read_to_string(&sg.policy_path).unwrap();
    std::fs::write(dir.join("..v1/sloguard.toml"), &text).unwrap();
    std::fs::write(
        dir.join("..v2/sloguard.toml"),
        text.replace("max_body_bytes = 4096", "max_body_bytes = 123"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/sloguard.toml", dir.join("sloguard.toml")).unwrap();
    // Point the running process at the ConfigMap layout by replacing its file with a link.
    std::fs::remove_file(&sg.policy_path).unwrap();
    std::os::unix::fs::symlink(dir.join("sloguard.toml"), &sg.policy_path).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for(&sg, "the swap", |st| {
        st["routes"][0]["max_body_bytes"] == 123
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_request_in_flight_then_exits_zero() {
    let slow = FaultSpec {
        block: Some(Duration::from_millis(300)),
        every: 1,
        ..FaultSpec::default()
    };
    let be = backend_with_faults(2, vec![(1, slow.clone()), (2, slow)]);
    let mut sg = Sloguard::spawn(
        &be.addrs(),
        &format!("{}\n[guard]\nmode = \"off\"\n", routes(4096)),
    );
    let url = sg.url("/v1/events");
    // Eight requests in flight (each takes 300+ ms), then SIGTERM.
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                client()
                    .post(url)
                    .json(&event("c", "e", i, 1.0))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sg.signal("TERM");
    // While they finish (four 300 ms blocks per worker), the admin port still answers and
    // says draining, and the proxy port takes no new connection.
    let ready = sg.admin_url("/readyz");
    wait_until(Duration::from_secs(5), "/readyz to say draining", || {
        let ready = ready.clone();
        async move {
            match client().get(&ready).send().await {
                Ok(r) => {
                    r.status() == 503 && r.text().await.unwrap_or_default().contains("draining")
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let proxy = sg.proxy;
    wait_until(
        Duration::from_secs(5),
        "the proxy to stop accepting",
        || async move { tokio::net::TcpStream::connect(proxy).await.is_err() },
    )
    .await;
    assert!(
        tasks.iter().any(|t| !t.is_finished()),
        "the drain was over before it could be seen"
    );
    let mut answered = vec![];
    for t in tasks {
        answered.push(t.await.unwrap());
    }
    let exit = sg
        .wait_exit(Duration::from_secs(10))
        .expect("sloguard exits after draining");
    println!("{answered:?} exit {exit:?}");
    assert!(
        answered.iter().all(|r| matches!(r, Ok(202))),
        "{answered:?}"
    );
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(be.store().total_events(), 8);
}

/// A request whose head has begun to arrive on a connection when SIGTERM lands is answered
/// before the process exits: the drain counts it from the head's first bytes, not from when
/// Pingora has parsed it. (Before, the drain could see nothing in flight, stop, and take the
/// request down after it had reached the worker: stored there, never answered.)
#[tokio::test]
async fn a_head_arriving_when_sigterm_lands_is_answered_before_the_exit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let be = backend(1);
    let mut sg = Sloguard::spawn(&be.addrs(), &routes(4096));
    let body = event("c", "e", 1, 1.0).to_string();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(sg.proxy).await.unwrap();
    conn.write_all(&request.as_bytes()[..12]).await.unwrap();
    let held = |field: &'static str, want: Value| {
        let sg = &sg;
        move || {
            let want = want.clone();
            async move { sg.status().await["requests"][field] == want }
        }
    };
    wait_until(
        Duration::from_secs(10),
        "sloguard to see the head arriving",
        held("begun", Value::from(1)),
    )
    .await;
    sg.signal("TERM");
    wait_until(
        Duration::from_secs(10),
        "the drain to begin",
        held("draining", Value::from(true)),
    )
    .await;
    conn.write_all(&request.as_bytes()[12..]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        matches!(read, Ok(Ok(_))) && answer.starts_with("HTTP/1.1 202"),
        "the request was not answered: {read:?} {answer:?}"
    );
    let exit = sg
        .wait_exit(Duration::from_secs(10))
        .expect("sloguard exits after draining");
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(be.store().total_events(), 1);
}
