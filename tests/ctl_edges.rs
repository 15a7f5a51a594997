//! `canary-lb ctl`'s rough edges (issue 22), against a real `redis-server`: `flag set` keeps
//! what it is not given, errors speak of what the user typed, `rollout start` takes every key
//! of the admin endpoint within the config's limits, `history` has times, and a second
//! `abort` is not an error.

mod common;

use std::process::Output;
use std::time::Duration;

use common::output_text as text;
use common::store::{flags_key, mark_store, routing_key};
use common::*;
use redis::Commands;
use serde_json::Value;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stored_flag(redis: &RedisServer, ns: &str, name: &str) -> Value {
    let json: Option<String> = redis.conn().hget(flags_key(ns), name).expect("HGET");
    serde_json::from_str(&json.unwrap_or_else(|| panic!("flag {name} not stored")))
        .expect("flag JSON")
}

#[test]
fn flag_set_keeps_what_it_is_not_given_and_errors_use_a_flags_words() {
    let redis = RedisServer::start();
    let ns = "edges-flags";
    let flag = |args: &[&str]| {
        let mut all = vec!["--namespace", ns, "flag"];
        all.extend_from_slice(args);
        redis.ctl(&all)
    };
    let out = flag(&[
        "set",
        "beta",
        "--percent",
        "12.5",
        "--salt",
        "s1",
        "--allow",
        "u1",
        "u2",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Only the allow list given: the percent and the salt are kept, as the help says.
    let out = flag(&["set", "beta", "--allow", "qa-3"]);
    assert!(out.status.success(), "{}", text(&out));
    let beta = stored_flag(&redis, ns, "beta");
    assert_eq!(beta["percent"], 12.5, "{beta}");
    assert_eq!(beta["salt"], "s1", "{beta}");
    assert_eq!(beta["allow"], serde_json::json!(["qa-3"]), "{beta}");
    assert_eq!(beta["enabled"], true, "{beta}");
    // Off, then `set` with nothing: back on with every stored value.
    assert!(flag(&["off", "beta"]).status.success());
    let out = flag(&["set", "beta"]);
    assert!(out.status.success(), "{}", text(&out));
    let beta = stored_flag(&redis, ns, "beta");
    assert_eq!(
        (beta["enabled"].clone(), beta["percent"].clone()),
        (true.into(), 12.5.into())
    );
    // A new flag without --percent: nobody but its allow list.
    let out = flag(&["set", "new-one", "--allow", "qa-3"]);
    assert!(out.status.success(), "{}", text(&out));
    let new = stored_flag(&redis, ns, "new-one");
    assert_eq!(new["percent"], 0.0, "{new}");

    // The words: a NAME is not an option, and a flag's percent is not the canary's.
    for (args, says, never) in [
        (
            &["set", "Bad_Name", "--percent", "5"][..],
            "flag name `Bad_Name` must be",
            "--name",
        ),
        (&["off", "Bad_Name"][..], "flag name `Bad_Name`", "--name"),
        (
            &["set", "ok", "--percent", "150"][..],
            "--percent: flag percent must be 0..=100, got 150",
            "canary percent",
        ),
        (
            &["set", "ok", "--percent", "lots"][..],
            "--percent: flag percent must be a number 0..=100, got `lots`",
            "canary percent",
        ),
        (
            &["off", "missing"][..],
            "no flag `missing` in Redis",
            "--name",
        ),
    ] {
        let out = flag(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains(says), "{args:?}: `{err}` should say `{says}`");
        assert!(!err.contains(never), "{args:?}: `{err}` says `{never}`");
    }
}

/// A store a rollout can start on: marked, with the proxies' salt.
fn rollout_store(redis: &RedisServer, ns: &str) {
    mark_store(&redis.url(), ns);
    redis_cmd(
        &redis.url(),
        &["HSET", &routing_key(ns), "salt", "edges-salt"],
    );
}

fn rollout(redis: &RedisServer, ns: &str, args: &[&str]) -> Output {
    let mut all = vec!["--namespace", ns, "rollout"];
    all.extend_from_slice(args);
    redis.ctl(&all)
}

#[test]
fn rollout_start_takes_every_admin_key_within_the_configs_limits() {
    let redis = RedisServer::start();
    let ns = "edges-start";
    rollout_store(&redis, ns);

    // The config's limits and words: a start below 100ms (or a count above 10,000) is refused
    // as the file's `rollout:` section is.
    let dir = tempfile::tempdir().expect("temp dir");
    for (flag, value, key, yaml, says) in [
        (
            "--interval",
            "50ms",
            "interval",
            "50ms",
            "must be at least 100ms",
        ),
        (
            "--windows-per-step",
            "10001",
            "windows_per_step",
            "10001",
            "must be 1..=10000, got 10001",
        ),
        (
            "--max-inconclusive",
            "0",
            "max_inconclusive",
            "0",
            "must be 1..=10000, got 0",
        ),
        (
            "--hard-fail-errors",
            "0",
            "hard_fail_errors",
            "0",
            "must be at least 1",
        ),
        (
            "--steps",
            "50,10",
            "steps",
            "[50, 10]",
            "must be strictly ascending: 10 follows 50",
        ),
    ] {
        let out = rollout(&redis, ns, &["start", flag, value]);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {}", text(&out));
        assert!(
            stderr(&out).contains(&format!("{flag}: {says}")),
            "{flag} {value}: {}",
            text(&out)
        );
        let path = dir.path().join(format!("{key}.yaml"));
        std::fs::write(&path, format!("rollout:\n  {key}: {yaml}\n")).expect("write");
        let check = run_cli(
            &["check", "--config", path.to_str().expect("utf-8")],
            Duration::from_secs(20),
        );
        assert!(
            stderr(&check).contains(&format!("rollout.{key}: {says}")),
            "the file says otherwise: {}",
            text(&check)
        );
    }

    // Every key the admin endpoint takes; 200ms is a window the config allows too.
    let out = rollout(
        &redis,
        ns,
        &[
            "start",
            "--steps",
            "10,100",
            "--interval",
            "200ms",
            "--windows-per-step",
            "2",
            "--threshold",
            "4",
            "--min-requests",
            "7",
            "--max-inconclusive",
            "3",
            "--hard-fail-errors",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let status = rollout(&redis, ns, &["status", "--json"]);
    let json: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let s = &json["state"]["settings"];
    assert_eq!(s["interval"], "200ms", "{json}");
    for (key, want) in [
        ("windows_per_step", 2),
        ("threshold", 4),
        ("min_requests", 7),
        ("max_inconclusive", 3),
        ("hard_fail_errors", 2),
    ] {
        assert_eq!(s[key], want, "{key}: {json}");
    }
    assert!(rollout(&redis, ns, &["abort"]).status.success());
}

#[test]
fn history_has_times_and_a_second_abort_exits_0() {
    let redis = RedisServer::start();
    let ns = "edges-abort";
    rollout_store(&redis, ns);
    let out = rollout(
        &redis,
        ns,
        &["start", "--steps", "10,100", "--interval", "1m"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let first = rollout(&redis, ns, &["abort"]);
    assert!(first.status.success(), "{}", text(&first));

    let again = rollout(&redis, ns, &["abort"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("already ended: aborted") && said.contains("canary_percent 0 %"),
        "{said}"
    );
    // Other commands on an ended rollout are still refused.
    let pause = rollout(&redis, ns, &["pause"]);
    assert_eq!(pause.status.code(), Some(1), "{}", text(&pause));

    // `history`: each line starts with its time (UTC, RFC 3339), e.g. 2026-12-07T10:40:00Z.
    let history = rollout(&redis, ns, &["history", "--last", "5"]);
    assert!(history.status.success(), "{}", text(&history));
    let lines: Vec<String> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 2, "start and one abort: {lines:?}");
    let this_year =
        &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..4];
    for line in &lines {
        let stamp = line.split_whitespace().next().unwrap_or_default();
        assert!(
            humantime::parse_rfc3339(stamp).is_ok() && stamp.starts_with(this_year),
            "no time at the start of `{line}`"
        );
    }
    assert!(
        lines[0].contains("start") && lines[1].contains("abort"),
        "{lines:?}"
    );
}

/// Over `--admin` (the file provider): the new keys reach the proxy's parser, and a second
/// abort exits 0 as over Redis.
#[test]
fn over_the_admin_endpoint_too() {
    let app = App::start("edges-p1", "production");
    let proxy = Proxy::in_front_of(&[app.addr()], "");
    let admin = format!("http://127.0.0.1:{}", proxy.metrics_port());
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "rollout", "--admin", &admin];
        all.extend_from_slice(args);
        run_cli(&all, Duration::from_secs(30))
    };
    let out = ctl(&[
        "start",
        "--steps",
        "10,100",
        "--interval",
        "1m",
        "--min-requests",
        "5",
        "--hard-fail-errors",
        "4",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let status = ctl(&["status", "--json"]);
    let json: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let s = &json["state"]["settings"];
    assert_eq!(
        (s["min_requests"].clone(), s["hard_fail_errors"].clone()),
        (5.into(), 4.into()),
        "{json}"
    );
    // The proxy refuses what the config refuses, in its words.
    let out = ctl(&["start", "--interval", "50ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    assert!(ctl(&["abort"]).status.success());
    let again = ctl(&["abort"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already ended: aborted"),
        "{}",
        text(&again)
    );
}
