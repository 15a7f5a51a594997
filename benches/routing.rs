//! The routing decision alone, per path: header, flag cookie, sticky percentage with a known
//! user, a new user (id generation included), and a fallback to the other pool. `cargo bench --bench routing`.

use std::hint::black_box;

use canary_lb::config::schema::RoutingConfig;
use canary_lb::model::{Percent, PoolKind};
use canary_lb::routing::{decide, new_user_id, CanaryPolicy, RequestFacts};
use criterion::{criterion_group, criterion_main, Criterion};

fn policy() -> CanaryPolicy {
    let cfg = RoutingConfig {
        canary_percent: Percent::from_f64(10.0).expect("valid percent"),
        salt: "release-1".into(),
        user_header: Some("X-User-Id".into()),
        ..RoutingConfig::default()
    };
    CanaryPolicy::from_config(&cfg).expect("valid policy")
}

/// Both pools have servers (the common case).
fn usable(_: PoolKind, key: &[u8]) -> bool {
    black_box(key);
    true
}

fn bench(c: &mut Criterion) {
    let p = policy();
    let cookies: &[&[u8]] =
        &[b"session=abcdef0123456789; canary_uid=5f2b9c0e8a7d4e21b3c6a9f0d1e2c3b4; theme=dark"];
    let flag: &[&[u8]] = &[b"session=abcdef0123456789; canary=always"];
    let mut g = c.benchmark_group("decide");
    g.bench_function("header", |b| {
        let facts = RequestFacts {
            header: Some(b"1"),
            cookies,
            ..Default::default()
        };
        b.iter(|| decide(black_box(&p), black_box(&facts), false, new_user_id, usable))
    });
    g.bench_function("cookie_flag", |b| {
        let facts = RequestFacts {
            cookies: flag,
            ..Default::default()
        };
        b.iter(|| decide(black_box(&p), black_box(&facts), false, new_user_id, usable))
    });
    g.bench_function("percent_known_user", |b| {
        let facts = RequestFacts {
            cookies,
            ..Default::default()
        };
        b.iter(|| decide(black_box(&p), black_box(&facts), false, new_user_id, usable))
    });
    g.bench_function("percent_new_user", |b| {
        let facts = RequestFacts::default();
        b.iter(|| decide(black_box(&p), black_box(&facts), false, new_user_id, usable))
    });
    g.bench_function("fallback_to_production", |b| {
        let facts = RequestFacts {
            header: Some(b"1"),
            cookies,
            ..Default::default()
        };
        b.iter(|| {
            decide(
                black_box(&p),
                black_box(&facts),
                false,
                new_user_id,
                |pool, _| pool == PoolKind::Production,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
