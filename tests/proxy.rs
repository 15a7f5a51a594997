//! The proxy as a user sees it: real `canary-lb serve` and `canary-lb app` processes on
//! loopback, driven over HTTP and signals. Each test states one promise of the spec.
//!
//! Tests that start a proxy take [`serial`] first: they assert on timing (health-check
//! thresholds, grace periods), and on a 2-core machine two of them at once would each slow
//! the other enough to make those timings meaningless.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::metrics::Scrape;
use common::*;
use serde_json::Value;

/// Generous deadline for anything the proxy must notice (health checks, reloads).
const NOTICE: Duration = Duration::from_secs(20);

/// HTTP health checks that notice a change within about a second.
const FAST_HTTP_HEALTH: &str = "{ kind: http, path: /healthz, interval: 300ms, timeout: 2s, \
                                healthy_threshold: 1, unhealthy_threshold: 1 }";
const FAST_TCP_HEALTH: &str = "{ kind: tcp, interval: 300ms, timeout: 2s, \
                               healthy_threshold: 1, unhealthy_threshold: 1 }";

/// The YAML list item for an app with the default weight.
fn server(app: &App) -> String {
    format!("\"{}\"", app.addr())
}

/// A proxy config under construction: two pools of apps plus the knobs the tests turn.
struct Conf {
    listen: u16,
    metrics: u16,
    /// YAML list items: `"ip:port"` or `{ addr: "ip:port", weight: N }`.
    production: Vec<String>,
    canary: Vec<String>,
    percent: f64,
    health: String,
    grace: String,
}

impl Conf {
    fn new(production: &[&App], canary: &[&App], percent: f64) -> Conf {
        Conf {
            listen: free_port(),
            metrics: free_port(),
            production: production.iter().map(|a| server(a)).collect(),
            canary: canary.iter().map(|a| server(a)).collect(),
            percent,
            health: FAST_HTTP_HEALTH.to_string(),
            grace: "1s".to_string(),
        }
    }

    fn yaml(&self) -> String {
        let list = |servers: &[String]| format!("[{}]", servers.join(", "));
        proxy_config(
            self.listen,
            self.metrics,
            &format!(
                "threads: 2\n\
                 grace_period: {grace}\n\
                 pools:\n  \
                   production: {{ servers: {production} }}\n  \
                   canary: {{ servers: {canary} }}\n\
                 health_check: {health}\n\
                 passive_health: {{ max_failures: 3, cool_off: 2s }}\n\
                 upstream: {{ connect_timeout: 1s, read_timeout: 10s, write_timeout: 10s, \
                              max_tries: 2 }}\n\
                 routing: {{ canary_percent: {percent}, salt: \"it-salt\", \
                             user_header: X-User-Id }}\n",
                grace = self.grace,
                production = list(&self.production),
                canary = list(&self.canary),
                health = self.health,
                percent = self.percent,
            ),
        )
    }

    fn start(&self) -> Proxy {
        Proxy::start(&self.yaml())
    }
}

/// Run `f(0..n)` on 8 threads (each with its own keep-alive connection) and keep the order.
fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    const THREADS: usize = 8;
    let f = &f;
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(THREADS)
                        .map(|i| (i, f(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            let part = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            for (i, v) in part {
                out[i] = Some(v);
            }
        }
    });
    out.into_iter().map(|v| v.unwrap()).collect()
}

/// The pool a proxied response came from, after checking that the proxy's `X-Canary-Pool`
/// agrees with the app that actually answered.
fn pool_of(r: &Resp) -> String {
    assert_eq!(r.status, 200, "expected 200, got {}: {}", r.status, r.body);
    let said = r.pool().expect("every response carries X-Canary-Pool");
    let app = r.header("x-app-pool").expect("answered by a demo app");
    assert_eq!(
        said, app,
        "X-Canary-Pool disagrees with the app that answered"
    );
    said.to_string()
}

/// The `/status` entry of server `addr` in `pool`.
fn server_entry(status: &Value, pool: &str, addr: &str) -> Option<Value> {
    status["pools"][pool]["servers"]
        .as_array()?
        .iter()
        .find(|s| s["addr"] == addr)
        .cloned()
}

fn healthy(proxy: &Proxy, pool: &str, addr: &str) -> Option<bool> {
    server_entry(&proxy.status_json(), pool, addr)?["healthy"].as_bool()
}

/// Whether the Prometheus text has a sample of metric `name` (histograms count by their
/// `_bucket`/`_sum`/`_count` series).
fn has_series(text: &str, name: &str) -> bool {
    Scrape::parse(text).has(name)
}

/// The sum of the samples of `name` whose label set contains every one of `labels`.
fn sample_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    Scrape::parse(text).sum(name, labels)
}

/// The demo app itself, talked to directly: the harness and the tests below rely on it.
#[test]
fn demo_app_answers_as_documented() {
    let app = App::start("demo-a", "canary");

    let r = get(&app.url("/some/path?x=1"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "pool=canary server=demo-a path=/some/path\n");
    assert_eq!(r.served_by(), Some("demo-a"));
    assert_eq!(r.header("x-app-pool"), Some("canary"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    for echo in [
        "x-seen-canary",
        "x-seen-forwarded-for",
        "x-seen-forwarded-proto",
        "x-seen-forwarded-host",
        "x-seen-request-id",
    ] {
        assert_eq!(
            r.header(echo),
            Some("-"),
            "{echo} without the request header"
        );
    }

    let r = get(
        &app.url("/"),
        &[
            ("X-Canary", "1"),
            ("X-Request-Id", "abc"),
            ("X-Forwarded-For", "10.1.1.1"),
        ],
    );
    assert_eq!(r.header("x-seen-canary"), Some("1"));
    assert_eq!(r.header("x-seen-request-id"), Some("abc"));
    assert_eq!(r.header("x-seen-forwarded-for"), Some("10.1.1.1"));

    let r = get(&app.url("/healthz"), &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    let r = get(&app.url("/status/418"), &[]);
    assert_eq!(r.status, 418);
    assert_eq!(r.served_by(), Some("demo-a"));
    assert_eq!(get(&app.url("/status/503"), &[]).status, 503);
    assert_eq!(get(&app.url("/status/150"), &[]).status, 400);
    assert_eq!(get(&app.url("/status/nope"), &[]).status, 400);

    let started = Instant::now();
    let r = get(&app.url("/slow?ms=300"), &[]);
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.body, "pool=canary server=demo-a path=/slow\n");
    assert_eq!(get(&app.url("/slow?ms=soon"), &[]).status, 400);

    let r = post(&app.url("/upload"), &[], &[b'x'; 100_000]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-body-length"), Some("100000"));
    assert_eq!(get(&app.url("/"), &[]).header("x-body-length"), Some("0"));
}

/// The Redis harness other test files use: a fresh server answers PING, a killed one does
/// not, and a restarted one answers on the same port.
#[test]
fn redis_harness_starts_kills_and_restarts() {
    let mut redis = RedisServer::start();
    assert!(redis.ping());
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", redis.port()));
    redis.kill();
    assert!(!redis.ping());
    redis.restart();
    assert!(redis.ping());
}

/// Spec 1: the sticky percentage. 20 % of 10,000 distinct users land in canary (± 1.5
/// points), and each user keeps landing on the same side.
#[test]
fn canary_share_matches_percent_and_users_stick() {
    let _serial = serial();
    let p1 = App::start("share-p1", "production");
    let p2 = App::start("share-p2", "production");
    let c1 = App::start("share-c1", "canary");
    let proxy = Conf::new(&[&p1, &p2], &[&c1], 20.0).start();

    const USERS: usize = 10_000;
    // Half the users are identified by the X-User-Id header, half by the canary_uid cookie.
    let ask = |i: usize| {
        let cookie = format!("canary_uid=u{i}");
        let id = format!("u{i}");
        let headers: Vec<(&str, &str)> = if i.is_multiple_of(2) {
            vec![("X-User-Id", id.as_str())]
        } else {
            vec![("Cookie", cookie.as_str())]
        };
        pool_of(&get(&proxy.url("/"), &headers))
    };

    let first: Vec<String> = parallel(USERS, ask);
    let canary = first.iter().filter(|p| *p == "canary").count();
    let share = canary as f64 * 100.0 / USERS as f64;
    eprintln!("canary share {share:.2} % ({canary} of {USERS} users)");
    assert!(
        (18.5..=21.5).contains(&share),
        "canary share {share:.2} % for canary_percent 20 ({canary} of {USERS} users)"
    );
    assert!(first.iter().all(|p| p == "canary" || p == "production"));

    // Every 50th user, three more times each.
    let sample: Vec<usize> = (0..USERS).step_by(50).collect();
    for round in 0..3 {
        let again = parallel(sample.len(), |k| ask(sample[k]));
        for (k, pool) in again.iter().enumerate() {
            let user = sample[k];
            assert_eq!(
                pool, &first[user],
                "user u{user} moved from {} to {pool} on repeat {round}",
                first[user]
            );
        }
    }
}

/// Spec 2: raising the percentage only adds users to canary; nobody there moves back.
#[test]
fn raising_the_percent_keeps_canary_users_in_canary() {
    let _serial = serial();
    let p1 = App::start("raise-p1", "production");
    let c1 = App::start("raise-c1", "canary");
    let mut conf = Conf::new(&[&p1], &[&c1], 10.0);
    let proxy = conf.start();

    const USERS: usize = 2_000;
    let ask = |i: usize| {
        let id = format!("u{i}");
        pool_of(&get(&proxy.url("/"), &[("X-User-Id", &id)]))
    };
    let before = parallel(USERS, ask);
    let canary_before = before.iter().filter(|p| *p == "canary").count();
    assert!(
        (100..=300).contains(&canary_before),
        "{canary_before} of {USERS} users in canary at 10 %"
    );

    conf.percent = 20.0;
    proxy.rewrite_config(&conf.yaml());
    proxy.sighup();
    wait_until(
        "/status shows canary_percent 20 after SIGHUP",
        NOTICE,
        || proxy.status_json()["routing"]["canary_percent"].as_f64() == Some(20.0),
    );

    let after = parallel(USERS, ask);
    let moved_back: Vec<usize> = (0..USERS)
        .filter(|&i| before[i] == "canary" && after[i] != "canary")
        .collect();
    assert!(
        moved_back.is_empty(),
        "{} canary users left canary when the percent went up, e.g. u{}",
        moved_back.len(),
        moved_back[0]
    );
    let canary_after = after.iter().filter(|p| *p == "canary").count();
    assert!(
        (300..=500).contains(&canary_after),
        "{canary_after} of {USERS} users in canary at 20 %"
    );
}

/// Spec 3: precedence: header beats cookie beats percent; new users get a sticky cookie; the
/// upstream sees X-Canary: 1 and the forwarding headers.
#[test]
fn header_beats_cookie_beats_percent() {
    let _serial = serial();
    let p1 = App::start("prec-p1", "production");
    let c1 = App::start("prec-c1", "canary");
    let at_0 = Conf::new(&[&p1], &[&c1], 0.0).start();
    let at_100 = Conf::new(&[&p1], &[&c1], 100.0).start();

    // (header X-Canary, cookie, pool at 0 %, pool at 100 %)
    let cases: &[(Option<&str>, Option<&str>, &str, &str)] = &[
        (None, None, "production", "canary"),
        (Some("1"), None, "canary", "canary"),
        (Some("true"), None, "canary", "canary"),
        (Some("always"), None, "canary", "canary"),
        (Some("0"), None, "production", "production"),
        (Some("false"), None, "production", "production"),
        (Some("never"), None, "production", "production"),
        (Some("garbage"), None, "production", "canary"),
        (None, Some("canary=always"), "canary", "canary"),
        (None, Some("canary=never"), "production", "production"),
        (None, Some("canary=maybe"), "production", "canary"),
        (Some("0"), Some("canary=always"), "production", "production"),
        (
            Some("never"),
            Some("canary=always"),
            "production",
            "production",
        ),
        (Some("1"), Some("canary=never"), "canary", "canary"),
        (Some("always"), Some("canary=never"), "canary", "canary"),
        (Some("garbage"), Some("canary=always"), "canary", "canary"),
        (
            Some("garbage"),
            Some("canary=never"),
            "production",
            "production",
        ),
    ];
    for (proxy, percent) in [(&at_0, 0), (&at_100, 100)] {
        for &(header, cookie, want_0, want_100) in cases {
            let want = if percent == 0 { want_0 } else { want_100 };
            let mut headers = vec![("X-User-Id", "precedence-user")];
            if let Some(h) = header {
                headers.push(("X-Canary", h));
            }
            if let Some(c) = cookie {
                headers.push(("Cookie", c));
            }
            let r = get(&proxy.url("/p"), &headers);
            let got = pool_of(&r);
            assert_eq!(
                got, want,
                "at {percent} %: X-Canary {header:?}, Cookie {cookie:?} went to {got}"
            );
            if got == "canary" {
                assert_eq!(
                    r.header("x-seen-canary"),
                    Some("1"),
                    "canary upstream sees X-Canary: 1"
                );
            } else if header.is_none() {
                assert_ne!(
                    r.header("x-seen-canary"),
                    Some("1"),
                    "production must not be told canary"
                );
            }
        }
    }

    // A new user (no id) gets a canary_uid cookie and keeps its side when sending it back.
    let at_50 = Conf::new(&[&p1], &[&c1], 50.0).start();
    let mut sides = HashMap::new();
    for n in 0..20 {
        let r = get(&at_50.url("/"), &[]);
        let pool = pool_of(&r);
        let set = r
            .headers_all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with("canary_uid="))
            .unwrap_or_else(|| panic!("new user {n} got no canary_uid cookie: {:?}", r.headers))
            .to_string();
        for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age="] {
            assert!(set.contains(attr), "Set-Cookie `{set}` lacks {attr}");
        }
        let id = set["canary_uid=".len()..]
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string();
        assert!(!id.is_empty(), "empty user id in `{set}`");
        let cookie = format!("canary_uid={id}");
        for _ in 0..3 {
            let again = get(&at_50.url("/"), &[("Cookie", &cookie)]);
            assert_eq!(
                pool_of(&again),
                pool,
                "user {id} changed sides with its cookie"
            );
            assert!(
                !again
                    .headers_all("set-cookie")
                    .iter()
                    .any(|c| c.starts_with("canary_uid=")),
                "a user who sent canary_uid got a new one"
            );
        }
        *sides.entry(pool).or_insert(0) += 1;
    }
    assert_eq!(
        sides.len(),
        2,
        "20 new users at 50 % all went one way: {sides:?}"
    );
    let known = get(&at_50.url("/"), &[("X-User-Id", "known")]);
    assert!(
        !known
            .headers_all("set-cookie")
            .iter()
            .any(|c| c.starts_with("canary_uid=")),
        "a user identified by X-User-Id got a canary_uid cookie"
    );

    // What the upstream sees.
    let r = get(&at_0.url("/fwd"), &[]);
    assert_eq!(r.header("x-seen-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-forwarded-proto"), Some("http"));
    let host = format!("127.0.0.1:{}", at_0.listen_port());
    assert_eq!(r.header("x-seen-forwarded-host"), Some(host.as_str()));
    let generated = r.header("x-seen-request-id").unwrap_or("-").to_string();
    assert_ne!(generated, "-", "the proxy generates X-Request-Id");
    assert!(!generated.is_empty());
    let other = get(&at_0.url("/fwd"), &[]);
    assert_ne!(
        other.header("x-seen-request-id"),
        Some(generated.as_str()),
        "ids are unique"
    );

    let r = get(
        &at_0.url("/fwd"),
        &[
            ("X-Request-Id", "req-from-client-42"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    );
    assert_eq!(r.header("x-seen-request-id"), Some("req-from-client-42"));
    let xff = r.header("x-seen-forwarded-for").unwrap_or("-");
    assert!(
        xff.ends_with("127.0.0.1"),
        "X-Forwarded-For upstream was `{xff}`"
    );

    let r = get(&at_0.url("/"), &[("X-Canary", "1")]);
    assert_eq!(r.served_by(), Some("prec-c1"));
    assert_eq!(r.header("x-seen-canary"), Some("1"));
}

/// Spec 4: without a healthy canary, canary requests go to production; without a healthy
/// production server, requests get a 503.
#[test]
fn canary_down_falls_back_and_production_down_is_503() {
    let _serial = serial();
    let mut p1 = App::start("fall-p1", "production");
    let mut c1 = App::start("fall-c1", "canary");
    let mut conf = Conf::new(&[&p1], &[&c1], 0.0);
    conf.health = FAST_TCP_HEALTH.to_string();
    let proxy = conf.start();

    let r = get(&proxy.url("/"), &[("X-Canary", "1")]);
    assert_eq!(r.served_by(), Some("fall-c1"));

    c1.kill();
    wait_until(
        "the killed canary server is unhealthy in /status",
        NOTICE,
        || healthy(&proxy, "canary", &c1.addr()) == Some(false),
    );
    for _ in 0..10 {
        let r = get(&proxy.url("/"), &[("X-Canary", "1")]);
        assert_eq!(
            r.status, 200,
            "canary request during canary outage: {}",
            r.body
        );
        assert_eq!(r.pool(), Some("production"));
        assert_eq!(r.served_by(), Some("fall-p1"));
    }
    let metrics = proxy.metrics_text();
    assert!(
        sample_sum(
            &metrics,
            "canary_lb_routing_decisions_total",
            &["reason=\"fallback\""]
        ) >= 10.0,
        "fallbacks are counted with reason=\"fallback\":\n{metrics}"
    );

    p1.kill();
    wait_until(
        "the killed production server is unhealthy in /status",
        NOTICE,
        || healthy(&proxy, "production", &p1.addr()) == Some(false),
    );
    for headers in [vec![], vec![("X-Canary", "1")]] {
        let r = get(&proxy.url("/"), &headers);
        assert_eq!(r.status, 503, "no healthy server at all: {r:?}");
        assert!(
            !r.body.is_empty() && r.body.len() < 200,
            "short 503 body: {:?}",
            r.body
        );
        assert!(r.pool().is_some(), "503s carry X-Canary-Pool too");
    }
}

/// Sets the flag when dropped, so scoped traffic threads stop even if the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Spec 5: a production server that dies leaves rotation and returns after a restart, and
/// not a single client request fails meanwhile while the other server is up.
#[test]
fn killed_server_leaves_and_rejoins_without_failed_requests() {
    let _serial = serial();
    let p1 = App::start("kill-p1", "production");
    let mut p2 = App::start("kill-p2", "production");
    let proxy = Conf::new(&[&p1, &p2], &[], 0.0).start();
    let p2_addr = p2.addr();

    // (when, outcome): outcome is Ok((status, served_by)) or Err(transport error).
    type Outcome = (Instant, Result<(u16, String), String>);
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let served_by_p2_since = |since: Instant| {
        results
            .lock()
            .unwrap()
            .iter()
            .any(|(t, o)| *t >= since && matches!(o, Ok((200, by)) if by == "kill-p2"))
    };
    let count_since = |since: Instant| {
        results
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .count()
    };

    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let outcome = try_get(&proxy.url("/steady"), &[])
                        .map(|r| (r.status, r.served_by().unwrap_or("").to_string()));
                    results.lock().unwrap().push((Instant::now(), outcome));
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let _stop = StopOnDrop(&stop);

        let start = Instant::now();
        wait_until("both servers serve the steady traffic", NOTICE, || {
            served_by_p2_since(start)
        });

        p2.kill();
        wait_until("the killed server is unhealthy in /status", NOTICE, || {
            healthy(&proxy, "production", &p2_addr) == Some(false)
        });
        let down = Instant::now();
        wait_until("traffic flows while the server is down", NOTICE, || {
            count_since(down) >= 100
        });

        p2.restart();
        wait_until(
            "the restarted server is healthy again in /status",
            NOTICE,
            || healthy(&proxy, "production", &p2_addr) == Some(true),
        );
        let back = Instant::now();
        wait_until("the restarted server serves again", NOTICE, || {
            served_by_p2_since(back)
        });
    });

    let results = results.into_inner().unwrap();
    eprintln!("{} requests during the kill/restart", results.len());
    let failed: Vec<&Outcome> = results
        .iter()
        .filter(|(_, o)| !matches!(o, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the kill/restart, first ones: {:?}",
        failed.len(),
        results.len(),
        failed.iter().take(5).map(|(_, o)| o).collect::<Vec<_>>()
    );
}

/// The example config of the spec (without the two lines [`proxy_config`] adds).
const GOOD_CONFIG_BODY: &str = r#"threads: 2
pools:
  production: { servers: ["127.0.0.1:3001", { addr: "127.0.0.1:3002", weight: 2 }] }
  canary: { servers: ["127.0.0.1:4001"] }
health_check:
  { kind: http, path: /healthz, interval: 2s, timeout: 1s,
    healthy_threshold: 2, unhealthy_threshold: 2 }
passive_health: { max_failures: 3, cool_off: 10s }
upstream:
  { connect_timeout: 2s, read_timeout: 30s, write_timeout: 30s, idle_timeout: 60s, max_tries: 2 }
grace_period: 10s
fallback_to_canary: false
routing:
  { canary_percent: 10, salt: "release-1", header: X-Canary, flag_cookie: canary,
    user_cookie: canary_uid, user_header: X-User-Id, pool_response_header: true }
"#;

/// Spec 6: bad configs are refused with the offending key named, by `check` and by `serve`.
#[test]
fn bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, proxy_config(free_port(), free_port(), body)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let timeout = Duration::from_secs(20);

    let good = write("good.yaml", GOOD_CONFIG_BODY);
    let out = run_cli(&["check", "--config", &good], timeout);
    assert!(
        out.status.success(),
        "check refused a good config:\n{}",
        text(&out)
    );

    let bad = [
        (
            "weight0.yaml",
            "pools:\n  production:\n    servers: [{ addr: \"127.0.0.1:3001\", weight: 0 }]\n",
            "weight",
        ),
        (
            "percent150.yaml",
            "routing:\n  canary_percent: 150\n",
            "canary_percent",
        ),
        ("unknown.yaml", "routing:\n  canary_pct: 5\n", "canary_pct"),
        (
            "unknown_top.yaml",
            "listen_adress: \"127.0.0.1:1\"\n",
            "listen_adress",
        ),
    ];
    for (name, body, key) in bad {
        let path = write(name, body);
        let out = run_cli(&["check", "--config", &path], timeout);
        let msg = text(&out);
        assert!(!out.status.success(), "check accepted {name}:\n{msg}");
        assert!(
            msg.contains(key),
            "check on {name} should name `{key}`:\n{msg}"
        );
        assert!(
            msg.contains("line"),
            "check on {name} should name the line:\n{msg}"
        );

        let out = run_cli(&["serve", "--config", &path], timeout);
        let msg = text(&out);
        assert!(!out.status.success(), "serve started with {name}:\n{msg}");
        assert!(
            msg.contains(key),
            "serve on {name} should name `{key}`:\n{msg}"
        );
    }
}

/// Spec 7: every documented metric shows up after some traffic, and a server removed from the
/// config takes its series with it.
#[test]
fn metrics_cover_the_spec_and_forget_removed_servers() {
    let _serial = serial();
    let p1 = App::start("met-p1", "production");
    let mut p2 = App::start("met-p2", "production");
    let c1 = App::start("met-c1", "canary");
    let mut conf = Conf::new(&[&p1, &p2], &[&c1], 50.0);
    // Slow active checks, so the proxy learns of p2's death from failed connects (retries).
    conf.health = "{ kind: tcp, interval: 60s, timeout: 2s }".to_string();
    let proxy = conf.start();

    for i in 0..20 {
        let id = format!("m{i}");
        pool_of(&get(&proxy.url("/"), &[("X-User-Id", &id)]));
        pool_of(&get(&proxy.url("/"), &[("X-Canary", "1")]));
        pool_of(&get(&proxy.url("/"), &[("Cookie", "canary=never")]));
    }
    assert_eq!(
        get(&proxy.url("/status/404"), &[("X-User-Id", "m1")]).status,
        404
    );

    // Requests that meet the dead p2 are retried on p1 (max_tries 2), so all still succeed.
    p2.kill();
    for i in 0..20 {
        let r = get(&proxy.url("/"), &[("Cookie", "canary=never")]);
        assert_eq!(r.status, 200, "request {i} after p2 died: {}", r.body);
        assert_eq!(r.served_by(), Some("met-p1"));
    }

    let names = [
        "canary_lb_requests_total",
        "canary_lb_request_duration_seconds",
        "canary_lb_upstream_requests_total",
        "canary_lb_server_up",
        "canary_lb_pool_servers",
        "canary_lb_routing_decisions_total",
        "canary_lb_retries_total",
        "canary_lb_canary_percent",
    ];
    let text = proxy.metrics_text();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !has_series(&text, n))
        .collect();
    assert!(
        missing.is_empty(),
        "missing metrics {missing:?} in:\n{text}"
    );
    for reason in ["header", "cookie", "percent"] {
        let label = format!("reason=\"{reason}\"");
        assert!(
            sample_sum(&text, "canary_lb_routing_decisions_total", &[&label]) > 0.0,
            "no routing decision counted with {label}:\n{text}"
        );
    }
    assert!(
        sample_sum(&text, "canary_lb_retries_total", &["pool=\"production\""]) > 0.0,
        "no production retry counted after p2 died:\n{text}"
    );
    assert_eq!(sample_sum(&text, "canary_lb_canary_percent", &[]), 50.0);
    assert!(sample_sum(&text, "canary_lb_requests_total", &["code=\"404\""]) >= 1.0);
    let p2_label = format!("\"{}\"", p2.addr());
    assert!(
        text.contains(&p2_label),
        "no series for p2 {p2_label} before removal:\n{text}"
    );

    conf.production = vec![server(&p1)];
    proxy.rewrite_config(&conf.yaml());
    proxy.sighup();
    wait_until("the removed server's series leave /metrics", NOTICE, || {
        !proxy.metrics_text().contains(&p2_label)
    });
    assert!(server_entry(&proxy.status_json(), "production", &p2.addr()).is_none());
    assert_eq!(
        get(&proxy.url("/"), &[("Cookie", "canary=never")]).served_by(),
        Some("met-p1")
    );
}

/// Spec 8: SIGTERM lets an in-flight request finish within the grace period, then the
/// process exits.
#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let _serial = serial();
    let p1 = App::start("term-p1", "production");
    let mut conf = Conf::new(&[&p1], &[], 0.0);
    conf.grace = "5s".to_string();
    let mut proxy = conf.start();

    let url = proxy.url("/slow?ms=2500");
    let in_flight = std::thread::spawn(move || get_fresh(&url, &[]));
    // Give the request time to reach the app (it then takes 2.5 s to answer); this sleep only
    // orders the signal after the request, the assertions below do not depend on its length.
    std::thread::sleep(Duration::from_millis(700));
    let signalled = Instant::now();
    proxy.sigterm();

    let r = in_flight
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("in-flight request failed on SIGTERM: {e}\n{}", proxy.logs()));
    assert_eq!(r.status, 200, "in-flight request: {}", r.body);
    assert_eq!(r.body, "pool=production server=term-p1 path=/slow\n");

    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("proxy still runs 30 s after SIGTERM:\n{}", proxy.logs()));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        proxy.logs()
    );
    assert!(signalled.elapsed() < Duration::from_secs(30));
}

/// `/status` lists every server with its weight and state, and the routing settings.
#[test]
fn status_lists_servers_and_routing() {
    let _serial = serial();
    let p1 = App::start("stat-p1", "production");
    let c1 = App::start("stat-c1", "canary");
    let mut conf = Conf::new(&[&p1], &[&c1], 12.5);
    conf.production = vec![format!("{{ addr: \"{}\", weight: 3 }}", p1.addr())];
    let proxy = conf.start();

    let status = proxy.status_json();
    let p = server_entry(&status, "production", &p1.addr())
        .unwrap_or_else(|| panic!("{} missing from /status: {status}", p1.addr()));
    assert_eq!(p["weight"], 3, "{p}");
    assert_eq!(p["draining"], false, "{p}");
    assert_eq!(p["in_rotation"], true, "{p}");
    let c = server_entry(&status, "canary", &c1.addr())
        .unwrap_or_else(|| panic!("{} missing from /status: {status}", c1.addr()));
    assert_eq!(c["weight"], 1, "{c}");
    wait_until("both servers are healthy in /status", NOTICE, || {
        healthy(&proxy, "production", &p1.addr()) == Some(true)
            && healthy(&proxy, "canary", &c1.addr()) == Some(true)
    });
    assert_eq!(
        status["routing"]["canary_percent"].as_f64(),
        Some(12.5),
        "{status}"
    );
    assert_eq!(
        status["routing"]["salt_fingerprint"],
        canary_lb::routing::salt_fingerprint("it-salt"),
        "{status}"
    );
    assert!(status.get("discovery").is_some(), "{status}");
}

#[test]
fn consistent_hashing_keeps_a_user_on_one_server() {
    let _serial = serial();
    let apps: Vec<App> = (1..=3)
        .map(|i| App::start(&format!("ch-p{i}"), "production"))
        .collect();
    let (listen, metrics) = (free_port(), free_port());
    let servers: Vec<String> = apps.iter().map(server).collect();
    let proxy = Proxy::start(&proxy_config(
        listen,
        metrics,
        &format!(
            "threads: 2\n\
             pools:\n  production: {{ servers: [{}], balance: consistent_hash }}\n\
             health_check: {FAST_HTTP_HEALTH}\n\
             routing: {{ canary_percent: 0, user_header: X-User-Id }}\n",
            servers.join(", ")
        ),
    ));
    let url = proxy.url("/");
    let mut used = std::collections::BTreeSet::new();
    for u in 0..60 {
        let user = format!("user-{u}");
        let first = get(&url, &[("X-User-Id", &user)]);
        assert_eq!(first.status, 200);
        let server = first.served_by().unwrap_or("?").to_string();
        for _ in 0..3 {
            let again = get(&url, &[("X-User-Id", &user)]);
            assert_eq!(again.served_by(), Some(server.as_str()), "{user} moved");
        }
        used.insert(server);
    }
    assert!(used.len() >= 2, "60 users all hashed to {used:?}");
}
