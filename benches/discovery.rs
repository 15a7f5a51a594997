//! How fast Redis discovery follows the store, and what following it costs the request path.
//! A measuring program, not a test: `cargo bench --bench discovery` prints a table.
//!
//! Everything runs on loopback with real processes from the integration-test harness: one
//! `redis-server`, demo app servers, and the proxy built by this bench run (release). It stops
//! by itself within about a minute.
//!
//! 1. Propagation: a registration (by `ctl register`, and by `Store::register` in-process)
//!    -> the first request served by the new server.
//! 2. One snapshot read of a 1,000-server pool (`Store::read_snapshot`, called directly), and
//!    the commands Redis processed for it; then PUBLISH -> `/status` listing the 1,000.
//! 3. Request latency through the proxy with and without a resync every 50 ms.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use canary_lb::store::{self, Store};
use common::*;

/// Anything the bench waits for must happen within this, or the bench fails.
const DEADLINE: Duration = Duration::from_secs(20);
const TRIES: usize = 20;
const BIG_POOL: usize = 1_000;
const REQUESTS: usize = 3_000;
const RESYNC_EVERY: Duration = Duration::from_millis(50);
/// Each latency run lasts at least this long (about 60 resyncs at one per 50 ms).
const LATENCY_RUN: Duration = Duration::from_secs(3);

fn main() {
    let redis = RedisServer::start();
    let url = redis.url();
    let prod = App::start("bench-prod", "production");
    let canary = App::start("bench-canary", "canary");

    eprintln!("discovery bench: propagation ({TRIES} tries, twice)");
    let propagation = propagation(&url, redis.port(), &prod, &canary);
    eprintln!("discovery bench: snapshot reads of {BIG_POOL} servers");
    let (read_times, commands_per_read) = snapshot_reads(&url);
    eprintln!("discovery bench: {BIG_POOL} servers through the proxy");
    let big = big_pool(&url, redis.port(), &prod);

    println!();
    println!("canary-lb discovery bench: loopback, proxy with 2 worker threads, one redis-server");
    println!();
    println!("| measurement | n | median | p99 | max |");
    println!("|---|---|---|---|---|");
    row(
        "`ctl register` exits -> first request served by the new server",
        &propagation.from_ctl_exit,
    );
    row(
        "`ctl register` starts (process spawn included) -> first request served",
        &propagation.from_ctl_start,
    );
    row(
        "`Store::register` returns (in-process) -> first request served",
        &propagation.from_store_write,
    );
    row(
        &format!(
            "`Store::read_snapshot`, {BIG_POOL} servers ({commands_per_read:.0} commands, 1 round trip)"
        ),
        &read_times,
    );
    row(
        &format!("PUBLISH -> `/status` lists {BIG_POOL} servers (resync_interval 60s)"),
        &big.publish_to_status,
    );
    latency_row("request latency, no resyncs", &big.quiet, 0);
    latency_row(
        &format!("... PUBLISH every {RESYNC_EVERY:?}"),
        &big.publishing,
        big.publishing_resyncs,
    );
    latency_row(
        &format!("... membership change + PUBLISH every {RESYNC_EVERY:?}"),
        &big.churning,
        big.churning_resyncs,
    );
    println!();
}

fn yaml(redis_port: u16, namespace: &str, resync: &str) -> String {
    proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 2\n\
             grace_period: 1s\n\
             health_check: {{ kind: tcp, interval: 1h, timeout: 1s }}\n\
             passive_health: {{ max_failures: 3, cool_off: 1h }}\n\
             routing: {{ canary_percent: 0, salt: bench, user_header: X-User-Id }}\n\
             discovery: {{ provider: redis, url: \"redis://127.0.0.1:{redis_port}/0\", \
                           namespace: \"{namespace}\", resync_interval: {resync} }}\n"
        ),
    )
}

fn answered_by(proxy: &Proxy, name: &str, headers: &[(&str, &str)]) -> bool {
    matches!(try_get(&proxy.url("/"), headers), Ok(r) if r.status == 200 && r.served_by() == Some(name))
}

/// Poll `f` without pausing (requests are the pacing) until it holds; the time it took.
fn spin_until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
    }
    start.elapsed()
}

/// `canary-lb ctl ARGS` with `Command::output` (which returns the moment ctl exits);
/// returns when ctl started.
fn timed_ctl(url: &str, ns: &str, args: &[&str]) -> Instant {
    let start = Instant::now();
    let out = std::process::Command::new(bin())
        .args(["ctl", "--redis", url, "--namespace", ns])
        .args(args)
        .env_remove("CANARY_LB_REDIS_URL")
        .env_remove("CANARY_LB_NAMESPACE")
        .output()
        .expect("run canary-lb ctl");
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start
}

struct Propagation {
    /// `ctl register` exits -> first request served by the new server.
    from_ctl_exit: Vec<Duration>,
    /// `ctl register` starts (process spawn included) -> first request served.
    from_ctl_start: Vec<Duration>,
    /// `Store::register` (one Lua call that writes and publishes) returns -> first request served.
    from_store_write: Vec<Duration>,
}

fn propagation(url: &str, redis_port: u16, prod: &App, canary: &App) -> Propagation {
    let ns = "bench-propagation";
    ctl_ok(url, ns, &["register", "--pool", "production", &prod.addr()]);
    // Resync every 5 s (the default): what is measured is the event path.
    let proxy = Proxy::start(&yaml(redis_port, ns, "5s"));
    let force = [("X-Canary", "1")];
    // Canary is empty: forced requests fall back to production.
    spin_until("production serves", || {
        answered_by(&proxy, prod.name(), &force)
    });
    let back_to_production = || {
        spin_until("the canary is gone", || {
            answered_by(&proxy, prod.name(), &force)
        })
    };
    let mut p = Propagation {
        from_ctl_exit: Vec::new(),
        from_ctl_start: Vec::new(),
        from_store_write: Vec::new(),
    };
    for _ in 0..TRIES {
        let started = timed_ctl(url, ns, &["register", "--pool", "canary", &canary.addr()]);
        let took = spin_until("the new canary serves", || {
            answered_by(&proxy, canary.name(), &force)
        });
        p.from_ctl_exit.push(took);
        p.from_ctl_start.push(started.elapsed());
        timed_ctl(url, ns, &["deregister", "--pool", "canary", &canary.addr()]);
        back_to_production();
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let store = Store::new(ns);
    let addr = canary_lb::model::ServerAddr::parse(&canary.addr()).expect("address");
    let pool = canary_lb::model::PoolKind::Canary;
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("connect");
    for _ in 0..TRIES {
        runtime
            .block_on(store.register(&mut conn, pool, &addr, None, None))
            .expect("register");
        p.from_store_write
            .push(spin_until("the new canary serves", || {
                answered_by(&proxy, canary.name(), &force)
            }));
        runtime
            .block_on(store.deregister(&mut conn, pool, &addr))
            .expect("deregister");
        back_to_production();
    }
    p
}

/// `ZADD servers +inf addr ...` for `n` addresses from port 20000 (nothing listens there).
fn fill(url: &str, ns: &str, n: usize) {
    let key = common::store::servers_key(ns, "canary");
    let weights = common::store::weights_key(ns, "canary");
    let addrs: Vec<String> = (0..n)
        .map(|i| format!("127.0.0.1:{}", 20_000 + i))
        .collect();
    let mut zadd = vec!["ZADD", &key];
    let mut hset = vec!["HSET", &weights];
    for a in &addrs {
        zadd.extend(["+inf", a.as_str()]);
        hset.extend([a.as_str(), "2"]);
    }
    redis_cmd(url, &zadd);
    redis_cmd(url, &hset);
}

fn commands_processed(url: &str) -> u64 {
    let info = match redis_cmd(url, &["INFO", "stats"]) {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO stats: {other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed in INFO stats")
}

/// Time `read_snapshot` of a 1,000-server pool; also the commands Redis processed per read.
/// No proxy is connected meanwhile, so the command count is the reads' alone.
fn snapshot_reads(url: &str) -> (Vec<Duration>, f64) {
    let ns = "bench-snapshot";
    fill(url, ns, BIG_POOL);
    let store = Store::new(ns);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        for _ in 0..3 {
            store
                .read_snapshot(&mut conn, store::now_ms())
                .await
                .expect("warm-up read");
        }
        let before = commands_processed(url);
        let mut times = Vec::with_capacity(TRIES);
        for _ in 0..TRIES {
            let start = Instant::now();
            let snap = store
                .read_snapshot(&mut conn, store::now_ms())
                .await
                .expect("snapshot");
            times.push(start.elapsed());
            assert_eq!(snap.servers.canary.len(), BIG_POOL);
            assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        }
        // The first INFO is counted once it has run, so it is in `after`: take it out.
        let after = commands_processed(url);
        let per_read = (after - before - 1) as f64 / TRIES as f64;
        (times, per_read)
    })
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct BigPool {
    publish_to_status: Vec<Duration>,
    quiet: Vec<Duration>,
    publishing: Vec<Duration>,
    publishing_resyncs: u64,
    churning: Vec<Duration>,
    churning_resyncs: u64,
}

fn canary_listed(proxy: &Proxy) -> usize {
    proxy.status_json()["pools"]["canary"]["servers"]
        .as_array()
        .map_or(0, Vec::len)
}

fn resyncs(proxy: &Proxy) -> u64 {
    proxy
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("canary_lb_discovery_resyncs_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn big_pool(url: &str, redis_port: u16, prod: &App) -> BigPool {
    let ns = "bench-big";
    let events = common::store::events_channel(ns);
    ctl_ok(url, ns, &["register", "--pool", "production", &prod.addr()]);
    // Resync once a minute: only the PUBLISH below makes the proxy read.
    let proxy = Proxy::start(&yaml(redis_port, ns, "60s"));
    spin_until("production serves", || {
        answered_by(&proxy, prod.name(), &[])
    });

    let mut publish_to_status = Vec::new();
    for _ in 0..5 {
        fill(url, ns, BIG_POOL);
        let start = Instant::now();
        redis_cmd(url, &["PUBLISH", &events, "canary"]);
        spin_until("the 1,000 servers are listed", || {
            canary_listed(&proxy) == BIG_POOL
        });
        publish_to_status.push(start.elapsed());
        redis_cmd(url, &["DEL", &common::store::servers_key(ns, "canary")]);
        redis_cmd(url, &["PUBLISH", &events, "canary"]);
        spin_until("the canary pool is empty", || canary_listed(&proxy) == 0);
    }
    fill(url, ns, BIG_POOL);
    redis_cmd(url, &["PUBLISH", &events, "canary"]);
    spin_until("the 1,000 servers are listed", || {
        canary_listed(&proxy) == BIG_POOL
    });

    // At least `n` requests and at least `LATENCY_RUN`, so a run sees many resyncs.
    let measure = |n: usize| -> Vec<Duration> {
        let run = Instant::now();
        let mut out = Vec::with_capacity(n);
        while out.len() < n || run.elapsed() < LATENCY_RUN {
            let start = Instant::now();
            let r = get(&proxy.url("/"), &[("X-Canary", "0")]);
            out.push(start.elapsed());
            assert_eq!(r.status, 200, "{}", r.body);
        }
        out
    };
    measure(300); // warm-up: connections, caches
    eprintln!("discovery bench: request latency without resyncs");
    let quiet = measure(REQUESTS);

    // A background writer triggers a resync every 50 ms while requests flow.
    let under_resyncs = |churn: bool| -> (Vec<Duration>, u64) {
        let stop = AtomicBool::new(false);
        let published = AtomicU64::new(0);
        eprintln!("discovery bench: request latency with a resync every {RESYNC_EVERY:?} (churn: {churn})");
        let before = resyncs(&proxy);
        let latencies = std::thread::scope(|s| {
            s.spawn(|| {
                let mut conn = redis::Client::open(url)
                    .and_then(|c| c.get_connection())
                    .expect("connect");
                let key = common::store::servers_key(ns, "canary");
                let mut present = false;
                while !stop.load(Ordering::Relaxed) {
                    if churn {
                        let op = if present { "ZREM" } else { "ZADD" };
                        let mut cmd = redis::cmd(op);
                        cmd.arg(&key);
                        if !present {
                            cmd.arg("+inf");
                        }
                        cmd.arg("127.0.0.1:21000");
                        let _: i64 = cmd.query(&mut conn).expect("membership change");
                        present = !present;
                    }
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg(&events)
                        .arg("canary")
                        .query(&mut conn)
                        .expect("PUBLISH");
                    published.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(RESYNC_EVERY);
                }
                if present {
                    let _: i64 = redis::cmd("ZREM")
                        .arg(&key)
                        .arg("127.0.0.1:21000")
                        .query(&mut conn)
                        .expect("ZREM");
                }
            });
            // Stops the writer also when `measure` panics, so the scope can end.
            let _stop = StopOnDrop(&stop);
            measure(REQUESTS)
        });
        let done = resyncs(&proxy) - before;
        assert!(
            done * 2 >= published.load(Ordering::Relaxed),
            "only {done} resyncs for {} publishes",
            published.load(Ordering::Relaxed)
        );
        (latencies, done)
    };
    let (publishing, publishing_resyncs) = under_resyncs(false);
    let (churning, churning_resyncs) = under_resyncs(true);
    BigPool {
        publish_to_status,
        quiet,
        publishing,
        publishing_resyncs,
        churning,
        churning_resyncs,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn row(what: &str, times: &[Duration]) {
    let s = sorted(times);
    println!(
        "| {what} | {} | {} | {} | {} |",
        s.len(),
        ms(quantile(&s, 0.5)),
        ms(quantile(&s, 0.99)),
        ms(s[s.len() - 1])
    );
}

fn latency_row(what: &str, times: &[Duration], resyncs: u64) {
    if resyncs > 0 {
        row(&format!("{what} ({resyncs} resyncs)"), times);
    } else {
        row(what, times);
    }
}
