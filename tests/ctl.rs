//! `canary-lb ctl` against a real `redis-server`: each test starts its own server on a free
//! port, runs the binary, and checks the documented keys (docs/redis-schema.md) and the
//! `ns:events` messages with the `redis` crate.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::Commands;

const BIN: &str = env!("CARGO_BIN_EXE_canary-lb");
const EVENTS: &str = "canary-lb:events";
const META: &str = "canary-lb:meta";

/// A throwaway `redis-server`, killed when dropped (also when a test panics).
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        RedisServer::start_on(port)
    }

    fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let mut server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = server
                .client()
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server on port {port} exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} never answered PING"
            );
            sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("connect to test redis")
    }

    fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query(&mut self.conn())
            .expect("DBSIZE")
    }

    /// `generation` of the store's marker `canary-lb:meta`, None when there is no marker.
    fn generation(&self) -> Option<i64> {
        self.conn().hget(META, "generation").expect("HGET")
    }

    fn zscore(&self, key: &str, member: &str) -> Option<f64> {
        self.conn().zscore(key, member).expect("ZSCORE")
    }

    /// Subscribe to `canary-lb:events`, run `action`, and return it once `want` was published.
    fn expect_event<T>(&self, want: &str, action: impl FnOnce() -> T) -> T {
        let mut con = self.conn();
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(EVENTS).expect("SUBSCRIBE");
        let result = action();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no `{want}` on {EVENTS} within 5s; saw {seen:?}"
            );
            pubsub.set_read_timeout(Some(left)).expect("read timeout");
            let msg = pubsub
                .get_message()
                .unwrap_or_else(|e| panic!("no `{want}` on {EVENTS}: {e}; saw {seen:?}"));
            let payload: String = msg.get_payload().expect("text payload");
            if msg.get_channel_name() == EVENTS && payload == want {
                return result;
            }
            seen.push(payload);
        }
    }

    /// Run `canary-lb ctl --redis URL ARGS...`.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["ctl", "--redis", &self.url()])
            .args(args)
            .env_remove("CANARY_LB_REDIS_URL")
            .env_remove("CANARY_LB_NAMESPACE")
            .output()
            .expect("run canary-lb")
    }

    /// Run ctl and require exit 0; returns stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start `ctl ARGS...` in the background (for --heartbeat).
    fn spawn_ctl(&self, args: &[&str]) -> ChildGuard {
        let child = Command::new(BIN)
            .args(["ctl", "--redis", &self.url()])
            .args(args)
            .env_remove("CANARY_LB_REDIS_URL")
            .env_remove("CANARY_LB_NAMESPACE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn canary-lb");
        ChildGuard(child)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A background `canary-lb` process, killed if the test ends without stopping it.
struct ChildGuard(Child);

impl ChildGuard {
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {within:?}"
            );
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `check` until it returns `Some`, failing after `within`.
fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        sleep(Duration::from_millis(25));
    }
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as f64
}

#[test]
fn register_writes_server_and_weight_and_publishes() {
    let redis = RedisServer::start();
    redis.expect_event("canary", || {
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
        redis.zscore("canary-lb:servers:canary", "10.0.0.7:3000"),
        Some(f64::INFINITY)
    );
    let weight: Option<String> = redis
        .conn()
        .hget("canary-lb:weights:canary", "10.0.0.7:3000")
        .expect("HGET");
    assert_eq!(weight.as_deref(), Some("3"));

    let before = now_ms();
    redis.expect_event("production", || {
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
        .zscore("canary-lb:servers:production", "10.0.0.1:80")
        .expect("registered");
    assert!(
        score >= before + 29_000.0 && score <= now_ms() + 31_000.0,
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
    // servers, weights, draining, and the store's marker (canary-lb:meta)
    assert_eq!(redis.dbsize(), 4);
    redis.expect_event("canary", || {
        redis.ctl_ok(&["deregister", "--pool", "canary", "10.0.0.7:3000"])
    });
    assert_eq!(
        redis.dbsize(),
        1,
        "servers, weights and draining entries are all removed; the marker stays"
    );
    assert!(redis.generation().is_some());
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
            .sismember("canary-lb:draining:production", "10.0.0.1:80")
            .expect("SISMEMBER")
    };
    redis.expect_event("production", || {
        redis.ctl_ok(&["drain", "--pool", "production", "10.0.0.1:80"])
    });
    assert!(is_draining());
    redis.expect_event("production", || {
        redis.ctl_ok(&["undrain", "--pool", "production", "10.0.0.1:80"])
    });
    assert!(!is_draining());
    assert_eq!(
        redis.zscore("canary-lb:servers:production", "10.0.0.1:80"),
        Some(f64::INFINITY),
        "drain/undrain leave the registration alone"
    );
}

#[test]
fn weight_sets_the_hash_field_and_publishes() {
    let redis = RedisServer::start();
    redis.ctl_ok(&["register", "--pool", "canary", "10.0.0.7:3000"]);
    redis.expect_event("canary", || {
        redis.ctl_ok(&["weight", "--pool", "canary", "10.0.0.7:3000", "7"])
    });
    let weight: Option<String> = redis
        .conn()
        .hget("canary-lb:weights:canary", "10.0.0.7:3000")
        .expect("HGET");
    assert_eq!(weight.as_deref(), Some("7"));
}

#[test]
fn canary_set_and_get_round_trip() {
    let redis = RedisServer::start();
    let unset = redis.ctl_ok(&["canary", "get"]);
    assert!(unset.contains("unset"), "{unset}");
    redis.expect_event("routing", || redis.ctl_ok(&["canary", "set", "12.5"]));
    let stored: Option<String> = redis
        .conn()
        .hget("canary-lb:routing", "canary_percent")
        .expect("HGET");
    assert_eq!(stored.as_deref(), Some("12.5"));
    assert_eq!(redis.ctl_ok(&["canary", "get"]).trim(), "12.5");
    redis.ctl_ok(&["canary", "set", "100"]);
    assert_eq!(redis.ctl_ok(&["canary", "get"]).trim(), "100");

    // Garbage written by hand is reported, not silently read as a number.
    let _: () = redis
        .conn()
        .hset("canary-lb:routing", "canary_percent", "lots")
        .expect("HSET");
    let out = redis.ctl(&["canary", "get"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
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
    let out = Command::new(BIN)
        .args(["ctl", "status"])
        .env_remove("CANARY_LB_REDIS_URL")
        .output()
        .expect("run canary-lb");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Redis URL"));

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = Command::new(BIN)
        .args([
            "ctl",
            "--redis",
            &format!("redis://u:hunter2@127.0.0.1:{port}/0"),
            "status",
        ])
        .output()
        .expect("run canary-lb");
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
    let out = Command::new(BIN)
        .args(["ctl", "--config"])
        .arg(&path)
        .args(["register", "--pool", "canary", "10.0.0.7:3000"])
        .env_remove("CANARY_LB_REDIS_URL")
        .env_remove("CANARY_LB_NAMESPACE")
        .output()
        .expect("run canary-lb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        redis.zscore("team-a:servers:canary", "10.0.0.7:3000"),
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
        redis.zscore("team-b:servers:production", "10.0.0.1:80"),
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
        .zadd(
            "canary-lb:serving:production",
            "10.0.0.1:80",
            now_ms() as u64,
        )
        .expect("ZADD");
    let _: () = redis
        .conn()
        .hset("canary-lb:routing", "salt", "release-1")
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
    assert!(out.contains("release-1"), "{out}");
}

#[test]
fn heartbeat_renews_the_lease_and_deregisters_on_sigterm() {
    let redis = RedisServer::start();
    let key = "canary-lb:servers:canary";
    let mut hb = redis.expect_event("canary", || {
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
        first.is_finite() && first <= now_ms() + 2_000.0,
        "lease {first} is now + ttl"
    );
    // Renewed every ttl/3: the expiry moves forward well before the lease would lapse.
    eventually(Duration::from_secs(3), "a renewed lease", || {
        redis.zscore(key, "10.0.0.9:3000").filter(|s| *s > first)
    });

    redis.expect_event("canary", || hb.sigterm());
    let status = hb.wait_exit(Duration::from_secs(5));
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
    assert_eq!(redis.generation(), None);
    assert_eq!(redis.dbsize(), 0);

    // The first change creates it, and says what the proxies will now follow.
    let out = redis.ctl(&["register", "--pool", "production", "10.0.0.1:80"]);
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("canary-lb:meta was missing") && note.contains("1 production and 0 canary"),
        "{note}"
    );
    assert_eq!(redis.generation(), Some(1));
    let created: Option<u64> = redis.conn().hget(META, "created_ms").expect("HGET");
    let updated: Option<u64> = redis.conn().hget(META, "updated_ms").expect("HGET");
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
        assert_eq!(redis.generation(), Some(*want), "after {args:?}");
    }
    // Both pools deliberately empty: the marker says so.
    let status = redis.ctl_ok(&["status"]);
    assert!(status.contains("store: generation 8"), "{status}");

    // A store written before the marker existed (servers, no meta): re-registering a server
    // that is already there creates the marker, so an upgrade needs no manual step.
    let _: () = redis.conn().del(META).expect("DEL");
    let _: () = redis
        .conn()
        .zadd("canary-lb:servers:production", "10.0.0.2:80", "+inf")
        .expect("ZADD");
    redis.ctl_ok(&["register", "--pool", "production", "10.0.0.2:80"]);
    assert_eq!(redis.generation(), Some(1));
}

#[test]
fn heartbeat_survives_a_redis_restart() {
    let redis = RedisServer::start();
    let port = redis.port;
    let key = "canary-lb:servers:production";
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
    assert!(redis.generation().is_some());
    assert!(
        hb.0.try_wait().expect("try_wait").is_none(),
        "heartbeat kept running"
    );

    hb.sigterm();
    assert!(hb.wait_exit(Duration::from_secs(5)).success());
    assert_eq!(redis.zscore(key, "10.0.0.8:3000"), None);
}
