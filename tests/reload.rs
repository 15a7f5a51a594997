//! SIGHUP applies every live key (issue 9, part 1): each test changes one key in the config
//! file, sends SIGHUP, and waits (against a deadline) until the running proxy shows the new
//! behaviour to a client. A restart-only change is named in one log line and the running
//! values stay.
//!
//! Tests take [`serial`] first: each starts its own apps and proxy, and on a 2-core machine
//! several at once would only slow each other down.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Generous deadline for anything the proxy must notice after a SIGHUP.
const NOTICE: Duration = Duration::from_secs(20);

/// Health checks that never take a server out during a test: a refused port stays "healthy"
/// (one check in an hour, and 100 failures needed), so only the setting under test decides.
const LAZY_HEALTH: &str = "{ kind: tcp, interval: 1h, timeout: 1s, healthy_threshold: 1, \
                           unhealthy_threshold: 100 }";

/// A proxy config: `production` and `canary` are YAML list items, `extra` more top-level keys.
fn config(
    listen: u16,
    metrics: u16,
    production: &[String],
    canary: &[String],
    extra: &str,
) -> String {
    proxy_config(
        listen,
        metrics,
        &format!(
            "threads: 2\n\
             grace_period: 1s\n\
             pools:\n  \
               production: {{ servers: [{}] }}\n  \
               canary: {{ servers: [{}] }}\n\
             health_check: {LAZY_HEALTH}\n\
             routing: {{ canary_percent: 0, user_header: X-User-Id }}\n\
             {extra}",
            production.join(", "),
            canary.join(", "),
        ),
    )
}

fn item(addr: &str) -> String {
    format!("\"{addr}\"")
}

/// An address nothing listens on: connecting to it is refused.
fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Rewrite the config and send SIGHUP.
fn reload(proxy: &Proxy, yaml: &str) {
    proxy.rewrite_config(yaml);
    proxy.sighup();
}

/// [`reload`], then wait until the proxy logs that it applied the file.
fn reload_applied(proxy: &Proxy, yaml: &str) {
    let applied = |p: &Proxy| p.logs().matches("SIGHUP: reloaded").count();
    let before = applied(proxy);
    reload(proxy, yaml);
    wait_until("the proxy logs the reload", NOTICE, || {
        applied(proxy) > before
    });
}

/// The `/status` entry of server `addr` in `pool`.
fn server_entry(proxy: &Proxy, pool: &str, addr: &str) -> Option<Value> {
    proxy.status_json()["pools"][pool]["servers"]
        .as_array()?
        .iter()
        .find(|s| s["addr"] == addr)
        .cloned()
}

#[test]
fn upstream_read_timeout_applies_on_sighup() {
    let _serial = serial();
    let app = App::start("rt-p1", "production");
    let (listen, metrics) = (free_port(), free_port());
    let conf = |read: &str| {
        config(
            listen,
            metrics,
            &[item(&app.addr())],
            &[],
            &format!("upstream: {{ read_timeout: {read}, max_tries: 2 }}\n"),
        )
    };
    let proxy = Proxy::start(&conf("10s"));
    let slow = proxy.url("/slow?ms=1500");
    let r = get(&slow, &[]);
    assert_eq!(
        r.status, 200,
        "a 1.5 s answer within a 10 s read timeout: {r:?}"
    );

    reload(&proxy, &conf("300ms"));
    // An upstream read timeout is answered 504 (as nginx; Pingora's default was 502).
    wait_until(
        "a 1.5 s answer fails with the 300 ms read timeout",
        NOTICE,
        || get(&slow, &[]).status == 504,
    );
    assert_eq!(
        get(&proxy.url("/"), &[]).status,
        200,
        "fast answers still pass"
    );

    reload(&proxy, &conf("10s"));
    wait_until("the 10 s read timeout is back", NOTICE, || {
        get(&slow, &[]).status == 200
    });
}

#[test]
fn fallback_to_canary_applies_on_sighup() {
    let _serial = serial();
    let canary = App::start("fb-c1", "canary");
    let (listen, metrics) = (free_port(), free_port());
    let conf = |fallback: bool| {
        config(
            listen,
            metrics,
            &[],
            &[item(&canary.addr())],
            &format!("fallback_to_canary: {fallback}\n"),
        )
    };
    let proxy = Proxy::start(&conf(false));
    let r = get(&proxy.url("/"), &[]);
    assert_eq!(
        r.status, 503,
        "production is empty and fallback is off: {r:?}"
    );
    assert_eq!(r.pool(), Some("production"));

    reload(&proxy, &conf(true));
    wait_until("production traffic falls back to canary", NOTICE, || {
        get(&proxy.url("/"), &[]).status == 200
    });
    let r = get(&proxy.url("/"), &[]);
    assert_eq!(r.pool(), Some("canary"), "{r:?}");
    assert_eq!(r.served_by(), Some("fb-c1"));
}

#[test]
fn max_tries_applies_on_sighup() {
    let _serial = serial();
    let app = App::start("mt-p1", "production");
    let dead = dead_addr();
    let (listen, metrics) = (free_port(), free_port());
    // Passive ejection off, so the refused server keeps getting its share of first attempts.
    let conf = |tries: u32| {
        config(
            listen,
            metrics,
            &[item(&dead), item(&app.addr())],
            &[],
            &format!(
                "upstream: {{ connect_timeout: 1s, max_tries: {tries} }}\n\
                 passive_health: {{ max_ejection_percent: 0 }}\n"
            ),
        )
    };
    let proxy = Proxy::start(&conf(2));
    for i in 0..20 {
        let r = get(&proxy.url("/"), &[]);
        assert_eq!(
            r.status, 200,
            "request {i}: a refused connect is retried: {r:?}"
        );
        assert_eq!(r.served_by(), Some("mt-p1"));
    }

    reload(&proxy, &conf(1));
    wait_until(
        "a refused connect is no longer retried (502)",
        NOTICE,
        || (0..10).any(|_| get(&proxy.url("/"), &[]).status == 502),
    );
}

#[test]
fn passive_health_applies_on_sighup() {
    let _serial = serial();
    let app = App::start("ph-p1", "production");
    let dead = dead_addr();
    let (listen, metrics) = (free_port(), free_port());
    let conf = |max_failures: u32| {
        config(
            listen,
            metrics,
            &[item(&dead), item(&app.addr())],
            &[],
            &format!(
                "upstream: {{ connect_timeout: 1s, max_tries: 2 }}\n\
                 passive_health: {{ max_failures: {max_failures}, cool_off: 10m }}\n"
            ),
        )
    };
    let proxy = Proxy::start(&conf(100));
    for i in 0..20 {
        let r = get(&proxy.url("/"), &[]);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    let entry = server_entry(&proxy, "production", &dead).expect("the refused server is listed");
    assert_eq!(
        entry["ejected"], false,
        "at most 20 failures, 100 needed: {entry}"
    );

    // Six more requests (about three refused connects) stay far below the old 100: only the
    // new max_failures can eject the server now.
    reload_applied(&proxy, &conf(1));
    for i in 0..6 {
        let r = get(&proxy.url("/"), &[]);
        assert_eq!(r.status, 200, "request {i}: retries keep answering: {r:?}");
    }
    let entry = server_entry(&proxy, "production", &dead).expect("the refused server is listed");
    assert_eq!(entry["ejected"], true, "max_failures 1 ejects it: {entry}");
}

#[test]
fn balance_applies_on_sighup() {
    let _serial = serial();
    let apps: Vec<App> = (1..=3)
        .map(|i| App::start(&format!("bal-p{i}"), "production"))
        .collect();
    let servers: Vec<String> = apps.iter().map(|a| item(&a.addr())).collect();
    let (listen, metrics) = (free_port(), free_port());
    let conf = |balance: &str| {
        proxy_config(
            listen,
            metrics,
            &format!(
                "threads: 2\n\
                 pools:\n  production: {{ servers: [{}], balance: {balance} }}\n\
                 health_check: {LAZY_HEALTH}\n\
                 routing: {{ canary_percent: 0, user_header: X-User-Id }}\n",
                servers.join(", ")
            ),
        )
    };
    let url_of = |proxy: &Proxy| proxy.url("/");
    // The servers one user reaches in `n` requests in a row.
    let servers_of = |proxy: &Proxy, user: &str, n: usize| -> BTreeSet<String> {
        (0..n)
            .map(|_| {
                let r = get(&url_of(proxy), &[("X-User-Id", user)]);
                assert_eq!(r.status, 200, "{r:?}");
                r.served_by().unwrap_or("?").to_string()
            })
            .collect()
    };
    let proxy = Proxy::start(&conf("round_robin"));
    assert!(
        servers_of(&proxy, "user-1", 6).len() >= 2,
        "round robin spreads one user's requests"
    );

    reload(&proxy, &conf("consistent_hash"));
    wait_until("each user sticks to one server", NOTICE, || {
        (0..10).all(|u| servers_of(&proxy, &format!("user-{u}"), 3).len() == 1)
    });
    let mut used = BTreeSet::new();
    for u in 0..30 {
        let seen = servers_of(&proxy, &format!("user-{u}"), 4);
        assert_eq!(seen.len(), 1, "user-{u} moved between {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "30 users all hashed to {used:?}");
    assert!(
        proxy.logs().contains("balance is now ConsistentHash"),
        "the switch is logged"
    );
}

#[test]
fn restart_only_change_is_named_in_one_line_and_running_values_stay() {
    let _serial = serial();
    let app = App::start("ro-p1", "production");
    let (listen, metrics) = (free_port(), free_port());
    let proxy = Proxy::start(&config(listen, metrics, &[item(&app.addr())], &[], ""));
    let before = proxy.status_json();
    assert_eq!(before["routing"]["canary_percent"], 0.0);

    // listen and threads need a restart; canary_percent is live.
    let moved = free_port();
    let yaml = config(moved, metrics, &[item(&app.addr())], &[], "")
        .replace("threads: 2", "threads: 3")
        .replace("canary_percent: 0", "canary_percent: 25");
    reload(&proxy, &yaml);
    wait_until("the reload names the restart-only keys", NOTICE, || {
        proxy.logs().contains("restart needed for:")
    });
    wait_until("the live key applies", NOTICE, || {
        proxy.status_json()["routing"]["canary_percent"] == 25.0
    });
    let logs = proxy.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("restart needed for:"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per reload: {lines:?}");
    let named = lines[0]
        .split("restart needed for:")
        .nth(1)
        .unwrap_or_default()
        .trim();
    assert_eq!(named, "listen, threads", "{}", lines[0]);
    // The running listener stays; the new address is not opened.
    let r = get(&proxy.url("/"), &[("X-User-Id", "someone")]);
    assert_eq!(r.status, 200, "the old listen address still serves: {r:?}");
    assert!(
        !port_open(&format!("127.0.0.1:{moved}")),
        "the new listen address is opened only by a restart"
    );
}
