//! Rollouts across replicas: two real proxies following one real Redis, real app servers, the
//! bounded load of `common::load`, and `canary-lb ctl rollout` as an operator or a pipeline
//! runs it.
//!
//! The first tests need only `ctl` and the proxies' discovery (the rollout's writes set the
//! routing percent every replica follows); the others run the rollout engine
//! (`src/rollout/engine.rs`) in each proxy on `store::RolloutStore`: ramp, leader failover,
//! Redis lost mid-rollout.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::load::{Load, LoadSpec};
use common::rollout_admin::{phase_of, rollout_of};
use common::*;
use common::{canary_percent as percent, output_ok as ok, output_text as text};
use serde_json::Value;

/// Generous deadline for anything a proxy must notice on a loaded machine.
const NOTICE: Duration = Duration::from_secs(20);
/// The analysis window of the engine tests.
const INTERVAL: Duration = Duration::from_secs(1);

/// A proxy following `namespace` on `redis_port`, with a short rollout window and low traffic
/// needs (the load here is a few hundred requests a second).
fn yaml(redis_port: u16, namespace: &str) -> String {
    redis_proxy_config(
        redis_port,
        namespace,
        "upstream: { connect_timeout: 1s, read_timeout: 10s, write_timeout: 10s, max_tries: 2 }\n\
         routing: { canary_percent: 0, salt: \"rollout-salt\" }\n\
         rollout: { interval: 1s, min_requests: 5, max_inconclusive: 100, \
                    hard_fail_errors: 1000 }\n",
    )
}

/// `canary-lb ctl --redis URL --namespace NS [--config FILE] ARGS...`
fn ctl_rollout(redis: &RedisServer, ns: &str, config: Option<&Path>, args: &[&str]) -> Output {
    let url = redis.url();
    let mut all = vec!["ctl", "--redis", &url, "--namespace", ns];
    let config = config.map(|c| c.display().to_string());
    if let Some(c) = &config {
        all.extend(["--config", c]);
    }
    all.push("rollout");
    all.extend_from_slice(args);
    run_cli(&all, Duration::from_secs(30))
}

/// Two replicas following `ns`, production and canary apps registered.
struct Fleet {
    redis: RedisServer,
    ns: &'static str,
    _prod: App,
    _canary: App,
    proxies: Vec<Option<Proxy>>,
}

impl Fleet {
    fn start(ns: &'static str) -> Fleet {
        let redis = RedisServer::start();
        let prod = App::start("prod", "production");
        let canary = App::start("canary", "canary");
        ctl_ok(
            &redis.url(),
            ns,
            &["register", "--pool", "production", &prod.addr()],
        );
        ctl_ok(
            &redis.url(),
            ns,
            &["register", "--pool", "canary", &canary.addr()],
        );
        let proxies = (0..2)
            .map(|_| Some(Proxy::start(&yaml(redis.port(), ns))))
            .collect();
        let fleet = Fleet {
            redis,
            ns,
            _prod: prod,
            _canary: canary,
            proxies,
        };
        for p in fleet.live() {
            wait_until("the replica serves both pools", NOTICE, || {
                let s = p.status_json();
                s["pools"]["production"]["in_rotation"] == 1
                    && s["pools"]["canary"]["in_rotation"] == 1
            });
        }
        fleet
    }

    fn live(&self) -> Vec<&Proxy> {
        self.proxies.iter().flatten().collect()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let config = self.live()[0].config_path().to_path_buf();
        ctl_rollout(&self.redis, self.ns, Some(&config), args)
    }

    fn bases(&self) -> Vec<String> {
        self.live().iter().map(|p| p.url("")).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// ctl and discovery alone

#[test]
fn start_and_abort_move_both_replicas_at_once() {
    let _serial = serial();
    let fleet = Fleet::start("ro-abort");
    let started = Instant::now();
    let out = ok(fleet.ctl(&["start", "--steps", "20,50,100", "--interval", "30s"]));
    assert!(out.contains("started at 20 %"), "{out}");
    wait_until("both replicas route 20 % to canary", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 20.0)
    });
    eprintln!(
        "ctl rollout start -> both replicas at 20 %: {:?}",
        started.elapsed()
    );

    // A second start while one runs is refused and changes nothing.
    let refused = fleet.ctl(&["start"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already running"),
        "{}",
        text(&refused)
    );

    let aborted = Instant::now();
    let out = ok(fleet.ctl(&["abort"]));
    assert!(out.contains("aborted") && out.contains("0 %"), "{out}");
    wait_until("both replicas route 0 % to canary", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 0.0)
    });
    eprintln!(
        "ctl rollout abort -> both replicas at 0 %: {:?}",
        aborted.elapsed()
    );
    // What users see: nobody is sent to canary any more.
    for u in 0..200 {
        let cookie = format!("canary_uid=u-{u}");
        for p in fleet.live() {
            let r = get(&p.url("/"), &[("cookie", &cookie)]);
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.pool(), Some("production"), "user u-{u} after the abort");
        }
    }
    let status = ok(fleet.ctl(&["status"]));
    assert!(status.contains(": aborted (aborted by hand)"), "{status}");
    assert!(status.contains("weight:   0 %"), "{status}");
}

#[test]
fn status_wait_exit_codes_and_bad_input() {
    let redis = RedisServer::start();
    let ns = "ro-wait";
    let ctl = |args: &[&str]| ctl_rollout(&redis, ns, None, args);
    let code = |out: &Output| out.status.code();

    // Nothing started: an error, not a hang.
    let none = ctl(&["status", "--wait"]);
    assert_eq!(code(&none), Some(1), "{}", text(&none));
    assert!(ok(ctl(&["status"])).contains("no rollout"));

    // Bad input is refused before anything is written, naming the value.
    for (args, named) in [
        (vec!["start", "--steps", "10,5"], "--steps"),
        (vec!["start", "--steps", "5,150"], "150"),
        (vec!["start", "--interval", "10ms"], "--interval"),
        (vec!["start", "--threshold", "0"], "--threshold"),
        (vec!["history", "-n", "0"], "-n"),
    ] {
        let out = ctl(&args);
        assert_eq!(code(&out), Some(1), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{args:?} should name {named}: {}",
            text(&out)
        );
    }
    assert_eq!(redis.dbsize(), 0, "refused commands write nothing");
    let no_rollout = ctl(&["pause"]);
    assert_eq!(code(&no_rollout), Some(1), "{}", text(&no_rollout));
    // A store without its marker (new, or lost its data) is never the one a rollout starts on.
    let lost = ctl(&["start"]);
    assert_eq!(code(&lost), Some(1), "{}", text(&lost));
    assert!(String::from_utf8_lossy(&lost.stderr).contains("{ro-wait}:meta is missing"));
    assert_eq!(
        redis.dbsize(),
        0,
        "nothing written on a store without its marker"
    );
    common::store::mark_store(&redis.url(), ns);
    // Without --config, ctl takes the proxies' salt from the store (and refuses without one:
    // see `a_rollout_moves_users_only_production_to_canary_and_back`).
    redis_cmd(
        &redis.url(),
        &["HSET", &common::store::routing_key(ns), "salt", "wait-salt"],
    );

    // Paused: exit 3 at once.
    ok(ctl(&["start", "--steps", "10,100", "--interval", "1m"]));
    ok(ctl(&["pause"]));
    let paused = ctl(&["status", "--wait"]);
    assert_eq!(code(&paused), Some(3), "{}", text(&paused));
    assert!(String::from_utf8_lossy(&paused.stdout).contains("paused"));
    let again = ctl(&["pause"]);
    assert_eq!(code(&again), Some(1), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot pause"));

    // Progressing past --timeout: exit 1, saying so.
    ok(ctl(&["resume"]));
    let timed_out = ctl(&["status", "--wait", "--timeout", "1s"]);
    assert_eq!(code(&timed_out), Some(1), "{}", text(&timed_out));
    assert!(String::from_utf8_lossy(&timed_out.stderr).contains("did not end within"));

    // A waiting pipeline learns of an abort: exit 2.
    let url = redis.url();
    let mut waiter = Background::cli(&[
        "ctl",
        "--redis",
        &url,
        "--namespace",
        ns,
        "rollout",
        "status",
        "--wait",
    ]);
    // Give it a moment to be waiting on a progressing rollout (it exits 2 on the abort
    // whether it saw the progressing state first or not; the wait only makes that likely).
    std::thread::sleep(Duration::from_millis(300));
    ok(ctl(&["abort"]));
    let status = waiter
        .wait_exit(NOTICE)
        .unwrap_or_else(|| panic!("status --wait did not notice the abort:\n{}", waiter.logs()));
    assert_eq!(status.code(), Some(2), "{}", waiter.logs());

    // Promoted: exit 0, and the routing percent is 100. A `--watch` running meanwhile prints
    // the status until the rollout ends, then exits 0.
    ok(ctl(&["start", "--steps", "10,100", "--interval", "1m"]));
    let mut watcher = Background::cli(&[
        "ctl",
        "--redis",
        &url,
        "--namespace",
        ns,
        "rollout",
        "status",
        "--watch",
    ]);
    wait_until("--watch prints the running rollout", NOTICE, || {
        watcher.logs().contains(": progressing (started)")
    });
    ok(ctl(&["promote"]));
    let status = watcher
        .wait_exit(NOTICE)
        .unwrap_or_else(|| panic!("status --watch did not end:\n{}", watcher.logs()));
    assert_eq!(status.code(), Some(0), "{}", watcher.logs());
    assert!(
        watcher.logs().contains(": succeeded (promoted by hand)"),
        "{}",
        watcher.logs()
    );
    let done = ctl(&["status", "--wait"]);
    assert_eq!(code(&done), Some(0), "{}", text(&done));
    assert_eq!(
        ok(ctl_rollout_canary_get(&redis, ns)).trim(),
        "100",
        "promote writes 100 % as `ctl canary set` would"
    );

    // The history: newest last, commands with their reasons; JSON for machines.
    let history = ok(ctl(&["history", "-n", "3"]));
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    assert!(lines[2].contains("promote"), "{history}");
    let json: Value = serde_json::from_str(&ok(ctl(&["status", "--json"]))).expect("status --json");
    assert_eq!(json["state"]["phase"], "succeeded", "{json}");
    assert_eq!(json["state"]["weight"], 100.0, "{json}");
    assert!(json["history"].as_array().is_some_and(|h| !h.is_empty()));
}

fn ctl_rollout_canary_get(redis: &RedisServer, ns: &str) -> Output {
    ctl(&redis.url(), ns, &["canary", "get"])
}

// ---------------------------------------------------------------------------------------------
// With the engine in every replica

/// Verdict entries (judged windows) of rollout `id`, read with `ctl rollout history --json`.
fn judged_windows(fleet: &Fleet, id: &str) -> Vec<u64> {
    ok(fleet.ctl(&["history", "-n", "1000", "--json"]))
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["rollout_id"] == id)
        .filter_map(|e| e["window"].as_u64())
        .collect()
}

fn assert_one_verdict_per_window(windows: &[u64]) {
    let mut sorted = windows.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        windows.len(),
        "a window judged twice: {windows:?}"
    );
    assert_eq!(
        windows,
        sorted.as_slice(),
        "verdicts out of order: {windows:?}"
    );
}

#[test]
fn a_healthy_ramp_succeeds_with_both_replicas_agreeing_within_one_interval() {
    let _serial = serial();
    let fleet = Fleet::start("ro-ramp");
    let mut load = Load::start(LoadSpec::new(fleet.bases()));
    ok(fleet.ctl(&["start", "--steps", "10,25,50,100", "--interval", "1s"]));

    // When each replica first routes by each weight.
    let mut first_seen: Vec<Vec<(f64, Instant)>> = vec![Vec::new(), Vec::new()];
    wait_until("the rollout succeeds", Duration::from_secs(40), || {
        for (i, p) in fleet.live().iter().enumerate() {
            let w = percent(p);
            if first_seen[i].last().map(|(last, _)| *last) != Some(w) {
                first_seen[i].push((w, Instant::now()));
            }
        }
        fleet.live().iter().all(|p| phase_of(p) == "succeeded")
    });
    load.stop();
    for p in fleet.live() {
        assert_eq!(percent(p), 100.0);
    }
    let slack = INTERVAL + Duration::from_millis(500);
    for step in [10.0, 25.0, 50.0, 100.0] {
        let at: Vec<Instant> = first_seen
            .iter()
            .filter_map(|seen| seen.iter().find(|(w, _)| *w == step).map(|(_, t)| *t))
            .collect();
        assert_eq!(
            at.len(),
            2,
            "both replicas routed by {step} %: {first_seen:?}"
        );
        let apart = if at[0] > at[1] {
            at[0] - at[1]
        } else {
            at[1] - at[0]
        };
        assert!(apart <= slack, "replicas {apart:?} apart at {step} %");
    }
    assert!(
        load.flip_flops().is_empty(),
        "users flipped: {:?}",
        load.flip_flops()
    );
    let id = rollout_of(fleet.live()[0])["state"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_one_verdict_per_window(&judged_windows(&fleet, &id));
    let status = ok(fleet.ctl(&["status", "--wait"]));
    assert!(status.contains("succeeded"), "{status}");
}

#[test]
fn killing_the_leader_hands_the_lease_over_and_no_window_is_judged_twice() {
    let _serial = serial();
    let mut fleet = Fleet::start("ro-failover");
    let _load = Load::start(LoadSpec::new(fleet.bases()));
    ok(fleet.ctl(&[
        "start",
        "--steps",
        "5,10,15,20,25,30,40,50,60,70,80,90,100",
        "--interval",
        "1s",
    ]));
    // Who leads, by replica id (each replica names itself in /status).
    let (leader_index, leader) = eventually(NOTICE, "a leader", || {
        let live = fleet.live();
        let leader = rollout_of(live[0])["leader"].as_str()?.to_string();
        live.iter()
            .position(|p| rollout_of(p)["replica"] == leader.as_str())
            .map(|i| (i, leader))
    });
    // Let it judge a couple of windows first.
    wait_until("two windows judged", NOTICE, || {
        rollout_of(fleet.live()[0])["state"]["next_window"]
            .as_u64()
            .is_some_and(|w| w >= 2)
    });
    fleet.proxies[leader_index] = None; // SIGKILL
    let killed = Instant::now();
    let survivor = fleet.live()[0];
    let me = rollout_of(survivor)["replica"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    assert_ne!(me, leader);
    wait_until("the survivor takes the lease", NOTICE, || {
        rollout_of(survivor)["leader"] == me.as_str()
    });
    let took = killed.elapsed();
    eprintln!("leader SIGKILLed -> survivor leads after {took:?}");
    assert!(
        took <= 2 * INTERVAL + Duration::from_secs(2),
        "took the lease after {took:?} (two intervals plus a tick)"
    );
    wait_until("the rollout succeeds", Duration::from_secs(40), || {
        phase_of(survivor) == "succeeded"
    });
    let id = rollout_of(survivor)["state"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let windows = judged_windows(&fleet, &id);
    assert_one_verdict_per_window(&windows);
    assert!(windows.len() >= 12, "every step judged: {windows:?}");
}

#[test]
fn redis_gone_for_a_few_seconds_holds_the_percent_judges_nothing_then_resumes() {
    let _serial = serial();
    let fleet = Fleet::start("ro-outage");
    let _load = Load::start(LoadSpec::new(fleet.bases()));
    ok(fleet.ctl(&[
        "start",
        "--steps",
        "5,10,20,30,40,50,60,70,80,90,100",
        "--interval",
        "1s",
    ]));
    wait_until("the ramp is under way", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) >= 10.0)
    });
    let held: Vec<f64> = fleet.live().iter().map(|p| percent(p)).collect();
    let stopped_ms = common::store::now_ms();
    fleet.redis.pause();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(4) {
        let now: Vec<f64> = fleet.live().iter().map(|p| percent(p)).collect();
        assert_eq!(now, held, "the percent in force holds while Redis is gone");
        std::thread::sleep(Duration::from_millis(200));
    }
    let back_ms = common::store::now_ms();
    fleet.redis.unpause();
    wait_until(
        "the rollout succeeds after the outage",
        Duration::from_secs(40),
        || fleet.live().iter().all(|p| phase_of(p) == "succeeded"),
    );
    let history: Vec<Value> = ok(fleet.ctl(&["history", "-n", "1000", "--json"]))
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let during: Vec<&Value> = history
        .iter()
        .filter(|e| {
            e["at_ms"]
                .as_u64()
                .is_some_and(|t| t > stopped_ms + 500 && t < back_ms)
        })
        .collect();
    assert!(
        during.is_empty(),
        "verdicts while Redis was gone: {during:?}"
    );
    let id = history
        .last()
        .and_then(|e| e["rollout_id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_one_verdict_per_window(&judged_windows(&fleet, &id));
}

// ---------------------------------------------------------------------------------------------
// `ctl rollout --admin URL` (one box, the file provider): the client side of the admin
// endpoints, against a raw server playing the proxy, a refusing one and misbehaving ones.

/// The salt of the raw "proxy"'s rollout.
const ADMIN_SALT: &str = "admin-box-salt";

fn admin_view_json() -> String {
    let state = canary_lb::rollout::RolloutState::start(
        "r-admin".into(),
        canary_lb::config::RolloutConfig::default(),
        ADMIN_SALT.into(),
        1_000,
        None,
    )
    .expect("start");
    serde_json::to_string(&canary_lb::rollout::view::RolloutView::new(
        Some(&state),
        Vec::new(),
        Some("box-1-abcd".into()),
        Some("box-1-abcd".into()),
    ))
    .expect("json")
}

fn reply(status: &str, content_type: &str, body: &str) -> common::raw::Script {
    common::raw::Script::Reply(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn admin_ctl(backend: &common::raw::RawBackend, token: Option<&Path>, args: &[&str]) -> Output {
    let url = format!("http://{}", backend.addr());
    let mut all = vec!["ctl", "rollout", "--admin", &url];
    let token = token.map(|t| t.display().to_string());
    if let Some(t) = &token {
        all.extend(["--admin-token-file", t]);
    }
    all.extend_from_slice(args);
    run_cli(&all, Duration::from_secs(30))
}

#[test]
fn admin_mode_speaks_the_endpoint_contract_and_bounds_a_bad_endpoint() {
    use common::raw::{RawBackend, Script};
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("write token");

    let proxy = RawBackend::scripted(reply("200 OK", "application/json", &admin_view_json()));
    let out = ok(admin_ctl(
        &proxy,
        Some(&token),
        &["start", "--steps", "5,50", "--interval", "2s"],
    ));
    assert!(out.contains("rollout r-admin started at 5 %"), "{out}");
    assert!(
        out.contains(&format!(
            "routing salt fingerprint {}",
            canary_lb::routing::salt_fingerprint(ADMIN_SALT)
        )),
        "{out}"
    );
    let got = proxy.received();
    assert_eq!(got.len(), 1, "one request");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/rollout/start?steps=5,50&interval=2s");
    assert_eq!(
        got[0].header_lines("authorization"),
        vec!["Bearer s3cret-token".to_string()]
    );
    proxy.clear();
    let status = ok(admin_ctl(&proxy, Some(&token), &["status"]));
    assert!(status.contains("rollout r-admin: progressing"), "{status}");
    assert!(status.contains("(answered by box-1-abcd)"), "{status}");
    assert_eq!(proxy.received()[0].method, "GET");
    assert_eq!(proxy.received()[0].path, "/rollout");
    proxy.clear();
    ok(admin_ctl(&proxy, None, &["abort"]));
    assert_eq!(proxy.received()[0].path, "/rollout/abort");
    assert!(proxy.received()[0].header_lines("authorization").is_empty());

    // Refused (409): the proxy's reason, exit 1.
    let refusing = RawBackend::scripted(reply(
        "409 Conflict",
        "text/plain",
        "cannot resume a rollout that is progressing\n",
    ));
    let out = admin_ctl(&refusing, None, &["resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot resume a rollout that is progressing"),
        "{}",
        text(&out)
    );
    let locked = RawBackend::scripted(reply("401 Unauthorized", "text/plain", "unauthorized"));
    let out = admin_ctl(&locked, None, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-token-file"));

    // A hung endpoint, one that never stops talking, and one that sends far too much: each
    // is an error within the deadline (run_cli would kill a hang after 30 s and fail).
    let huge = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n{}",
        "x".repeat(3_000_000)
    );
    for (what, backend, says) in [
        (
            "silent",
            RawBackend::scripted(Script::Silent),
            "no complete answer",
        ),
        (
            "trickle",
            RawBackend::scripted(Script::Trickle {
                byte: b'H',
                every: Duration::from_millis(100),
            }),
            "no complete answer",
        ),
        (
            "huge",
            RawBackend::scripted(Script::Reply(huge.into_bytes())),
            "longer than",
        ),
        (
            "not http",
            RawBackend::scripted(Script::Reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())),
            "not an HTTP status line",
        ),
    ] {
        let out = admin_ctl(&backend, None, &["status"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{what}: {}",
            text(&out)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What a rollout may never do: reshuffle users, swallow a `canary set`, show its salt.

/// The salt of the Fleet's config file (`yaml`).
const FILE_SALT: &str = "rollout-salt";

/// The pool each of `n` users (`canary_uid=u-<i>`) lands in, as the proxies answer it
/// (`X-Canary-Pool`), asking the replicas in turn.
fn pools_of_users(fleet: &Fleet, n: usize) -> Vec<String> {
    let live = fleet.live();
    (0..n)
        .map(|u| {
            let cookie = format!("canary_uid=u-{u}");
            let r = get(&live[u % live.len()].url("/"), &[("cookie", &cookie)]);
            assert_eq!(r.status, 200, "user u-{u}: {}", r.body);
            r.pool().unwrap_or("none").to_string()
        })
        .collect()
}

fn salt_fingerprints(fleet: &Fleet) -> Vec<String> {
    fleet
        .live()
        .iter()
        .map(|p| {
            p.status_json()["routing"]["salt_fingerprint"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

fn exists(redis: &RedisServer, key: &str) -> bool {
    redis_cmd(&redis.url(), &["EXISTS", key]) == redis::Value::Int(1)
}

/// Issue 20, observation 3: `ctl rollout start` without `--config`, and no salt in Redis,
/// started the rollout with an empty salt and reshuffled every user. Now it refuses, writing
/// nothing; with the proxies' config it freezes their salt, so 1,000 users only ever move
/// production -> canary while it ramps, and back on the abort; afterwards the same users as
/// before are in canary at the same percent.
#[test]
fn a_rollout_moves_users_only_production_to_canary_and_back() {
    let _serial = serial();
    let fleet = Fleet::start("ro-salt");
    let (url, ns) = (fleet.redis.url(), fleet.ns);
    let theirs = canary_lb::routing::salt_fingerprint(FILE_SALT);
    const USERS: usize = 1000;

    // Some users are in canary before the rollout: the ones a wrong salt would move out.
    ctl_ok(&url, ns, &["canary", "set", "5"]);
    wait_until("both replicas route 5 % to canary", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 5.0)
    });
    let before = pools_of_users(&fleet, USERS);
    let in_canary = before.iter().filter(|p| *p == "canary").count();
    assert!(
        (15..=100).contains(&in_canary),
        "about 5 % of {USERS} users in canary, got {in_canary}"
    );
    assert_eq!(
        salt_fingerprints(&fleet),
        [theirs.as_str(), theirs.as_str()]
    );

    // No salt in Redis, no --config: ctl cannot know the proxies' salt, so it refuses.
    let generation = common::store::store_generation(&url, ns);
    let rollout_key = common::store::store(ns).rollout_key();
    let refused = ctl_rollout(
        &fleet.redis,
        ns,
        None,
        &["start", "--steps", "10,50,100", "--interval", "1m"],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let why = String::from_utf8_lossy(&refused.stderr);
    for needle in [
        "cannot tell which salt the proxies route with",
        "--config",
        &format!("redis-cli HSET {{{ns}}}:routing salt"),
        "Nothing written",
    ] {
        assert!(
            why.contains(needle),
            "`{needle}` missing: {}",
            text(&refused)
        );
    }
    assert_eq!(
        common::store::store_generation(&url, ns),
        generation,
        "nothing written"
    );
    assert!(!exists(&fleet.redis, &rollout_key), "no rollout stored");
    assert_eq!(ok(ctl_rollout_canary_get(&fleet.redis, ns)).trim(), "5");

    // With the proxies' config (as the Jenkinsfile now passes it): their salt.
    let out = ok(fleet.ctl(&["start", "--steps", "10,50,100", "--interval", "1m"]));
    assert!(
        out.contains(&format!("routing salt fingerprint {theirs}")),
        "{out}"
    );
    wait_until("both replicas route 10 % to canary", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 10.0)
    });
    assert_eq!(
        salt_fingerprints(&fleet),
        [theirs.as_str(), theirs.as_str()]
    );
    let during = pools_of_users(&fleet, USERS);
    let mut moved_in = 0;
    for (u, (b, d)) in before.iter().zip(&during).enumerate() {
        assert!(
            !(b == "canary" && d != "canary"),
            "user u-{u} moved {b} -> {d} when the rollout started"
        );
        moved_in += usize::from(b == "production" && d == "canary");
    }
    assert!(moved_in > 0, "the step to 10 % moved nobody into canary");

    ok(fleet.ctl(&["abort"]));
    wait_until("both replicas route 0 % to canary", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 0.0)
    });
    let after = pools_of_users(&fleet, USERS);
    if let Some(u) = after.iter().position(|p| p != "production") {
        panic!("user u-{u} is in {} after the abort", after[u]);
    }

    // Once the ended rollout no longer overrides routing, the proxies' own salt is in force
    // (not the rollout's): the same 5 % as before are back in canary.
    wait_until(
        "routing is the store's and the file's again",
        NOTICE,
        || {
            fleet
                .live()
                .iter()
                .all(|p| p.status_json()["routing"]["salt_from"] == "file")
        },
    );
    assert_eq!(
        salt_fingerprints(&fleet),
        [theirs.as_str(), theirs.as_str()]
    );
    ctl_ok(&url, ns, &["canary", "set", "5"]);
    wait_until("both replicas route 5 % to canary again", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 5.0)
    });
    assert!(
        pools_of_users(&fleet, USERS) == before,
        "the users in canary at 5 % changed across the rollout"
    );
}

/// Issue 20, observation 4: `ctl canary set 50` during a rollout exited 0 and did nothing
/// (the proxies kept the rollout's weight). Now it is refused while the rollout progresses or
/// is paused, naming `ctl rollout abort` / `promote`, with nothing written; once the rollout
/// has ended it works again.
#[test]
fn canary_set_is_refused_while_a_rollout_runs_and_works_once_it_ended() {
    let _serial = serial();
    let fleet = Fleet::start("ro-canary-set");
    let (url, ns) = (fleet.redis.url(), fleet.ns);
    ok(fleet.ctl(&["start", "--steps", "10,100", "--interval", "1m"]));
    wait_until("both replicas route 10 % to canary", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 10.0)
    });
    for phase in ["progressing", "paused"] {
        let generation = common::store::store_generation(&url, ns);
        let out = ctl(&url, ns, &["canary", "set", "50"]);
        assert_eq!(out.status.code(), Some(1), "{phase}: {}", text(&out));
        let why = String::from_utf8_lossy(&out.stderr);
        for needle in [
            &format!("is {phase}"),
            "ctl rollout abort",
            "ctl rollout promote",
            "Nothing written",
        ] {
            assert!(why.contains(needle), "{phase}: `{needle}`: {}", text(&out));
        }
        assert_eq!(
            ok(ctl_rollout_canary_get(&fleet.redis, ns)).trim(),
            "10",
            "{phase}: canary_percent unchanged"
        );
        assert_eq!(
            common::store::store_generation(&url, ns),
            generation,
            "{phase}: nothing written"
        );
        if phase == "progressing" {
            ok(fleet.ctl(&["pause"]));
        }
    }
    // The proxies keep the rollout's weight, past a resync of the store.
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(1500) {
        for p in fleet.live() {
            assert_eq!(percent(p), 10.0, "the rollout's weight holds");
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    ok(fleet.ctl(&["abort"]));
    let out = ctl_ok(&url, ns, &["canary", "set", "50"]);
    assert!(out.contains("canary percent set to 50"), "{out}");
    assert_eq!(ok(ctl_rollout_canary_get(&fleet.redis, ns)).trim(), "50");
    wait_until("both replicas route 50 % to canary", NOTICE, || {
        fleet.live().iter().all(|p| percent(p) == 50.0)
    });
}

/// Issue 20, observation 7: the routing salt was shown in clear by `/status`, `GET /rollout`
/// and the start's answer. Every admin path's body and every `ctl` output a rollout appears
/// in is searched for a distinctive salt: never there, its fingerprint where it was.
#[test]
fn the_salt_shows_only_as_its_fingerprint_in_every_output() {
    const SALT: &str = "Zq7-rollout-secret-salt-5519";
    let _serial = serial();
    let fleet = Fleet::start("ro-secret");
    let (url, ns) = (fleet.redis.url(), fleet.ns);
    let fp = canary_lb::routing::salt_fingerprint(SALT);
    // The proxies route with the store's salt; that is the one a rollout freezes.
    redis_cmd(
        &url,
        &["HSET", &common::store::routing_key(ns), "salt", SALT],
    );
    redis_cmd(
        &url,
        &["PUBLISH", &common::store::events_channel(ns), "routing"],
    );
    wait_until("both replicas route with the store's salt", NOTICE, || {
        salt_fingerprints(&fleet).iter().all(|f| *f == fp)
    });
    let proxy = fleet.live()[0];
    let admin = proxy.metrics_url().trim_end_matches("/metrics").to_string();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut call = |method: &str, path: &str, want: u16| -> String {
        let url = format!("{admin}{path}");
        let r = if method == "POST" {
            post(&url, &[], b"")
        } else {
            get(&url, &[])
        };
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        seen.push((format!("{method} {path}"), r.body.clone()));
        r.body
    };
    let json = |body: &str| -> Value { serde_json::from_str(body).expect("JSON") };

    // Every admin path (src/runtime/admin.rs, rollout_api.rs), through a whole rollout.
    let started = call("POST", "/rollout/start?steps=10,50&interval=1m", 200);
    assert_eq!(json(&started)["state"]["salt_fingerprint"], fp.as_str());
    let rollout = call("GET", "/rollout", 200);
    assert_eq!(json(&rollout)["state"]["salt_fingerprint"], fp.as_str());
    let status = call("GET", "/status", 200);
    assert_eq!(
        json(&status)["rollout"]["state"]["salt_fingerprint"],
        fp.as_str()
    );
    assert_eq!(json(&status)["routing"]["salt_fingerprint"], fp.as_str());
    for path in ["/rollout/pause", "/rollout/resume", "/rollout/abort"] {
        let body = call("POST", path, 200);
        assert_eq!(
            json(&body)["state"]["salt_fingerprint"],
            fp.as_str(),
            "{path}"
        );
    }
    call("POST", "/rollout/start", 200);
    call("POST", "/rollout/promote", 200);
    call("POST", "/rollout/pause", 409);
    call("GET", "/metrics", 200);
    call("GET", "/healthz", 200);
    call("GET", "/rollout/nope", 404);
    call("GET", "/nope", 404);

    // Every ctl output that shows a rollout or the routing settings.
    let both = |out: Output| -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let mut ctl_out = |what: &str, out: Output| -> String {
        assert!(out.status.success(), "{what}: {}", text(&out));
        let all = both(out);
        seen.push((what.to_string(), all.clone()));
        all
    };
    let status = ctl_out("ctl status", ctl(&url, ns, &["status"]));
    assert!(
        status.contains(&format!("salt: fingerprint {fp}")),
        "{status}"
    );
    let start = ctl_out(
        "ctl rollout start",
        fleet.ctl(&["start", "--steps", "10,50", "--interval", "1m"]),
    );
    assert!(start.contains(&fp), "{start}");
    let text_status = ctl_out("ctl rollout status", fleet.ctl(&["status"]));
    assert!(
        text_status.contains(&format!("fingerprint {fp}")),
        "{text_status}"
    );
    let json_status = ctl_out(
        "ctl rollout status --json",
        fleet.ctl(&["status", "--json"]),
    );
    assert_eq!(json(&json_status)["state"]["salt_fingerprint"], fp.as_str());
    let admin_status = ctl_out(
        "ctl rollout --admin status --json",
        run_cli(
            &["ctl", "rollout", "--admin", &admin, "status", "--json"],
            Duration::from_secs(30),
        ),
    );
    assert_eq!(
        json(&admin_status)["state"]["salt_fingerprint"],
        fp.as_str()
    );
    ctl_out("ctl rollout pause", fleet.ctl(&["pause"]));
    ctl_out("ctl rollout abort", fleet.ctl(&["abort"]));
    ctl_out("ctl rollout history", fleet.ctl(&["history", "-n", "100"]));
    ctl_out(
        "ctl rollout history --json",
        fleet.ctl(&["history", "-n", "100", "--json"]),
    );
    for p in fleet.live() {
        seen.push(("a proxy's log".into(), p.logs()));
    }

    for (what, body) in &seen {
        assert!(!body.contains(SALT), "{what} shows the salt:\n{body}");
    }
    assert!(seen.len() >= 20, "every output searched: {}", seen.len());
}
