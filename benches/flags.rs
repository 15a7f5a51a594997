//! Feature flag evaluation for one request: 10 flags (percentages, two with allow/deny lists)
//! for a known user key, then the header value. `cargo bench --bench flags`.

use std::hint::black_box;

use canary_lb::config::schema::FlagConfig;
use canary_lb::flags::FlagSet;
use canary_lb::model::Percent;
use criterion::{criterion_group, criterion_main, Criterion};

fn ten_flags() -> FlagSet {
    let names: Vec<String> = (0..10).map(|i| format!("feature-{i}")).collect();
    let configs: Vec<FlagConfig> = (0..10)
        .map(|i| FlagConfig {
            enabled: true,
            percent: Percent::from_basis_points(1_000 * i as u32),
            salt: None,
            allow: if i < 2 {
                (0..100).map(|k| format!("allowed-user-{k}")).collect()
            } else {
                Vec::new()
            },
            deny: if i < 2 {
                (0..100).map(|k| format!("denied-user-{k}")).collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    FlagSet::build(names.iter().map(String::as_str).zip(configs.iter())).expect("valid flags")
}

fn bench(c: &mut Criterion) {
    let set = ten_flags();
    let key: &[u8] = b"5f2b9c0e8a7d4e21b3c6a9f0d1e2c3b4";
    let mut g = c.benchmark_group("flags");
    g.bench_function("evaluate_10", |b| {
        b.iter(|| black_box(&set).evaluate(Some(black_box(key))))
    });
    g.bench_function("evaluate_10_and_header", |b| {
        b.iter(|| {
            let bits = black_box(&set).evaluate(Some(black_box(key)));
            set.header_value(bits)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
