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
//!
//! The files: this one the [`RolloutStore`] coordinator, `scripts.rs` its Lua, `link.rs` the
//! connection (direct or through Sentinel, reconnected after an error), `encoding.rs` what it
//! writes in Redis and reads back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use log::warn;
use redis::Value;

use super::codec::{self, DecodeError, StoredKind};
use super::keys::Keys;
use super::layout::{guard_keys, script};
use super::resp::pairs;
use super::{now_ms, Endpoint, Store, ROUTING_EVENT};
use crate::config::schema::DiscoveryConfig;
use crate::rollout::{CoordError, Coordinator, HistoryEntry, RolloutState, WindowCounts};

mod encoding;
mod link;
mod scripts;
#[cfg(test)]
mod tests;

pub(crate) use encoding::decode_state;
use encoding::{decode_counts, encode_counts, encode_entry, encode_state, stream_entries};
use link::Link;
use scripts::{APPLY_LUA, LEAD_LUA, REPORT_LUA};

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

/// The leader lease as this store last took or renewed it: `apply` checks it in Redis.
#[derive(Debug, Clone)]
struct Held {
    replica: String,
    epoch: u64,
    /// A replica acknowledged the lease and every judged write made under it so far
    /// (`link.rs`); a leader judges only while this holds.
    replicated: bool,
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
        RolloutStore::with_endpoint(store, Endpoint::direct(client))
    }

    /// The rollout of the store the proxies' discovery follows: `discovery.namespace` at
    /// `discovery.url`, at the master the `discovery.sentinel` nodes name (asked again at
    /// every reconnect, so a failover is followed), or on the Redis Cluster whose seeds
    /// `discovery.url` lists (`discovery.cluster`).
    pub fn for_discovery(config: &DiscoveryConfig) -> Result<RolloutStore, redis::RedisError> {
        let endpoint = Endpoint::open(
            config.url.as_slice(),
            config.cluster,
            config.sentinel.as_ref(),
        )?;
        Ok(RolloutStore::with_endpoint(
            Store::new(&config.namespace),
            endpoint,
        ))
    }

    /// The rollout of `store`'s namespace wherever `endpoint` points (`ctl` on a cluster).
    pub fn with_endpoint(store: Store, endpoint: Endpoint) -> RolloutStore {
        RolloutStore {
            keys: store.keys,
            link: tokio::sync::Mutex::new(Link {
                endpoint,
                live: None,
                replicas: 0,
            }),
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
        let base = &self.keys;
        let checks_lease = if lease.is_some() { "1" } else { "0" };
        let written: i64 = self
            .call("write the rollout", |mut conn| async move {
                let conn = &mut conn;
                layout_write!(conn, base, |k| {
                    let lua = script(k, APPLY_LUA);
                    let mut invocation = lua.prepare_invoke();
                    invocation
                        .key(k.rollout())
                        .key(k.rollout_leader())
                        .key(k.rollout_epoch())
                        .key(k.routing())
                        .key(k.events())
                        .key(k.meta())
                        .key(k.rollout_history())
                        .key(guard_keys(k))
                        .arg(checks_lease)
                        .arg(&replica)
                        .arg(epoch)
                        .arg(expected.map_or("", |e| e.id.as_str()))
                        .arg(expected.map_or(0, |e| e.version))
                        .arg(&json)
                        .arg(&next.id)
                        .arg(next.phase.as_str())
                        .arg(next.weight.as_f64().to_string())
                        .arg(format!("{}/{}", next.step + 1, next.settings.steps.len()))
                        .arg(next.version)
                        .arg(next.updated_ms)
                        .arg(&entry_json)
                        .arg(now_ms())
                        .arg(HISTORY_MAXLEN)
                        .arg(ROUTING_EVENT)
                        .arg(ROLLOUT_EVENT);
                    invocation.invoke_async::<i64>(conn).await
                })
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
        let base = &self.keys;
        let raw: Option<Vec<u8>> = self
            .call("read the rollout", |mut conn| async move {
                let conn = &mut conn;
                layout_read!(conn, base, |k| {
                    redis::cmd("HGET")
                        .arg(k.rollout())
                        .arg("json")
                        .query_async::<Option<Vec<u8>>>(conn)
                        .await
                })
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
        let base = &self.keys;
        let fields = encode_counts(counts);
        let reporter = format!("reporter:{}", self.reporter);
        self.call("report a window", |mut conn| async move {
            let conn = &mut conn;
            layout_write!(conn, base, |k| {
                let lua = script(k, REPORT_LUA);
                let mut invocation = lua.prepare_invoke();
                invocation
                    .key(k.rollout_window(id, window))
                    .key(guard_keys(k))
                    .arg(&reporter)
                    .arg(WINDOW_TTL_MS);
                for (field, value) in &fields {
                    invocation.arg(field).arg(value);
                }
                let _: i64 = invocation.invoke_async(conn).await?;
                Ok(())
            })
        })
        .await
    }

    async fn collect(&self, id: &str, window: u64) -> Result<(WindowCounts, u32), CoordError> {
        let key = self.keys.rollout_window(id, window);
        let base = &self.keys;
        let raw: Value = self
            .call("collect a window", |mut conn| async move {
                let conn = &mut conn;
                layout_read!(conn, base, |k| {
                    redis::cmd("HGETALL")
                        .arg(k.rollout_window(id, window))
                        .query_async::<Value>(conn)
                        .await
                })
            })
            .await?;
        let decoded = decode_counts(&pairs(&raw));
        for problem in &decoded.problems {
            self.skip_bad("a window count", &key, problem);
        }
        Ok((decoded.counts, decoded.reporters))
    }

    async fn lead(&self, replica: &str, ttl: Duration) -> Result<Option<u64>, CoordError> {
        let base = &self.keys;
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let got: i64 = self
            .call("take the leader lease", |mut conn| async move {
                let conn = &mut conn;
                layout_write!(conn, base, |k| {
                    script(k, LEAD_LUA)
                        .key(k.rollout_leader())
                        .key(k.rollout_epoch())
                        .key(guard_keys(k))
                        .arg(replica)
                        .arg(ttl_ms)
                        .invoke_async::<i64>(conn)
                        .await
                })
            })
            .await?;
        let previous = self.held.lock().ok().and_then(|h| h.clone());
        let mut held = (got > 0).then(|| Held {
            replica: replica.to_string(),
            epoch: got as u64,
            replicated: previous
                .as_ref()
                .is_some_and(|p| p.replicated && p.epoch == got as u64 && p.replica == replica),
        });
        if let Some(h) = held.as_mut().filter(|h| !h.replicated) {
            h.replicated = self.replicated("replicate the leader lease").await?;
            if !h.replicated {
                warn!(
                    "rollout: lease epoch {} not yet acknowledged by a replica of {}: not \
                     judging until one has it (a failover now could hand it to another replica)",
                    h.epoch,
                    self.keys.rollout()
                );
            }
        }
        let epoch = held.as_ref().filter(|h| h.replicated).map(|h| h.epoch);
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
        let Some(held) = held.filter(|h| h.epoch == epoch && h.replicated) else {
            log::info!("rollout: apply with epoch {epoch}, which this replica does not hold");
            return Ok(false);
        };
        let written = self.write(Some(held), Some(expected), next, entry).await?;
        // Not an error when no replica has it yet: it is written. The next lead waits again
        // (for this write too) before anything is judged on top of it.
        let replicated = !written
            || self
                .replicated("replicate the judged write")
                .await
                .unwrap_or(false);
        if !replicated {
            warn!(
                "rollout: the judged write of {} v{} is not yet on a replica: judging again \
                 only once one has it",
                next.id, next.version
            );
            if let Ok(mut h) = self.held.lock() {
                if let Some(h) = h.as_mut() {
                    h.replicated = false;
                }
            }
        }
        Ok(written)
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
        let base = &self.keys;
        let raw: Value = self
            .call("read the history", |mut conn| async move {
                let conn = &mut conn;
                layout_read!(conn, base, |k| {
                    redis::cmd("XREVRANGE")
                        .arg(k.rollout_history())
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(count)
                        .query_async::<Value>(conn)
                        .await
                })
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
        let base = &self.keys;
        self.call("read the leader", |mut conn| async move {
            let conn = &mut conn;
            layout_read!(conn, base, |k| {
                redis::cmd("GET")
                    .arg(k.rollout_leader())
                    .query_async::<Option<String>>(conn)
                    .await
            })
        })
        .await
    }
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
