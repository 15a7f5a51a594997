//! `canary-lb ctl` against a real `redis-server`: each test starts its own server on a free
//! port, runs the binary, and checks the documented keys (docs/redis-schema.md) and the
//! `ns:events` messages with the `redis` crate. Key names come from the library, through
//! `tests/common/store.rs`.

mod common;

use std::time::Duration;

use common::store::{
    draining_key, meta_key, now_ms, routing_key, servers_key, serving_key, store_generation,
    weights_key,
};
use common::*;
use redis::Commands;

/// `ctl` without `--namespace` writes here.
const NS: &str = DEFAULT_NAMESPACE;

#[test]
fn register_writes_server_and_weight_and_publishes() {
    let redis = RedisServer::start();
    redis.expect_event(NS, "canary", || {
        redis.ctl_ok(&[
            "register",
            "--pool",
            "canary",
            "10.0.0.7:3000",
            "--weight",
            "3",
        ])
    });
    assert_eq!(
        redis.zscore(&servers_key(NS, "canary"), "10.0.0.7:3000"),
        Some(f64::INFINITY)
    );
    let weight: Option<String> = redis
        .conn()
        .hget(weights_key(NS, "canary"), "10.0.0.7:3000")
        .expect("HGET");
    assert_eq!(weight.as_deref(), Some("3"));

    let before = now_ms() as f64;
    redis.expect_event(NS, "production", || {
        redis.ctl_ok(&[
            "register",
            "--pool",
            "production",
            "10.0.0.1:80",
            "--ttl",
            "30s",
        ])
    });
    let score = redis
        .zscore(&servers_key(NS, "production"), "10.0.0.1:80")
        .expect("registered");
    assert!(
        score >= before + 29_000.0 && score <= now_ms() as f64 + 31_000.0,
        "lease score {score} should be about now + 30s"
    );
}

#[test]
fn deregister_removes_server_weight_and_draining() {
    let redis = RedisServer::start();
    redis.ctl_ok(&[
        "register",
        "--pool",
        "canary",
        "10.0.0.7:3000",
        "--weight",
        "3",
    ]);
    redis.ctl_ok(&["drain", "--pool", "canary", "10.0.0.7:3000"]);
    // servers, weights, draining, and the store's marker (`ns:meta`)
    assert_eq!(redis.dbsize(), 4);
    redis.expect_event(NS, "canary", || {
        redis.ctl_ok(&["deregister", "--pool", "canary", "10.0.0.7:3000"])
    });
    assert_eq!(
        redis.dbsize(),
        1,
        "servers, weights and draining entries are all removed; the marker stays"
    );
    assert!(store_generation(&redis.url(), NS).is_some());
    // Deregistering again is not an error: deploy jobs retry.
    let out = redis.ctl_ok(&["deregister", "--pool", "canary", "10.0.0.7:3000"]);
    assert!(out.contains("not registered"), "{out}");
}

#[test]
fn drain_and_undrain_toggle_the_draining_set() {
    let redis = RedisServer::start();
    redis.ctl_ok(&["register", "--pool", "production", "10.0.0.1:80"]);
    let is_draining = || -> bool {
        redis
            .conn()
            .sismember(draining_key(NS, "production"), "10.0.0.1:80")
            .expect("SISMEMBER")
    };
    redis.expect_event(NS, "production", || {
        redis.ctl_ok(&["drain", "--pool", "production", "10.0.0.1:80"])
    });
    assert!(is_draining());
    redis.expect_event(NS, "production", || {
        redis.ctl_ok(&["undrain", "--pool", "production", "10.0.0.1:80"])
    });
    assert!(!is_draining());
    assert_eq!(
        redis.zscore(&servers_key(NS, "production"), "10.0.0.1:80"),
        Some(f64::INFINITY),
        "drain/undrain leave the registration alone"
    );
}

#[test]
fn weight_sets_the_hash_field_and_publishes() {
    let redis = RedisServer::start();
    redis.ctl_ok(&["register", "--pool", "canary", "10.0.0.7:3000"]);
    redis.expect_event(NS, "canary", || {
        redis.ctl_ok(&["weight", "--pool", "canary", "10.0.0.7:3000", "7"])
    });
    let weight: Option<String> = redis
        .conn()
        .hget(weights_key(NS, "canary"), "10.0.0.7:3000")
        .expect("HGET");
    assert_eq!(weight.as_deref(), Some("7"));
}

#[test]
fn canary_set_and_get_round_trip() {
    let redis = RedisServer::start();
    let unset = redis.ctl_ok(&["canary", "get"]);
    assert!(unset.contains("unset"), "{unset}");
    redis.expect_event(NS, "routing", || redis.ctl_ok(&["canary", "set", "12.5"]));
    let stored: Option<String> = redis
        .conn()
        .hget(routing_key(NS), "canary_percent")
        .expect("HGET");
    assert_eq!(stored.as_deref(), Some("12.5"));
    assert_eq!(redis.ctl_ok(&["canary", "get"]).trim(), "12.5");
    redis.ctl_ok(&["canary", "set", "100"]);
    assert_eq!(redis.ctl_ok(&["canary", "get"]).trim(), "100");

    // Garbage written by hand is reported, not silently read as a number.
    let _: () = redis
        .conn()
        .hset(routing_key(NS), "canary_percent", "lots")
        .expect("HSET");
    let out = redis.ctl(&["canary", "get"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
}

/// Issue 20, observation 4, at the store: `canary set` reads the rollout's phase in the same
/// script that writes, from the `phase` copy of `ns:rollout` or, without it, from its `json`.
/// While the rollout is progressing or paused nothing is written and the refusal names the
/// rollout commands that end it; an ended or unreadable rollout does not block it.
#[test]
fn canary_set_is_refused_while_the_stored_rollout_is_active() {
    let redis = RedisServer::start();
    redis.ctl_ok(&["canary", "set", "10"]);
    let rollout = common::store::store(NS).rollout_key();
    let stored = || -> Option<String> {
        redis
            .conn()
            .hget(routing_key(NS), "canary_percent")
            .expect("HGET")
    };
    let hset = |fields: &[(&str, &str)]| {
        let _: () = redis.conn().del(&rollout).expect("DEL");
        let _: () = redis.conn().hset_multiple(&rollout, fields).expect("HSET");
    };
    let refused = |id: &str, phase: &str| {
        let generation = store_generation(&redis.url(), NS);
        let out = redis.ctl(&["canary", "set", "50"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{id} {phase}: {err}");
        for needle in [
            format!("rollout {id} is {phase}"),
            "ctl rollout abort".into(),
            "ctl rollout promote".into(),
            "Nothing written".into(),
        ] {
            assert!(err.contains(&needle), "`{needle}` missing: {err}");
        }
        assert_eq!(stored().as_deref(), Some("10"), "canary_percent unchanged");
        assert_eq!(store_generation(&redis.url(), NS), generation);
    };
    hset(&[("phase", "progressing"), ("id", "r-1"), ("json", "{}")]);
    refused("r-1", "progressing");
    hset(&[("json", r#"{"id":"r-2","phase":"paused","weight":10}"#)]);
    refused("r-2", "paused");

    for (fields, what) in [
        (
            &[("phase", "succeeded"), ("id", "r-3")][..],
            "an ended rollout",
        ),
        (
            &[("phase", "aborted"), ("json", r#"{"phase":"paused"}"#)][..],
            "the copy wins",
        ),
        (&[("json", "not json")][..], "an unreadable rollout"),
    ] {
        hset(fields);
        redis.ctl_ok(&["canary", "set", "20"]);
        assert_eq!(stored().as_deref(), Some("20"), "{what}");
        redis.ctl_ok(&["canary", "set", "10"]);
    }
}

#[test]
fn bad_input_is_refused_naming_the_value_and_writes_nothing() {
    let redis = RedisServer::start();
    let cases: &[(&[&str], &str)] = &[
        (
            &["register", "--pool", "canary", "not-an-address"],
            "not-an-address",
        ),
        (
            &["register", "--pool", "canary", "10.0.0.1:0"],
            "10.0.0.1:0",
        ),
        (&["register", "--pool", "canry", "10.0.0.1:80"], "canry"),
        (
            &[
                "register",
                "--pool",
                "canary",
                "10.0.0.1:80",
                "--weight",
                "0",
            ],
            "0",
        ),
        (
            &[
                "register",
                "--pool",
                "canary",
                "10.0.0.1:80",
                "--weight",
                "1001",
            ],
            "1001",
        ),
        (&["weight", "--pool", "canary", "10.0.0.1:80", "0"], "got 0"),
        (&["drain", "--pool", "canary", "bad host:80"], "bad host:80"),
        (&["canary", "set", "150"], "150"),
        (&["canary", "set", "abc"], "abc"),
        (&["canary", "set", "--", "-1"], "-1"),
        // Valid input, but drain and weight need a registered server.
        (&["drain", "--pool", "canary", "10.0.0.1:80"], "10.0.0.1:80"),
        (
            &["weight", "--pool", "canary", "10.0.0.1:80", "5"],
            "10.0.0.1:80",
        ),
    ];
    for (args, value) in cases {
        let out = redis.ctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "ctl {args:?} should fail: {stderr}"
        );
        assert!(
            stderr.contains(value),
            "ctl {args:?}: `{stderr}` should name `{value}`"
        );
        assert_eq!(redis.dbsize(), 0, "ctl {args:?} must write nothing");
    }
}

#[test]
fn missing_redis_url_and_passwords_in_errors() {
    let out = run_cli(&["ctl", "status"], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Redis URL"));

    let port = free_port();
    let out = run_cli(
        &[
            "ctl",
            "--redis",
            &format!("redis://u:hunter2@127.0.0.1:{port}/0"),
            "status",
        ],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
}

#[test]
fn namespace_and_config_file_select_the_keys() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lb.yaml");
    std::fs::write(
        &path,
        format!(
            "discovery:\n  provider: redis\n  url: \"{}\"\n  namespace: team-a\n",
            redis.url()
        ),
    )
    .expect("write config");
    let path = path.display().to_string();
    let out = run_cli(
        &[
            "ctl",
            "--config",
            &path,
            "register",
            "--pool",
            "canary",
            "10.0.0.7:3000",
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        redis.zscore(&servers_key("team-a", "canary"), "10.0.0.7:3000"),
        Some(f64::INFINITY)
    );

    redis.ctl_ok(&[
        "--namespace",
        "team-b",
        "register",
        "--pool",
        "production",
        "10.0.0.1:80",
    ]);
    assert_eq!(
        redis.zscore(&servers_key("team-b", "production"), "10.0.0.1:80"),
        Some(f64::INFINITY)
    );
}

#[test]
fn status_prints_every_pool_and_the_canary_settings() {
    let redis = RedisServer::start();
    redis.ctl_ok(&[
        "register",
        "--pool",
        "production",
        "10.0.0.1:80",
        "--weight",
        "4",
    ]);
    redis.ctl_ok(&[
        "register",
        "--pool",
        "canary",
        "10.0.0.7:3000",
        "--ttl",
        "30s",
    ]);
    redis.ctl_ok(&["drain", "--pool", "canary", "10.0.0.7:3000"]);
    redis.ctl_ok(&["canary", "set", "5"]);
    // A proxy reported the production server in rotation just now.
    let _: () = redis
        .conn()
        .zadd(serving_key(NS, "production"), "10.0.0.1:80", now_ms())
        .expect("ZADD");
    let _: () = redis
        .conn()
        .hset(routing_key(NS), "salt", "release-1")
        .expect("HSET");

    let out = redis.ctl_ok(&["status"]);
    let row = |addr: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.contains(addr))
            .unwrap_or_else(|| panic!("no row for {addr} in:\n{out}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        row("10.0.0.1:80"),
        ["10.0.0.1:80", "4", "none", "no", "yes"],
        "{out}"
    );
    let canary = row("10.0.0.7:3000");
    assert_eq!(canary[0], "10.0.0.7:3000");
    assert_eq!(canary[1], "1");
    let left: u64 = canary[2]
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("lease left should look like `29s`: {out}"));
    assert!((20..=30).contains(&left), "lease left: {out}");
    assert_eq!(&canary[3..], ["yes", "no"], "{out}");
    assert!(out.contains("canary percent: 5"), "{out}");
    // The salt only as its fingerprint (the one the proxies' /status shows): with the salt,
    // anyone can tell which users are in canary.
    assert!(
        out.contains(&format!(
            "salt: fingerprint {}",
            canary_lb::routing::salt_fingerprint("release-1")
        )),
        "{out}"
    );
    assert!(
        !out.contains("release-1"),
        "ctl status shows the salt: {out}"
    );
}

#[test]
fn heartbeat_renews_the_lease_and_deregisters_on_sigterm() {
    let redis = RedisServer::start();
    let key = &servers_key(NS, "canary");
    let mut hb = redis.expect_event(NS, "canary", || {
        redis.spawn_ctl(&[
            "register",
            "--pool",
            "canary",
            "10.0.0.9:3000",
            "--heartbeat",
            "--ttl",
            "2s",
        ])
    });
    let first = eventually(Duration::from_secs(5), "the first lease", || {
        redis.zscore(key, "10.0.0.9:3000")
    });
    assert!(
        first.is_finite() && first <= now_ms() as f64 + 2_000.0,
        "lease {first} is now + ttl"
    );
    // Renewed every ttl/3: the expiry moves forward well before the lease would lapse.
    eventually(Duration::from_secs(3), "a renewed lease", || {
        redis.zscore(key, "10.0.0.9:3000").filter(|s| *s > first)
    });

    redis.expect_event(NS, "canary", || hb.sigterm());
    let status = hb
        .wait_exit(Duration::from_secs(5))
        .expect("the heartbeat exits within 5s of SIGTERM");
    assert!(status.success(), "heartbeat exited with {status}");
    assert_eq!(redis.zscore(key, "10.0.0.9:3000"), None);
}

/// The marker (docs/redis-schema.md, `ns:meta`) tells the proxies a lost store from an empty
/// one: every change bumps it, a removal that removes nothing never creates it, and the write
/// that creates it says so.
#[test]
fn every_change_bumps_the_store_marker_and_a_no_op_removal_never_creates_it() {
    let redis = RedisServer::start();
    let status = redis.ctl_ok(&["status"]);
    assert!(status.contains("store: NO MARKER"), "{status}");

    // A deploy job retrying removals on a wiped store must not make it look deliberately empty.
    redis.ctl_ok(&["deregister", "--pool", "production", "10.0.0.1:80"]);
    redis.ctl_ok(&["undrain", "--pool", "production", "10.0.0.1:80"]);
    assert_eq!(store_generation(&redis.url(), NS), None);
    assert_eq!(redis.dbsize(), 0);

    // The first change creates it, and says what the proxies will now follow.
    let out = redis.ctl(&["register", "--pool", "production", "10.0.0.1:80"]);
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains(&format!("{} was missing", meta_key(NS)))
            && note.contains("1 production and 0 canary"),
        "{note}"
    );
    assert_eq!(store_generation(&redis.url(), NS), Some(1));
    let created: Option<u64> = redis.conn().hget(meta_key(NS), "created_ms").expect("HGET");
    let updated: Option<u64> = redis.conn().hget(meta_key(NS), "updated_ms").expect("HGET");
    assert!(
        created.is_some() && created == updated,
        "{created:?} {updated:?}"
    );

    // Each later change bumps it once; writes that change nothing leave it.
    let steps: &[(&[&str], i64)] = &[
        (&["register", "--pool", "production", "10.0.0.1:80"], 1),
        (&["register", "--pool", "canary", "10.0.0.7:3000"], 2),
        (&["drain", "--pool", "canary", "10.0.0.7:3000"], 3),
        (&["weight", "--pool", "canary", "10.0.0.7:3000", "4"], 4),
        (&["undrain", "--pool", "canary", "10.0.0.7:3000"], 5),
        (&["undrain", "--pool", "canary", "10.0.0.7:3000"], 5),
        (&["canary", "set", "10"], 6),
        (&["deregister", "--pool", "canary", "10.0.0.7:3000"], 7),
        (&["deregister", "--pool", "canary", "10.0.0.7:3000"], 7),
        (&["deregister", "--pool", "production", "10.0.0.1:80"], 8),
    ];
    for (args, want) in steps {
        let out = redis.ctl(args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            store_generation(&redis.url(), NS),
            Some(*want),
            "after {args:?}"
        );
    }
    // Both pools deliberately empty: the marker says so.
    let status = redis.ctl_ok(&["status"]);
    assert!(status.contains("store: generation 8"), "{status}");

    // A store written before the marker existed (servers, no meta): re-registering a server
    // that is already there creates the marker, so an upgrade needs no manual step.
    let _: () = redis.conn().del(meta_key(NS)).expect("DEL");
    let _: () = redis
        .conn()
        .zadd(servers_key(NS, "production"), "10.0.0.2:80", "+inf")
        .expect("ZADD");
    redis.ctl_ok(&["register", "--pool", "production", "10.0.0.2:80"]);
    assert_eq!(store_generation(&redis.url(), NS), Some(1));
}

#[test]
fn heartbeat_survives_a_redis_restart() {
    let redis = RedisServer::start();
    let port = redis.port();
    let key = &servers_key(NS, "production");
    let mut hb = redis.spawn_ctl(&[
        "register",
        "--pool",
        "production",
        "10.0.0.8:3000",
        "--heartbeat",
        "--ttl",
        "3s",
    ]);
    eventually(Duration::from_secs(5), "the first lease", || {
        redis.zscore(key, "10.0.0.8:3000")
    });

    // Redis goes away (and comes back empty): the heartbeat retries and registers again.
    drop(redis);
    let redis = RedisServer::start_on(port);
    assert_eq!(redis.dbsize(), 0);
    eventually(
        Duration::from_secs(10),
        "registration after the restart",
        || redis.zscore(key, "10.0.0.8:3000"),
    );
    // The re-registration re-creates the marker: the proxies follow the store again.
    assert!(store_generation(&redis.url(), NS).is_some());
    assert!(hb.exited().is_none(), "heartbeat kept running");

    hb.sigterm();
    assert!(hb
        .wait_exit(Duration::from_secs(5))
        .expect("the heartbeat exits within 5s of SIGTERM")
        .success());
    assert_eq!(redis.zscore(key, "10.0.0.8:3000"), None);
}
