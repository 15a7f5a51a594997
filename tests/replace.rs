//! `canary-lb ctl replace` and `deploy/pipeline.sh` against the real thing: a `redis-server`, a
//! proxy following it (resync 1 s, health checks every 300 ms), real demo app servers, and a
//! client load running through the proxy during the replacement. The promise under test is
//! the one a deploy pipeline relies on: no client request fails, OLD gets nothing once the
//! command returned, and a NEW that never comes up leaves OLD serving with exit code 2.

mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::store::{draining_key, meta_key, routing_key, servers_key, weights_key};
use common::*;
use redis::Commands;

const NS: &str = "replace-test";

fn registered(redis: &RedisServer, pool: &str, addr: &str) -> bool {
    redis.zscore(&servers_key(NS, pool), addr).is_some()
}

fn draining(redis: &RedisServer, pool: &str, addr: &str) -> bool {
    redis
        .conn()
        .sismember(draining_key(NS, pool), addr)
        .expect("SISMEMBER")
}

/// A proxy that follows `redis` and notices changes quickly.
fn start_proxy(redis: &RedisServer) -> Proxy {
    Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "health_check: {{ kind: http, path: /healthz, interval: 300ms, timeout: 2s, \
             healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
             grace_period: 1s\n\
             discovery:\n  provider: redis\n  url: \"{}\"\n  namespace: \"{NS}\"\n  \
             resync_interval: 1s\n",
            redis.url()
        ),
    ))
}

fn register(redis: &RedisServer, pool: &str, addr: &str) {
    ctl_ok(&redis.url(), NS, &["register", "--pool", pool, addr]);
}

/// Wait until the proxy answers `/` from the app named `name`.
fn wait_served_by(proxy: &Proxy, name: &str, headers: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = try_get(&proxy.url("/"), headers);
        if matches!(&last, Ok(r) if r.served_by() == Some(name)) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "the proxy does not serve from {name} within 20s; last answer: {last:?}\n\
                 status: {}\n{}",
                proxy.status_json(),
                proxy.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `canary-lb ctl --redis URL --namespace NS replace ARGS...`
fn replace(redis: &RedisServer, args: &[&str]) -> Output {
    let url = redis.url();
    let mut all = vec!["ctl", "--redis", &url, "--namespace", NS, "replace"];
    all.extend_from_slice(args);
    run_cli(&all, Duration::from_secs(120))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One client request of the load.
struct Sample {
    started: Instant,
    /// (status, X-Served-By) or the transport error.
    result: Result<(u16, String), String>,
}

/// Client threads sending requests through the proxy back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// One thread per URL.
    fn start(urls: &[String], headers: &'static [(&'static str, &'static str)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = urls
            .iter()
            .map(|url| {
                let (url, stop) = (url.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let result = try_get(&url, headers).map(|r| {
                            let by = r.served_by().unwrap_or("-").to_string();
                            (r.status, by)
                        });
                        samples.push(Sample { started, result });
                    }
                    samples
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect()
    }
}

/// Every request answered 200; returns how many.
fn assert_all_ok(samples: &[Sample]) -> usize {
    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| match &s.result {
            Ok((200, _)) => None,
            Ok((status, by)) => Some(format!("{status} from {by}")),
            Err(e) => Some(e.clone()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} client requests failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)]
    );
    samples.len()
}

fn served_by(samples: &[Sample], name: &str, since: Option<Instant>) -> usize {
    samples
        .iter()
        .filter(|s| since.is_none_or(|t| s.started >= t))
        .filter(|s| matches!(&s.result, Ok((_, by)) if by == name))
        .count()
}

#[test]
fn replace_under_load_loses_no_request_and_retires_old() {
    let _serial = serial();
    let redis = RedisServer::start();
    let mut old = App::start("old", "production");
    let new = App::start("new", "production");
    register(&redis, "production", &old.addr());
    let proxy = start_proxy(&redis);
    wait_served_by(&proxy, "old", &[]);

    // Fast requests, plus slow ones so OLD has requests in flight when it is drained.
    let load = Load::start(
        &[
            proxy.url("/"),
            proxy.url("/"),
            proxy.url("/slow?ms=400"),
            proxy.url("/slow?ms=400"),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = replace(
        &redis,
        &[
            "--pool",
            "production",
            &old.addr(),
            &new.addr(),
            "--timeout",
            "30s",
            "--settle",
            "1s",
        ],
    );
    let returned = Instant::now();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    println!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "replace failed:\n{stdout}\n{stderr}\n{}",
        proxy.logs()
    );
    // What the pipeline does next: stop OLD. Traffic keeps flowing without a failure.
    std::thread::sleep(Duration::from_millis(1000));
    old.kill();
    std::thread::sleep(Duration::from_millis(1000));
    let samples = load.stop();

    let total = assert_all_ok(&samples);
    assert!(
        total > 20,
        "too little load to mean anything: {total} requests"
    );
    assert!(served_by(&samples, "old", None) > 0, "OLD served before");
    assert_eq!(
        served_by(&samples, "old", Some(returned)),
        0,
        "OLD got requests after replace returned:\n{stdout}"
    );
    assert!(served_by(&samples, "new", Some(returned)) > 0, "NEW serves");

    for line in [
        "replace: registered",
        "is serving",
        "replace: draining",
        "is idle",
        "replace: deregistered",
        "replace: done",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
    assert!(!registered(&redis, "production", &old.addr()));
    assert!(!draining(&redis, "production", &old.addr()));
    assert!(registered(&redis, "production", &new.addr()));
}

#[test]
fn replace_exits_2_and_leaves_old_serving_when_new_never_serves() {
    let _serial = serial();
    let redis = RedisServer::start();
    let old = App::start("old", "production");
    register(&redis, "production", &old.addr());
    let proxy = start_proxy(&redis);
    wait_served_by(&proxy, "old", &[]);
    let nobody = format!("127.0.0.1:{}", free_port());

    let load = Load::start(&[proxy.url("/")], &[]);
    let started = Instant::now();
    let out = replace(
        &redis,
        &[
            "--pool",
            "production",
            &old.addr(),
            &nobody,
            "--timeout",
            "5s",
            "--settle",
            "1s",
        ],
    );
    let elapsed = started.elapsed();
    let samples = load.stop();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        elapsed >= Duration::from_secs(5),
        "gave up after {elapsed:?}"
    );
    assert!(
        stderr.contains("replace: FAILED") && stderr.contains(&nobody),
        "{stderr}"
    );
    assert!(
        stderr.contains("deregistered"),
        "says NEW was removed: {stderr}"
    );
    assert!(
        !registered(&redis, "production", &nobody),
        "NEW removed again"
    );
    assert!(
        registered(&redis, "production", &old.addr()),
        "OLD untouched"
    );
    assert!(
        !draining(&redis, "production", &old.addr()),
        "OLD not drained"
    );
    assert!(!stdout.contains("draining"), "{stdout}");

    // A dead NEW may sit in rotation until its first failed probe; its requests are retried.
    assert_all_ok(&samples);
    assert_eq!(served_by(&samples, "old", None), samples.len());
    wait_served_by(&proxy, "old", &[]);
}

#[test]
fn replace_refuses_bad_input_with_exit_1_before_writing() {
    let redis = RedisServer::start();
    let cases: &[&[&str]] = &[
        &["--pool", "production", "127.0.0.1:5000", "127.0.0.1:5000"],
        &["--pool", "canry", "127.0.0.1:5000", "127.0.0.1:5001"],
        &["--pool", "canary", "127.0.0.1:5000", "nowhere"],
        &[
            "--pool",
            "canary",
            "127.0.0.1:5000",
            "127.0.0.1:5001",
            "--timeout",
            "2s",
            "--settle",
            "5s",
        ],
    ];
    for args in cases {
        let out = replace(&redis, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let keys: Vec<String> = redis.conn().keys("*").expect("KEYS");
    assert!(keys.is_empty(), "nothing written: {keys:?}");
}

/// On a store without its marker (Redis lost its data) the proxies keep their last known
/// servers; a replacement there would make them follow a store holding only NEW. Refused, and
/// nothing is written; once the pool is registered again (the marker is back) it runs.
#[test]
fn replace_refuses_a_store_without_marker_and_writes_nothing() {
    let redis = RedisServer::start();
    let args = [
        "--pool",
        "production",
        "127.0.0.1:5000",
        "127.0.0.1:5001",
        "--timeout",
        "2s",
        "--settle",
        "1s",
    ];
    let out = replace(&redis, &args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is missing", meta_key(NS)))
            && stderr.contains("Nothing changed"),
        "{stderr}"
    );
    let keys: Vec<String> = redis.conn().keys("*").expect("KEYS");
    assert!(keys.is_empty(), "nothing written: {keys:?}");

    // Registered again: the marker is back, and replace gets past the check (here to exit 2,
    // since no proxy reports NEW serving).
    register(&redis, "production", "127.0.0.1:5000");
    let out = replace(&redis, &args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// `deploy/pipeline.sh` with env vars, as a CI job would run it.
fn pipeline(redis: &RedisServer, env: &[(&str, &str)]) -> Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/pipeline.sh");
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "bash", script])
        .env("CANARY_LB", bin())
        .env("CANARY_LB_REDIS_URL", redis.url())
        .env("CANARY_LB_NAMESPACE", NS)
        .env_remove("CANARY_PERCENT")
        .env_remove("OLD_ADDR")
        .env_remove("DEPLOY_CMD")
        .env_remove("BUILD_CMD")
        .env_remove("STOP_OLD_CMD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run deploy/pipeline.sh")
}

#[test]
fn pipeline_script_replaces_a_canary_server_and_sets_the_percent() {
    let _serial = serial();
    let redis = RedisServer::start();
    let prod = App::start("prod", "production");
    let old = App::start("canary-old", "canary");
    let new = App::start("canary-new", "canary");
    register(&redis, "production", &prod.addr());
    register(&redis, "canary", &old.addr());
    let proxy = start_proxy(&redis);
    wait_served_by(&proxy, "canary-old", &[("X-Canary", "1")]);

    let load = Load::start(&[proxy.url("/"), proxy.url("/")], &[("X-Canary", "1")]);
    let out = pipeline(
        &redis,
        &[
            ("BRANCH", "canary"),
            ("OLD_ADDR", &old.addr()),
            ("NEW_ADDR", &new.addr()),
            // The manual percent (the rollout gate, the default, is tested in deploy_kit and
            // rollout_redis).
            ("ROLLOUT", "off"),
            ("CANARY_PERCENT", "25"),
            ("REPLACE_TIMEOUT", "30s"),
            ("REPLACE_SETTLE", "1s"),
            ("STOP_OLD_CMD", "echo stopping old"),
        ],
    );
    let samples = load.stop();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_all_ok(&samples);
    for line in [
        "pipeline: ==== replace",
        "replace: done",
        "stopping old",
        "canary percent set to 25",
        "pipeline: deployed",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
    let percent: Option<String> = redis
        .conn()
        .hget(routing_key(NS), "canary_percent")
        .expect("HGET");
    assert_eq!(percent.as_deref(), Some("25"));
    assert!(!registered(&redis, "canary", &old.addr()));
    assert!(registered(&redis, "canary", &new.addr()));
    wait_served_by(&proxy, "canary-new", &[("X-Canary", "1")]);

    // Other branches deploy nothing; a first deploy (no OLD_ADDR) only registers.
    let out = pipeline(
        &redis,
        &[("BRANCH", "feature/x"), ("NEW_ADDR", "127.0.0.1:1")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("deploys nowhere"));
    let out = pipeline(&redis, &[("BRANCH", "master"), ("NEW_ADDR", &prod.addr())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(registered(&redis, "production", &prod.addr()));
}

/// Start one slow request through the proxy on a thread; returns (status, served by, when it
/// finished).
fn slow_request(proxy: &Proxy, ms: u64) -> JoinHandle<(u16, String, Instant)> {
    let url = proxy.url(&format!("/slow?ms={ms}"));
    let handle = std::thread::spawn(move || {
        let r = get_fresh(&url, &[]).unwrap_or_else(|e| panic!("slow request failed: {e}"));
        let by = r.served_by().unwrap_or("-").to_string();
        (r.status, by, Instant::now())
    });
    wait_until(
        "the slow request is in flight",
        Duration::from_secs(10),
        || proxy.status_json()["in_flight"].as_i64() >= Some(1),
    );
    handle
}

#[test]
fn replace_waits_for_requests_in_flight_on_old() {
    let _serial = serial();
    let redis = RedisServer::start();
    let old = App::start("old", "production");
    let new = App::start("new", "production");
    register(&redis, "production", &old.addr());
    let proxy = start_proxy(&redis);
    wait_served_by(&proxy, "old", &[]);

    let slow = slow_request(&proxy, 8000);
    let (o, n) = (old.addr(), new.addr());
    let out = replace(
        &redis,
        &[
            "--pool",
            "production",
            &o,
            &n,
            "--timeout",
            "30s",
            "--settle",
            "1s",
        ],
    );
    let returned = Instant::now();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let (status, by, finished) = slow.join().expect("slow request thread");
    assert_eq!((status, by.as_str()), (200, "old"));
    assert!(
        finished <= returned,
        "replace returned before OLD's request finished:\n{stdout}"
    );
    assert!(stdout.contains("1 request(s) in flight"), "{stdout}");
}

#[test]
fn replace_timeout_with_requests_in_flight_is_exit_3_with_strict_else_a_warning() {
    let _serial = serial();
    let redis = RedisServer::start();
    let old = App::start("old", "production");
    let new = App::start("new", "production");
    register(&redis, "production", &old.addr());
    let proxy = start_proxy(&redis);
    wait_served_by(&proxy, "old", &[]);

    // --strict: exit 3, OLD deregistered anyway, and its request still finishes.
    let slow = slow_request(&proxy, 8000);
    let (o, n) = (old.addr(), new.addr());
    let quick = ["--timeout", "3s", "--settle", "1s"];
    let strict = [&["--pool", "production", &o, &n][..], &quick, &["--strict"]].concat();
    let out = replace(&redis, &strict);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{stderr}",
        text(&out.stdout)
    );
    assert!(stderr.contains("still had requests in flight"), "{stderr}");
    assert!(!registered(&redis, "production", &old.addr()));
    let (status, by, _) = slow.join().expect("slow request thread");
    assert_eq!((status, by.as_str()), (200, "old"));

    // Without --strict the same situation is a warning and exit 0.
    wait_served_by(&proxy, "new", &[]);
    let slow = slow_request(&proxy, 8000);
    let lenient = [&["--pool", "production", &n, &o][..], &quick].concat();
    let out = replace(&redis, &lenient);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("replace: warning:"), "{stdout}");
    let (status, by, _) = slow.join().expect("slow request thread");
    assert_eq!((status, by.as_str()), (200, "new"));
}

#[test]
fn replace_leaves_a_leased_old_drained_and_keeps_a_registered_new() {
    let _serial = serial();
    let redis = RedisServer::start();
    let old = App::start("old", "production");
    let new = App::start("new", "production");
    let (o, n) = (old.addr(), new.addr());
    // OLD as a heartbeat registers it (a lease); NEW registered beforehand, weight 2.
    let url = redis.url();
    let ctl = |args: &[&str]| {
        ctl_ok(&url, NS, args);
    };
    ctl(&["register", "--pool", "production", &o, "--ttl", "60s"]);
    let proxy = start_proxy(&redis);
    wait_served_by(&proxy, "old", &[]);
    ctl(&["register", "--pool", "production", &n, "--weight", "2"]);

    let out = replace(
        &redis,
        &[
            "--pool",
            "production",
            &o,
            &n,
            "--weight",
            "3",
            "--timeout",
            "30s",
            "--settle",
            "1s",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("already registered"), "{stdout}");
    assert!(stdout.contains("left registered but drained"), "{stdout}");
    assert!(registered(&redis, "production", &o) && draining(&redis, "production", &o));
    let weight: Option<String> = redis
        .conn()
        .hget(weights_key(NS, "production"), &n)
        .expect("HGET");
    assert_eq!(weight.as_deref(), Some("3"));
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/"), &[]).served_by(), Some("new"));
    }
}
