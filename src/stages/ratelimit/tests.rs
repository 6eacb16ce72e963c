//! The rate-limit stage without Redis (in-process) and with a Redis that is not there.

use super::gcra::Gcra;
use super::*;
use http::HeaderMap;

fn rule(name: &str, rate: f64, burst: u64, mode: RuleMode) -> Rule {
    Rule {
        name: Arc::from(name),
        routes: vec![],
        key: vec![KeyPart::parse("header:x-tenant").unwrap()],
        rate,
        period: Duration::from_secs(1),
        burst,
        mode,
        missing_key: MissingKey::Deny,
        gcra: Gcra::new(rate, 1_000_000, burst),
        local_gcra: Gcra::new(rate / 2.0, 1_000_000, burst),
        overrides: HashMap::new(),
    }
}

fn tenant(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-tenant", t.parse().unwrap());
    h
}

fn src<'a>(h: &'a HeaderMap) -> KeySource<'a> {
    KeySource {
        route: "ingest",
        client_ip: None,
        headers: h,
    }
}

#[tokio::test]
async fn local_limits_allow_the_burst_then_refuse_with_retry_after_and_headers() {
    let cfg = RateLimitConfig {
        rules: vec![rule("t", 1.0, 2, RuleMode::Enforce)],
        ..RateLimitConfig::default()
    };
    let rl = RateLimiter::new(&cfg).unwrap();
    assert_eq!(rl.mode(), "local");
    let h = tenant("acme");
    for i in 0..3 {
        let v = rl.check(&cfg, &src(&h)).await;
        assert_eq!(v.outcome, RateOutcome::Allow, "request {i}");
        assert_eq!(v.headers.as_ref().unwrap().policy, "\"t\";q=3;w=1");
    }
    let v = rl.check(&cfg, &src(&h)).await;
    match &v.outcome {
        RateOutcome::Limited {
            rule,
            key,
            retry_after,
        } => {
            assert_eq!(&**rule, "t");
            assert_eq!(key, "acme", "the key's value, not the store key");
            assert!(*retry_after > Duration::from_millis(900));
        }
        other => panic!("{other:?}"),
    }
    assert!(v.headers.unwrap().limit.starts_with("\"t\";r=0;"));
    let rej = v.outcome.rejection().unwrap();
    assert_eq!(
        (rej.status, rej.reason, rej.retry_after),
        (429, crate::stages::Reason::RateLimited, Some(1))
    );
    // Known over the limit: the next one is refused from the cache.
    rl.check(&cfg, &src(&h)).await;
    assert_eq!(rl.stats.limited_from_cache.load(Ordering::Relaxed), 1);
    // Another tenant is independent.
    assert_eq!(
        rl.check(&cfg, &src(&tenant("other"))).await.outcome,
        RateOutcome::Allow
    );
}

#[tokio::test]
async fn shadow_rules_count_but_never_refuse_and_missing_keys_follow_the_rule() {
    let cfg = RateLimitConfig {
        rules: vec![rule("s", 1.0, 0, RuleMode::Shadow)],
        ..RateLimitConfig::default()
    };
    let rl = RateLimiter::new(&cfg).unwrap();
    let h = tenant("acme");
    for _ in 0..5 {
        assert_eq!(rl.check(&cfg, &src(&h)).await.outcome, RateOutcome::Allow);
    }
    assert_eq!(rl.stats.shadow_denied.load(Ordering::Relaxed), 4);

    let cfg = RateLimitConfig {
        rules: vec![rule("t", 1.0, 0, RuleMode::Enforce)],
        ..RateLimitConfig::default()
    };
    let rl = RateLimiter::new(&cfg).unwrap();
    let none = HeaderMap::new();
    let v = rl.check(&cfg, &src(&none)).await;
    assert_eq!(v.outcome.rejection().unwrap().status, 400);
    assert_eq!(v.outcome.rule(), Some("t"));
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_at_the_local_share_and_opens_the_breaker() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = RateLimitConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}")),
        timeout: Duration::from_millis(20),
        rules: vec![rule("t", 10.0, 0, RuleMode::Enforce)],
        ..RateLimitConfig::default()
    };
    let rl = RateLimiter::new(&cfg).unwrap();
    assert_eq!(rl.mode(), "redis");
    let started = Instant::now();
    // Distinct tenants, so none is answered from the over-limit cache: each needs Redis
    // until the breaker opens.
    for i in 0..20 {
        let t = Instant::now();
        let h = tenant(&format!("t{i}"));
        assert_eq!(rl.check(&cfg, &src(&h)).await.outcome, RateOutcome::Allow);
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "a request waited {:?}",
            t.elapsed()
        );
    }
    let calls = rl.stats.redis_calls.load(Ordering::Relaxed);
    assert_eq!(rl.mode(), "fallback");
    assert_eq!(
        calls, 3,
        "the breaker opened after 3 failures and stopped the calls"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The local share: 10/s over 2 replicas = 5/s, burst 0: one at once.
    let h = tenant("acme");
    let mut allowed = 0;
    for _ in 0..5 {
        if rl.check(&cfg, &src(&h)).await.outcome == RateOutcome::Allow {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 1);
    let deny = RateLimitConfig {
        on_redis_error: OnRedisError::Deny,
        ..cfg.clone()
    };
    assert_eq!(
        rl.check(&deny, &src(&tenant("new")))
            .await
            .outcome
            .rejection()
            .unwrap()
            .status,
        503
    );
    let allow = RateLimitConfig {
        on_redis_error: OnRedisError::Allow,
        ..cfg
    };
    assert_eq!(
        rl.check(&allow, &src(&tenant("new2"))).await.outcome,
        RateOutcome::Allow
    );
}

/// `/status` names the keys a rule limits most, by their value: the hot tenant first, with
/// its count, and the near-limit table beside it.
#[tokio::test]
async fn the_keys_a_rule_limits_most_are_named_with_their_counts() {
    let cfg = RateLimitConfig {
        rules: vec![rule("t", 1.0, 2, RuleMode::Enforce)],
        ..RateLimitConfig::default()
    };
    let rl = RateLimiter::new(&cfg).unwrap();
    let (hot, cold) = (tenant("hot"), tenant("cold"));
    for _ in 0..6 {
        rl.check(&cfg, &src(&hot)).await;
    }
    for _ in 0..4 {
        rl.check(&cfg, &src(&cold)).await;
    }
    let top = rl.top_keys(&cfg);
    let limited = top["t"]["limited"].as_array().unwrap();
    assert_eq!(limited[0]["key"], "hot", "{top}");
    assert_eq!(limited[0]["count"], 3, "3 of 6 within the burst: {top}");
    assert_eq!(limited[1]["key"], "cold");
    assert_eq!(limited[1]["count"], 1);
    assert!(!top["t"]["near_limit"].as_array().unwrap().is_empty());
    assert!(top["t"]["shadow_denied"].as_array().unwrap().is_empty());
}

/// Per-key overrides: a tenant on a bigger plan gets its tier's rate, one on the allowlist
/// is never counted, everyone else gets the rule's rate, all under one rule.
#[tokio::test]
async fn a_tier_gets_its_own_rate_and_an_allowlisted_key_is_not_counted() {
    let mut r = rule("t", 1.0, 0, RuleMode::Enforce);
    r.overrides.insert(
        "big".into(),
        rules::KeyOverride::Limited {
            rate: 1.0,
            burst: 9,
            limits: rules::Limits {
                gcra: Gcra::new(1.0, 1_000_000, 9),
                local_gcra: Gcra::new(0.5, 1_000_000, 9),
            },
        },
    );
    r.overrides
        .insert("batch".into(), rules::KeyOverride::Unlimited);
    let cfg = RateLimitConfig {
        rules: vec![r],
        ..RateLimitConfig::default()
    };
    let rl = RateLimiter::new(&cfg).unwrap();
    let allowed = |t: &'static str| {
        let rl = &rl;
        let cfg = &cfg;
        async move {
            let h = tenant(t);
            let mut n = 0;
            for _ in 0..20 {
                n += u32::from(rl.check(cfg, &src(&h)).await.outcome == RateOutcome::Allow);
            }
            n
        }
    };
    assert_eq!(
        allowed("small").await,
        1,
        "the rule's burst of 0: one at once"
    );
    assert_eq!(allowed("big").await, 10, "the tier's burst of 9");
    assert_eq!(allowed("batch").await, 20, "never counted");
    // The headers say each key's own quota.
    let v = rl.check(&cfg, &src(&tenant("big"))).await;
    assert_eq!(v.headers.unwrap().policy, "\"t\";q=10;w=1");
    let v = rl.check(&cfg, &src(&tenant("small"))).await;
    assert_eq!(v.headers.unwrap().policy, "\"t\";q=1;w=1");
}

#[tokio::test]
async fn a_limiter_swapped_in_by_a_reload_counts_on_from_the_old_counts() {
    let cfg = RateLimitConfig {
        rules: vec![rule("t", 1.0, 1, RuleMode::Enforce)],
        ..RateLimitConfig::default()
    };
    let old = RateLimiter::new(&cfg).unwrap();
    let h = tenant("acme");
    for _ in 0..3 {
        old.check(&cfg, &src(&h)).await;
    }
    old.stats.redis_errors.fetch_add(7, Ordering::Relaxed);
    let counted = |rl: &RateLimiter| {
        (
            rl.stats.allowed.load(Ordering::Relaxed),
            rl.stats.limited.load(Ordering::Relaxed),
            rl.stats.redis_errors.load(Ordering::Relaxed),
        )
    };
    assert_eq!(counted(&old), (2, 1, 7));
    let fresh = RateLimiter::new(&cfg).unwrap();
    assert_eq!(
        counted(&fresh),
        (0, 0, 0),
        "a new limiter alone starts at 0"
    );
    let new = fresh.carrying_counts_from(&old);
    assert_eq!(counted(&new), (2, 1, 7));
    new.check(&cfg, &src(&tenant("other"))).await;
    assert_eq!(counted(&new), (3, 1, 7), "and counts on");
}
