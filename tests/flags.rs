//! Feature flags as a user sees them (issue 14): real `redis-server`, real demo app servers
//! (which echo the `X-Features` they received as `X-Seen-Features`), raw backends for the
//! exact bytes, and real proxies, on Redis or on the file provider.
//!
//! Tests that count shares or measure a delay take [`serial`] first: on a loaded 2-core
//! machine two of them at once would each slow the other down.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::raw::{raw_exchange, RawBackend};
use common::store::{flags_key, mark_store};
use common::*;
use serde_json::Value;

/// Generous deadline for anything the proxy must notice on a loaded machine.
const NOTICE: Duration = Duration::from_secs(20);
/// `discovery.resync_interval` of every Redis proxy here.
const RESYNC: Duration = Duration::from_secs(1);

/// A proxy following `namespace` on the Redis at `redis_port`.
fn redis_yaml(redis_port: u16, namespace: &str) -> String {
    redis_proxy_config(
        redis_port,
        namespace,
        "routing: { canary_percent: 0, salt: \"it-salt\", user_header: X-User-Id }\n",
    )
}

/// The flags a user got, as the app server saw them.
fn features(resp: &Resp) -> BTreeSet<String> {
    match resp.header("x-seen-features") {
        None | Some("-") => BTreeSet::new(),
        Some(v) => v.split(',').map(str::to_string).collect(),
    }
}

/// The flags of `user` through `proxy` (a 200 from a demo app, or panic).
fn flags_of(proxy: &Proxy, user: &str) -> BTreeSet<String> {
    let resp = get(&proxy.url("/"), &[("X-User-Id", user)]);
    assert_eq!(resp.status, 200, "{resp:?}");
    features(&resp)
}

/// The flags of users `0..n` (`u<i>`) through `proxy`, on 4 threads with keep-alive.
fn flags_of_many(proxy: &Proxy, users: &[String]) -> HashMap<String, BTreeSet<String>> {
    let url = proxy.url("/");
    std::thread::scope(|s| {
        let handles: Vec<_> = users
            .chunks(users.len().div_ceil(4).max(1))
            .map(|chunk| {
                let url = &url;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|u| {
                            let resp = get(url, &[("X-User-Id", u)]);
                            assert_eq!(resp.status, 200, "{resp:?}");
                            (u.clone(), features(&resp))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("request thread"))
            .collect()
    })
}

/// The percent `/status` shows for flag `name` (None: not in force).
fn status_percent(proxy: &Proxy, name: &str) -> Option<f64> {
    proxy.status_json()["flags"]["items"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["percent"].as_f64())
}

fn share(map: &HashMap<String, BTreeSet<String>>, pred: impl Fn(&BTreeSet<String>) -> bool) -> f64 {
    map.values().filter(|f| pred(f)).count() as f64 * 100.0 / map.len() as f64
}

#[test]
fn redis_flags_share_stickiness_replicas_raise_and_overlap() {
    let _serial = serial();
    let ns = "it-flags";
    let redis = RedisServer::start();
    let app = App::start("flags-app", "production");
    redis.ctl_ok(&[
        "--namespace",
        ns,
        "register",
        "--pool",
        "production",
        &app.addr(),
    ]);
    redis.ctl_ok(&[
        "--namespace",
        ns,
        "flag",
        "set",
        "new-checkout",
        "--percent",
        "30",
    ]);
    redis.ctl_ok(&[
        "--namespace",
        ns,
        "flag",
        "set",
        "dark-mode",
        "--percent",
        "50",
    ]);
    redis.ctl_ok(&[
        "--namespace",
        ns,
        "flag",
        "set",
        "search-v2",
        "--percent",
        "50",
    ]);
    let a = Proxy::start(&redis_yaml(redis.port(), ns));
    let b = Proxy::start(&redis_yaml(redis.port(), ns));
    for p in [&a, &b] {
        wait_until(
            "both proxies have the three flags and the app",
            NOTICE,
            || {
                status_percent(p, "search-v2") == Some(50.0)
                    && get(&p.url("/"), &[("X-User-Id", "probe")]).status == 200
            },
        );
        assert_eq!(p.status_json()["flags"]["source"], "redis");
    }

    // 10,000 distinct users through one proxy.
    let users: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
    let started = Instant::now();
    let first = flags_of_many(&a, &users);
    eprintln!("10,000 users through one proxy: {:?}", started.elapsed());
    let checkout = share(&first, |f| f.contains("new-checkout"));
    eprintln!("new-checkout at 30 %: {checkout:.2} % of 10,000 users");
    assert!((28.5..=31.5).contains(&checkout), "{checkout}");
    // Independent flags: two at 50 % overlap on about 25 %. Binomial sd at n = 10,000 is
    // 0.43 points, so +-2.5 points is > 5 sd, while correlated salts would be far off (0 or 50).
    let both = share(&first, |f| {
        f.contains("dark-mode") && f.contains("search-v2")
    });
    eprintln!("dark-mode and search-v2 at 50 % each: both on for {both:.2} %");
    assert!((22.5..=27.5).contains(&both), "{both}");

    // Same flags across requests and across replicas (a sample of 500 users on each).
    let sample: Vec<String> = users.iter().step_by(20).cloned().collect();
    let again = flags_of_many(&a, &sample);
    let other = flags_of_many(&b, &sample);
    for u in &sample {
        assert_eq!(again[u], first[u], "{u} on the same proxy");
        assert_eq!(other[u], first[u], "{u} on the other replica");
    }

    // A new user gets the cookie and the flags of that new id, on either replica later.
    let mut kinds = BTreeSet::new();
    for _ in 0..40 {
        let first = get(&a.url("/"), &[]);
        let cookie = first
            .headers_all("set-cookie")
            .into_iter()
            .find_map(|c| {
                c.split(';')
                    .next()?
                    .strip_prefix("canary_uid=")
                    .map(String::from)
            })
            .expect("a new user gets the canary_uid cookie");
        let later = get(&b.url("/"), &[("Cookie", &format!("canary_uid={cookie}"))]);
        assert_eq!(features(&later), features(&first), "user {cookie}");
        kinds.insert(features(&first));
    }
    assert!(
        kinds.len() > 1,
        "40 new users all got the same flags: {kinds:?}"
    );

    // Raise 30 -> 50: both replicas apply it promptly, and every earlier user keeps it.
    let written = Instant::now();
    redis.ctl_ok(&[
        "--namespace",
        ns,
        "flag",
        "set",
        "new-checkout",
        "--percent",
        "50",
    ]);
    let mut pending = vec![&a, &b];
    let mut took = Vec::new();
    wait_until("both replicas apply new-checkout at 50 %", NOTICE, || {
        pending.retain(|p| {
            let done = status_percent(p, "new-checkout") == Some(50.0);
            if done {
                took.push(written.elapsed());
            }
            !done
        });
        pending.is_empty()
    });
    eprintln!("ctl flag set -> applied on replica 1, 2 after {took:?}");
    for t in &took {
        assert!(*t <= RESYNC + Duration::from_secs(1), "applied after {t:?}");
    }
    let earlier: Vec<String> = users
        .iter()
        .filter(|u| first[*u].contains("new-checkout"))
        .cloned()
        .collect();
    let after = flags_of_many(&b, &earlier);
    let lost: Vec<&String> = earlier
        .iter()
        .filter(|u| !after[*u].contains("new-checkout"))
        .collect();
    assert!(
        lost.is_empty(),
        "{} users lost the flag: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // Off, then delete: the flag goes from every request; `list` shows what is stored.
    redis.ctl_ok(&["--namespace", ns, "flag", "off", "dark-mode"]);
    let listed = redis.ctl_ok(&["--namespace", ns, "flag", "list"]);
    assert!(listed.contains("dark-mode\toff\t50%"), "{listed}");
    assert!(listed.contains("new-checkout\ton\t50%"), "{listed}");
    wait_until("dark-mode is off everywhere", NOTICE, || {
        [&a, &b].iter().all(|p| {
            sample
                .iter()
                .take(50)
                .all(|u| !flags_of(p, u).contains("dark-mode"))
        })
    });
    redis.ctl_ok(&["--namespace", ns, "flag", "delete", "search-v2"]);
    wait_until("search-v2 is gone from /status", NOTICE, || {
        status_percent(&a, "search-v2").is_none() && status_percent(&b, "search-v2").is_none()
    });
}

#[test]
fn ctl_flag_validates_before_writing() {
    let ns = "it-flags-ctl";
    let redis = RedisServer::start();
    for args in [
        &["flag", "set", "Bad_Name", "--percent", "5"][..],
        &["flag", "set", "ok", "--percent", "150"][..],
        &["flag", "set", "ok", "--percent", "abc"][..],
        &["flag", "off", "missing"][..],
    ] {
        let mut all = vec!["--namespace", ns];
        all.extend_from_slice(args);
        let out = redis.ctl(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty(), "{args:?}");
    }
    assert_eq!(
        redis_cmd(&redis.url(), &["EXISTS", &flags_key(ns)]),
        redis::Value::Int(0),
        "a refused command wrote nothing"
    );
    let listed = redis.ctl_ok(&["--namespace", ns, "flag", "list"]);
    assert!(listed.contains("no flags in Redis"), "{listed}");
    // --salt and the lists are stored; a later set without them keeps them.
    redis.ctl_ok(&[
        "--namespace",
        ns,
        "flag",
        "set",
        "beta",
        "--percent",
        "1",
        "--salt",
        "s1",
        "--allow",
        "u1",
        "u2",
        "--deny",
        "u3",
    ]);
    redis.ctl_ok(&["--namespace", ns, "flag", "set", "beta", "--percent", "2"]);
    let listed = redis.ctl_ok(&["--namespace", ns, "flag", "list"]);
    assert!(
        listed.contains("beta\ton\t2%\tsalt set\tallow 2\tdeny 1"),
        "{listed}"
    );
}

#[test]
fn bad_flag_data_in_redis_is_skipped_and_counted() {
    let ns = "it-flags-bad";
    let redis = RedisServer::start();
    let url = redis.url();
    let app = App::start("bad-flags-app", "production");
    redis.ctl_ok(&[
        "--namespace",
        ns,
        "register",
        "--pool",
        "production",
        &app.addr(),
    ]);
    mark_store(&url, ns);
    let key = flags_key(ns);
    for (field, value) in [
        ("good", r#"{"percent": 100}"#),
        ("junk", "not json"),
        ("over", r#"{"percent": 150}"#),
        ("Bad_Name", r#"{"percent": 100}"#),
    ] {
        redis_cmd(&url, &["HSET", &key, field, value]);
    }
    let proxy = Proxy::start(&redis_yaml(redis.port(), ns));
    wait_until("the good flag applies", NOTICE, || {
        get(&proxy.url("/"), &[("X-User-Id", "x")]).header("x-seen-features") == Some("good")
    });
    let counted = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("canary_lb_discovery_errors_total{kind=\"flag\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_until("the three bad flags are counted", NOTICE, || {
        counted(&proxy.metrics_text()) >= 3.0
    });
    assert!(proxy.logs().contains("flag `junk`"), "{}", proxy.logs());
    // A later fix applies; the good flag kept working all along.
    redis_cmd(&url, &["HSET", &key, "junk", r#"{"percent": 100}"#]);
    redis_cmd(
        &url,
        &["PUBLISH", &common::store::events_channel(ns), "flags"],
    );
    wait_until("the fixed flag applies", NOTICE, || {
        get(&proxy.url("/"), &[("X-User-Id", "x")]).header("x-seen-features") == Some("good,junk")
    });
}

/// A file-provider proxy in front of `backend` with the file's `flags:` section `flags`.
fn file_yaml(backend: &str, routing: &str, flags: &str) -> String {
    proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\n{}\
             health_check: {{ kind: tcp, interval: 1s }}\n\
             routing: {{ user_header: X-User-Id{routing} }}\n\
             flags: {flags}\n",
            production_pool(&[backend])
        ),
    )
}

#[test]
fn a_client_sent_features_header_never_reaches_the_app() {
    let backend = RawBackend::start();
    let proxy = Proxy::start(&file_yaml(
        &backend.addr(),
        "",
        "{ items: { on-for-all: { percent: 100 }, off-for-all: { percent: 0 } } }",
    ));
    // Exported from the first scrape.
    assert!(
        proxy
            .metrics_text()
            .contains("canary_lb_discovery_errors_total{kind=\"flag\"} 0"),
        "{}",
        proxy.metrics_text()
    );
    let request = b"GET /one HTTP/1.1\r\nHost: t\r\nX-User-Id: u1\r\n\
                    X-Features: admin\r\nx-FEATURES: root,off-for-all\r\nX-FEATURES: a\r\n\
                    X-Feature-Override: off-for-all=on\r\nConnection: close\r\n\r\n";
    let resp = raw_exchange(proxy.listen_port(), request, Duration::from_secs(10));
    assert_eq!(resp.status, 200, "{}", resp.head);
    let got = backend.received();
    let one = got
        .iter()
        .find(|r| r.path == "/one")
        .expect("request reached the app");
    assert_eq!(
        one.header_lines("x-features"),
        ["on-for-all"],
        "{:?}",
        String::from_utf8_lossy(&one.head)
    );
    assert!(
        one.header_lines("x-feature-override").is_empty(),
        "untrusted override went upstream"
    );

    // No flag on: no header at all, whatever the client sent.
    let proxy = Proxy::start(&file_yaml(
        &backend.addr(),
        "",
        "{ items: { off-for-all: { percent: 0 } } }",
    ));
    let request = b"GET /two HTTP/1.1\r\nHost: t\r\nX-Features: admin\r\nConnection: close\r\n\r\n";
    raw_exchange(proxy.listen_port(), request, Duration::from_secs(10));
    let got = backend.received();
    let two = got
        .iter()
        .find(|r| r.path == "/two")
        .expect("request reached the app");
    assert!(
        two.header_lines("x-features").is_empty(),
        "{:?}",
        String::from_utf8_lossy(&two.head)
    );
}

#[test]
fn the_override_header_works_only_from_trusted_networks_and_sighup_applies_the_file() {
    let app = App::start("override-app", "production");
    let flags = "{ items: { alpha: { percent: 0 }, beta: { percent: 100 } } }";
    let trusted = Proxy::start(&file_yaml(
        &app.addr(),
        ", header_trusted_networks: [\"127.0.0.0/8\"]",
        flags,
    ));
    let untrusted = Proxy::start(&file_yaml(
        &app.addr(),
        ", header_trusted_networks: [\"10.0.0.0/8\"]",
        flags,
    ));
    let everyone = Proxy::start(&file_yaml(&app.addr(), "", flags));
    let forced = [
        ("X-User-Id", "t1"),
        ("X-Feature-Override", "alpha=on, beta=off, nope=on"),
    ];
    let seen = |p: &Proxy| {
        get(&p.url("/"), &forced)
            .header("x-seen-features")
            .map(String::from)
    };
    assert_eq!(seen(&trusted).as_deref(), Some("alpha"));
    assert_eq!(seen(&untrusted).as_deref(), Some("beta"));
    // An empty trusted list trusts nobody with flags (unlike the routing header).
    assert_eq!(seen(&everyone).as_deref(), Some("beta"));
    // Too long: ignored whole.
    let long = format!("alpha=on,{}", "x".repeat(2000));
    let resp = get(
        &trusted.url("/"),
        &[("X-User-Id", "t1"), ("X-Feature-Override", &long)],
    );
    assert_eq!(resp.header("x-seen-features"), Some("beta"));

    // SIGHUP applies the file's flags.
    let yaml = std::fs::read_to_string(everyone.config_path()).expect("config");
    everyone.rewrite_config(&yaml.replace("alpha: { percent: 0 }", "alpha: { percent: 100 }"));
    everyone.sighup();
    wait_until("the reloaded flags apply", NOTICE, || {
        get(&everyone.url("/"), &[("X-User-Id", "t1")]).header("x-seen-features")
            == Some("alpha,beta")
    });
    let status: Value = everyone.status_json();
    assert_eq!(status["flags"]["source"], "file");
    assert_eq!(status["flags"]["header"], "x-features");
}
