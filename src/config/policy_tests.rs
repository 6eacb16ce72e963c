//! Unit tests for policy parsing and validation (no files, no sockets).

use super::*;
use crate::config::locate::key_path_at;
use crate::stages::admission::SheddingConfig;
use crate::stages::route::Priority;
use crate::workers::{GuardMode, LimiterConfig, WorkerAddr};

const BASE: &str = r#"
[listen]
proxy = "127.0.0.1:8080"
admin = "127.0.0.1:9901"

[upstream]
workers = ["127.0.0.1:8001", "127.0.0.1:8002"]
"#;

fn parse(extra: &str) -> Result<Policy, PolicyError> {
    Policy::parse(&format!("{BASE}{extra}"), Path::new("test.toml"))
}

fn err(src: &str) -> PolicyError {
    Policy::parse(src, Path::new("test.toml")).unwrap_err()
}

#[test]
fn defaults_fill_what_is_left_out() {
    let p = parse("").unwrap();
    assert_eq!(p.listen.threads, 2);
    assert_eq!(p.listen.drain_timeout, Duration::from_secs(10));
    assert_eq!(p.upstream.connect_timeout, Duration::from_millis(200));
    assert_eq!(p.upstream.workers.len(), 2);
    // Only the implicit default route.
    assert_eq!(p.routes.iter().count(), 1);
    assert_eq!(&*p.routes.get(0).name, "default");
}

#[test]
fn routes_keep_their_order_slo_priority_and_caps() {
    let p = parse(
        r#"
[[route]]
name = "ingest"
match = { method = "post", path_prefix = "/v1/events" }
slo = { p95_ms = 150, p99_ms = 400 }
priority = "critical"
max_body_bytes = 65536

[[route]]
name = "default"
priority = "sheddable"
"#,
    )
    .unwrap();
    let ingest = p.routes.get(
        p.routes
            .match_request(&http::Method::POST, "/v1/events/batch"),
    );
    assert_eq!(&*ingest.name, "ingest");
    assert_eq!(ingest.priority, Priority::Critical);
    assert_eq!(ingest.max_body_bytes, Some(65536));
    assert_eq!(ingest.slo.unwrap().p95, Some(Duration::from_millis(150)));
    assert_eq!(ingest.slo.unwrap().p99, Some(Duration::from_millis(400)));
    let other = p
        .routes
        .get(p.routes.match_request(&http::Method::GET, "/"));
    assert_eq!(
        (&*other.name, other.priority),
        ("default", Priority::Sheddable)
    );
}

#[test]
fn version_is_a_stable_fingerprint_of_the_text() {
    let a = parse("").unwrap().version;
    assert_eq!(a, parse("").unwrap().version);
    assert_ne!(a, parse("\n# changed\n").unwrap().version);
    assert_eq!(a.len(), 16);
}

#[test]
fn unknown_key_is_located_and_named() {
    let e = parse("\n[[route]]\nname = \"q\"\nmatch = { method = \"GET\", pth = \"/x\" }\n")
        .unwrap_err();
    assert_eq!(e.line(), Some(11));
    assert_eq!(e.key(), Some("route[0].match.pth"));
    assert!(e.to_string().starts_with("test.toml:11:"), "{e}");
}

#[test]
fn empty_worker_list_is_refused() {
    let e = err(
        "[listen]\nproxy = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n[upstream]\nworkers = []\n",
    );
    assert_eq!((e.line(), e.key()), (Some(5), Some("upstream.workers")));
}

#[test]
fn negative_and_zero_numbers_are_refused() {
    let e = parse("connect_timeout_ms = -1\n").unwrap_err();
    assert_eq!(e.key(), Some("upstream.connect_timeout_ms"));
    let e = parse("read_timeout_ms = 0\n").unwrap_err();
    assert_eq!(e.key(), Some("upstream.read_timeout_ms"));
    assert_eq!(e.line(), Some(8));
}

#[test]
fn route_errors_name_the_route_index() {
    let cases = [
        ("[[route]]\nname = \"a\"\nmatch = { method = \"GET\" }\n[[route]]\nname = \"a\"\nmatch = { method = \"PUT\" }\n", "route[1].name"),
        ("[[route]]\nname = \"a\"\n", "route[0].match"),
        ("[[route]]\nname = \"default\"\nmatch = { method = \"GET\" }\n", "route[0].match"),
        ("[[route]]\nname = \"a b\"\nmatch = { method = \"GET\" }\n", "route[0].name"),
        ("[[route]]\nname = \"a\"\nmatch = { path_prefix = \"v1\" }\n", "route[0].match.path_prefix"),
        ("[[route]]\nname = \"a\"\nmatch = { method = \"G ET\" }\n", "route[0].match.method"),
        ("[[route]]\nname = \"a\"\nmatch = { method = \"GET\" }\nslo = { p95_ms = 0 }\n", "route[0].slo.p95_ms"),
        ("[[route]]\nname = \"a\"\nmatch = { method = \"GET\" }\nslo = { }\n", "route[0].slo"),
        ("[[route]]\nname = \"a\"\nmatch = { method = \"GET\" }\npriority = \"urgent\"\n", "route[0].priority"),
    ];
    for (extra, key) in cases {
        let e = parse(extra).unwrap_err();
        assert_eq!(e.key(), Some(key), "for {extra:?}: {e}");
        assert!(e.line().is_some(), "no line for {extra:?}");
    }
}

#[test]
fn addresses_must_be_ip_port_and_distinct() {
    let e = err("[listen]\nproxy = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:1\"\n[upstream]\nworkers = [\"127.0.0.1:3\"]\n");
    assert_eq!(e.key(), Some("listen.admin"));
    let e = parse("").map(|_| ()).and_then(|_| {
        Policy::parse(
            &BASE.replace("\"127.0.0.1:8002\"", "\"127.0.0.1:8001\""),
            Path::new("t"),
        )
    });
    assert_eq!(e.unwrap_err().key(), Some("upstream.workers[1]"));
}

#[test]
fn unix_socket_workers_are_taken_and_a_bad_one_is_located() {
    let with = |second: &str| BASE.replace("\"127.0.0.1:8002\"", &format!("\"{second}\""));
    let p = Policy::parse(&with("unix:/run/app/w2.sock"), Path::new("t")).unwrap();
    assert_eq!(
        p.upstream.workers,
        vec![
            WorkerAddr::Tcp("127.0.0.1:8001".parse().unwrap()),
            WorkerAddr::Unix("/run/app/w2.sock".into()),
        ]
    );
    for (bad, says) in [
        ("unix:run/w2.sock", "must be absolute"),
        (
            "localhost:8002",
            "neither an ip:port address nor unix:/absolute/path",
        ),
        (
            "unix:/run/app/w1.sock\", \"unix:/run/app/w1.sock",
            "listed twice",
        ),
    ] {
        let e = Policy::parse(&with(bad), Path::new("t")).unwrap_err();
        assert!(
            matches!(e.key(), Some("upstream.workers[1]" | "upstream.workers[2]")),
            "{bad}: {e}"
        );
        assert_eq!(e.line(), Some(7), "{bad}: {e}");
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
}

#[test]
fn missing_section_is_a_syntax_error() {
    let e = err("[listen]\nproxy = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n");
    assert!(matches!(e, PolicyError::Syntax { .. }));
    assert!(e.to_string().contains("upstream"), "{e}");
}

#[test]
fn key_path_handles_headers_arrays_and_inline_tables() {
    let src = "[a]\nx = 1\n[[r]]\ny = 2\n[[r]]\nm = { k = 3 }\n";
    assert_eq!(
        key_path_at(src, src.find("x").unwrap()).as_deref(),
        Some("a.x")
    );
    assert_eq!(
        key_path_at(src, src.find("y").unwrap()).as_deref(),
        Some("r[0].y")
    );
    assert_eq!(
        key_path_at(src, src.find("k =").unwrap()).as_deref(),
        Some("r[1].m.k")
    );
    assert_eq!(
        key_path_at(src, src.find("3").unwrap()).as_deref(),
        Some("r[1].m")
    );
}

#[test]
fn guard_sections_default_and_parse() {
    let p = parse("").unwrap();
    assert_eq!(p.guard, GuardMode::Enforce);
    assert_eq!(p.upstream.health, crate::workers::HealthConfig::default());
    assert_eq!(p.upstream.max_ejected_percent, 50);
    assert_eq!(p.upstream.probe.as_ref().unwrap().path, "/healthz");
    assert_eq!(p.concurrency, LimiterConfig::default());
    assert_eq!(p.shedding, SheddingConfig::default());

    let p = parse(
        r#"lag_header = "X-Lag"

[upstream.health]
stall_after_ms = 250
max_ejected_percent = 25

[upstream.probe]
enabled = false

[guard]
mode = "shadow"

[concurrency]
algorithm = "aimd"
max_limit = 16

[shedding]
max_queue = 10
adaptive_lifo = true

[[route]]
name = "q"
match = { method = "GET" }
queue_budget_ms = 40
"#,
    )
    .unwrap();
    assert_eq!(p.guard, GuardMode::Shadow);
    assert_eq!(p.upstream.lag_header, "x-lag");
    assert_eq!(p.upstream.health.stall_after, Duration::from_millis(250));
    assert_eq!(p.upstream.max_ejected_percent, 25);
    assert!(p.upstream.probe.is_none());
    assert!(matches!(
        p.concurrency.algorithm,
        crate::workers::Algorithm::Aimd { .. }
    ));
    assert_eq!(p.concurrency.max_limit, 16);
    assert_eq!((p.shedding.max_queue, p.shedding.adaptive_lifo), (10, true));
    assert_eq!(
        p.routes.get(0).queue_budget,
        Some(Duration::from_millis(40))
    );
}

#[test]
fn guard_section_errors_are_located() {
    let cases = [
        (
            "[upstream.health]\nstall_after_ms = 0\n",
            "upstream.health.stall_after_ms",
        ),
        (
            "[upstream.health]\nmax_ejected_percent = 101\n",
            "upstream.health.max_ejected_percent",
        ),
        (
            "[upstream.health]\nbase_ejection_ms = 5000\nmax_ejection_ms = 1000\n",
            "upstream.health.max_ejection_ms",
        ),
        (
            "[upstream.probe]\npath = \"healthz\"\n",
            "upstream.probe.path",
        ),
        ("[concurrency]\ntolerance = 0.5\n", "concurrency.tolerance"),
        (
            "[concurrency]\ninitial_limit = 100\nmax_limit = 10\n",
            "concurrency.initial_limit",
        ),
        ("[shedding]\nmax_queue = 0\n", "shedding.max_queue"),
        ("[guard]\nmode = \"on\"\n", "guard.mode"),
        ("[shedding]\nlifo = true\n", "shedding.lifo"),
    ];
    for (extra, key) in cases {
        let e = parse(extra).unwrap_err();
        assert_eq!(e.key(), Some(key), "for {extra:?}: {e}");
        assert!(e.line().is_some(), "no line for {extra:?}: {e}");
    }
}

#[test]
fn connection_limits_default_to_a_10_s_head_deadline_and_no_cap() {
    let p = parse("").unwrap();
    assert_eq!(p.conn.header_read_timeout, Duration::from_secs(10));
    assert_eq!(p.conn.max_connections_per_client_ip, 0);
    let p = parse("[limits]\nheader_read_timeout_ms = 300\nmax_connections_per_client_ip = 2\n")
        .unwrap();
    assert_eq!(p.conn.header_read_timeout, Duration::from_millis(300));
    assert_eq!(p.conn.max_connections_per_client_ip, 2);
    // 0 turns the cap off; it is not an error.
    let p = parse("[limits]\nmax_connections_per_client_ip = 0\n").unwrap();
    assert_eq!(p.conn.max_connections_per_client_ip, 0);
    assert_eq!(p.conn.keepalive_timeout, Duration::from_secs(60));
    let p = parse("[limits]\nkeepalive_timeout_ms = 120000\n").unwrap();
    assert_eq!(p.conn.keepalive_timeout, Duration::from_secs(120));
}

#[test]
fn connection_limit_errors_are_located() {
    let cases = [
        (
            "[limits]\nheader_read_timeout_ms = 0\n",
            "limits.header_read_timeout_ms",
        ),
        (
            "[limits]\nheader_read_timeout_ms = 600001\n",
            "limits.header_read_timeout_ms",
        ),
        (
            "[limits]\nmax_connections_per_client_ip = 1000001\n",
            "limits.max_connections_per_client_ip",
        ),
        (
            "[limits]\nkeepalive_timeout_ms = 0\n",
            "limits.keepalive_timeout_ms",
        ),
        (
            "[limits]\nkeepalive_timeout_ms = 3600001\n",
            "limits.keepalive_timeout_ms",
        ),
    ];
    for (extra, key) in cases {
        let e = parse(extra).unwrap_err();
        assert_eq!(e.key(), Some(key), "for {extra:?}: {e}");
        assert!(e.line().is_some(), "no line for {extra:?}: {e}");
    }
}

const TIERED: &str = r#"
[[ratelimit.rule]]
name = "per-tenant"
key = "header:x-tenant"
rate = 100
burst = 50

[[ratelimit.rule.override]]
keys = ["acme", "globex"]
rate = 1000

[[ratelimit.rule.override]]
keys = ["internal-batch"]
unlimited = true
"#;

#[test]
fn per_key_overrides_give_tiers_and_an_allowlist() {
    use crate::stages::ratelimit::rules::KeyOverride;
    let p = parse(TIERED).unwrap();
    let rule = &p.ratelimit.rules[0];
    match rule.overrides["acme"] {
        KeyOverride::Limited { rate, burst, .. } => assert_eq!((rate, burst), (1000.0, 50)),
        other => panic!("{other:?}"),
    }
    assert_eq!(rule.overrides["globex"], rule.overrides["acme"]);
    assert_eq!(rule.overrides["internal-batch"], KeyOverride::Unlimited);
    assert!(rule.limits_for("internal-batch").is_none());
    assert_eq!(rule.limits_for("someone").unwrap().gcra, rule.gcra);
    assert_ne!(rule.limits_for("acme").unwrap().gcra, rule.gcra);
}

#[test]
fn a_bad_override_is_refused_with_its_line_and_key() {
    let both = TIERED.replace("unlimited = true", "unlimited = true\nrate = 5");
    let e = parse(&both).unwrap_err();
    assert_eq!(e.key(), Some("ratelimit.rule[0].override[1].rate"), "{e}");
    assert!(e.to_string().contains("not both"), "{e}");
    let neither = TIERED.replace("unlimited = true", "");
    let e = parse(&neither).unwrap_err();
    assert_eq!(e.key(), Some("ratelimit.rule[0].override[1].rate"), "{e}");
    let twice = TIERED.replace("[\"internal-batch\"]", "[\"acme\"]");
    let e = parse(&twice).unwrap_err();
    assert_eq!(e.key(), Some("ratelimit.rule[0].override[1].keys"), "{e}");
    assert!(e.to_string().contains("`acme` has two overrides"), "{e}");
    // Line 20 of BASE + TIERED: the second override's keys.
    assert_eq!(e.line(), Some(20), "{e}");
    let empty = TIERED.replace("[\"internal-batch\"]", "[]");
    assert_eq!(
        parse(&empty).unwrap_err().key(),
        Some("ratelimit.rule[0].override[1].keys")
    );
    let typo = TIERED.replace("unlimited = true", "unlimted = true");
    assert!(parse(&typo).is_err());
}

#[test]
fn redis_calls_are_shared_unless_batch_calls_is_false() {
    assert!(parse("").unwrap().ratelimit.batch_calls);
    let p = parse("[ratelimit]\nredis_url = \"redis://127.0.0.1:6379\"\nbatch_calls = false\n")
        .unwrap();
    assert!(!p.ratelimit.batch_calls);
    let e = parse("[ratelimit]\nbatch_calls = \"no\"\n").unwrap_err();
    assert!(e.to_string().contains("batch_calls"), "{e}");
}
