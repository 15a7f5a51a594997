//! The Redis schema shared by the proxies, `canary-lb ctl` and deploy pipelines.
//!
//! Redis is the control plane: every proxy replica reads the same keys, so a deploy job changes
//! one place and all replicas follow. This module is the only code that knows the key layout;
//! `docs/redis-schema.md` is the same contract for people with `redis-cli`.
//!
//! With `ns` the namespace (default `canary-lb`) and `pool` one of `production`, `canary`:
//!
//! | key               | type       | content                                                      |
//! |-------------------|------------|--------------------------------------------------------------|
//! | `ns:servers:pool` | sorted set | member `host:port`; score = lease expiry in Unix ms, or `+inf` for no lease |
//! | `ns:weights:pool` | hash       | `host:port` -> integer weight 1..=1000 (missing means 1)     |
//! | `ns:draining:pool`| set        | `host:port` that get no new requests                         |
//! | `ns:routing`      | hash       | `canary_percent` (0..=100, decimals ok) and `salt`; override the file config while present |
//! | `ns:serving:pool` | sorted set | written by proxies: `host:port` in rotation; score = when a proxy last saw it so, in Unix ms |
//! | `ns:meta`         | hash       | the store's marker: `generation` (bumped by every change), `updated_ms`, `created_ms` |
//! | `ns:events`       | channel    | every writer publishes after a change: the pool name, or `routing` |
//! | `ns:proxy:<id>`   | hash       | written by each proxy every second: `pool/host:port` -> requests in flight on that server through this proxy; expires [`PROXY_REPORT_TTL_MS`] after the last report |
//!
//! Why this shape:
//! - A lease is the score itself, so a server whose heartbeat died drops out without anybody
//!   deleting it, and reading "who is live" needs no per-server keys (one round trip whatever
//!   the number of servers). Expiry is compared with the reader's clock, so hosts need NTP.
//!   Members whose lease lapsed more than [`LEASE_PURGE_AFTER_MS`] ago are deleted by the next
//!   [`register`] in that pool; until then they are simply not served.
//! - Bad data written by hand (weight `0`, address `nowhere`, percent `150`) must not take the
//!   fleet down: [`parse_snapshot`] skips the bad entry, records a [`Problem`] and returns the rest.
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
//!   [`report_serving`] its rotation; a member is "serving" when seen within [`SERVING_FRESH_MS`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::model::{Percent, PoolKind, ServerAddr, Weight};

/// A server reported by a proxy within this long counts as serving (`ctl status`).
/// Proxies should report at least every `SERVING_FRESH_MS / 3`.
pub const SERVING_FRESH_MS: u64 = 5_000;
/// Serving reports older than this are deleted by the next [`report_serving`], and the whole
/// `ns:serving:pool` key expires this long after the last report (all proxies gone).
pub const SERVING_RETENTION_MS: u64 = 60_000;
/// A member whose lease lapsed longer ago than this is deleted by the next [`register`].
pub const LEASE_PURGE_AFTER_MS: u64 = 60_000;
/// A proxy's `ns:proxy:<id>` report expires this long after it was written (proxy gone).
pub const PROXY_REPORT_TTL_MS: u64 = 5_000;
/// The `ns:routing` fields this module reads.
pub const FIELD_CANARY_PERCENT: &str = "canary_percent";
pub const FIELD_SALT: &str = "salt";
/// The `ns:meta` fields: the marker exists when `generation` does.
pub const FIELD_GENERATION: &str = "generation";
pub const FIELD_UPDATED_MS: &str = "updated_ms";
pub const FIELD_CREATED_MS: &str = "created_ms";
/// The `ns:events` message for a routing change (pool changes publish the pool name).
pub const ROUTING_EVENT: &str = "routing";

/// The key names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Keys {
        Keys {
            namespace: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn servers(&self, pool: PoolKind) -> String {
        format!("{}:servers:{pool}", self.namespace)
    }

    pub fn weights(&self, pool: PoolKind) -> String {
        format!("{}:weights:{pool}", self.namespace)
    }

    pub fn draining(&self, pool: PoolKind) -> String {
        format!("{}:draining:{pool}", self.namespace)
    }

    pub fn serving(&self, pool: PoolKind) -> String {
        format!("{}:serving:{pool}", self.namespace)
    }

    pub fn routing(&self) -> String {
        format!("{}:routing", self.namespace)
    }

    /// The store's marker (see the module documentation).
    pub fn meta(&self) -> String {
        format!("{}:meta", self.namespace)
    }

    /// One proxy's in-flight report (see [`report_proxy`]).
    pub fn proxy(&self, proxy_id: &str) -> String {
        format!("{}:proxy:{proxy_id}", self.namespace)
    }

    /// SCAN pattern matching every proxy's report.
    pub fn proxy_pattern(&self) -> String {
        format!("{}:proxy:*", self.namespace)
    }

    pub fn events(&self) -> String {
        format!("{}:events", self.namespace)
    }
}

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
    pub production: Vec<StoredServer>,
    pub canary: Vec<StoredServer>,
    /// `None` when absent or invalid (invalid also adds a [`Problem`]).
    pub canary_percent: Option<Percent>,
    pub salt: Option<String>,
    pub problems: Vec<Problem>,
}

impl Snapshot {
    pub fn pool(&self, pool: PoolKind) -> &[StoredServer] {
        match pool {
            PoolKind::Production => &self.production,
            PoolKind::Canary => &self.canary,
        }
    }

    /// The earliest lease expiry among served servers: re-read by then to drop it on time.
    pub fn next_lease_expiry_ms(&self) -> Option<u64> {
        self.production
            .iter()
            .chain(&self.canary)
            .filter_map(|s| s.lease_expiry_ms)
            .min()
    }
}

/// The raw replies for one pool, as Redis returned them.
#[derive(Debug, Clone, Default)]
pub struct RawPool {
    /// `ZRANGE servers 0 -1 WITHSCORES`.
    pub servers: Value,
    /// `HGETALL weights`.
    pub weights: Value,
    /// `SMEMBERS draining`.
    pub draining: Value,
}

/// The raw replies of one snapshot read.
#[derive(Debug, Clone, Default)]
pub struct RawSnapshot {
    pub production: RawPool,
    pub canary: RawPool,
    /// `HGETALL routing`.
    pub routing: Value,
    /// `HGETALL meta`.
    pub meta: Value,
}

impl RawSnapshot {
    fn pool(&self, pool: PoolKind) -> &RawPool {
        match pool {
            PoolKind::Production => &self.production,
            PoolKind::Canary => &self.canary,
        }
    }
}

/// Every valid server of a pool, live or not (for `ctl status`), plus what was wrong.
fn parse_pool(
    raw: &RawPool,
    keys: &Keys,
    pool: PoolKind,
    problems: &mut Vec<Problem>,
) -> Vec<StoredServer> {
    let servers_key = keys.servers(pool);
    let weights_key = keys.weights(pool);
    // Weights and draining are keyed by the normalized address, so `127.0.0.1:80` written by
    // hand with stray spaces still matches.
    let weights: HashMap<String, String> = pairs(&raw.weights)
        .into_iter()
        .map(|(k, v)| (normalize(&k), v))
        .collect();
    let draining: BTreeSet<String> = strings(&raw.draining)
        .iter()
        .map(|m| normalize(m))
        .collect();

    let mut out: BTreeMap<ServerAddr, StoredServer> = BTreeMap::new();
    for (member, score) in pairs(&raw.servers) {
        let addr = match ServerAddr::parse(&member) {
            Ok(a) => a,
            Err(e) => {
                problems.push(Problem {
                    kind: "address",
                    key: servers_key.clone(),
                    detail: e.to_string(),
                });
                continue;
            }
        };
        let lease_expiry_ms = match parse_lease(&score) {
            Ok(l) => l,
            Err(e) => {
                problems.push(Problem {
                    kind: "lease",
                    key: servers_key.clone(),
                    detail: format!("`{member}`: {e}"),
                });
                continue;
            }
        };
        let weight = match weights.get(addr.as_str()) {
            None => Weight::default(),
            Some(w) => match parse_weight(w) {
                Ok(w) => w,
                Err(e) => {
                    problems.push(Problem {
                        kind: "weight",
                        key: weights_key.clone(),
                        detail: format!("`{member}`: {e}"),
                    });
                    continue;
                }
            },
        };
        let draining = draining.contains(addr.as_str());
        out.entry(addr.clone()).or_insert(StoredServer {
            addr,
            weight,
            lease_expiry_ms,
            draining,
        });
    }
    out.into_values().collect()
}

/// Turn the raw replies into a [`Snapshot`]: a pure function, so every bad-data case is a
/// table-driven unit test.
pub fn parse_snapshot(raw: &RawSnapshot, keys: &Keys, now_ms: u64) -> Snapshot {
    let mut snap = Snapshot::default();
    for pool in PoolKind::ALL {
        let live: Vec<StoredServer> = parse_pool(raw.pool(pool), keys, pool, &mut snap.problems)
            .into_iter()
            .filter(|s| s.is_live(now_ms))
            .collect();
        match pool {
            PoolKind::Production => snap.production = live,
            PoolKind::Canary => snap.canary = live,
        }
    }
    let routing = parse_routing(&raw.routing, keys, &mut snap.problems);
    snap.canary_percent = routing.canary_percent;
    snap.salt = routing.salt;
    snap.marker = parse_marker(&raw.meta, keys, &mut snap.problems);
    snap
}

/// The marker in an `HGETALL meta` reply; `None` without a `generation` field.
fn parse_marker(raw: &Value, keys: &Keys, problems: &mut Vec<Problem>) -> Option<Marker> {
    let fields: HashMap<String, String> = pairs(raw).into_iter().collect();
    let generation = fields.get(FIELD_GENERATION)?;
    let generation = generation.trim().parse().unwrap_or_else(|_| {
        problems.push(Problem {
            kind: "meta",
            key: keys.meta(),
            detail: format!("generation `{generation}` is not a non-negative integer"),
        });
        0
    });
    let ms = |field: &str| fields.get(field).and_then(|v| v.trim().parse().ok());
    Some(Marker {
        generation,
        updated_ms: ms(FIELD_UPDATED_MS),
        created_ms: ms(FIELD_CREATED_MS),
    })
}

struct Routing {
    canary_percent: Option<Percent>,
    salt: Option<String>,
}

fn parse_routing(raw: &Value, keys: &Keys, problems: &mut Vec<Problem>) -> Routing {
    let mut routing = Routing {
        canary_percent: None,
        salt: None,
    };
    for (field, value) in raw_pairs(raw) {
        let field = String::from_utf8_lossy(&field);
        if field == FIELD_CANARY_PERCENT {
            let parsed = String::from_utf8(value)
                .map_err(|_| "canary percent is not UTF-8 text".to_string())
                .and_then(|v| Percent::parse(&v).map_err(|e| e.to_string()));
            match parsed {
                Ok(p) => routing.canary_percent = Some(p),
                Err(detail) => problems.push(Problem {
                    kind: "canary_percent",
                    key: keys.routing(),
                    detail,
                }),
            }
        } else if field == FIELD_SALT {
            match String::from_utf8(value) {
                Ok(s) => routing.salt = Some(s),
                Err(_) => problems.push(Problem {
                    kind: "salt",
                    key: keys.routing(),
                    detail: "salt is not UTF-8 text".to_string(),
                }),
            }
        }
    }
    routing
}

/// A sorted-set score: `+inf` is no lease; otherwise the expiry in Unix ms.
fn parse_lease(score: &str) -> Result<Option<u64>, String> {
    let v: f64 = score
        .trim()
        .parse()
        .map_err(|_| format!("lease score `{score}` is not a number or +inf"))?;
    if v.is_nan() {
        return Err(format!("lease score `{score}` is not a number or +inf"));
    }
    if v == f64::INFINITY {
        return Ok(None);
    }
    // Negative or -inf: expired long ago.
    Ok(Some(v.max(0.0) as u64))
}

fn parse_weight(w: &str) -> Result<Weight, String> {
    let n: i64 = w
        .trim()
        .parse()
        .map_err(|_| format!("weight must be an integer 1..={}, got `{w}`", Weight::MAX))?;
    Weight::new(n).map_err(|e| e.to_string())
}

fn normalize(addr: &str) -> String {
    ServerAddr::parse(addr).map_or_else(|_| addr.to_string(), |a| a.as_str().to_string())
}

/// The bytes of a scalar reply (bulk, simple, integer or double).
fn scalar(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Double(d) if d.is_infinite() => Some(
            if *d > 0.0 { "inf" } else { "-inf" }
                .to_string()
                .into_bytes(),
        ),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        _ => None,
    }
}

/// Field/value pairs of an `HGETALL` or `ZRANGE .. WITHSCORES` reply, in RESP2 (flat array)
/// or RESP3 (map, or array of pairs) form.
fn raw_pairs(v: &Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    match v {
        Value::Map(m) => {
            for (k, v) in m {
                if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                    out.push((k, v));
                }
            }
        }
        Value::Array(items) if items.iter().all(|i| matches!(i, Value::Array(_))) => {
            for item in items {
                if let Value::Array(kv) = item {
                    if let [k, v] = kv.as_slice() {
                        if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                            out.push((k, v));
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            for kv in items.chunks_exact(2) {
                if let (Some(k), Some(v)) = (scalar(&kv[0]), scalar(&kv[1])) {
                    out.push((k, v));
                }
            }
        }
        _ => {}
    }
    out
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    raw_pairs(v)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items
            .iter()
            .filter_map(scalar)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect(),
        _ => Vec::new(),
    }
}

fn queue_snapshot_reads(pipe: &mut redis::Pipeline, keys: &Keys) {
    for pool in PoolKind::ALL {
        pipe.cmd("ZRANGE")
            .arg(keys.servers(pool))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        pipe.cmd("HGETALL").arg(keys.weights(pool));
        pipe.cmd("SMEMBERS").arg(keys.draining(pool));
    }
    pipe.cmd("HGETALL").arg(keys.routing());
    pipe.cmd("HGETALL").arg(keys.meta());
}

fn take_raw_snapshot(replies: &mut impl Iterator<Item = Value>) -> RawSnapshot {
    let mut next_pool = || RawPool {
        servers: replies.next().unwrap_or_default(),
        weights: replies.next().unwrap_or_default(),
        draining: replies.next().unwrap_or_default(),
    };
    let production = next_pool();
    let canary = next_pool();
    let routing = replies.next().unwrap_or_default();
    RawSnapshot {
        production,
        canary,
        routing,
        meta: replies.next().unwrap_or_default(),
    }
}

/// Read everything the proxies serve, the marker included, in one pipelined MULTI/EXEC round
/// trip (eight commands, whatever the number of servers), so the snapshot is consistent.
pub async fn read_snapshot<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    now_ms: u64,
) -> redis::RedisResult<Snapshot> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    queue_snapshot_reads(&mut pipe, keys);
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let raw = take_raw_snapshot(&mut replies.into_iter());
    Ok(parse_snapshot(&raw, keys, now_ms))
}

/// The store's marker alone (`None`: no marker).
pub async fn read_marker<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Option<Marker>> {
    let raw: Value = redis::cmd("HGETALL")
        .arg(keys.meta())
        .query_async(conn)
        .await?;
    Ok(parse_marker(&raw, keys, &mut Vec::new()))
}

/// A proxy reports the servers it has in rotation for `pool`: each gets score `now_ms` in
/// `ns:serving:pool`. In the same round trip, reports older than [`SERVING_RETENTION_MS`] are
/// deleted and the key is set to expire after that long, so servers no proxy serves any more
/// (and proxies that went away) disappear without a coordinator. With several proxies the set
/// is the union of their rotations; a server counts as serving while some proxy re-reported it
/// within [`SERVING_FRESH_MS`].
pub async fn report_serving<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addrs: &[String],
    now_ms: u64,
) -> redis::RedisResult<()> {
    let key = keys.serving(pool);
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !addrs.is_empty() {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&key);
        for addr in addrs {
            zadd.arg(now_ms).arg(addr);
        }
        pipe.add_command(zadd).ignore();
    }
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(format!("({}", now_ms.saturating_sub(SERVING_RETENTION_MS)))
        .ignore();
    pipe.cmd("PEXPIRE")
        .arg(&key)
        .arg(SERVING_RETENTION_MS)
        .ignore();
    pipe.query_async::<()>(conn).await
}

/// A proxy reports, per server in its pools, how many requests it has in flight there
/// (`ns:proxy:<id>`, field `pool/host:port`). The key is rewritten whole and expires after
/// [`PROXY_REPORT_TTL_MS`], so a proxy that stops reporting drops out by itself. `ctl replace`
/// sums these over all proxies to know when a drained server has finished its requests.
pub async fn report_proxy<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    proxy_id: &str,
    in_flight: &[(PoolKind, String, i64)],
) -> redis::RedisResult<()> {
    let key = keys.proxy(proxy_id);
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("DEL").arg(&key).ignore();
    if !in_flight.is_empty() {
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (pool, addr, n) in in_flight {
            hset.arg(format!("{}/{addr}", pool.as_str())).arg(*n);
        }
        pipe.add_command(hset).ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(PROXY_REPORT_TTL_MS)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// Writes (used by `canary-lb ctl`, heartbeats and anything else that changes the store).
// ---------------------------------------------------------------------------------------------

/// Why a write was refused, or a read found unusable data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{addr} is not registered in the {pool} pool")]
    NotRegistered { pool: PoolKind, addr: ServerAddr },
    #[error("{} holds an invalid {}: {}; the proxies ignore it", .0.key, .0.kind, .0.detail)]
    Invalid(Problem),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Prepended to every write script: bump the `ns:meta` marker (creating it when missing).
macro_rules! bump_meta_lua {
    () => {
        r#"
local function bump_meta(meta, now)
  redis.call('HINCRBY', meta, 'generation', 1)
  redis.call('HSET', meta, 'updated_ms', now)
  redis.call('HSETNX', meta, 'created_ms', now)
end
"#
    };
}

/// KEYS: servers, weights, draining, events, meta.
/// ARGV: addr, score (`+inf` or ms), weight (`""` keeps the current one), now_ms,
///       purge-before ms, pool name.
/// Publishes only when the served set changes: a new or lapsed server, or a new weight.
/// Bumps the marker on a change, and creates it when missing even on a plain renewal.
const REGISTER_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
local now = tonumber(ARGV[4])
local was_live = old and (old == 'inf' or old == '+inf' or tonumber(old) > now)
local changed = not was_live
if ARGV[3] ~= '' then
  if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[3] then changed = true end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
for _, m in ipairs(dead) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  redis.call('SREM', KEYS[3], m)
end
if changed or redis.call('HEXISTS', KEYS[5], 'generation') == 0 then
  bump_meta(KEYS[5], ARGV[4])
end
if changed then redis.call('PUBLISH', KEYS[4], ARGV[6]) end
return changed and 1 or 0
"#
);

/// KEYS: servers, target key, events, meta. ARGV: addr, op, value, pool name, now_ms.
/// Refuses (returns 0) when addr is not in servers; otherwise writes, bumps the marker,
/// publishes, returns 1.
const MODIFY_REGISTERED_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] == 'weight' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
elseif ARGV[2] == 'drain' then
  redis.call('SADD', KEYS[2], ARGV[1])
end
bump_meta(KEYS[4], ARGV[5])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1
"#
);

/// KEYS: servers, weights, draining, events, meta. ARGV: addr, pool name, now_ms.
/// Returns 1 when addr was registered. Only an actual removal bumps (or creates) the marker.
const DEREGISTER_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if removed == 1 then bump_meta(KEYS[5], ARGV[3]) end
redis.call('PUBLISH', KEYS[4], ARGV[2])
return removed
"#
);

/// KEYS: draining, events, meta. ARGV: addr, pool name, now_ms.
/// Returns 1 when addr was draining. Only an actual change bumps (or creates) the marker.
const UNDRAIN_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
local removed = redis.call('SREM', KEYS[1], ARGV[1])
if removed == 1 then bump_meta(KEYS[3], ARGV[3]) end
redis.call('PUBLISH', KEYS[2], ARGV[2])
return removed
"#
);

/// KEYS: routing, events, meta. ARGV: field, value, now_ms, event message.
const SET_ROUTING_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
bump_meta(KEYS[3], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1
"#
);

/// A server's lease: `None` registers it with no lease (score `+inf`).
fn lease_score(ttl: Option<Duration>, now_ms: u64) -> String {
    match ttl {
        None => "+inf".to_string(),
        Some(ttl) => (now_ms + ttl.as_millis() as u64).to_string(),
    }
}

/// Add or renew `addr` in `pool`. `weight: None` keeps any weight already set (default 1);
/// `ttl: None` means no lease. Draining state is kept. Returns whether the served set changed
/// (and so whether it published).
pub async fn register<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
    weight: Option<Weight>,
    ttl: Option<Duration>,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let changed: i64 = redis::Script::new(REGISTER_LUA)
        .key(keys.servers(pool))
        .key(keys.weights(pool))
        .key(keys.draining(pool))
        .key(keys.events())
        .key(keys.meta())
        .arg(addr.as_str())
        .arg(lease_score(ttl, now))
        .arg(weight.map_or(String::new(), |w| w.get().to_string()))
        .arg(now)
        .arg(now.saturating_sub(LEASE_PURGE_AFTER_MS))
        .arg(pool.as_str())
        .invoke_async(conn)
        .await?;
    Ok(changed == 1)
}

/// Remove `addr` from the pool's servers, weights and draining keys. Returns whether it was
/// registered; removing an unknown server is not an error (deploy jobs retry).
pub async fn deregister<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<bool, StoreError> {
    let removed: i64 = redis::Script::new(DEREGISTER_LUA)
        .key(keys.servers(pool))
        .key(keys.weights(pool))
        .key(keys.draining(pool))
        .key(keys.events())
        .key(keys.meta())
        .arg(addr.as_str())
        .arg(pool.as_str())
        .arg(now_ms())
        .invoke_async(conn)
        .await?;
    Ok(removed == 1)
}

async fn modify_registered<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
    target: String,
    op: &str,
    value: String,
) -> Result<(), StoreError> {
    let done: i64 = redis::Script::new(MODIFY_REGISTERED_LUA)
        .key(keys.servers(pool))
        .key(target)
        .key(keys.events())
        .key(keys.meta())
        .arg(addr.as_str())
        .arg(op)
        .arg(value)
        .arg(pool.as_str())
        .arg(now_ms())
        .invoke_async(conn)
        .await?;
    if done == 1 {
        Ok(())
    } else {
        Err(StoreError::NotRegistered {
            pool,
            addr: addr.clone(),
        })
    }
}

/// Stop new requests to a registered server.
pub async fn drain<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<(), StoreError> {
    modify_registered(
        conn,
        keys,
        pool,
        addr,
        keys.draining(pool),
        "drain",
        String::new(),
    )
    .await
}

/// Put a server back into rotation. Returns whether it was draining (not an error if not).
pub async fn undrain<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<bool, StoreError> {
    let removed: i64 = redis::Script::new(UNDRAIN_LUA)
        .key(keys.draining(pool))
        .key(keys.events())
        .key(keys.meta())
        .arg(addr.as_str())
        .arg(pool.as_str())
        .arg(now_ms())
        .invoke_async(conn)
        .await?;
    Ok(removed == 1)
}

/// Set the weight of a registered server.
pub async fn set_weight<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
    weight: Weight,
) -> Result<(), StoreError> {
    let value = weight.get().to_string();
    modify_registered(conn, keys, pool, addr, keys.weights(pool), "weight", value).await
}

/// Store the canary percent (already validated by [`Percent`]), bump the marker and publish
/// `routing`.
pub async fn set_canary_percent<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    percent: Percent,
) -> Result<(), StoreError> {
    let _: i64 = redis::Script::new(SET_ROUTING_LUA)
        .key(keys.routing())
        .key(keys.events())
        .key(keys.meta())
        .arg(FIELD_CANARY_PERCENT)
        .arg(percent.as_f64().to_string())
        .arg(now_ms())
        .arg(ROUTING_EVENT)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// The canary percent stored in `ns:routing`: `None` when unset; stored garbage is an error
/// (the proxies ignore it and use their config file).
pub async fn get_canary_percent<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Option<Percent>, StoreError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(keys.routing())
        .arg(FIELD_CANARY_PERCENT)
        .query_async(conn)
        .await?;
    raw.map(|v| {
        Percent::parse(&v).map_err(|detail| {
            StoreError::Invalid(Problem {
                kind: "canary_percent",
                key: keys.routing(),
                detail: detail.to_string(),
            })
        })
    })
    .transpose()
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

/// How `addr` is registered in `pool` (a lapsed lease still counts as registered).
pub async fn registration<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<Registration, StoreError> {
    let score: Option<String> = redis::cmd("ZSCORE")
        .arg(keys.servers(pool))
        .arg(addr.as_str())
        .query_async(conn)
        .await?;
    let Some(score) = score else {
        return Ok(Registration::Absent);
    };
    match parse_lease(&score) {
        Ok(None) => Ok(Registration::NoLease),
        Ok(Some(expiry_ms)) => Ok(Registration::Lease { expiry_ms }),
        Err(detail) => Err(StoreError::Invalid(Problem {
            kind: "lease",
            key: keys.servers(pool),
            detail: format!("`{addr}`: {detail}"),
        })),
    }
}

/// When a proxy last reported `addr` in rotation (Unix ms, the proxy's clock), if ever within
/// [`SERVING_RETENTION_MS`].
pub async fn serving_seen_ms<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> redis::RedisResult<Option<u64>> {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.serving(pool))
        .arg(addr.as_str())
        .query_async(conn)
        .await?;
    Ok(score.map(|s| s.max(0.0) as u64))
}

/// Requests in flight on one server, summed over every proxy's current report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InFlight {
    pub requests: i64,
    /// How many proxies have a current report (whether or not they know the server).
    pub proxies: usize,
}

/// Sum the `pool/host:port` field of every `ns:proxy:<id>` report (SCAN, never KEYS, so a big
/// Redis is not blocked). Reports expire [`PROXY_REPORT_TTL_MS`] after a proxy stops.
pub async fn in_flight<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> redis::RedisResult<InFlight> {
    let mut report_keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.proxy_pattern())
            .arg("COUNT")
            .arg(200)
            .query_async(conn)
            .await?;
        report_keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if report_keys.is_empty() {
        return Ok(InFlight::default());
    }
    let field = format!("{}/{}", pool.as_str(), addr.as_str());
    let mut pipe = redis::pipe();
    for key in &report_keys {
        pipe.cmd("HGET").arg(key).arg(&field);
    }
    let counts: Vec<Option<i64>> = pipe.query_async(conn).await?;
    Ok(InFlight {
        requests: counts.iter().map(|n| n.unwrap_or(0).max(0)).sum(),
        proxies: report_keys.len(),
    })
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
    pub production: Vec<ServerStatus>,
    pub canary: Vec<ServerStatus>,
    pub canary_percent: Option<Percent>,
    pub salt: Option<String>,
    pub problems: Vec<Problem>,
}

impl Status {
    pub fn pool(&self, pool: PoolKind) -> &[ServerStatus] {
        match pool {
            PoolKind::Production => &self.production,
            PoolKind::Canary => &self.canary,
        }
    }
}

/// Read the status in one MULTI/EXEC round trip.
pub async fn read_status<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> redis::RedisResult<Status> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    queue_snapshot_reads(&mut pipe, keys);
    for pool in PoolKind::ALL {
        pipe.cmd("ZRANGE")
            .arg(keys.serving(pool))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut replies = replies.into_iter();
    let raw = take_raw_snapshot(&mut replies);
    let mut status = Status::default();
    for pool in PoolKind::ALL {
        let serving: HashMap<String, u64> = pairs(&replies.next().unwrap_or_default())
            .into_iter()
            .filter_map(|(m, s)| Some((normalize(&m), s.parse::<f64>().ok()? as u64)))
            .collect();
        let rows = parse_pool(raw.pool(pool), keys, pool, &mut status.problems)
            .into_iter()
            .map(|server| ServerStatus {
                serving_seen_ms: serving.get(server.addr.as_str()).copied(),
                server,
            })
            .collect();
        match pool {
            PoolKind::Production => status.production = rows,
            PoolKind::Canary => status.canary = rows,
        }
    }
    let routing = parse_routing(&raw.routing, keys, &mut status.problems);
    status.canary_percent = routing.canary_percent;
    status.salt = routing.salt;
    status.marker = parse_marker(&raw.meta, keys, &mut status.problems);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn flat(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| bulk(s)).collect())
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn keys_follow_the_schema() {
        let k = Keys::new("ns");
        assert_eq!(k.servers(PoolKind::Canary), "ns:servers:canary");
        assert_eq!(k.weights(PoolKind::Production), "ns:weights:production");
        assert_eq!(k.draining(PoolKind::Canary), "ns:draining:canary");
        assert_eq!(k.serving(PoolKind::Canary), "ns:serving:canary");
        assert_eq!(k.routing(), "ns:routing");
        assert_eq!(k.events(), "ns:events");
        assert_eq!(k.meta(), "ns:meta");
    }

    /// (meta fields, expected marker as (generation, updated_ms, created_ms), problem kinds)
    #[test]
    fn marker_parsing_table() {
        type Case<'a> = (
            &'a [&'a str],
            Option<(u64, Option<u64>, Option<u64>)>,
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            // A wiped or never-written store.
            (&[], None, &[]),
            // Fields without `generation` are not a marker.
            (&["updated_ms", "5"], None, &[]),
            (&["generation", "1"], Some((1, None, None)), &[]),
            (
                &["generation", "42", "updated_ms", "7", "created_ms", "3"],
                Some((42, Some(7), Some(3))),
                &[],
            ),
            // Written by hand: still a marker, the bad value is reported.
            (&["generation", "many"], Some((0, None, None)), &["meta"]),
            (
                &["generation", "2", "updated_ms", "soon"],
                Some((2, None, None)),
                &[],
            ),
        ];
        let keys = Keys::new("t");
        for (fields, want, kinds) in cases {
            let raw = RawSnapshot {
                meta: flat(fields),
                ..RawSnapshot::default()
            };
            let snap = parse_snapshot(&raw, &keys, NOW);
            let got = snap
                .marker
                .map(|m| (m.generation, m.updated_ms, m.created_ms));
            assert_eq!(got, *want, "{fields:?}");
            let got: Vec<&str> = snap.problems.iter().map(|p| p.kind).collect();
            assert_eq!(&got, kinds, "{fields:?}");
        }
        // RESP3 map form.
        let raw = RawSnapshot {
            meta: Value::Map(vec![(bulk("generation"), Value::Int(9))]),
            ..RawSnapshot::default()
        };
        assert_eq!(
            parse_snapshot(&raw, &keys, NOW)
                .marker
                .map(|m| m.generation),
            Some(9)
        );
    }

    /// (case, servers, weights, draining, expected served addrs with weight and draining,
    /// expected problem kinds)
    #[test]
    fn pool_parsing_table() {
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [(&'a str, u32, bool)],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            ("empty", &[], &[], &[], &[], &[]),
            (
                "no lease, default weight",
                &["10.0.0.1:80", "inf"],
                &[],
                &[],
                &[("10.0.0.1:80", 1, false)],
                &[],
            ),
            (
                "weight and draining apply",
                &["10.0.0.1:80", "inf", "10.0.0.2:80", "+inf"],
                &["10.0.0.1:80", "5"],
                &["10.0.0.2:80"],
                &[("10.0.0.1:80", 5, false), ("10.0.0.2:80", 1, true)],
                &[],
            ),
            (
                "live lease kept, expired lease excluded",
                &[
                    "10.0.0.1:80",
                    "1000001",
                    "10.0.0.2:80",
                    "1000000",
                    "10.0.0.3:80",
                    "-inf",
                ],
                &[],
                &[],
                &[("10.0.0.1:80", 1, false)],
                &[],
            ),
            (
                "bad weights skipped",
                &[
                    "10.0.0.1:80",
                    "inf",
                    "10.0.0.2:80",
                    "inf",
                    "10.0.0.3:80",
                    "inf",
                    "10.0.0.4:80",
                    "inf",
                ],
                &[
                    "10.0.0.1:80",
                    "0",
                    "10.0.0.2:80",
                    "abc",
                    "10.0.0.3:80",
                    "1001",
                    "10.0.0.4:80",
                    "1000",
                ],
                &[],
                &[("10.0.0.4:80", 1000, false)],
                &["weight", "weight", "weight"],
            ),
            (
                "bad address skipped",
                &[
                    "nowhere",
                    "inf",
                    "10.0.0.1:0",
                    "inf",
                    "app-1.internal:3000",
                    "inf",
                ],
                &[],
                &[],
                &[("app-1.internal:3000", 1, false)],
                &["address", "address"],
            ),
            (
                "non-numeric score skipped",
                &["10.0.0.1:80", "soon", "10.0.0.2:80", "inf"],
                &[],
                &[],
                &[("10.0.0.2:80", 1, false)],
                &["lease"],
            ),
            (
                "orphan weight and draining entries are ignored",
                &["10.0.0.1:80", "inf"],
                &["10.0.0.9:80", "0"],
                &["10.0.0.9:80"],
                &[("10.0.0.1:80", 1, false)],
                &[],
            ),
        ];
        let keys = Keys::new("t");
        for (name, servers, weights, draining, want, want_problems) in cases {
            let raw = RawSnapshot {
                canary: RawPool {
                    servers: flat(servers),
                    weights: flat(weights),
                    draining: flat(draining),
                },
                ..RawSnapshot::default()
            };
            let snap = parse_snapshot(&raw, &keys, NOW);
            let got: Vec<(&str, u32, bool)> = snap
                .canary
                .iter()
                .map(|s| (s.addr.as_str(), s.weight.get(), s.draining))
                .collect();
            assert_eq!(&got, want, "case `{name}`");
            let kinds: Vec<&str> = snap.problems.iter().map(|p| p.kind).collect();
            assert_eq!(&kinds, want_problems, "case `{name}`: {:?}", snap.problems);
            assert!(snap.production.is_empty(), "case `{name}`");
        }
    }

    #[test]
    fn problems_name_key_and_value() {
        let keys = Keys::new("t");
        let raw = RawSnapshot {
            production: RawPool {
                servers: flat(&["10.0.0.1:80", "inf"]),
                weights: flat(&["10.0.0.1:80", "0"]),
                draining: Value::Nil,
            },
            ..RawSnapshot::default()
        };
        let snap = parse_snapshot(&raw, &keys, NOW);
        assert_eq!(snap.problems.len(), 1);
        assert_eq!(snap.problems[0].key, "t:weights:production");
        assert!(snap.problems[0].detail.contains("10.0.0.1:80"));
        assert!(snap.problems[0].detail.contains('0'));
    }

    #[test]
    fn routing_parsing_table() {
        // (fields, expected basis points, expected salt, expected problem kinds)
        type Case<'a> = (&'a [&'a str], Option<u32>, Option<&'a str>, &'a [&'a str]);
        let cases: &[Case] = &[
            (&[], None, None, &[]),
            (
                &["canary_percent", "12.5", "salt", "r1"],
                Some(1250),
                Some("r1"),
                &[],
            ),
            (&["canary_percent", "0"], Some(0), None, &[]),
            (&["canary_percent", "100"], Some(10000), None, &[]),
            (
                &["canary_percent", "abc", "salt", "r1"],
                None,
                Some("r1"),
                &["canary_percent"],
            ),
            (&["canary_percent", "150"], None, None, &["canary_percent"]),
            (&["canary_percent", "-1"], None, None, &["canary_percent"]),
            (&["salt", ""], None, Some(""), &[]),
            (&["unrelated", "x"], None, None, &[]),
        ];
        let keys = Keys::new("t");
        for (fields, percent, salt, kinds) in cases {
            let raw = RawSnapshot {
                routing: flat(fields),
                ..RawSnapshot::default()
            };
            let snap = parse_snapshot(&raw, &keys, NOW);
            assert_eq!(
                snap.canary_percent.map(|p| p.basis_points()),
                *percent,
                "{fields:?}"
            );
            assert_eq!(snap.salt.as_deref(), *salt, "{fields:?}");
            let got: Vec<&str> = snap.problems.iter().map(|p| p.kind).collect();
            assert_eq!(&got, kinds, "{fields:?}");
        }
        let bad_salt = RawSnapshot {
            routing: Value::Array(vec![bulk("salt"), Value::BulkString(vec![0xff, 0xfe])]),
            ..RawSnapshot::default()
        };
        let snap = parse_snapshot(&bad_salt, &keys, NOW);
        assert_eq!(snap.salt, None);
        assert_eq!(snap.problems[0].kind, "salt");
    }

    #[test]
    fn resp3_shapes_parse_like_resp2() {
        let keys = Keys::new("t");
        let raw = RawSnapshot {
            canary: RawPool {
                servers: Value::Array(vec![
                    Value::Array(vec![bulk("10.0.0.1:80"), Value::Double(f64::INFINITY)]),
                    Value::Array(vec![bulk("10.0.0.2:80"), Value::Double(2_000_000.0)]),
                ]),
                weights: Value::Map(vec![(bulk("10.0.0.2:80"), bulk("3"))]),
                draining: Value::Set(vec![bulk("10.0.0.1:80")]),
            },
            routing: Value::Map(vec![(bulk("canary_percent"), bulk("7.5"))]),
            ..RawSnapshot::default()
        };
        let snap = parse_snapshot(&raw, &keys, NOW);
        assert_eq!(snap.canary.len(), 2);
        assert_eq!(snap.canary[0].lease_expiry_ms, None);
        assert!(snap.canary[0].draining);
        assert_eq!(snap.canary[1].weight.get(), 3);
        assert_eq!(snap.canary[1].lease_expiry_ms, Some(2_000_000));
        assert_eq!(snap.next_lease_expiry_ms(), Some(2_000_000));
        assert_eq!(snap.canary_percent.map(|p| p.basis_points()), Some(750));
        assert!(snap.problems.is_empty());
    }
}
