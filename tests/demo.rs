//! `canary-lb demo`: the first command of the README's quick start must work on its own.

mod common;

use std::time::Duration;

use common::{free_port, get, wait_until, Background, STARTUP};

#[test]
fn demo_serves_both_pools_and_stops_on_ctrl_c() {
    let (listen, metrics) = (free_port(), free_port());
    // Three consecutive free ports for the apps: probe a base until all three bind.
    let base = (0..50)
        .map(|_| free_port())
        .find(|&p| {
            p < 65000 && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
        })
        .expect("three consecutive free ports");
    // The demo process, killed when the test ends however it ends.
    let mut demo = Background::cli(&[
        "demo",
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--app-base-port",
        &base.to_string(),
        "--canary-percent",
        "30",
        "--tls-listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let url = format!("http://127.0.0.1:{listen}/");
    wait_until("demo answers", STARTUP, || {
        common::try_get(&url, &[]).is_ok_and(|r| r.status == 200)
    });

    // The tour's curl lines: forced canary, forced production, flag cookie, the split.
    let canary = get(&url, &[("X-Canary", "1")]);
    assert_eq!(canary.header("x-app-pool"), Some("canary"));
    let prod = get(&url, &[("X-Canary", "0")]);
    assert_eq!(prod.header("x-app-pool"), Some("production"));
    let flagged = get(&url, &[("Cookie", "canary=always")]);
    assert_eq!(flagged.header("x-app-pool"), Some("canary"));
    let new_user = get(&url, &[]);
    assert!(new_user
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("canary_uid=")));
    let mut servers = std::collections::BTreeMap::new();
    for u in 0..600 {
        let r = get(&url, &[("X-User-Id", &format!("user{u}"))]);
        *servers
            .entry(r.served_by().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let canary_share = f64::from(servers.get("canary-1").copied().unwrap_or(0)) / 600.0;
    assert!(
        (0.24..=0.36).contains(&canary_share),
        "canary share {canary_share} for 30%: {servers:?}"
    );
    assert!(
        servers.contains_key("prod-1") && servers.contains_key("prod-2"),
        "{servers:?}"
    );
    let metrics_text = get(&format!("http://127.0.0.1:{metrics}/metrics"), &[]).body;
    assert!(metrics_text.contains("canary_lb_canary_percent 30"));

    // Ctrl-C stops the proxy and the apps.
    demo.sigint();
    wait_until("demo exits on SIGINT", Duration::from_secs(10), || {
        demo.exited().is_some()
    });
    assert!(common::try_get(&url, &[]).is_err(), "proxy still answers");
}
