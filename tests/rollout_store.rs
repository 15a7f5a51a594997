//! The rollout's Redis coordinator (`store::RolloutStore`) against a real redis-server: the
//! Lua scripts' fencing (a stale lease epoch or state version writes nothing), the leader lease
//! changing hands, window reports summed over replicas, bad data skipped, and the write that
//! every proxy's discovery follows (the routing percent and its event).

mod common;

use std::time::Duration;

use canary_lb::config::schema::RolloutConfig;
use canary_lb::model::LATENCY_BUCKETS_S;
use canary_lb::rollout::{
    Command, Coordinator, HistoryEntry, Phase, PoolWindow, RolloutState, WindowCounts,
};
use canary_lb::store::{RolloutStore, Store};
use common::*;

const NS: &str = "ro";

/// A coordinator on `redis`, whose store is marked as written (`ns:meta`), as after the
/// servers were registered: a rollout never writes to a store without the marker.
fn coordinator(redis: &RedisServer, reporter: &str) -> RolloutStore {
    store::mark_store(&redis.url(), NS);
    RolloutStore::open(Store::new(NS), &redis.url())
        .expect("url")
        .with_reporter(reporter)
        .with_timeout(Duration::from_secs(2))
}

fn started(id: &str, now: u64, previous: Option<&RolloutState>) -> (RolloutState, HistoryEntry) {
    let state = RolloutState::start(
        id.to_string(),
        RolloutConfig::default(),
        "salt-1".into(),
        now,
        previous,
    )
    .expect("start");
    let entry = entry_for(&state, None, "start");
    (state, entry)
}

fn entry_for(state: &RolloutState, window: Option<u64>, verdict: &str) -> HistoryEntry {
    HistoryEntry {
        rollout_id: state.id.clone(),
        window,
        at_ms: state.updated_ms,
        verdict: verdict.into(),
        reasons: vec![format!("{verdict} for the test")],
        numbers: vec![("canary_requests".into(), 120.0)],
        phase: state.phase,
        step: state.step,
        weight: state.weight,
    }
}

/// What the leader writes after judging `window` as a pass that moves to the next step.
fn judged(state: &RolloutState, window: u64) -> (RolloutState, HistoryEntry) {
    let mut next = state.clone();
    next.next_window = window + 1;
    next.step += 1;
    next.weight = next.settings.steps[next.step];
    next.version += 1;
    next.updated_ms += 1;
    let entry = entry_for(&next, Some(window), "pass");
    (next, entry)
}

fn hget(redis: &RedisServer, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut redis.conn())
        .expect("HGET")
}

fn stream_len(redis: &RedisServer) -> i64 {
    redis::cmd("XLEN")
        .arg(Store::new(NS).rollout_history_key())
        .query(&mut redis.conn())
        .expect("XLEN")
}

fn canary_percent(redis: &RedisServer) -> Option<String> {
    hget(redis, &Store::new(NS).routing_key(), "canary_percent")
}

#[test]
fn a_start_writes_state_percent_history_and_events_and_a_second_start_is_refused() {
    let redis = RedisServer::start();
    let a = coordinator(&redis, "a");
    let (s0, entry) = started("r-1", 1_000, None);

    // The same publish as `ctl canary set` (discovery re-reads on it) and a rollout event.
    let channel_events = ["routing", "rollout"];
    for want in channel_events {
        let written = redis.expect_event(NS, want, || block_on(a.command(None, &s0, &entry)));
        assert!(
            written.expect("redis answers"),
            "the first start is written"
        );
        // Let each loop iteration write afresh: reset to nothing stored.
        redis::cmd("DEL")
            .arg(Store::new(NS).rollout_key())
            .query::<()>(&mut redis.conn())
            .expect("DEL");
    }
    assert!(block_on(a.command(None, &s0, &entry)).expect("redis answers"));

    let key = Store::new(NS).rollout_key();
    assert_eq!(block_on(a.state()).expect("state"), Some(s0.clone()));
    assert_eq!(hget(&redis, &key, "phase").as_deref(), Some("progressing"));
    assert_eq!(hget(&redis, &key, "weight").as_deref(), Some("5"));
    assert_eq!(hget(&redis, &key, "step").as_deref(), Some("1/5"));
    assert_eq!(hget(&redis, &key, "version").as_deref(), Some("1"));
    assert_eq!(hget(&redis, &key, "id").as_deref(), Some("r-1"));
    assert_eq!(canary_percent(&redis).as_deref(), Some("5"));
    assert_eq!(
        store::store_generation(&redis.url(), NS).map(|g| g > 0),
        Some(true),
        "the write marks the store, as `ctl canary set` does"
    );

    // Something readable is stored: a start that expects nothing is fenced, writes nothing.
    let (other, other_entry) = started("r-2", 2_000, None);
    let before = stream_len(&redis);
    assert!(!block_on(a.command(None, &other, &other_entry)).expect("redis answers"));
    assert_eq!(
        block_on(a.state()).expect("state").map(|s| s.id),
        Some("r-1".into())
    );
    assert_eq!(stream_len(&redis), before);

    let history = block_on(a.history(20)).expect("history");
    assert_eq!(history.last().map(|e| e.verdict.as_str()), Some("start"));
    assert_eq!(history.last().map(|e| e.rollout_id.as_str()), Some("r-1"));
}

#[test]
fn a_store_without_its_marker_is_never_written() {
    let redis = RedisServer::start();
    let a = RolloutStore::open(Store::new(NS), &redis.url()).expect("url");
    let (s0, entry) = started("r-1", 1_000, None);
    let err = block_on(a.command(None, &s0, &entry)).expect_err("refused");
    assert!(err.to_string().contains("{ro}:meta is missing"), "{err}");
    assert_eq!(redis.dbsize(), 0, "nothing written, the marker not created");
}

#[test]
fn a_stale_version_or_epoch_writes_nothing() {
    let redis = RedisServer::start();
    let a = coordinator(&redis, "a");
    let (s0, entry) = started("r-1", 1_000, None);
    assert!(block_on(a.command(None, &s0, &entry)).expect("start"));
    let epoch = block_on(a.lead("a", Duration::from_secs(10)))
        .expect("lead")
        .expect("the lease is free");

    let (s1, e1) = judged(&s0, 0);
    assert!(block_on(a.apply(epoch, &s0, &s1, &e1)).expect("apply"));
    assert_eq!(canary_percent(&redis).as_deref(), Some("10"));
    let len = stream_len(&redis);

    // Window 0 again, judged from the old state (a leader that missed its own write).
    let (again, again_entry) = judged(&s0, 0);
    assert!(!block_on(a.apply(epoch, &s0, &again, &again_entry)).expect("apply"));
    // An epoch this replica never held.
    let (s2, e2) = judged(&s1, 1);
    assert!(!block_on(a.apply(epoch + 7, &s1, &s2, &e2)).expect("apply"));
    // A different rollout id with the right version.
    let mut other_id = s1.clone();
    other_id.id = "r-other".into();
    assert!(!block_on(a.apply(epoch, &other_id, &s2, &e2)).expect("apply"));

    assert_eq!(block_on(a.state()).expect("state"), Some(s1.clone()));
    assert_eq!(
        stream_len(&redis),
        len,
        "nothing fenced reaches the history"
    );
    assert_eq!(canary_percent(&redis).as_deref(), Some("10"));

    // A command compares id and version too: abort from a stale copy is refused, from the
    // current one it writes 0 % at once.
    let (aborted, abort_entry) = s0.command(Command::Abort, 5_000).expect("abort applies");
    assert!(!block_on(a.command(Some(&s0), &aborted, &abort_entry)).expect("command"));
    let (aborted, abort_entry) = s1.command(Command::Abort, 5_000).expect("abort applies");
    assert!(block_on(a.command(Some(&s1), &aborted, &abort_entry)).expect("command"));
    assert_eq!(canary_percent(&redis).as_deref(), Some("0"));
    let state = block_on(a.state()).expect("state").expect("stored");
    assert_eq!(state.phase, Phase::Aborted);
    let last = block_on(a.history(1)).expect("history");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].verdict, "abort");
}

#[test]
fn the_lease_changes_hands_only_after_expiry_and_bumps_the_epoch() {
    let redis = RedisServer::start();
    let a = coordinator(&redis, "a");
    let b = coordinator(&redis, "b");
    let (s0, entry) = started("r-1", 1_000, None);
    assert!(block_on(a.command(None, &s0, &entry)).expect("start"));

    let ttl = Duration::from_millis(600);
    let e1 = block_on(a.lead("a", ttl))
        .expect("lead")
        .expect("free lease");
    assert_eq!(
        block_on(b.lead("b", ttl)).expect("lead"),
        None,
        "a holds it"
    );
    // Renewing keeps the epoch, and keeps b out for as long as a renews.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(block_on(a.lead("a", ttl)).expect("renew"), Some(e1));
        assert_eq!(block_on(b.lead("b", ttl)).expect("lead"), None);
    }
    assert_eq!(block_on(b.leader()).expect("leader").as_deref(), Some("a"));

    // a stops renewing: b takes the lease after expiry with a higher epoch.
    let e2 = eventually(Duration::from_secs(5), "b takes the lapsed lease", || {
        block_on(b.lead("b", Duration::from_secs(10))).expect("lead")
    });
    assert!(e2 > e1, "epoch {e2} after {e1}");
    assert_eq!(block_on(a.leader()).expect("leader").as_deref(), Some("b"));
    let epoch: String = redis::cmd("GET")
        .arg(Store::new(NS).rollout_epoch_key())
        .query(&mut redis.conn())
        .expect("GET epoch");
    assert_eq!(epoch, e2.to_string());

    // The old leader's write (judged before it noticed) is fenced: nothing written.
    let (s1, e_1) = judged(&s0, 0);
    let len = stream_len(&redis);
    assert!(!block_on(a.apply(e1, &s0, &s1, &e_1)).expect("apply"));
    assert_eq!(block_on(a.state()).expect("state"), Some(s0.clone()));
    assert_eq!(stream_len(&redis), len);
    assert_eq!(canary_percent(&redis).as_deref(), Some("5"));
    // It learns it lost the lease; the new leader writes window 0 once.
    assert_eq!(block_on(a.lead("a", ttl)).expect("lead"), None);
    assert!(!block_on(a.apply(e1, &s0, &s1, &e_1)).expect("apply"));
    assert!(block_on(b.apply(e2, &s0, &s1, &e_1)).expect("apply"));
    let windows: Vec<Option<u64>> = block_on(b.history(20))
        .expect("history")
        .iter()
        .map(|e| e.window)
        .collect();
    assert_eq!(
        windows,
        vec![None, Some(0)],
        "one start, one verdict for window 0"
    );

    // Taking a lapsed lease back also bumps the epoch, even for the same replica.
    redis::cmd("DEL")
        .arg(Store::new(NS).rollout_leader_key())
        .query::<()>(&mut redis.conn())
        .expect("DEL");
    let e3 = block_on(b.lead("b", ttl))
        .expect("lead")
        .expect("free lease");
    assert!(e3 > e2);
    let (s2, e_2) = judged(&s1, 1);
    assert!(!block_on(b.apply(e2, &s1, &s2, &e_2)).expect("apply"));
    assert!(block_on(b.apply(e3, &s1, &s2, &e_2)).expect("apply"));
}

fn counts(requests: u64, errors: u64, bucket: usize) -> WindowCounts {
    let pool = |r: u64, e: u64| {
        let mut w = PoolWindow {
            requests: r,
            errors: e,
            ..PoolWindow::default()
        };
        w.buckets[bucket] = r;
        w
    };
    WindowCounts {
        production: pool(requests * 9, errors),
        canary: pool(requests, errors),
    }
}

#[test]
fn window_reports_sum_over_replicas_once_each_and_expire() {
    let redis = RedisServer::start();
    let a = coordinator(&redis, "a");
    let b = coordinator(&redis, "b");
    let last = LATENCY_BUCKETS_S.len();
    block_on(a.report("r-1", 3, &counts(100, 2, 4))).expect("report a");
    block_on(b.report("r-1", 3, &counts(50, 1, last))).expect("report b");
    // A report retried after a timeout (it may have been written) is not counted twice.
    block_on(a.report("r-1", 3, &counts(100, 2, 4))).expect("retry a");
    // Another window and another rollout are kept apart.
    block_on(a.report("r-1", 4, &counts(7, 0, 0))).expect("report a, window 4");
    block_on(a.report("r-2", 3, &counts(7, 0, 0))).expect("report a, r-2");

    let (sum, reporters) = block_on(a.collect("r-1", 3)).expect("collect");
    assert_eq!(reporters, 2);
    assert_eq!(sum.canary.requests, 150);
    assert_eq!(sum.canary.errors, 3);
    assert_eq!(sum.production.requests, 1350);
    assert_eq!(sum.canary.buckets[4], 100);
    assert_eq!(sum.canary.buckets[last], 50);
    assert_eq!(sum.canary.buckets.iter().sum::<u64>(), 150);

    let (empty, nobody) = block_on(a.collect("r-1", 99)).expect("collect");
    assert_eq!(nobody, 0);
    assert_eq!(empty, WindowCounts::default());

    let key = Store::new(NS).rollout_window_key("r-1", 3);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query(&mut redis.conn())
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl as u64 <= canary_lb::store::ROLLOUT_WINDOW_TTL_MS,
        "window reports expire: PTTL {ttl}"
    );

    // Hand-written garbage is skipped and counted; the rest is still summed.
    redis_cmd(&redis.url(), &["HSET", &key, "canary:errors", "lots"]);
    redis_cmd(&redis.url(), &["HSET", &key, "canary:b99999999", "5"]);
    let (sum, _) = block_on(a.collect("r-1", 3)).expect("collect");
    assert_eq!(sum.canary.requests, 150);
    assert_eq!(sum.canary.errors, 0);
    assert_eq!(sum.canary.buckets.len(), LATENCY_BUCKETS_S.len() + 1);
    assert_eq!(a.bad_data(), 2);
}

/// The shadow step's pair counts travel in the same window hash, summed over replicas, and a
/// replica that counted none (or a release before them) adds nothing.
#[test]
fn pair_counts_sum_over_replicas() {
    let redis = RedisServer::start();
    let a = coordinator(&redis, "a");
    let b = coordinator(&redis, "b");
    let c = coordinator(&redis, "c");
    let paired = |pairs: u64, mismatches: u64, slower: u64| {
        let mut w = counts(0, 0, 0);
        let canary = &mut w.canary;
        canary.pairs = pairs;
        canary.pair_mismatches = mismatches;
        canary.pair_slower = slower;
        canary.pair_not_slower = pairs - slower;
        canary.client_max_pair_mismatches = mismatches.min(1);
        canary.client_max_pair_slower = slower.min(1);
        canary.pairs_capped = 2;
        w
    };
    block_on(a.report("r-1", 0, &paired(40, 3, 1))).expect("report a");
    block_on(b.report("r-1", 0, &paired(25, 1, 0))).expect("report b");
    block_on(c.report("r-1", 0, &counts(30, 0, 2))).expect("report c, no pairs");
    let (sum, reporters) = block_on(a.collect("r-1", 0)).expect("collect");
    assert_eq!(reporters, 3);
    let w = &sum.canary;
    assert_eq!(
        (w.pairs, w.pair_mismatches, w.pair_slower, w.pair_not_slower),
        (65, 4, 1, 64)
    );
    assert_eq!(
        (
            w.client_max_pair_mismatches,
            w.client_max_pair_slower,
            w.pairs_capped
        ),
        (2, 1, 4)
    );
    assert_eq!(w.requests, 30);
    assert_eq!(sum.production.pairs, 0);
    assert_eq!(a.bad_data(), 0);
}

#[test]
fn bad_data_in_redis_is_skipped_never_fatal() {
    let redis = RedisServer::start();
    let a = coordinator(&redis, "a");
    let s = Store::new(NS);
    redis_cmd(
        &redis.url(),
        &["HSET", &s.rollout_key(), "json", "{not json", "id", "x"],
    );
    assert_eq!(block_on(a.state()).expect("state"), None);
    assert_eq!(a.bad_data(), 1);
    // An unreadable state does not block the next start.
    let (s0, entry) = started("r-1", 1_000, None);
    assert!(block_on(a.command(None, &s0, &entry)).expect("start over garbage"));
    assert_eq!(block_on(a.state()).expect("state"), Some(s0));

    // Garbage in the history stream is skipped; the good entries stay, newest last.
    redis_cmd(
        &redis.url(),
        &["XADD", &s.rollout_history_key(), "*", "entry", "[1,2"],
    );
    redis_cmd(
        &redis.url(),
        &["XADD", &s.rollout_history_key(), "*", "other", "x"],
    );
    let history = block_on(a.history(10)).expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].verdict, "start");
    assert_eq!(a.bad_data(), 3);
}

#[test]
fn an_unreachable_or_hung_redis_costs_one_bounded_call_and_reconnects() {
    let mut redis = RedisServer::start();
    store::mark_store(&redis.url(), NS);
    let a = RolloutStore::open(Store::new(NS), &redis.url())
        .expect("url")
        .with_timeout(Duration::from_millis(500));
    let (s0, entry) = started("r-1", 1_000, None);
    assert!(block_on(a.command(None, &s0, &entry)).expect("start"));

    redis.pause();
    let began = std::time::Instant::now();
    let err = block_on(a.state()).expect_err("a hung redis is an error");
    let text = err.to_string();
    assert!(
        text.contains("read the rollout")
            && (text.contains("no answer") || text.contains("timed out")),
        "{text}"
    );
    // Bounded: the engine's next round comes; not a timing assertion on the exact value.
    assert!(began.elapsed() < Duration::from_secs(10));
    redis.unpause();
    assert_eq!(
        eventually(Duration::from_secs(10), "the store answers again", || {
            block_on(a.state()).ok()
        }),
        Some(s0.clone())
    );

    redis.stop_keeping_data();
    assert!(block_on(a.lead("a", Duration::from_secs(1))).is_err());
    redis.start_again();
    assert_eq!(
        eventually(Duration::from_secs(10), "the store reconnects", || {
            block_on(a.state()).ok()
        }),
        Some(s0)
    );
}

/// The proxies' discovery settings give the coordinator its Redis: the URL, or (here) the
/// master the Sentinels name.
#[test]
fn the_coordinator_of_a_discovery_config_finds_the_master_through_sentinel() {
    let redis = RedisServer::start();
    let sentinel = RedisSentinel::start(redis.port());
    store::mark_store(&redis.url(), "sentinel-ro");
    let config = canary_lb::config::Config::parse(&format!(
        "listen: [\"127.0.0.1:1\"]\n\
         discovery: {{ provider: redis, url: \"redis://127.0.0.1:1/0\", namespace: sentinel-ro, \
                      sentinel: {{ master_name: mymaster, nodes: [\"redis://127.0.0.1:{}\"] }} }}\n",
        sentinel.port()
    ))
    .expect("config");
    let coord = RolloutStore::for_discovery(&config.discovery).expect("coordinator");
    let (s0, entry) = started("r-1", 1_000, None);
    assert!(block_on(coord.command(None, &s0, &entry)).expect("start through sentinel"));
    assert_eq!(
        hget(&redis, &Store::new("sentinel-ro").rollout_key(), "id").as_deref(),
        Some("r-1")
    );
}
