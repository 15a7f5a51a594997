//! Redis discovery as a user sees it (issue #3): a real `redis-server`, real demo app servers
//! and the real proxy with `discovery.provider: redis`. Each test writes the store with
//! `canary-lb ctl` or with plain Redis commands (what a pipeline with `redis-cli` does) and
//! checks what comes through the proxy, in `/status` and in `/metrics`.
//!
//! Every proxy follows its own namespace and resyncs every second, so "picked up within the
//! resync interval" is measurable. Tests take [`serial`] first: they assert on timing, and on
//! a 2-core machine two of them at once would each slow the other down.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::load::{Load, LoadSpec};
use common::store::{
    events_channel, mark_store, now_ms, routing_key, servers_key, store_generation, weights_key,
    wipe,
};
use common::*;
use serde_json::Value;

/// Generous deadline for anything the proxy must notice on a loaded machine.
const NOTICE: Duration = Duration::from_secs(20);
/// `discovery.resync_interval` of every proxy here.
const RESYNC: Duration = Duration::from_secs(1);

/// A proxy config following `namespace` on the Redis at `redis_port` (which may not be up
/// yet), with `production` as the file's static servers.
fn yaml(redis_port: u16, namespace: &str, production: &[&App]) -> String {
    let servers: Vec<String> = production
        .iter()
        .map(|a| format!("\"{}\"", a.addr()))
        .collect();
    redis_proxy_config(
        redis_port,
        namespace,
        &format!(
            "pools:\n  \
               production: {{ servers: [{servers}] }}\n\
             passive_health: {{ max_failures: 3, cool_off: 2s }}\n\
             upstream: {{ connect_timeout: 1s, read_timeout: 10s, write_timeout: 10s, \
                          max_tries: 2 }}\n\
             routing: {{ canary_percent: 0, salt: \"it-salt\", user_header: X-User-Id }}\n",
            servers = servers.join(", "),
        ),
    )
}

/// [`yaml`] with `discovery.reinit_grace` set to `grace` (30 s by default: long for a test).
fn yaml_with_grace(redis_port: u16, namespace: &str, production: &[&App], grace: &str) -> String {
    let yaml = yaml(redis_port, namespace, production);
    let resync = "resync_interval: 1s }";
    assert!(yaml.contains(resync), "{yaml}");
    yaml.replacen(
        resync,
        &format!("resync_interval: 1s, reinit_grace: {grace} }}"),
        1,
    )
}

/// The `/status` entry of server `addr` in `pool`.
fn server_entry(status: &Value, pool: &str, addr: &str) -> Option<Value> {
    status["pools"][pool]["servers"]
        .as_array()?
        .iter()
        .find(|s| s["addr"] == addr)
        .cloned()
}

/// The addresses `/status` lists in `pool`.
fn listed(proxy: &Proxy, pool: &str) -> HashSet<String> {
    listed_in(&proxy.status_json(), pool)
}

/// The addresses a `/status` document lists in `pool`.
fn listed_in(status: &Value, pool: &str) -> HashSet<String> {
    status["pools"][pool]["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["addr"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn discovery_up(proxy: &Proxy) -> bool {
    proxy.status_json()["discovery"]["up"] == true
}

/// The sum of the samples of `name` whose label set contains every one of `labels`.
fn metric(proxy: &Proxy, name: &str, labels: &[&str]) -> f64 {
    proxy.scrape().sum(name, labels)
}

/// `X-Served-By` of `n` requests through the proxy; every one must be a 200.
fn served_by(proxy: &Proxy, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    (0..n)
        .map(|i| {
            let r = get(&proxy.url(&format!("/r{i}")), headers);
            assert_eq!(r.status, 200, "request {i}: {} {}", r.status, r.body);
            r.served_by().expect("answered by a demo app").to_string()
        })
        .collect()
}

/// Whether one of `n` requests through the proxy is answered 200 by the app named `name`
/// (other answers, 503 included, are allowed: for polling while a change propagates).
fn reaches(proxy: &Proxy, name: &str, n: usize) -> bool {
    (0..n).any(|_| answered_by(proxy, name, &[]))
}

/// Whether a request through the proxy is answered 200 by the app named `name`.
fn answered_by(proxy: &Proxy, name: &str, headers: &[(&str, &str)]) -> bool {
    matches!(try_get(&proxy.url("/"), headers), Ok(r) if r.status == 200 && r.served_by() == Some(name))
}

#[test]
fn redis_unreachable_at_start_then_followed_once_it_answers() {
    let _serial = serial();
    let ns = "it-unreachable";
    let redis_port = free_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let fixed = App::start("static-1", "production");
    let registered = App::start("registered-1", "production");

    // Redis is down. A proxy with static servers serves them; one without answers 503.
    let with_static = Proxy::start(&yaml(redis_port, ns, &[&fixed]));
    let without = Proxy::start(&yaml(redis_port, ns, &[]));
    for proxy in [&with_static, &without] {
        wait_until("discovery reports the failure", NOTICE, || {
            proxy.status_json()["discovery"]["last_error"].is_string()
        });
        assert!(!discovery_up(proxy));
        assert_eq!(metric(proxy, "canary_lb_discovery_up", &[]), 0.0);
        assert!(
            metric(
                proxy,
                "canary_lb_discovery_errors_total",
                &["kind=\"unreachable\""]
            ) >= 1.0
        );
    }
    assert!(served_by(&with_static, 10, &[])
        .iter()
        .all(|s| s == "static-1"));
    let r = get(&without.url("/"), &[]);
    assert_eq!(r.status, 503, "no server anywhere: {}", r.body);

    // Redis comes up on the configured port; a server registered there reaches both proxies
    // (they retry with a backoff capped at 5 s), and Redis replaces the static list.
    let _redis = RedisServer::start_on(redis_port);
    ctl_ok(
        &redis_url,
        ns,
        &["register", "--pool", "production", &registered.addr()],
    );
    for proxy in [&with_static, &without] {
        wait_until("the registered server serves", NOTICE, || {
            answered_by(proxy, "registered-1", &[])
        });
        wait_until("discovery is up", NOTICE, || discovery_up(proxy));
        assert_eq!(metric(proxy, "canary_lb_discovery_up", &[]), 1.0);
        assert!(served_by(proxy, 10, &[])
            .iter()
            .all(|s| s == "registered-1"));
    }
    assert!(
        with_static
            .logs()
            .contains("serving the last known servers"),
        "the outage is logged"
    );
}

#[test]
fn redis_lost_while_serving_keeps_the_last_servers_and_health_checks() {
    let _serial = serial();
    let ns = "it-lost";
    let mut redis = RedisServer::start();
    let url = redis.url();
    let p1 = App::start("p1", "production");
    let mut p2 = App::start("p2", "production");
    let p3 = App::start("p3", "production");
    for app in [&p1, &p2] {
        ctl_ok(&url, ns, &["register", "--pool", "production", &app.addr()]);
    }
    // Redis comes back empty below: a re-created store, whose grace is short here.
    let proxy = Proxy::start(&yaml_with_grace(redis.port(), ns, &[], "2s"));
    wait_until("both registered servers serve", NOTICE, || {
        reaches(&proxy, "p1", 4) && reaches(&proxy, "p2", 4)
    });
    assert!(discovery_up(&proxy));

    // Redis dies: the last known servers keep serving, discovery is reported down.
    redis.kill();
    wait_until("discovery is reported down", NOTICE, || {
        !discovery_up(&proxy)
    });
    assert_eq!(metric(&proxy, "canary_lb_discovery_up", &[]), 0.0);
    let seen: HashSet<String> = served_by(&proxy, 20, &[]).into_iter().collect();
    assert_eq!(seen, HashSet::from(["p1".to_string(), "p2".to_string()]));

    // Health checks go on without Redis: a dead server leaves rotation.
    p2.kill();
    wait_until("p2 is marked unhealthy", NOTICE, || {
        server_entry(&proxy.status_json(), "production", &p2.addr())
            .is_some_and(|s| s["healthy"] == false)
    });
    assert!(served_by(&proxy, 20, &[]).iter().all(|s| s == "p1"));
    assert!(!discovery_up(&proxy));

    // Redis is back, empty: re-register; the proxy resubscribes and resyncs. The store is a
    // re-created one: p2 stays listed (unhealthy, so without traffic) for the grace.
    redis.restart();
    ctl_ok(&url, ns, &["register", "--pool", "production", &p1.addr()]);
    ctl_ok(&url, ns, &["register", "--pool", "production", &p3.addr()]);
    wait_until("discovery is up again", NOTICE, || discovery_up(&proxy));
    wait_until("the newly registered p3 gets traffic", NOTICE, || {
        reaches(&proxy, "p3", 4)
    });
    wait_until(
        "p2 (not re-registered) is gone after the grace",
        NOTICE,
        || !listed(&proxy, "production").contains(&p2.addr()),
    );
    assert_eq!(
        metric(&proxy, "canary_lb_discovery_store_reinitialised_total", &[]),
        1.0
    );
    let seen: HashSet<String> = served_by(&proxy, 20, &[]).into_iter().collect();
    assert_eq!(seen, HashSet::from(["p1".to_string(), "p3".to_string()]));
    // And it follows events again, not only resyncs: a publish moves the percent at once.
    ctl_ok(&url, ns, &["canary", "set", "40"]);
    wait_until("the percent set after the restart applies", NOTICE, || {
        proxy.status_json()["routing"]["canary_percent"] == 40.0
    });
}

#[test]
fn bad_data_is_logged_counted_and_skipped() {
    let _serial = serial();
    let ns = "it-bad";
    let redis = RedisServer::start();
    let url = redis.url();
    let good = App::start("good", "production");
    let heavy = App::start("heavy", "production");
    // The store was initialised once (by any `ctl` write, or the redis-cli recipe).
    mark_store(&url, ns);
    let proxy = Proxy::start(&yaml(redis.port(), ns, &[]));
    let servers = servers_key(ns, "production");
    let weights = weights_key(ns, "production");
    let routing = routing_key(ns);
    let events = events_channel(ns);

    // What a hand-written pipeline might store: one good server, one with a non-numeric
    // weight, one member that is not an address; and a good canary percent.
    redis_cmd(&url, &["ZADD", &servers, "+inf", &good.addr()]);
    redis_cmd(&url, &["ZADD", &servers, "+inf", &heavy.addr()]);
    redis_cmd(&url, &["HSET", &weights, &heavy.addr(), "heavy"]);
    redis_cmd(&url, &["ZADD", &servers, "+inf", "not-an-address"]);
    redis_cmd(&url, &["HSET", &routing, "canary_percent", "25"]);
    redis_cmd(&url, &["PUBLISH", &events, "production"]);

    wait_until("the good server serves", NOTICE, || {
        answered_by(&proxy, "good", &[])
    });
    wait_until("the good percent applies", NOTICE, || {
        proxy.status_json()["routing"]["canary_percent"] == 25.0
    });
    wait_until("both bad entries are counted", NOTICE, || {
        metric(
            &proxy,
            "canary_lb_discovery_errors_total",
            &["kind=\"weight\""],
        ) >= 1.0
            && metric(
                &proxy,
                "canary_lb_discovery_errors_total",
                &["kind=\"address\""],
            ) >= 1.0
    });
    let logs = proxy.logs();
    assert!(logs.contains(&weights) && logs.contains("heavy"), "{logs}");
    assert!(
        logs.contains(&servers) && logs.contains("not-an-address"),
        "{logs}"
    );
    assert_eq!(listed(&proxy, "production"), HashSet::from([good.addr()]));

    // A bad percent is ignored: the previous good one stays in force.
    redis_cmd(&url, &["HSET", &routing, "canary_percent", "abc"]);
    redis_cmd(&url, &["PUBLISH", &events, "routing"]);
    wait_until("`abc` is counted", NOTICE, || {
        metric(
            &proxy,
            "canary_lb_discovery_errors_total",
            &["kind=\"canary_percent\""],
        ) >= 1.0
    });
    redis_cmd(&url, &["HSET", &routing, "canary_percent", "150"]);
    redis_cmd(&url, &["PUBLISH", &events, "routing"]);
    wait_until("`150` is counted", NOTICE, || {
        metric(
            &proxy,
            "canary_lb_discovery_errors_total",
            &["kind=\"canary_percent\""],
        ) >= 2.0
    });
    let status = proxy.status_json();
    assert_eq!(status["routing"]["canary_percent"], 25.0, "{status}");
    assert_eq!(
        status["routing"]["canary_percent_from"], "redis",
        "{status}"
    );
    assert_eq!(metric(&proxy, "canary_lb_canary_percent", &[]), 25.0);
    let logs = proxy.logs();
    assert!(logs.contains(&routing), "{logs}");
    assert!(logs.contains("abc") && logs.contains("150"), "{logs}");

    // The good server kept serving through all of it; the skipped one never got a request.
    assert!(served_by(&proxy, 30, &[("X-Canary", "0")])
        .iter()
        .all(|s| s == "good"));
    assert!(
        discovery_up(&proxy),
        "bad entries do not make discovery down"
    );
}

#[test]
fn an_expired_lease_leaves_rotation_without_any_event() {
    let _serial = serial();
    let ns = "it-lease";
    let redis = RedisServer::start();
    let url = redis.url();
    let forever = App::start("forever", "production");
    let leased = App::start("leased", "production");
    mark_store(&url, ns);
    let proxy = Proxy::start(&yaml(redis.port(), ns, &[]));
    let servers = servers_key(ns, "production");

    // Written like a hand-rolled heartbeat: ZADD with a near-future expiry, no PUBLISH.
    let expiry_ms = now_ms() + 6_000;
    redis_cmd(&url, &["ZADD", &servers, "+inf", &forever.addr()]);
    redis_cmd(
        &url,
        &["ZADD", &servers, &expiry_ms.to_string(), &leased.addr()],
    );
    wait_until("the leased server serves", NOTICE, || {
        reaches(&proxy, "leased", 4)
    });
    assert!(
        now_ms() < expiry_ms,
        "the lease ran out before the test could watch it being served; machine too slow?"
    );

    wait_until("the leased server leaves /status", NOTICE, || {
        !listed(&proxy, "production").contains(&leased.addr())
    });
    let late_ms = now_ms().saturating_sub(expiry_ms);
    eprintln!("lease expiry -> out of /status: {late_ms} ms");
    assert!(
        late_ms <= (RESYNC + Duration::from_secs(1)).as_millis() as u64,
        "out of rotation {late_ms} ms after the lease passed"
    );
    assert!(served_by(&proxy, 20, &[]).iter().all(|s| s == "forever"));
}

#[test]
fn two_replicas_on_one_redis_agree() {
    let _serial = serial();
    let ns = "it-replicas";
    let redis = RedisServer::start();
    let url = redis.url();
    let prod = App::start("prod", "production");
    let canary = App::start("canary", "canary");
    ctl_ok(
        &url,
        ns,
        &["register", "--pool", "production", &prod.addr()],
    );
    let a = Proxy::start(&yaml(redis.port(), ns, &[]));
    let b = Proxy::start(&yaml(redis.port(), ns, &[]));
    let force = [("X-Canary", "1")];
    for proxy in [&a, &b] {
        // Canary is empty: forced requests fall back to production.
        wait_until("production serves", NOTICE, || {
            answered_by(proxy, "prod", &force)
        });
    }

    // One registration reaches both replicas.
    ctl_ok(&url, ns, &["register", "--pool", "canary", &canary.addr()]);
    let registered = Instant::now();
    let mut seen = [None, None];
    wait_until("both replicas route to the new canary", NOTICE, || {
        for (i, proxy) in [&a, &b].into_iter().enumerate() {
            if seen[i].is_none() && answered_by(proxy, "canary", &force) {
                seen[i] = Some(registered.elapsed());
            }
        }
        seen.iter().all(Option::is_some)
    });
    eprintln!(
        "ctl register -> served through replica a: {:?}, b: {:?}",
        seen[0], seen[1]
    );

    // One percent change reaches both replicas.
    ctl_ok(&url, ns, &["canary", "set", "30"]);
    let set = Instant::now();
    wait_until("both replicas apply 30 %", NOTICE, || {
        [&a, &b]
            .iter()
            .all(|p| p.status_json()["routing"]["canary_percent"] == 30.0)
    });
    eprintln!("ctl canary set 30 -> both /status: {:?}", set.elapsed());

    // Both replicas put every user on the same side.
    let mut in_canary = 0;
    for u in 0..500 {
        let user = format!("user-{u}");
        let headers = [("X-User-Id", user.as_str())];
        let ra = get(&a.url("/"), &headers);
        let rb = get(&b.url("/"), &headers);
        assert_eq!(ra.status, 200, "{}", ra.body);
        assert_eq!(rb.status, 200, "{}", rb.body);
        assert_eq!(
            ra.pool(),
            rb.pool(),
            "{user} is routed differently by the replicas"
        );
        in_canary += usize::from(ra.pool() == Some("canary"));
    }
    assert!(
        (100..=200).contains(&in_canary),
        "{in_canary} of 500 users in canary at 30 %"
    );
}

#[test]
fn draining_finishes_in_flight_requests_and_sends_no_new_ones() {
    let _serial = serial();
    let ns = "it-drain";
    let redis = RedisServer::start();
    let url = redis.url();
    let old = App::start("old", "production");
    let new = App::start("new", "production");
    ctl_ok(&url, ns, &["register", "--pool", "production", &old.addr()]);
    let proxy = Proxy::start(&yaml(redis.port(), ns, &[]));
    wait_until("the old server serves", NOTICE, || {
        answered_by(&proxy, "old", &[])
    });

    std::thread::scope(|s| {
        // The only server in the pool takes a slow request...
        let slow = s.spawn(|| get(&proxy.url("/slow?ms=3000"), &[]));
        wait_until(
            "the slow request is in flight on the old server",
            NOTICE,
            || {
                server_entry(&proxy.status_json(), "production", &old.addr())
                    .is_some_and(|e| e["in_flight"].as_i64() >= Some(1))
            },
        );
        // ...then a second server joins and the first is drained under it.
        ctl_ok(&url, ns, &["register", "--pool", "production", &new.addr()]);
        ctl_ok(&url, ns, &["drain", "--pool", "production", &old.addr()]);
        wait_until("/status shows the old server draining", NOTICE, || {
            server_entry(&proxy.status_json(), "production", &old.addr())
                .is_some_and(|e| e["draining"] == true)
        });
        let entry = server_entry(&proxy.status_json(), "production", &old.addr()).unwrap();
        assert_eq!(entry["in_rotation"], false, "{entry}");
        assert!(
            !slow.is_finished(),
            "the slow request ended before the drain applied; machine too slow?"
        );
        assert_eq!(
            metric(
                &proxy,
                "canary_lb_pool_servers",
                &["pool=\"production\"", "state=\"draining\""]
            ),
            1.0
        );

        let served = served_by(&proxy, 50, &[]);
        assert!(
            served.iter().all(|s| s == "new"),
            "a drained server got new requests: {served:?}"
        );
        let r = slow.join().expect("slow request thread");
        assert_eq!(r.status, 200, "the in-flight request finishes: {}", r.body);
        assert_eq!(r.served_by(), Some("old"));
    });
    assert!(served_by(&proxy, 10, &[]).iter().all(|s| s == "new"));
}

#[test]
fn a_plain_write_without_publish_is_picked_up_within_the_resync_interval() {
    let _serial = serial();
    let ns = "it-plain";
    let redis = RedisServer::start();
    let url = redis.url();
    let app = App::start("plain", "production");
    mark_store(&url, ns);
    let proxy = Proxy::start(&yaml(redis.port(), ns, &[]));
    wait_until("discovery is up", NOTICE, || discovery_up(&proxy));
    assert_eq!(
        get(&proxy.url("/"), &[]).status,
        503,
        "nothing registered yet"
    );

    let written = Instant::now();
    redis_cmd(
        &url,
        &["ZADD", &servers_key(ns, "production"), "+inf", &app.addr()],
    );
    wait_until("the server written with plain ZADD serves", NOTICE, || {
        answered_by(&proxy, "plain", &[])
    });
    let took = written.elapsed();
    eprintln!("plain ZADD (no PUBLISH) -> served: {took:?}");
    // One resync interval, plus a second for scheduling and polling on a loaded machine.
    assert!(
        took <= RESYNC + Duration::from_secs(1),
        "picked up after {took:?}"
    );
}

/// `discovery.last_error` of `/status` ("" when there is none).
fn last_error(proxy: &Proxy) -> String {
    proxy.status_json()["discovery"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Issue 8: a Redis that lost its data (restart without persistence) answered "no servers" and
/// every proxy served 503. A store without its `ns:meta` marker is lost, not empty: the proxy
/// keeps its last known servers and routing, says so, and follows again once the store is
/// written.
#[test]
fn a_wiped_store_keeps_the_last_known_servers_until_it_is_written_again() {
    let _serial = serial();
    let ns = "it-wiped";
    let redis = RedisServer::start();
    let url = redis.url();
    let p1 = App::start("wiped-p1", "production");
    let c1 = App::start("wiped-c1", "canary");
    let p2 = App::start("wiped-p2", "production");
    ctl_ok(&url, ns, &["register", "--pool", "production", &p1.addr()]);
    ctl_ok(&url, ns, &["register", "--pool", "canary", &c1.addr()]);
    ctl_ok(&url, ns, &["canary", "set", "30"]);
    let proxy = Proxy::start(&yaml_with_grace(redis.port(), ns, &[], "5s"));
    let (to_prod, to_canary) = ([("X-Canary", "0")], [("X-Canary", "1")]);
    wait_until("both pools serve and 30 % applies", NOTICE, || {
        answered_by(&proxy, "wiped-p1", &to_prod)
            && answered_by(&proxy, "wiped-c1", &to_canary)
            && proxy.status_json()["routing"]["canary_percent"] == 30.0
    });
    assert!(discovery_up(&proxy));

    // Redis loses everything.
    wipe(&url);
    wait_until("discovery is reported down", NOTICE, || {
        !discovery_up(&proxy)
    });
    // Several full resyncs later (and the proxy's own serving reports) it still is.
    let resyncs = metric(&proxy, "canary_lb_discovery_resyncs_total", &[]);
    wait_until("three more resyncs", NOTICE, || {
        metric(&proxy, "canary_lb_discovery_resyncs_total", &[]) >= resyncs + 3.0
    });
    let status = proxy.status_json();
    assert_eq!(status["discovery"]["up"], false, "{status}");
    let err = last_error(&proxy);
    assert!(
        err.contains("no meta marker") && err.contains("keeping the last known servers"),
        "{status}"
    );
    assert_eq!(metric(&proxy, "canary_lb_discovery_up", &[]), 0.0);
    assert!(
        metric(
            &proxy,
            "canary_lb_discovery_errors_total",
            &["kind=\"store_lost\""]
        ) >= 1.0
    );
    assert_eq!(
        store_generation(&url, ns),
        None,
        "a proxy never writes the marker itself"
    );
    // Every request is still served by the last known servers, and the override stays.
    assert!(served_by(&proxy, 20, &to_prod)
        .iter()
        .all(|s| s == "wiped-p1"));
    assert!(served_by(&proxy, 20, &to_canary)
        .iter()
        .all(|s| s == "wiped-c1"));
    assert_eq!(status["routing"]["canary_percent"], 30.0, "{status}");
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("no meta marker").count(),
        1,
        "logged once, not at every resync:\n{logs}"
    );

    // The pipeline registers again: the marker is back, in a re-created store. p2 is served at
    // once, beside the last known servers for the grace (5 s here); then the store as it now
    // is (p1 and the canary were not registered again). The canary percent stays until it is
    // written again (issue 20).
    ctl_ok(&url, ns, &["register", "--pool", "production", &p2.addr()]);
    wait_until("p2 is served beside the last known servers", NOTICE, || {
        listed(&proxy, "production") == HashSet::from([p1.addr(), p2.addr()])
            && listed(&proxy, "canary") == HashSet::from([c1.addr()])
    });
    wait_until("after the grace the store is followed", NOTICE, || {
        listed(&proxy, "production") == HashSet::from([p2.addr()])
            && listed(&proxy, "canary").is_empty()
    });
    assert!(served_by(&proxy, 20, &to_canary)
        .iter()
        .all(|s| s == "wiped-p2"));
    let status = proxy.status_json();
    assert_eq!(status["routing"]["canary_percent"], 30.0, "{status}");
    assert_eq!(status["discovery"]["up"], false, "{status}");
    assert_eq!(status["discovery"]["store_reinitialised"], 1, "{status}");
    assert_eq!(
        status["discovery"]["reconciling"]["kept_routing"],
        serde_json::json!(["canary_percent"]),
        "{status}"
    );
    assert!(proxy.logs().contains("meta marker is back"));

    // Written again: followed, and discovery is up.
    ctl_ok(&url, ns, &["canary", "set", "0"]);
    wait_until(
        "the written percent applies and discovery is up",
        NOTICE,
        || discovery_up(&proxy) && proxy.status_json()["routing"]["canary_percent"] == 0.0,
    );
    assert_eq!(last_error(&proxy), "");
    assert_eq!(metric(&proxy, "canary_lb_discovery_up", &[]), 1.0);
    assert_eq!(metric(&proxy, "canary_lb_discovery_reconciling", &[]), 0.0);
    assert_eq!(
        metric(&proxy, "canary_lb_discovery_store_reinitialised_total", &[]),
        1.0
    );
}

/// The marker does not protect against deliberate changes: an operator who deregisters the
/// last server of a pool with `ctl` empties it, as before.
#[test]
fn deregistering_the_last_server_with_ctl_still_empties_the_pool() {
    let _serial = serial();
    let ns = "it-empty";
    let redis = RedisServer::start();
    let url = redis.url();
    let p1 = App::start("empty-p1", "production");
    let c1 = App::start("empty-c1", "canary");
    ctl_ok(&url, ns, &["register", "--pool", "production", &p1.addr()]);
    ctl_ok(&url, ns, &["register", "--pool", "canary", &c1.addr()]);
    let proxy = Proxy::start(&yaml(redis.port(), ns, &[]));
    let to_canary = [("X-Canary", "1")];
    wait_until("both pools serve", NOTICE, || {
        answered_by(&proxy, "empty-p1", &[("X-Canary", "0")])
            && answered_by(&proxy, "empty-c1", &to_canary)
    });

    // The last canary server leaves: canary users fall back to production.
    ctl_ok(&url, ns, &["deregister", "--pool", "canary", &c1.addr()]);
    wait_until("the canary pool is empty", NOTICE, || {
        listed(&proxy, "canary").is_empty()
    });
    assert!(served_by(&proxy, 10, &to_canary)
        .iter()
        .all(|s| s == "empty-p1"));

    // The last production server leaves: 503, and discovery is up (the store says so).
    ctl_ok(
        &url,
        ns,
        &["deregister", "--pool", "production", &p1.addr()],
    );
    wait_until("the production pool is empty", NOTICE, || {
        listed(&proxy, "production").is_empty()
    });
    let r = get(&proxy.url("/"), &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(discovery_up(&proxy));
    assert_eq!(last_error(&proxy), "");
    assert!(store_generation(&url, ns).is_some(), "the marker stays");
}

/// A brand-new (or wiped) Redis at start: the file's servers serve and discovery says why it
/// is down, until the first write creates the marker.
#[test]
fn a_proxy_started_on_a_store_without_marker_serves_the_file_until_it_is_written() {
    let _serial = serial();
    let ns = "it-fresh";
    let redis = RedisServer::start();
    let url = redis.url();
    let fixed = App::start("fresh-static", "production");
    let registered = App::start("fresh-registered", "production");
    let proxy = Proxy::start(&yaml(redis.port(), ns, &[&fixed]));
    wait_until("discovery reports the missing marker", NOTICE, || {
        last_error(&proxy).contains("no meta marker")
    });
    assert!(!discovery_up(&proxy));
    assert_eq!(metric(&proxy, "canary_lb_discovery_up", &[]), 0.0);
    assert!(served_by(&proxy, 10, &[])
        .iter()
        .all(|s| s == "fresh-static"));

    ctl_ok(
        &url,
        ns,
        &["register", "--pool", "production", &registered.addr()],
    );
    wait_until("the store is followed", NOTICE, || {
        discovery_up(&proxy) && listed(&proxy, "production") == HashSet::from([registered.addr()])
    });
    assert!(served_by(&proxy, 10, &[])
        .iter()
        .all(|s| s == "fresh-registered"));
}

/// `ctl register --heartbeat --ttl 3s` of `app` (renewed every second), SIGKILLed on drop.
fn heartbeat(redis_url: &str, namespace: &str, app: &App) -> Background {
    Background::cli(&[
        "ctl",
        "--redis",
        redis_url,
        "--namespace",
        namespace,
        "register",
        "--pool",
        app.pool(),
        &app.addr(),
        "--heartbeat",
        "--ttl",
        "3s",
    ])
}

/// What one `/status` shows of the pools and the routing.
struct PoolsSeen {
    listed: [HashSet<String>; 2],
    in_rotation: [u64; 2],
    canary_percent: f64,
    salt_fingerprint: String,
}

fn pools_seen(status: &Value) -> PoolsSeen {
    let pool = |name: &str| listed_in(status, name);
    let rotation = |name: &str| status["pools"][name]["in_rotation"].as_u64().unwrap_or(0);
    PoolsSeen {
        listed: [pool("production"), pool("canary")],
        in_rotation: [rotation("production"), rotation("canary")],
        canary_percent: status["routing"]["canary_percent"].as_f64().unwrap_or(-1.0),
        salt_fingerprint: status["routing"]["salt_fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Issue 20 (5): after `FLUSHALL`, the first heartbeat re-created the store and the proxies
/// followed it at once: canary had 0 servers, production 1, the canary percent went back to the
/// file's, and discovery said all was well. A re-created store now never shrinks a pool at
/// once: under load, every pool keeps every server that is alive for the grace, the routing
/// stays until written again, no request fails, and discovery, its metrics and `/status` say so.
#[test]
fn a_re_created_store_never_shrinks_a_pool_and_loses_no_request() {
    let _serial = serial();
    let ns = "it-reinit";
    let grace = Duration::from_secs(4);
    let redis = RedisServer::start();
    let url = redis.url();
    // Per pool: one server that keeps itself registered (3 s lease, renewed every second) and
    // one registered once by hand, as a deploy job does.
    let p_hb = App::start("reinit-p-hb", "production");
    let p_hand = App::start("reinit-p-hand", "production");
    let c_hb = App::start("reinit-c-hb", "canary");
    let c_hand = App::start("reinit-c-hand", "canary");
    ctl_ok(
        &url,
        ns,
        &["register", "--pool", "production", &p_hand.addr()],
    );
    ctl_ok(&url, ns, &["register", "--pool", "canary", &c_hand.addr()]);
    let _heartbeats = [heartbeat(&url, ns, &p_hb), heartbeat(&url, ns, &c_hb)];
    ctl_ok(&url, ns, &["canary", "set", "30"]);
    redis_cmd(&url, &["HSET", &routing_key(ns), "salt", "before-the-wipe"]);
    let proxy = Proxy::start(&yaml_with_grace(redis.port(), ns, &[], "4s"));

    let all = [
        HashSet::from([p_hb.addr(), p_hand.addr()]),
        HashSet::from([c_hb.addr(), c_hand.addr()]),
    ];
    let before = eventually(NOTICE, "both pools serve both servers at 30 %", || {
        let seen = pools_seen(&proxy.status_json());
        (seen.listed == all && seen.in_rotation == [2, 2] && seen.canary_percent == 30.0)
            .then_some(seen)
    });
    assert!(discovery_up(&proxy));
    assert_eq!(
        metric(&proxy, "canary_lb_discovery_store_reinitialised_total", &[]),
        0.0
    );

    let mut load = Load::start(LoadSpec {
        users: 300,
        threads: 2,
        pause: Duration::from_millis(10),
        max_run: Duration::from_secs(90),
        ..LoadSpec::new(vec![proxy.url("")])
    });
    wait_until("the load reaches both pools", NOTICE, || {
        load.count("canary") >= 20 && load.count("production") >= 20
    });

    // Redis loses everything; the heartbeats write the store again within a second.
    let wiped_at = Instant::now();
    wipe(&url);
    // Through the grace (counted from the proxy's first read of the new store, so at least
    // `grace` from now): every pool keeps both servers, in rotation, and the routing stays.
    let mut samples = 0;
    while wiped_at.elapsed() < grace - Duration::from_millis(300) {
        let seen = pools_seen(&proxy.status_json());
        let at = wiped_at.elapsed();
        for (i, pool) in ["production", "canary"].iter().enumerate() {
            assert!(
                seen.listed[i].is_superset(&all[i]) && seen.in_rotation[i] >= 2,
                "{at:?} after the wipe the {pool} pool shrank: {:?} listed, {} in rotation",
                seen.listed[i],
                seen.in_rotation[i]
            );
        }
        assert_eq!(seen.canary_percent, 30.0, "{at:?} after the wipe");
        assert_eq!(
            seen.salt_fingerprint, before.salt_fingerprint,
            "{at:?} after the wipe the salt changed"
        );
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples >= 10, "only {samples} samples within the grace");
    // The heartbeats did write the store again, and the proxy saw it re-initialised.
    assert!(store_generation(&url, ns).is_some());
    assert_eq!(
        metric(&proxy, "canary_lb_discovery_store_reinitialised_total", &[]),
        1.0
    );

    // After the grace the store is followed: the servers registered by hand are gone (nobody
    // registered them again); the routing stays until it is written again.
    wait_until("after the grace the store is followed", NOTICE, || {
        let seen = pools_seen(&proxy.status_json());
        seen.listed == [HashSet::from([p_hb.addr()]), HashSet::from([c_hb.addr()])]
    });
    let status = proxy.status_json();
    let seen = pools_seen(&status);
    assert_eq!(seen.canary_percent, 30.0, "{status}");
    assert_eq!(seen.salt_fingerprint, before.salt_fingerprint, "{status}");
    assert_eq!(status["discovery"]["up"], false, "{status}");
    assert_eq!(status["discovery"]["store_reinitialised"], 1, "{status}");
    assert_eq!(
        status["discovery"]["reconciling"]["kept_routing"],
        serde_json::json!(["canary_percent", "salt"]),
        "{status}"
    );
    assert!(last_error(&proxy).contains("re-initialised"), "{status}");
    assert_eq!(metric(&proxy, "canary_lb_discovery_up", &[]), 0.0);
    assert_eq!(metric(&proxy, "canary_lb_discovery_reconciling", &[]), 1.0);

    // The pipeline writes the routing again: followed, and discovery is up.
    let rewritten_at = load.elapsed();
    ctl_ok(&url, ns, &["canary", "set", "20"]);
    redis_cmd(&url, &["HSET", &routing_key(ns), "salt", "after-the-wipe"]);
    wait_until(
        "the written routing applies and discovery is up",
        NOTICE,
        || {
            let status = proxy.status_json();
            let seen = pools_seen(&status);
            status["discovery"]["up"] == true
                && seen.canary_percent == 20.0
                && seen.salt_fingerprint != before.salt_fingerprint
        },
    );
    assert_eq!(metric(&proxy, "canary_lb_discovery_reconciling", &[]), 0.0);
    assert_eq!(
        metric(&proxy, "canary_lb_discovery_store_reinitialised_total", &[]),
        1.0
    );
    load.stop();

    // No request was lost, and until the routing was written again no user changed pools.
    let seen = load.seen();
    let failed: Vec<_> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let mut pools_of: std::collections::HashMap<usize, HashSet<String>> = Default::default();
    for s in seen.iter().filter(|s| s.at < rewritten_at) {
        let pool = s.pool.clone().unwrap_or_default();
        pools_of.entry(s.user).or_default().insert(pool);
    }
    let moved: Vec<_> = pools_of.iter().filter(|(_, p)| p.len() > 1).collect();
    assert!(moved.is_empty(), "users changed pools: {moved:?}");
    assert!(seen.iter().any(|s| s.at > rewritten_at));
}

/// A rollout running when Redis is wiped: its state goes with the store, but the proxies keep
/// routing by its weight and salt until the routing is written again, instead of jumping back
/// to the config file's percent (which would move every canary user to production).
#[test]
fn a_wiped_store_keeps_a_running_rollouts_routing() {
    let _serial = serial();
    let ns = "it-reinit-rollout";
    let redis = RedisServer::start();
    let url = redis.url();
    let p1 = App::start("reinit-ro-p1", "production");
    let c1 = App::start("reinit-ro-c1", "canary");
    let _heartbeats = [heartbeat(&url, ns, &p1), heartbeat(&url, ns, &c1)];
    wait_until("both servers registered", NOTICE, || {
        store_generation(&url, ns).is_some()
    });
    redis_cmd(&url, &["HSET", &routing_key(ns), "salt", "rollout-salt"]);
    let proxy = Proxy::start(&yaml_with_grace(redis.port(), ns, &[], "2s"));
    wait_until("both pools serve", NOTICE, || {
        answered_by(&proxy, "reinit-ro-p1", &[("X-Canary", "0")])
            && answered_by(&proxy, "reinit-ro-c1", &[("X-Canary", "1")])
    });
    ctl_ok(
        &url,
        ns,
        &["rollout", "start", "--steps", "10,100", "--interval", "10m"],
    );
    let before = eventually(NOTICE, "the rollout routes 10 %", || {
        let status = proxy.status_json();
        (status["routing"]["canary_percent"] == 10.0).then(|| pools_seen(&status))
    });

    wipe(&url);
    wait_until("the re-initialisation is seen", NOTICE, || {
        metric(&proxy, "canary_lb_discovery_store_reinitialised_total", &[]) == 1.0
    });
    // Past the grace and several rollout engine rounds: the routing stays the rollout's.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        let seen = pools_seen(&proxy.status_json());
        assert_eq!(
            seen.canary_percent,
            10.0,
            "{:?} after the wipe",
            watched.elapsed()
        );
        assert_eq!(seen.salt_fingerprint, before.salt_fingerprint);
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = proxy.status_json();
    assert_eq!(
        status["discovery"]["reconciling"]["kept_routing"],
        serde_json::json!(["canary_percent", "salt"]),
        "{status}"
    );
    assert_eq!(metric(&proxy, "canary_lb_discovery_reconciling", &[]), 1.0);
}

/// `canary-lb app --register-redis URL` as a separate process, SIGKILLed if a test panics.
fn self_registered_app(redis_url: &str, namespace: &str, addr: &str) -> Background {
    Background::cli(&[
        "app",
        "--listen",
        addr,
        "--pool",
        "production",
        "--register-redis",
        redis_url,
        "--namespace",
        namespace,
    ])
}

/// A self-registered app stopped with `sig` leaves the pool at once (it deregisters), instead
/// of lingering until its 15 s lease passes.
fn self_registered_app_deregisters_on(sig: &str) {
    let ns = format!("it-self-{sig}");
    let redis = RedisServer::start();
    let url = redis.url();
    let addr = format!("127.0.0.1:{}", free_port());
    let servers = servers_key(&ns, "production");
    let mut app = self_registered_app(&url, &ns, &addr);
    wait_until("the app registered itself", NOTICE, || {
        redis_cmd(&url, &["ZSCORE", &servers, &addr]) != redis::Value::Nil
    });
    app.signal(sig);
    wait_until("the app exited", NOTICE, || app.exited().is_some());
    assert_eq!(
        redis_cmd(&url, &["ZSCORE", &servers, &addr]),
        redis::Value::Nil,
        "still registered after the app exited on SIG{sig}"
    );
}

#[test]
fn a_self_registered_app_deregisters_on_sigterm() {
    self_registered_app_deregisters_on("TERM");
}

#[test]
fn a_self_registered_app_deregisters_on_sigint() {
    self_registered_app_deregisters_on("INT");
}
