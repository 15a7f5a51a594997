//! The tagged key layout (issue 26, "one slot per namespace") against a real redis-server, the
//! real proxy and real `canary-lb ctl`: a store a previous release wrote (`ns:…` names, written
//! here with plain Redis commands, as that release did) is served and written as it is; `ctl
//! migrate-keys` moves it to `{ns}:…` while a proxy serves it, without a failed request; it
//! refuses while a proxy of an older release reports; a new store only ever gets tagged names.
//!
//! The legacy names are spelled out here on purpose: they are the previous release's contract,
//! not whatever the library calls them today.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canary_lb::config::schema::RolloutConfig;
use canary_lb::rollout::{Coordinator, HistoryEntry, PoolWindow, RolloutState, WindowCounts};
use canary_lb::store::{RolloutStore, Store};
use common::*;

const NOTICE: Duration = Duration::from_secs(20);

/// Every key name in the Redis at `url` (the tests' Redis holds a few dozen at most).
fn all_keys(url: &str) -> Vec<String> {
    match redis_cmd(url, &["KEYS", "*"]) {
        redis::Value::Array(items) => {
            let mut keys: Vec<String> = items
                .into_iter()
                .filter_map(|v| match v {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    _ => None,
                })
                .collect();
            keys.sort();
            keys
        }
        other => panic!("KEYS: {other:?}"),
    }
}

fn exists(url: &str, key: &str) -> bool {
    matches!(redis_cmd(url, &["EXISTS", key]), redis::Value::Int(1))
}

fn int(url: &str, args: &[&str]) -> i64 {
    match redis_cmd(url, args) {
        redis::Value::Int(n) => n,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn bulk(url: &str, args: &[&str]) -> Option<String> {
    match redis_cmd(url, args) {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

/// A store as the previous release left it: its marker, `servers` in production with no
/// lease, a routing salt, a leader lease with a TTL and one rollout window.
fn write_legacy_store(url: &str, ns: &str, servers: &[&str]) {
    let now = canary_lb::store::now_ms().to_string();
    redis_cmd(
        url,
        &[
            "HSET",
            &format!("{ns}:meta"),
            "generation",
            "7",
            "updated_ms",
            &now,
            "created_ms",
            &now,
        ],
    );
    for s in servers {
        redis_cmd(
            url,
            &["ZADD", &format!("{ns}:servers:production"), "+inf", s],
        );
    }
    redis_cmd(url, &["HSET", &format!("{ns}:routing"), "salt", "it-salt"]);
    redis_cmd(
        url,
        &[
            "SET",
            &format!("{ns}:rollout:leader"),
            "replica-a",
            "PX",
            "600000",
        ],
    );
    redis_cmd(
        url,
        &[
            "HSET",
            &format!("{ns}:rollout:window:r-9:4"),
            "reporters",
            "1",
        ],
    );
}

fn ctl_out(url: &str, ns: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = ctl(url, ns, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn proxy_yaml(redis_port: u16, ns: &str) -> String {
    redis_proxy_config(
        redis_port,
        ns,
        "pools: { production: { servers: [] } }\n\
         routing: { canary_percent: 0, salt: \"it-salt\" }\n",
    )
}

/// Whether some request of `n` through `proxy` is answered by the app `name`.
fn reaches(proxy: &Proxy, name: &str, n: usize) -> bool {
    (0..n).any(|_| {
        matches!(try_get(&proxy.url("/"), &[]), Ok(r) if r.status == 200 && r.served_by() == Some(name))
    })
}

/// Requests through a proxy from a background thread until stopped: (status, served by) each.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u16, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let got = match try_get(&url, &[]) {
                    Ok(r) => (r.status, r.served_by().unwrap_or_default().to_string()),
                    Err(e) => (0, e),
                };
                if let Ok(mut v) = v.lock() {
                    v.push(got);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Traffic {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn stop(mut self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_legacy_store_is_served_as_it_is_then_migrated_under_traffic() {
    let _serial = serial();
    let redis = RedisServer::start();
    let url = redis.url();
    let ns = "mk-live";
    let old = App::start("legacy-1", "production");
    let second = App::start("second-1", "production");
    let third = App::start("third-1", "production");
    write_legacy_store(&url, ns, &[&old.addr()]);

    // A proxy of this release serves the legacy store, and ctl writes it under its names.
    let proxy = Proxy::start(&proxy_yaml(redis.port(), ns));
    wait_until("the proxy serves the legacy store", NOTICE, || {
        reaches(&proxy, "legacy-1", 5)
    });
    ctl_ok(
        &url,
        ns,
        &["register", "--pool", "production", &second.addr()],
    );
    assert!(
        redis
            .zscore(&format!("{ns}:servers:production"), &second.addr())
            .is_some(),
        "registered under the legacy name"
    );
    wait_until("the proxy serves the registration", NOTICE, || {
        reaches(&proxy, "second-1", 20)
    });
    // Its report carries the marker migrate-keys looks for, under the legacy name.
    wait_until(
        "the proxy reports with the tagged-layout marker",
        NOTICE,
        || {
            all_keys(&url).iter().any(|k| {
                k.starts_with(&format!("{ns}:proxy:"))
                    && bulk(&url, &["HGET", k, "_layout"]).as_deref() == Some("tagged")
            })
        },
    );
    let tagged: Vec<String> = all_keys(&url)
        .into_iter()
        .filter(|k| k.starts_with(&format!("{{{ns}}}")))
        .collect();
    assert!(tagged.is_empty(), "nothing tagged yet: {tagged:?}");
    let (code, status, _) = ctl_out(&url, ns, &["status"]);
    assert_eq!(code, Some(0));
    assert!(status.contains("keys: legacy layout"), "{status}");
    assert!(status.contains("ctl migrate-keys"), "{status}");

    // The move, with requests going through the proxy all along.
    let generation = bulk(&url, &["HGET", &format!("{ns}:meta"), "generation"]);
    assert_eq!(generation.as_deref(), Some("8"), "7, and one registration");
    let traffic = Traffic::start(proxy.url("/"));
    wait_until("traffic flows", NOTICE, || traffic.count() >= 20);
    let (code, moved, err) = ctl_out(&url, ns, &["migrate-keys"]);
    assert_eq!(code, Some(0), "{moved}{err}");
    assert!(moved.contains("to the tagged key layout"), "{moved}");
    let meta = format!("{{{ns}}}:meta");
    assert!(exists(&url, &meta));
    assert!(!exists(&url, &format!("{ns}:meta")));
    assert_eq!(
        bulk(&url, &["HGET", &meta, "generation"]),
        generation,
        "the marker moved as it was"
    );
    let servers = format!("{{{ns}}}:servers:production");
    assert!(redis.zscore(&servers, &old.addr()).is_some());
    assert!(redis.zscore(&servers, &second.addr()).is_some());
    assert!(!exists(&url, &format!("{ns}:servers:production")));
    let leader_ttl = int(&url, &["PTTL", &format!("{{{ns}}}:rollout:leader")]);
    assert!(leader_ttl > 0, "the lease keeps its TTL: {leader_ttl}");
    assert!(exists(&url, &format!("{{{ns}}}:rollout:window:r-9:4")));
    assert!(!exists(&url, &format!("{ns}:rollout:window:r-9:4")));

    // The proxy follows the tagged keys: a registration now lands there and is served.
    let before = traffic.count();
    wait_until("traffic keeps flowing", NOTICE, || {
        traffic.count() >= before + 50
    });
    ctl_ok(
        &url,
        ns,
        &["register", "--pool", "production", &third.addr()],
    );
    assert!(redis.zscore(&servers, &third.addr()).is_some());
    assert!(!exists(&url, &format!("{ns}:servers:production")));
    assert!(!exists(&url, &format!("{ns}:meta")));
    wait_until("the proxy serves the tagged registration", NOTICE, || {
        reaches(&proxy, "third-1", 30)
    });
    wait_until("the proxy reports under the tagged name", NOTICE, || {
        all_keys(&url).iter().any(|k| {
            k.starts_with(&format!("{{{ns}}}:proxy:"))
                && bulk(&url, &["HGET", k, "_layout"]).as_deref() == Some("tagged")
        })
    });
    let seen = traffic.stop();
    assert!(seen.len() > 50, "{} requests", seen.len());
    let failed: Vec<&(u16, String)> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed around the migration: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    for (_, by) in &seen {
        assert!(
            ["legacy-1", "second-1", "third-1"].contains(&by.as_str()),
            "answered by `{by}`"
        );
    }

    // Idempotent: a second run says so and changes nothing.
    let keys = all_keys(&url).len();
    let (code, again, err) = ctl_out(&url, ns, &["migrate-keys"]);
    assert_eq!(code, Some(0), "{again}{err}");
    assert!(
        again.contains("already in the tagged key layout"),
        "{again}"
    );
    assert!(exists(&url, &meta));
    assert!(all_keys(&url).len() >= keys.saturating_sub(2));
}

#[test]
fn migrate_keys_refuses_while_an_older_proxy_reports_and_force_goes_ahead() {
    let redis = RedisServer::start();
    let url = redis.url();
    let ns = "mk-refuse";
    write_legacy_store(&url, ns, &["10.0.0.1:80"]);
    // A proxy of the previous release: its report has only in-flight fields.
    let old_report = format!("{ns}:proxy:old-box-7");
    redis_cmd(&url, &["HSET", &old_report, "production/10.0.0.1:80", "0"]);
    redis_cmd(&url, &["PEXPIRE", &old_report, "600000"]);
    // One of this release: the marker.
    let new_report = format!("{ns}:proxy:new-box-1");
    redis_cmd(&url, &["HSET", &new_report, "_layout", "tagged"]);
    redis_cmd(&url, &["PEXPIRE", &new_report, "600000"]);
    let before = all_keys(&url);

    let (code, out, err) = ctl_out(&url, ns, &["migrate-keys"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("old-box-7"), "{err}");
    assert!(
        !err.contains("new-box-1"),
        "only the older proxy is named: {err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(err.contains("Nothing moved"), "{err}");
    assert_eq!(all_keys(&url), before, "a refusal moves nothing");

    let (code, out, err) = ctl_out(&url, ns, &["migrate-keys", "--force"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("old-box-7"), "the warning names it: {err}");
    assert!(out.contains("to the tagged key layout"), "{out}");
    let left: Vec<String> = all_keys(&url)
        .into_iter()
        .filter(|k| !k.starts_with(&format!("{{{ns}}}:")))
        .collect();
    assert!(left.is_empty(), "every key moved: {left:?}");
    assert!(exists(&url, &format!("{{{ns}}}:proxy:old-box-7")));

    // An older writer re-creates the legacy marker after the migration: refused, both named.
    redis_cmd(&url, &["HINCRBY", &format!("{ns}:meta"), "generation", "1"]);
    let (code, out, err) = ctl_out(&url, ns, &["migrate-keys"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&format!("{ns}:meta")), "{err}");
    assert!(err.contains(&format!("{{{ns}}}:meta")), "{err}");
    let (code, status, _) = ctl_out(&url, ns, &["status"]);
    assert_eq!(code, Some(0));
    assert!(status.contains("both"), "{status}");
}

#[test]
fn a_new_store_only_ever_gets_tagged_keys() {
    let _serial = serial();
    let redis = RedisServer::start();
    let url = redis.url();
    let ns = "mk-new";

    let (code, out, err) = ctl_out(&url, ns, &["migrate-keys"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("has no store"), "{out}");
    assert_eq!(redis.dbsize(), 0);

    let app = App::start("fresh-1", "production");
    let proxy = Proxy::start(&proxy_yaml(redis.port(), ns));
    ctl_ok(&url, ns, &["register", "--pool", "production", &app.addr()]);
    ctl_ok(
        &url,
        ns,
        &[
            "register",
            "--pool",
            "canary",
            "10.0.0.9:80",
            "--ttl",
            "60s",
        ],
    );
    ctl_ok(
        &url,
        ns,
        &["weight", "--pool", "production", &app.addr(), "5"],
    );
    ctl_ok(&url, ns, &["drain", "--pool", "canary", "10.0.0.9:80"]);
    ctl_ok(&url, ns, &["flag", "set", "beta", "--percent", "2"]);
    ctl_ok(&url, ns, &["canary", "set", "0"]);
    wait_until("the proxy serves the new store", NOTICE, || {
        reaches(&proxy, "fresh-1", 5)
    });
    wait_until("the proxy reports", NOTICE, || {
        all_keys(&url)
            .iter()
            .any(|k| k.starts_with(&format!("{{{ns}}}:proxy:")))
            && exists(&url, &format!("{{{ns}}}:serving:production"))
    });
    // A rollout's keys too: state, history, window, lease.
    let rollout = RolloutStore::open(Store::new(ns), &url).expect("url");
    let (state, entry) = started("r-1");
    block_on(async {
        assert!(rollout.command(None, &state, &entry).await.expect("start"));
        rollout.report("r-1", 0, &counts()).await.expect("report");
        rollout
            .lead("replica-a", Duration::from_secs(60))
            .await
            .expect("lead");
    });

    let keys = all_keys(&url);
    let legacy: Vec<&String> = keys
        .iter()
        .filter(|k| !k.starts_with(&format!("{{{ns}}}:")))
        .collect();
    assert!(
        legacy.is_empty(),
        "keys not in the tagged layout: {legacy:?}"
    );
    for suffix in [
        "meta",
        "servers:production",
        "servers:canary",
        "weights:production",
        "draining:canary",
        "flags",
        "routing",
        "rollout",
        "rollout:history",
        "rollout:leader",
        "rollout:epoch",
        "rollout:window:r-1:0",
    ] {
        let key = format!("{{{ns}}}:{suffix}");
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let (code, out, err) = ctl_out(&url, ns, &["migrate-keys"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("already in the tagged key layout"), "{out}");
}

#[test]
fn a_rollout_on_a_legacy_store_keeps_its_names_and_follows_the_migration() {
    let redis = RedisServer::start();
    let url = redis.url();
    let ns = "mk-ro";
    write_legacy_store(&url, ns, &["10.0.0.1:80"]);
    redis_cmd(&url, &["DEL", &format!("{ns}:rollout:leader")]);
    let store = || {
        RolloutStore::open(Store::new(ns), &url)
            .expect("url")
            .with_reporter("a")
    };
    let a = store();
    let (state, entry) = started("r-1");
    block_on(async {
        assert!(a.command(None, &state, &entry).await.expect("start"));
        let epoch = a.lead("replica-a", Duration::from_secs(60)).await;
        assert_eq!(epoch.expect("lead"), Some(1));
        a.report("r-1", 0, &counts()).await.expect("report");
    });
    for suffix in [
        "rollout",
        "rollout:history",
        "rollout:leader",
        "rollout:epoch",
    ] {
        assert!(exists(&url, &format!("{ns}:{suffix}")), "{ns}:{suffix}");
        assert!(!exists(&url, &format!("{{{ns}}}:{suffix}")));
    }
    assert!(exists(&url, &format!("{ns}:rollout:window:r-1:0")));
    assert_eq!(
        bulk(&url, &["HGET", &format!("{ns}:routing"), "canary_percent"]).as_deref(),
        Some(state.weight.as_f64().to_string().as_str()),
        "the weight went to the legacy routing hash the proxies of either release read"
    );

    let (code, out, err) = ctl_out(&url, ns, &["migrate-keys"]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The same handle (a proxy's, which does not restart) follows the tagged names.
    let b = store().with_reporter("b");
    block_on(async {
        let read = a.state().await.expect("state").expect("a rollout");
        assert_eq!(read.id, "r-1");
        assert_eq!(
            a.leader().await.expect("leader").as_deref(),
            Some("replica-a")
        );
        // The lease and its epoch moved: the holder renews it, nobody else takes it.
        assert_eq!(
            a.lead("replica-a", Duration::from_secs(60))
                .await
                .expect("renew"),
            Some(1)
        );
        assert_eq!(
            b.lead("replica-b", Duration::from_secs(60))
                .await
                .expect("lead"),
            None
        );
        b.report("r-1", 0, &counts()).await.expect("report b");
        let (sum, reporters) = a.collect("r-1", 0).await.expect("collect");
        assert_eq!(reporters, 2, "the window moved and b's report joined a's");
        assert_eq!(sum.canary.requests, 20);
        assert_eq!(a.history(10).await.expect("history").len(), 1);
    });
    let left: Vec<String> = all_keys(&url)
        .into_iter()
        .filter(|k| !k.starts_with(&format!("{{{ns}}}:")))
        .collect();
    assert!(left.is_empty(), "every key moved: {left:?}");
}

fn started(id: &str) -> (RolloutState, HistoryEntry) {
    let state = RolloutState::start(
        id.to_string(),
        RolloutConfig::default(),
        "it-salt".into(),
        canary_lb::store::now_ms(),
        None,
    )
    .expect("start");
    let entry = HistoryEntry {
        rollout_id: state.id.clone(),
        window: None,
        at_ms: state.updated_ms,
        verdict: "start".into(),
        reasons: vec!["started by the test".into()],
        numbers: Vec::new(),
        phase: state.phase,
        step: state.step,
        weight: state.weight,
    };
    (state, entry)
}

fn counts() -> WindowCounts {
    let pool = |r: u64| PoolWindow {
        requests: r,
        ..PoolWindow::default()
    };
    WindowCounts {
        production: pool(90),
        canary: pool(10),
    }
}

/// A connection that runs `ctl migrate-keys`' move on a second connection just before it sends
/// its first script (`EVALSHA`) or its first pipeline: a migration landing exactly between a
/// call's look at the layout and its write or read.
struct MigratesMidCall {
    inner: redis::aio::MultiplexedConnection,
    side: redis::aio::MultiplexedConnection,
    store: Store,
    on_script: bool,
    fired: bool,
}

impl MigratesMidCall {
    async fn open(url: &str, ns: &str, on_script: bool) -> MigratesMidCall {
        let client = redis::Client::open(url).expect("url");
        MigratesMidCall {
            inner: client
                .get_multiplexed_async_connection()
                .await
                .expect("connect"),
            side: client
                .get_multiplexed_async_connection()
                .await
                .expect("connect"),
            store: Store::new(ns),
            on_script,
            fired: false,
        }
    }

    async fn migrate_once(&mut self) -> redis::RedisResult<()> {
        if !self.fired {
            self.fired = true;
            let moved = self.store.migrate_keys(&mut self.side).await;
            assert!(
                matches!(moved, Ok(canary_lb::store::Migration::Moved { .. })),
                "{moved:?}"
            );
        }
        Ok(())
    }
}

impl redis::aio::ConnectionLike for MigratesMidCall {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let is_script = matches!(
                cmd.args_iter().next(),
                Some(redis::Arg::Simple(name)) if name.eq_ignore_ascii_case(b"EVALSHA")
            );
            if self.on_script && is_script {
                self.migrate_once().await?;
            }
            self.inner.req_packed_command(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            if !self.on_script {
                self.migrate_once().await?;
            }
            self.inner
                .req_packed_commands(pipeline, offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[test]
fn a_write_or_read_racing_the_migration_follows_it() {
    let redis = RedisServer::start();
    let url = redis.url();
    let pool = canary_lb::model::PoolKind::Production;
    let addr = |a: &str| canary_lb::model::ServerAddr::parse(a).expect("addr");

    // A registration that looked (legacy) before the move and writes after it: its script
    // refuses under the legacy names and runs again under the tagged ones.
    let ns = "mk-race-write";
    write_legacy_store(&url, ns, &["10.0.0.1:80"]);
    block_on(async {
        let mut conn = MigratesMidCall::open(&url, ns, true).await;
        let changed = Store::new(ns)
            .register(&mut conn, pool, &addr("10.0.0.2:80"), None, None)
            .await
            .expect("register");
        assert!(conn.fired, "the move ran between the look and the write");
        assert!(changed);
    });
    let servers = format!("{{{ns}}}:servers:production");
    assert!(redis.zscore(&servers, "10.0.0.1:80").is_some());
    assert!(redis.zscore(&servers, "10.0.0.2:80").is_some());
    for legacy in ["meta", "servers:production"] {
        assert!(
            !exists(&url, &format!("{ns}:{legacy}")),
            "the write re-created {ns}:{legacy}"
        );
    }

    // A snapshot that looked (legacy) before the move and read after it: it reads again under
    // the tagged names, so the proxy never sees a store without its marker.
    let ns = "mk-race-read";
    write_legacy_store(&url, ns, &["10.0.0.1:80", "10.0.0.3:80"]);
    block_on(async {
        let mut conn = MigratesMidCall::open(&url, ns, false).await;
        let snap = Store::new(ns)
            .read_snapshot(&mut conn, canary_lb::store::now_ms())
            .await
            .expect("snapshot");
        assert!(conn.fired, "the move ran between the look and the read");
        assert_eq!(snap.marker.as_ref().map(|m| m.generation), Some(7));
        assert_eq!(snap.pool(pool).len(), 2);
    });
}
