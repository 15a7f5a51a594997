//! The rollout over Redis: [`RolloutStore`] is the [`Coordinator`] the proxies share when they
//! follow Redis, and what `canary-lb ctl rollout` writes through.
//!
//! Keys (names in `keys.rs`, contract in docs/redis-schema.md):
//! - `ns:rollout` (hash): `json` = the [`RolloutState`] as JSON, the truth; and readable copies
//!   `id`, `phase`, `weight`, `step` (`i/n`, 1-based), `version`, `updated_ms` for `redis-cli`.
//!   The compare-and-set of every write checks `id` and `version`.
//! - `ns:rollout:window:<id>:<n>` (hash): window `n` of rollout `id`, summed over the replicas
//!   with HINCRBY: `production:requests`, `production:errors`, `production:b<i>` (bucket `i` of
//!   [`LATENCY_BUCKETS_S`], `+Inf` last), `production:capped`, `production:client_max_errors`,
//!   `production:client_max_slow` (the per-client figures, `window.rs`), the same for
//!   `canary`, `reporters` (how many replicas reported) and `reporter:<id>` (one per replica,
//!   so a report retried after a timeout is not counted twice). Expires [`WINDOW_TTL_MS`] after the last report.
//! - `ns:rollout:leader` (string, with a TTL): the replica id holding the leader lease. Taken
//!   with `SET NX PX` when absent, renewed (`PEXPIRE`) only by its holder, in one script.
//! - `ns:rollout:epoch` (integer): `INCR`ed each time the lease is taken (also by the same
//!   replica after its lease lapsed), so a leader that lost its lease holds a stale epoch.
//! - `ns:rollout:history` (stream, `XADD MAXLEN ~ 1000`): field `entry` = a [`HistoryEntry`] as
//!   JSON, one per judged window or command.
//!
//! Every write of the state is ONE Lua script ([`APPLY_LUA`]): it checks the store's `ns:meta`
//! marker (a rollout never creates it: on a lost store that would make every proxy follow a
//! store without servers), the lease (holder and epoch, for the leader's judged transitions) and
//! the stored state's id and version, then writes
//! the state, the routing `canary_percent` exactly as `ctl canary set` does (bumping the
//! `ns:meta` marker), the history entry, and publishes `routing` (so every proxy's discovery
//! applies the weight at once) and `rollout` on `ns:events`. A leader that lost its lease, or
//! one that judged a window another leader already judged, writes nothing: a failover never
//! judges a window twice or skips a step.
//!
//! Every call is bounded by a timeout and reconnects after an error, so a hung or lost Redis
//! costs the engine one failed round, never a blocked task. Bad data (unreadable JSON, a count
//! that is not a number) is logged, counted ([`RolloutStore::bad_data`]) and skipped.
//!
//! The state and the history entries are versioned JSON (`codec.rs`): fields a newer release
//! added are ignored; a state of a newer major is an error, not "no rollout", so the engine
//! keeps the weight in force, judges nothing and leaves the lease to a replica that reads it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use log::warn;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::codec::{self, DecodeError, StoredKind};
use super::keys::Keys;
use super::resp::{pairs, scalar};
use super::{now_ms, Store, ROUTING_EVENT};
use crate::config::schema::DiscoveryConfig;
use crate::model::{PoolKind, LATENCY_BUCKETS_S};
use crate::rollout::{CoordError, Coordinator, HistoryEntry, RolloutState, WindowCounts};

/// A window's report hash expires this long after the last replica reported to it; the leader
/// collects it within a grace of its end, so this only bounds what a dead rollout leaves.
pub const WINDOW_TTL_MS: u64 = 15 * 60 * 1000;
/// The history stream keeps about this many entries (`XADD MAXLEN ~`).
pub const HISTORY_MAXLEN: u64 = 1000;
/// The default bound of every Redis call of a [`RolloutStore`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The `ns:events` message of a rollout change (besides `routing` for the weight).
pub const ROLLOUT_EVENT: &str = "rollout";
/// The most history entries one call reads.
const HISTORY_READ_MAX: usize = 1000;

/// KEYS: window hash. ARGV: reporter field, ttl ms, then field, increment pairs.
/// Returns 1 when counted, 0 when this reporter had already reported this window.
const REPORT_LUA: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], 1) == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[1], 'reporters', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: leader, epoch. ARGV: replica, ttl ms.
/// Returns the epoch while `replica` holds the lease (renewed), a new epoch when it just took
/// it, 0 when another replica holds it.
const LEAD_LUA: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  local epoch = tonumber(redis.call('GET', KEYS[2]))
  if epoch then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return epoch
  end
  redis.call('DEL', KEYS[1])
  holder = false
end
if not holder then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return redis.call('INCR', KEYS[2])
  end
end
return 0
"#;

/// KEYS: state, leader, epoch, routing, events, meta, history.
/// ARGV: 1 check lease (`1`/`0`), 2 replica, 3 epoch, 4 expected id (`""`: nothing usable
/// stored), 5 expected version, 6 next json, 7 next id, 8 phase, 9 weight, 10 step,
/// 11 version, 12 updated_ms, 13 entry json, 14 now ms, 15 history maxlen, 16 routing event,
/// 17 rollout event.
/// Returns 1 written, 0 fenced by the lease, -1 fenced by the stored state, -2 refused
/// because the store has no marker (lost or never written: see `mod.rs`).
const APPLY_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
if redis.call('HEXISTS', KEYS[6], 'generation') == 0 then return -2 end
if ARGV[1] == '1' then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
  if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
end
if ARGV[4] == '' then
  local raw = redis.call('HGET', KEYS[1], 'json')
  if raw and pcall(cjson.decode, raw) then return -1 end
else
  if redis.call('HGET', KEYS[1], 'id') ~= ARGV[4] then return -1 end
  if redis.call('HGET', KEYS[1], 'version') ~= ARGV[5] then return -1 end
end
redis.call('HSET', KEYS[1], 'json', ARGV[6], 'id', ARGV[7], 'phase', ARGV[8],
  'weight', ARGV[9], 'step', ARGV[10], 'version', ARGV[11], 'updated_ms', ARGV[12])
redis.call('HSET', KEYS[4], 'canary_percent', ARGV[9])
bump_meta(KEYS[6], ARGV[14])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[15], '*', 'entry', ARGV[13])
redis.call('PUBLISH', KEYS[5], ARGV[16])
redis.call('PUBLISH', KEYS[5], ARGV[17])
return 1
"#
);

/// The leader lease as this store last took or renewed it: `apply` checks it in Redis.
#[derive(Debug, Clone)]
struct Held {
    replica: String,
    epoch: u64,
}

/// Where the Redis master is: a URL, or whatever the Sentinels name at each (re)connect.
enum Source {
    Direct(redis::Client),
    Sentinel {
        sentinel: Box<redis::sentinel::Sentinel>,
        master_name: String,
        node: redis::sentinel::SentinelNodeConnectionInfo,
    },
}

/// The connection and where to re-open it.
struct Link {
    source: Source,
    live: Option<MultiplexedConnection>,
}

/// The [`Coordinator`] over Redis (see the module documentation). Cheap to share behind an
/// `Arc`; holds one multiplexed connection, re-opened after an error.
pub struct RolloutStore {
    keys: Keys,
    link: tokio::sync::Mutex<Link>,
    timeout: Duration,
    /// This store's name in window reports (`reporter:<id>`), so a retried report counts once.
    reporter: String,
    held: StdMutex<Option<Held>>,
    bad_data: AtomicU64,
}

impl RolloutStore {
    /// The rollout of `store`'s namespace in the Redis `client` points at.
    pub fn new(store: Store, client: redis::Client) -> RolloutStore {
        RolloutStore::with_source(store, Source::Direct(client))
    }

    /// The rollout of the store the proxies' discovery follows: `discovery.namespace` at
    /// `discovery.url`, or at the master the `discovery.sentinel` nodes name (asked again at
    /// every reconnect, so a failover is followed).
    pub fn for_discovery(config: &DiscoveryConfig) -> Result<RolloutStore, redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        let source = match &config.sentinel {
            None => Source::Direct(client),
            Some(s) => Source::Sentinel {
                sentinel: Box::new(redis::sentinel::Sentinel::build(s.nodes.clone())?),
                master_name: s.master_name.clone(),
                node: redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(
                        client.get_connection_info().redis_settings().clone(),
                    ),
            },
        };
        Ok(RolloutStore::with_source(
            Store::new(&config.namespace),
            source,
        ))
    }

    fn with_source(store: Store, source: Source) -> RolloutStore {
        RolloutStore {
            keys: store.keys,
            link: tokio::sync::Mutex::new(Link { source, live: None }),
            timeout: DEFAULT_TIMEOUT,
            reporter: uuid::Uuid::new_v4().simple().to_string(),
            held: StdMutex::new(None),
            bad_data: AtomicU64::new(0),
        }
    }

    /// [`RolloutStore::new`] from a `redis://` or `rediss://` URL (nothing is connected yet).
    pub fn open(store: Store, url: &str) -> Result<RolloutStore, redis::RedisError> {
        Ok(RolloutStore::new(store, redis::Client::open(url)?))
    }

    /// Bound every Redis call (connecting included) by `timeout` instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> RolloutStore {
        self.timeout = timeout;
        self
    }

    /// Report windows under this name (default: a random one per store). Give each replica
    /// its own: reports are counted once per name and window.
    pub fn with_reporter(mut self, reporter: &str) -> RolloutStore {
        self.reporter = reporter.to_string();
        self
    }

    /// Entries found unusable in Redis so far (logged and skipped): for a metric.
    pub fn bad_data(&self) -> u64 {
        self.bad_data.load(Ordering::Relaxed)
    }

    fn skip_bad(&self, what: &str, key: &str, detail: impl std::fmt::Display) {
        self.bad_data.fetch_add(1, Ordering::Relaxed);
        warn!("rollout: skipped {what} in {key}: {detail}");
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut link = self.link.lock().await;
        if let Some(conn) = link.live.as_ref() {
            return Ok(conn.clone());
        }
        let client = match &mut link.source {
            Source::Direct(client) => client.clone(),
            Source::Sentinel {
                sentinel,
                master_name,
                node,
            } => sentinel.async_master_for(master_name, Some(node)).await?,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        link.live = Some(conn.clone());
        Ok(conn)
    }

    /// Run `f` on the connection within the timeout; after any failure the connection is
    /// dropped, so the next call reconnects.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, CoordError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            f(conn).await
        })
        .await;
        let error = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{what}: redis: {e}"),
            Err(_) => format!(
                "{what}: no answer from redis within {}",
                humantime::format_duration(self.timeout)
            ),
        };
        self.link.lock().await.live = None;
        Err(CoordError(error))
    }

    /// One write of the state: `lease` is `Some` for the leader's judged transitions.
    async fn write(
        &self,
        lease: Option<Held>,
        expected: Option<&RolloutState>,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError> {
        if let Some(expected) = expected {
            if next.version != expected.version + 1 {
                return Err(CoordError(format!(
                    "next version {} does not follow the expected {}",
                    next.version, expected.version
                )));
            }
        }
        let json = encode_state(next)?;
        let entry_json = encode_entry(entry)?;
        let (replica, epoch) = lease
            .as_ref()
            .map_or((String::new(), 0), |h| (h.replica.clone(), h.epoch));
        let script = redis::Script::new(APPLY_LUA);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.rollout())
            .key(self.keys.rollout_leader())
            .key(self.keys.rollout_epoch())
            .key(self.keys.routing())
            .key(self.keys.events())
            .key(self.keys.meta())
            .key(self.keys.rollout_history())
            .arg(if lease.is_some() { "1" } else { "0" })
            .arg(replica)
            .arg(epoch)
            .arg(expected.map_or("", |e| e.id.as_str()))
            .arg(expected.map_or(0, |e| e.version))
            .arg(json)
            .arg(&next.id)
            .arg(next.phase.as_str())
            .arg(next.weight.as_f64().to_string())
            .arg(format!("{}/{}", next.step + 1, next.settings.steps.len()))
            .arg(next.version)
            .arg(next.updated_ms)
            .arg(entry_json)
            .arg(now_ms())
            .arg(HISTORY_MAXLEN)
            .arg(ROUTING_EVENT)
            .arg(ROLLOUT_EVENT);
        let written: i64 = self
            .call("write the rollout", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        match written {
            1 => Ok(true),
            -2 => Err(CoordError(format!(
                "{} is missing (a new store, or Redis lost its data): a rollout would make \
                 every proxy follow a store without its servers; register the servers again \
                 first. Nothing written",
                self.keys.meta()
            ))),
            0 => {
                log::info!("rollout: write fenced: the leader lease moved on (epoch {epoch})");
                Ok(false)
            }
            _ => {
                log::info!("rollout: write fenced: the stored rollout changed meanwhile");
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl Coordinator for RolloutStore {
    async fn state(&self) -> Result<Option<RolloutState>, CoordError> {
        let key = self.keys.rollout();
        let raw: Option<Vec<u8>> = self
            .call("read the rollout", |mut conn| {
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg("json")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        match decode_state(&raw) {
            Ok(state) => Ok(Some(state)),
            // Not "no rollout": that would route by the file's percent and let a `start`
            // replace a rollout this release cannot read.
            Err(e @ DecodeError::Newer { .. }) => {
                self.bad_data.fetch_add(1, Ordering::Relaxed);
                Err(CoordError(format!("the rollout in {key} is {e}")))
            }
            Err(e) => {
                self.skip_bad("the rollout state", &key, e);
                Ok(None)
            }
        }
    }

    async fn report(&self, id: &str, window: u64, counts: &WindowCounts) -> Result<(), CoordError> {
        let key = self.keys.rollout_window(id, window);
        let fields = encode_counts(counts);
        let reporter = format!("reporter:{}", self.reporter);
        self.call("report a window", |mut conn| async move {
            let script = redis::Script::new(REPORT_LUA);
            let mut invocation = script.prepare_invoke();
            invocation.key(key).arg(reporter).arg(WINDOW_TTL_MS);
            for (field, value) in fields {
                invocation.arg(field).arg(value);
            }
            let _: i64 = invocation.invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn collect(&self, id: &str, window: u64) -> Result<(WindowCounts, u32), CoordError> {
        let key = self.keys.rollout_window(id, window);
        let raw: Value = self
            .call("collect a window", |mut conn| {
                let key = key.clone();
                async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
            })
            .await?;
        let decoded = decode_counts(&pairs(&raw));
        for problem in &decoded.problems {
            self.skip_bad("a window count", &key, problem);
        }
        Ok((decoded.counts, decoded.reporters))
    }

    async fn lead(&self, replica: &str, ttl: Duration) -> Result<Option<u64>, CoordError> {
        let (leader, epoch) = (self.keys.rollout_leader(), self.keys.rollout_epoch());
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let owned = replica.to_string();
        let got: i64 = self
            .call("take the leader lease", |mut conn| async move {
                redis::Script::new(LEAD_LUA)
                    .key(leader)
                    .key(epoch)
                    .arg(owned)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let held = (got > 0).then(|| Held {
            replica: replica.to_string(),
            epoch: got as u64,
        });
        let epoch = held.as_ref().map(|h| h.epoch);
        if let Ok(mut h) = self.held.lock() {
            *h = held;
        }
        Ok(epoch)
    }

    async fn apply(
        &self,
        epoch: u64,
        expected: &RolloutState,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError> {
        let held = self.held.lock().ok().and_then(|h| h.clone());
        let Some(held) = held.filter(|h| h.epoch == epoch) else {
            log::info!("rollout: apply with epoch {epoch}, which this replica does not hold");
            return Ok(false);
        };
        self.write(Some(held), Some(expected), next, entry).await
    }

    async fn command(
        &self,
        expected: Option<&RolloutState>,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError> {
        self.write(None, expected, next, entry).await
    }

    async fn history(&self, n: usize) -> Result<Vec<HistoryEntry>, CoordError> {
        let key = self.keys.rollout_history();
        let count = n.min(HISTORY_READ_MAX);
        if count == 0 {
            return Ok(Vec::new());
        }
        let raw: Value = self
            .call("read the history", |mut conn| {
                let key = key.clone();
                async move {
                    redis::cmd("XREVRANGE")
                        .arg(key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(count)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut out = Vec::new();
        for (stream_id, fields) in stream_entries(&raw) {
            let Some((_, json)) = fields.iter().find(|(f, _)| f == "entry") else {
                self.skip_bad(
                    "a history entry",
                    &key,
                    format!("{stream_id} has no `entry`"),
                );
                continue;
            };
            match codec::decode::<HistoryEntry>(StoredKind::History, json.as_bytes()) {
                Ok(e) => out.push(e.value),
                Err(e) => self.skip_bad("a history entry", &key, format!("{stream_id}: {e}")),
            }
        }
        out.reverse();
        Ok(out)
    }

    async fn leader(&self) -> Result<Option<String>, CoordError> {
        let key = self.keys.rollout_leader();
        self.call("read the leader", |mut conn| async move {
            redis::cmd("GET").arg(key).query_async(&mut conn).await
        })
        .await
    }
}

fn encode_state(state: &RolloutState) -> Result<String, CoordError> {
    codec::encode(StoredKind::Rollout, state)
        .map_err(|e| CoordError(format!("encode the rollout state: {e}")))
}

/// The stored state (unknown fields of the same major ignored); an error names what does not
/// parse, or the newer major.
pub(crate) fn decode_state(raw: &[u8]) -> Result<RolloutState, DecodeError> {
    codec::decode(StoredKind::Rollout, raw).map(|d| d.value)
}

/// JSON cannot hold NaN or infinity (serde_json writes `null`, which would not read back):
/// such numbers are left out of the stored entry.
fn encode_entry(entry: &HistoryEntry) -> Result<String, CoordError> {
    let mut entry = entry.clone();
    entry.numbers.retain(|(_, v)| v.is_finite());
    codec::encode(StoredKind::History, &entry)
        .map_err(|e| CoordError(format!("encode a history entry: {e}")))
}

/// The increments of a report: only the non-zero counts, as `(field, value)`.
fn encode_counts(counts: &WindowCounts) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for pool in PoolKind::ALL {
        let w = &counts[pool];
        let mut push = |name: String, v: u64| {
            if v > 0 {
                out.push((name, v.min(i64::MAX as u64)));
            }
        };
        push(format!("{pool}:requests"), w.requests);
        push(format!("{pool}:errors"), w.errors);
        // The per-client figures sum over replicas like the counts (HINCRBY), which is what
        // the judgement takes out ("the busiest client of each replica, summed").
        push(format!("{pool}:capped"), w.capped);
        push(format!("{pool}:client_max_errors"), w.client_max_errors);
        push(format!("{pool}:client_max_slow"), w.client_max_slow);
        for (i, b) in w.buckets.iter().enumerate().take(bucket_count()) {
            push(format!("{pool}:b{i}"), *b);
        }
    }
    out
}

/// Per-bucket counts kept per pool: the bounds plus `+Inf`.
fn bucket_count() -> usize {
    LATENCY_BUCKETS_S.len() + 1
}

#[derive(Debug, Default)]
struct DecodedCounts {
    counts: WindowCounts,
    reporters: u32,
    problems: Vec<String>,
}

/// A window hash's fields as counts; unknown fields and bad numbers are listed, not counted.
fn decode_counts(fields: &[(String, String)]) -> DecodedCounts {
    let mut out = DecodedCounts::default();
    for (field, value) in fields {
        if field.starts_with("reporter:") {
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            out.problems
                .push(format!("`{field}` = `{value}` is not a count"));
            continue;
        };
        if field == "reporters" {
            out.reporters = u32::try_from(n).unwrap_or(u32::MAX);
            continue;
        }
        let parsed = field.split_once(':').and_then(|(pool, what)| {
            let pool = PoolKind::parse(pool).ok()?;
            Some((pool, what))
        });
        let window = parsed.map(|(pool, what)| (&mut out.counts[pool], what));
        match window {
            Some((w, "requests")) => w.requests = n,
            Some((w, "errors")) => w.errors = n,
            Some((w, "capped")) => w.capped = n,
            Some((w, "client_max_errors")) => w.client_max_errors = n,
            Some((w, "client_max_slow")) => w.client_max_slow = n,
            Some((w, what)) => match what
                .strip_prefix('b')
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|i| *i < bucket_count())
            {
                Some(i) => {
                    if w.buckets.len() < bucket_count() {
                        w.buckets.resize(bucket_count(), 0);
                    }
                    w.buckets[i] = n;
                }
                None => out.problems.push(format!("unknown field `{field}`")),
            },
            None => out.problems.push(format!("unknown field `{field}`")),
        }
    }
    out
}

/// The entries of an `XRANGE`/`XREVRANGE` reply: (stream id, field/value pairs).
fn stream_entries(v: &Value) -> Vec<(String, Vec<(String, String)>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(parts) => match parts.as_slice() {
                [id, fields] => {
                    let id = String::from_utf8_lossy(&scalar(id)?).into_owned();
                    Some((id, pairs(fields)))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Key names for the integration tests (see the note on [`Store`]'s).
#[doc(hidden)]
impl Store {
    pub fn rollout_key(&self) -> String {
        self.keys.rollout()
    }

    pub fn rollout_window_key(&self, id: &str, window: u64) -> String {
        self.keys.rollout_window(id, window)
    }

    pub fn rollout_leader_key(&self) -> String {
        self.keys.rollout_leader()
    }

    pub fn rollout_epoch_key(&self) -> String {
        self.keys.rollout_epoch()
    }

    pub fn rollout_history_key(&self) -> String {
        self.keys.rollout_history()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::RolloutConfig;
    use crate::model::Percent;
    use crate::rollout::{Phase, PoolWindow};

    fn window(requests: u64, errors: u64, bucket: usize) -> PoolWindow {
        let mut w = PoolWindow {
            requests,
            errors,
            ..PoolWindow::default()
        };
        w.buckets[bucket] = requests;
        w
    }

    #[test]
    fn counts_round_trip_through_their_fields() {
        let mut counts = WindowCounts {
            production: window(900, 3, 4),
            canary: window(100, 7, bucket_count() - 1),
        };
        counts.canary.capped = 40;
        counts.canary.client_max_errors = 1;
        counts.canary.client_max_slow = 2;
        let fields: Vec<(String, String)> = encode_counts(&counts)
            .into_iter()
            .map(|(f, v)| (f, v.to_string()))
            .collect();
        assert!(fields.contains(&("canary:b14".to_string(), "100".to_string())));
        assert!(
            !fields.iter().any(|(_, v)| v == "0"),
            "zero counts are not sent: {fields:?}"
        );
        let mut with_meta = fields.clone();
        with_meta.push(("reporters".into(), "2".into()));
        with_meta.push(("reporter:abc".into(), "1".into()));
        let decoded = decode_counts(&with_meta);
        assert_eq!(decoded.counts, counts);
        assert_eq!(decoded.reporters, 2);
        assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
    }

    #[test]
    fn bad_count_fields_are_listed_and_skipped() {
        let fields: Vec<(String, String)> = [
            ("canary:requests", "12"),
            ("canary:errors", "lots"),
            ("canary:b999999999", "5"),
            ("canary:b-1", "5"),
            ("staging:requests", "5"),
            ("production:latency", "5"),
            ("nonsense", "5"),
            ("reporters", "-1"),
        ]
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect();
        let decoded = decode_counts(&fields);
        assert_eq!(decoded.counts.canary.requests, 12);
        assert_eq!(decoded.counts.canary.errors, 0);
        assert_eq!(decoded.counts.canary.buckets.len(), bucket_count());
        assert_eq!(decoded.reporters, 0);
        assert_eq!(decoded.problems.len(), 7, "{:?}", decoded.problems);
        assert!(decoded.problems.iter().any(|p| p.contains("lots")));
    }

    #[test]
    fn state_and_entry_round_trip_as_json() {
        let state = RolloutState::start(
            "r-1".into(),
            RolloutConfig::default(),
            "salt-1".into(),
            1_000,
            None,
        )
        .expect("start");
        let json = encode_state(&state).expect("encode");
        assert_eq!(decode_state(json.as_bytes()).expect("decode"), state);
        assert!(decode_state(b"{\"id\": 1}").is_err());
        assert!(decode_state(b"\xff\xfe").is_err());

        let entry = HistoryEntry {
            rollout_id: "r-1".into(),
            window: Some(3),
            at_ms: 5,
            verdict: "fail".into(),
            reasons: vec!["canary error rate 4.1 % > 1 %".into()],
            numbers: vec![
                ("canary_error_percent".into(), 4.1),
                ("z".into(), f64::INFINITY),
                ("ratio".into(), f64::NAN),
            ],
            phase: Phase::Progressing,
            step: 1,
            weight: Percent::from_basis_points(1000),
        };
        let json = encode_entry(&entry).expect("encode");
        assert!(json.starts_with(r#"{"schema":1,"#), "{json}");
        let back: HistoryEntry = codec::decode(StoredKind::History, json.as_bytes())
            .expect("decode")
            .value;
        assert_eq!(back.numbers, vec![("canary_error_percent".into(), 4.1)]);
        assert_eq!(back.reasons, entry.reasons);
    }

    #[test]
    fn a_state_a_newer_release_wrote_is_read_and_a_newer_major_is_refused() {
        let state = RolloutState::start(
            "r-1".into(),
            RolloutConfig::default(),
            "salt-1".into(),
            1_000,
            None,
        )
        .expect("start");
        let mut v: serde_json::Value =
            serde_json::from_str(&encode_state(&state).expect("encode")).expect("json");
        // What a next release might add: fields at the top, in `settings` (whose config type
        // refuses unknown keys in the file), deeper in it, and in the step counts.
        v["leader_note"] = serde_json::json!({"by": "next"});
        v["settings"]["cohort_size"] = serde_json::json!(0.99);
        v["settings"]["latency"]["p999_max"] = serde_json::json!("900ms");
        v["step_counts"]["canary"]["slow"] = serde_json::json!(3);
        let raw = serde_json::to_vec(&v).expect("json");
        assert_eq!(decode_state(&raw).expect("read leniently"), state);

        v["schema"] = serde_json::json!(2);
        let raw = serde_json::to_vec(&v).expect("json");
        assert_eq!(decode_state(&raw), Err(DecodeError::Newer { found: 2 }));
    }

    #[test]
    fn stream_replies_are_read_in_both_shapes() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("2-0"),
                Value::Array(vec![bulk("entry"), bulk("{}")]),
            ]),
            Value::Array(vec![
                bulk("1-0"),
                Value::Map(vec![(bulk("entry"), bulk("x"))]),
            ]),
            bulk("garbage"),
        ]);
        let entries = stream_entries(&reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "2-0");
        assert_eq!(entries[1].1, vec![("entry".to_string(), "x".to_string())]);
    }
}
