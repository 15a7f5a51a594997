//! The Redis schema shared by the proxies, `canary-lb ctl` and deploy pipelines.
//!
//! Redis is the control plane: every proxy replica reads the same keys, so a deploy job changes
//! one place and all replicas follow. This module is the only code that knows the key layout:
//! the key names are private (`keys.rs`), and everything else goes through a [`Store`] handle.
//! `docs/redis-schema.md` is the same contract for people with `redis-cli`.
//!
//! Files: `mod.rs` the [`Store`] handle and the public types; `keys.rs` the key names;
//! `resp.rs` RESP2/RESP3 reply helpers; `snapshot.rs` reading and parsing what the proxies
//! follow (and `ctl status`); `commands.rs` the writes and their Lua scripts; `reports.rs` what
//! the proxies report back (serving, in flight); `rollout.rs` the rollout shared by the replicas
//! ([`RolloutStore`], the `ns:rollout*` keys); `codec.rs` the schema version every stored JSON
//! value carries and the lenient reading of it; `state_file.rs` the file provider's rollout
//! state file, in the same versioned JSON; `connection.rs` where the store is (one Redis,
//! Sentinel, or a Redis Cluster's seeds) and the one [`Connection`] type every caller uses.
//!
//! `layout.rs` which key layout a store is in (every call looks) and following a move;
//! `migrate.rs` the move (`ctl migrate-keys`).
//!
//! With `ns` the namespace (default `canary-lb`) and `pool` one of `production`, `canary`; each
//! name starts with `{ns}`, the namespace as a Redis Cluster hash tag (one slot per namespace,
//! so every script and MULTI/EXEC here stays in one slot). A store with only the legacy marker
//! `ns:meta` (a release before the tagged layout wrote it) is read and written under the same
//! names without braces until `ctl migrate-keys` (see `layout.rs`):
//!
//! | key               | type       | content                                                      |
//! |-------------------|------------|--------------------------------------------------------------|
//! | `{ns}:servers:pool` | sorted set | member `host:port`; score = lease expiry in Unix ms, or `+inf` for no lease |
//! | `{ns}:weights:pool` | hash       | `host:port` -> integer weight 1..=1000 (missing means 1)     |
//! | `{ns}:draining:pool`| set        | `host:port` that get no new requests                         |
//! | `{ns}:flags`      | hash       | feature flags: flag name -> JSON `{"enabled","percent","salt","allow","deny"}` (`flags.rs`); replace the file's `flags.items` while any field exists |
//! | `{ns}:routing`    | hash       | `canary_percent` (0..=100, decimals ok) and `salt`; override the file config while present |
//! | `{ns}:serving:pool` | sorted set | written by proxies: `host:port` in rotation; score = when a proxy last saw it so, in Unix ms |
//! | `{ns}:meta`       | hash       | the store's marker: `generation` (bumped by every change), `updated_ms`, `created_ms` |
//! | `{ns}:events`     | channel    | every writer publishes after a change: the pool name, `routing` or `flags` |
//! | `{ns}:rollout`    | hash       | the rollout: `json` (the state) and readable `id`, `phase`, `weight`, `step`, `version`, `updated_ms` |
//! | `{ns}:rollout:window:<id>:<n>` | hash | window `n` of rollout `id`, summed over replicas; expires |
//! | `{ns}:rollout:leader` | string   | the replica holding the leader lease (`SET NX PX`)           |
//! | `{ns}:rollout:epoch`| integer  | the fencing epoch, `INCR`ed each time the lease is taken     |
//! | `{ns}:rollout:history` | stream  | verdicts and commands (`XADD MAXLEN ~ 1000`), field `entry` = JSON |
//! | `{ns}:proxy:<id>` | hash       | written by each proxy every second: `pool/host:port` -> requests in flight on that server through this proxy, and `_layout` = `tagged` (`ctl migrate-keys` looks for it); expires [`PROXY_REPORT_TTL_MS`] after the last report |
//!
//! Why this shape:
//! - A lease is the score itself, so a server whose heartbeat died drops out without anybody
//!   deleting it, and reading "who is live" needs no per-server keys (one round trip whatever
//!   the number of servers). Expiry is compared with the reader's clock, so hosts need NTP.
//!   Members whose lease lapsed more than [`LEASE_PURGE_AFTER_MS`] ago are deleted by the next
//!   [`Store::register`] in that pool; until then they are simply not served.
//! - Bad data written by hand (weight `0`, address `nowhere`, percent `150`) must not take the
//!   fleet down: [`Store::read_snapshot`] skips the bad entry, records a [`Problem`] and returns the rest.
//! - Pub/sub is only a hint to re-read: messages are lost while a proxy reconnects, and a plain
//!   `redis-cli` write publishes nothing, so proxies also resync on a timer.
//! - Writers are atomic (Lua scripts or MULTI/EXEC) and validate before writing, so a refused
//!   command writes nothing. A lease renewal that keeps a live server live is not a change to the
//!   served set and does not publish (heartbeats would otherwise flood every proxy with re-reads).
//! - `ns:meta` tells a lost store from an empty one. Redis restarted without persistence (or
//!   failed over to an empty replica) answers "no servers" exactly like a pool emptied on
//!   purpose; following it would take the whole fleet to 503. Every write that changes the store
//!   bumps the marker in the same script or MULTI, and a snapshot without it
//!   ([`Snapshot::marker`] `None`) is "lost": the proxies keep what they have. A removal that
//!   removes nothing never creates it, so a retried `deregister` on a wiped store does not turn
//!   "lost" into "deliberately empty"; a registration (a heartbeat renewal included) always
//!   does. The proxies' own reports (`ns:serving:*`, `ns:proxy:*`) never touch it.
//! - `ns:serving:pool` is the proxies' answer to "did my change take effect": each proxy
//!   [`Store::report_serving`] its rotation; a member is "serving" when seen within [`SERVING_FRESH_MS`].

#[macro_use]
mod commands;
pub mod codec;
mod connection;
mod flags;
mod keys;
#[macro_use]
mod layout;
mod migrate;
mod reports;
mod resp;
mod rollout;
mod snapshot;
mod state_file;

pub use connection::{Connection, Endpoint, EndpointError};
pub use flags::{decode_flag, FlagWriteError, StoredFlags, FLAGS_EVENT};
pub use layout::KeyLayout;
pub use migrate::Migration;
pub use rollout::{RolloutStore, ROLLOUT_EVENT, WINDOW_TTL_MS as ROLLOUT_WINDOW_TTL_MS};
pub use state_file::RolloutStateFile;

use std::time::Duration;

use crate::model::{PerPool, Percent, PoolKind, ServerAddr, Weight};

use keys::{Keys, Layout};

/// A server reported by a proxy within this long counts as serving (`ctl status`).
/// Proxies should report at least every `SERVING_FRESH_MS / 3`.
pub const SERVING_FRESH_MS: u64 = 5_000;
/// Serving reports older than this are deleted by the next [`Store::report_serving`], and the whole
/// `ns:serving:pool` key expires this long after the last report (all proxies gone).
pub const SERVING_RETENTION_MS: u64 = 60_000;
/// A member whose lease lapsed longer ago than this is deleted by the next [`Store::register`].
pub const LEASE_PURGE_AFTER_MS: u64 = 60_000;
/// A proxy's `ns:proxy:<id>` report expires this long after it was written (proxy gone).
pub const PROXY_REPORT_TTL_MS: u64 = 5_000;
/// The `ns:routing` fields this module reads.
const FIELD_CANARY_PERCENT: &str = "canary_percent";
const FIELD_SALT: &str = "salt";
/// The `ns:meta` fields: the marker exists when `generation` does.
const FIELD_GENERATION: &str = "generation";
const FIELD_UPDATED_MS: &str = "updated_ms";
const FIELD_CREATED_MS: &str = "created_ms";
/// The `ns:events` message for a routing change (pool changes publish the pool name).
const ROUTING_EVENT: &str = "routing";

/// One server of a pool as stored in Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredServer {
    pub addr: ServerAddr,
    pub weight: Weight,
    /// Lease expiry in Unix ms; `None` means no lease (score `+inf`).
    pub lease_expiry_ms: Option<u64>,
    pub draining: bool,
}

impl StoredServer {
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.lease_expiry_ms.is_none_or(|t| t > now_ms)
    }
}

/// A stored entry that was skipped because it does not parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `"address"`, `"weight"`, `"lease"`, `"canary_percent"` or `"salt"`.
    pub kind: &'static str,
    /// The Redis key holding the bad entry (bounded, usable as a metric label).
    pub key: String,
    /// What is wrong, naming the member and the value.
    pub detail: String,
}

/// The `ns:meta` marker: the store was written by canary-lb (or the documented recipe) and has
/// not lost its data since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// Bumped by every change; 0 when the stored value does not parse (a [`Problem`] of kind
    /// `meta` is recorded, the marker still counts).
    pub generation: u64,
    /// When the last change was written (writer's clock, Unix ms).
    pub updated_ms: Option<u64>,
    /// When the marker was created: a different value means the store was re-initialised.
    pub created_ms: Option<u64>,
}

/// What the proxies serve, as read from Redis at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `None`: the store has no marker, so it lost its data (or was never written); the other
    /// fields then describe an empty store that must not be followed.
    pub marker: Option<Marker>,
    /// Servers whose lease is live at `now_ms`, sorted by address; bad entries skipped.
    pub servers: PerPool<Vec<StoredServer>>,
    /// `None` when absent or invalid (invalid also adds a [`Problem`]).
    pub canary_percent: Option<Percent>,
    pub salt: Option<String>,
    pub problems: Vec<Problem>,
}

impl Snapshot {
    pub fn pool(&self, pool: PoolKind) -> &[StoredServer] {
        &self.servers[pool]
    }

    /// The earliest lease expiry among served servers: re-read by then to drop it on time.
    pub fn next_lease_expiry_ms(&self) -> Option<u64> {
        self.servers
            .production
            .iter()
            .chain(&self.servers.canary)
            .filter_map(|s| s.lease_expiry_ms)
            .min()
    }
}

/// Why a write was refused, or a read found unusable data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{addr} is not registered in the {pool} pool")]
    NotRegistered { pool: PoolKind, addr: ServerAddr },
    #[error("{} holds an invalid {}: {}; the proxies ignore it", .0.key, .0.kind, .0.detail)]
    Invalid(Problem),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// `ctl canary set` while a rollout runs: it owns `canary_percent` until it ends.
    #[error(
        "rollout {id} is {phase}: it sets canary_percent itself, and its weight is what every \
         proxy routes by until it ends. End it first with `ctl rollout abort` (back to 0 %) or \
         `ctl rollout promote` (100 %), then set the percent. Nothing written"
    )]
    RolloutActive { id: String, phase: String },
}

/// How a server is registered in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Absent,
    /// Score `+inf`: stays until deregistered.
    NoLease,
    /// Kept alive by a heartbeat (which re-registers it if it is deregistered).
    Lease {
        expiry_ms: u64,
    },
}

/// Requests in flight on one server, summed over every proxy's current report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InFlight {
    pub requests: i64,
    /// How many proxies have a current report (whether or not they know the server).
    pub proxies: usize,
}

/// A proxy's current `ns:proxy:<id>` report, as `ctl migrate-keys` checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyReport {
    pub proxy_id: String,
    /// The report carries the tagged-layout marker: the proxy's release follows a migration.
    pub follows_tagged_layout: bool,
}

/// One row of `ctl status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStatus {
    pub server: StoredServer,
    /// When a proxy last reported it in rotation (Unix ms).
    pub serving_seen_ms: Option<u64>,
}

/// Everything `ctl status` shows: all valid servers (expired leases included), what the
/// proxies report serving, the routing overrides and any problems.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// `None`: the store has no marker, and the proxies keep their last known servers.
    pub marker: Option<Marker>,
    pub servers: PerPool<Vec<ServerStatus>>,
    pub canary_percent: Option<Percent>,
    pub salt: Option<String>,
    pub problems: Vec<Problem>,
}

impl Status {
    pub fn pool(&self, pool: PoolKind) -> &[ServerStatus] {
        &self.servers[pool]
    }
}

/// The clock the store's timestamps (leases, reports, marker) are written in.
pub use crate::model::now_ms;

/// The Redis schema of one namespace: every read and write of the control plane goes through
/// it, so only this module knows the key names.
///
/// A `Store` holds no connection: each method takes the caller's connection (anything
/// [`redis::aio::ConnectionLike`]). The callers want different connections (the discovery task a
/// multiplexed connection with I/O timeouts plus a pub/sub one, a heartbeat a connection it
/// drops and re-opens after a failure, `ctl` one short-lived connection), so connection policy
/// stays with them and the handle is a cheap clone that cannot be "disconnected".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    keys: Keys,
}

impl Store {
    /// The store under `namespace` (the prefix of every key, e.g. `canary-lb`).
    pub fn new(namespace: &str) -> Store {
        Store {
            keys: Keys::new(namespace),
        }
    }

    pub fn namespace(&self) -> &str {
        self.keys.namespace()
    }

    /// The name of the marker key, for messages to people ("`ns:meta` is missing").
    pub fn marker_key(&self) -> String {
        self.keys.meta()
    }

    /// Subscribe `pubsub` to the channels every writer publishes on after a change (the message
    /// is the pool name, or `routing`): the tagged layout's and the legacy one's, so a proxy
    /// hears the writers of either layout, before and after `ctl migrate-keys`. Only a hint to
    /// re-read: see the module docs.
    pub async fn subscribe_events(
        &self,
        pubsub: &mut redis::aio::PubSub,
    ) -> Result<(), StoreError> {
        pubsub
            .subscribe(&[
                self.keys.with_layout(Layout::Tagged).events(),
                self.keys.with_layout(Layout::Legacy).events(),
            ])
            .await?;
        Ok(())
    }

    /// What the store's two markers say about its key layout (see `layout.rs`).
    pub async fn key_layout<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<KeyLayout, StoreError> {
        Ok(layout::key_layout(conn, &self.keys).await?)
    }

    /// This handle with the key names (for messages and `redis-cli` advice) of the layout the
    /// store is in now. Its calls look again each time, as every handle's do.
    pub async fn in_layout_in_force<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            keys: layout::in_force(conn, &self.keys).await?,
        })
    }

    /// The current proxy reports under the legacy names: each proxy's id and whether its
    /// release follows the tagged layout (`ctl migrate-keys` refuses while one does not).
    pub async fn legacy_proxy_reports<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<Vec<ProxyReport>, StoreError> {
        reports::proxy_reports(conn, &self.keys.with_layout(Layout::Legacy)).await
    }

    /// Move every key of a legacy-layout store to its tagged name, atomically (one script).
    /// Does nothing on a store in any other layout (see [`Migration`]).
    pub async fn migrate_keys<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<Migration, StoreError> {
        migrate::migrate_keys(conn, &self.keys).await
    }

    // Reads (snapshot.rs).

    /// Everything the proxies serve, the marker included, in one pipelined MULTI/EXEC round
    /// trip (eight commands, whatever the number of servers), so the snapshot is consistent.
    /// Servers whose lease lapsed by `now_ms` are left out; bad entries are skipped and listed
    /// in [`Snapshot::problems`].
    pub async fn read_snapshot<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        now_ms: u64,
    ) -> Result<Snapshot, StoreError> {
        layout_read!(conn, &self.keys, |k| snapshot::read_snapshot(
            conn, k, now_ms
        )
        .await)
    }

    /// The store's marker alone (`None`: no marker).
    pub async fn read_marker<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<Option<Marker>, StoreError> {
        layout_read!(conn, &self.keys, |k| snapshot::read_marker(conn, k).await)
    }

    /// Everything `ctl status` shows, in one MULTI/EXEC round trip.
    pub async fn read_status<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<Status, StoreError> {
        layout_read!(conn, &self.keys, |k| snapshot::read_status(conn, k).await)
    }

    // Writes (commands.rs).

    /// Add or renew `addr` in `pool`. `weight: None` keeps any weight already set (default 1);
    /// `ttl: None` means no lease. Draining state is kept. Returns whether the served set
    /// changed (and so whether it published).
    pub async fn register<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
        weight: Option<Weight>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        layout_write!(conn, &self.keys, |k| commands::register(
            conn, k, pool, addr, weight, ttl
        )
        .await)
    }

    /// Remove `addr` from the pool's servers, weights and draining keys. Returns whether it
    /// was registered; removing an unknown server is not an error (deploy jobs retry).
    pub async fn deregister<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
    ) -> Result<bool, StoreError> {
        layout_write!(conn, &self.keys, |k| commands::deregister(
            conn, k, pool, addr
        )
        .await)
    }

    /// Stop new requests to a registered server ([`StoreError::NotRegistered`] otherwise).
    pub async fn drain<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
    ) -> Result<(), StoreError> {
        layout_write!(conn, &self.keys, |k| commands::drain(conn, k, pool, addr)
            .await)
    }

    /// Put a server back into rotation. Returns whether it was draining (not an error if not).
    pub async fn undrain<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
    ) -> Result<bool, StoreError> {
        layout_write!(conn, &self.keys, |k| commands::undrain(conn, k, pool, addr)
            .await)
    }

    /// Set the weight of a registered server ([`StoreError::NotRegistered`] otherwise).
    pub async fn set_weight<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
        weight: Weight,
    ) -> Result<(), StoreError> {
        layout_write!(conn, &self.keys, |k| commands::set_weight(
            conn, k, pool, addr, weight
        )
        .await)
    }

    /// Store the canary percent, bump the marker and publish `routing`.
    pub async fn set_canary_percent<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        percent: Percent,
    ) -> Result<(), StoreError> {
        layout_write!(conn, &self.keys, |k| commands::set_canary_percent(
            conn, k, percent
        )
        .await)
    }

    /// The stored canary percent: `None` when unset; stored garbage is
    /// [`StoreError::Invalid`] (the proxies ignore it and use their config file).
    pub async fn get_canary_percent<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<Option<Percent>, StoreError> {
        layout_read!(conn, &self.keys, |k| commands::get_canary_percent(conn, k)
            .await)
    }

    /// How `addr` is registered in `pool` (a lapsed lease still counts as registered).
    pub async fn registration<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
    ) -> Result<Registration, StoreError> {
        layout_read!(conn, &self.keys, |k| commands::registration(
            conn, k, pool, addr
        )
        .await)
    }

    // Feature flags (flags.rs).

    /// Every flag in `ns:flags`, bad ones skipped and listed as problems of kind `flag`.
    pub async fn read_flags<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<StoredFlags, StoreError> {
        layout_read!(conn, &self.keys, |k| flags::read_flags(conn, k).await)
    }

    /// The stored JSON of flag `name`, as is (`None`: no such flag).
    pub async fn get_flag_raw<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        layout_read!(conn, &self.keys, |k| flags::get_flag_raw(conn, k, name)
            .await)
    }

    /// Validate and store flag `name`, bump the marker and publish `flags`. With `expected`
    /// (`Some("")`: absent), only if the stored JSON is still that ([`FlagWriteError::Changed`]).
    pub async fn set_flag<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        name: &str,
        flag: &crate::config::schema::FlagConfig,
        expected: Option<&str>,
    ) -> Result<(), FlagWriteError> {
        layout_write!(conn, &self.keys, |k| flags::set_flag(
            conn, k, name, flag, expected
        )
        .await)
    }

    /// Delete flag `name`; returns whether it existed (publishes only then).
    pub async fn delete_flag<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        name: &str,
    ) -> Result<bool, StoreError> {
        layout_write!(conn, &self.keys, |k| flags::delete_flag(conn, k, name)
            .await)
    }

    // The proxies' reports (reports.rs).

    /// A proxy reports the servers it has in rotation for `pool` (see [`SERVING_FRESH_MS`]).
    pub async fn report_serving<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addrs: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        layout_write!(conn, &self.keys, |k| reports::report_serving(
            conn, k, pool, addrs, now_ms
        )
        .await)
    }

    /// A proxy reports its requests in flight per server; the report expires after
    /// [`PROXY_REPORT_TTL_MS`].
    pub async fn report_proxy<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        proxy_id: &str,
        in_flight: &[(PoolKind, String, i64)],
    ) -> Result<(), StoreError> {
        layout_write!(conn, &self.keys, |k| reports::report_proxy(
            conn, k, proxy_id, in_flight
        )
        .await)
    }

    /// When a proxy last reported `addr` in rotation (Unix ms, the proxy's clock), if ever
    /// within [`SERVING_RETENTION_MS`].
    pub async fn serving_seen_ms<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
    ) -> Result<Option<u64>, StoreError> {
        layout_read!(conn, &self.keys, |k| reports::serving_seen_ms(
            conn, k, pool, addr
        )
        .await)
    }

    /// Requests in flight on one server, summed over every proxy's current report.
    pub async fn in_flight<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        pool: PoolKind,
        addr: &ServerAddr,
    ) -> Result<InFlight, StoreError> {
        layout_read!(conn, &self.keys, |k| reports::in_flight(
            conn, k, pool, addr
        )
        .await)
    }
}

/// Key names for the integration tests and benchmarks, which check what the store wrote with
/// plain Redis commands (as an operator with `redis-cli` would). Not for the program: outside
/// this module, code goes through [`Store`]'s methods.
#[doc(hidden)]
impl Store {
    /// The names of the layout before the tagged one (a previous release's store, written by
    /// hand in a test); the handle's calls still look for the layout in force.
    pub fn with_legacy_names(&self) -> Store {
        Store {
            keys: self.keys.with_layout(Layout::Legacy),
        }
    }

    pub fn servers_key(&self, pool: PoolKind) -> String {
        self.keys.servers(pool)
    }

    pub fn weights_key(&self, pool: PoolKind) -> String {
        self.keys.weights(pool)
    }

    pub fn draining_key(&self, pool: PoolKind) -> String {
        self.keys.draining(pool)
    }

    pub fn serving_key(&self, pool: PoolKind) -> String {
        self.keys.serving(pool)
    }

    pub fn routing_key(&self) -> String {
        self.keys.routing()
    }

    pub fn flags_key(&self) -> String {
        self.keys.flags()
    }

    pub fn events_channel(&self) -> String {
        self.keys.events()
    }

    pub fn proxy_key(&self, proxy_id: &str) -> String {
        self.keys.proxy(proxy_id)
    }
}
