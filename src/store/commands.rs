//! Writing the store: the Lua scripts and commands behind `canary-lb ctl`, heartbeats and
//! `ctl replace`. Each write is one script, so it validates and writes atomically, bumps the
//! marker when it changes something, and publishes on the events channel.

use std::time::Duration;

use super::keys::Keys;
use super::layout::{guard_keys, script};
use super::snapshot::parse_lease;
use super::{
    now_ms, Problem, Registration, StoreError, FIELD_CANARY_PERCENT, LEASE_PURGE_AFTER_MS,
    ROUTING_EVENT,
};
use crate::model::{Percent, PoolKind, ServerAddr, Weight};
use crate::rollout::Phase;

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

/// KEYS: routing, events, meta, rollout. ARGV: field, value, now_ms, event message, then the
/// active phases' names.
/// `ctl canary set`: refused (`{0, phase, id}`, nothing written) while the rollout in
/// `ns:rollout` is active, since its next step or abort would overwrite the percent and its
/// weight wins in every proxy meanwhile. The check and the write are one script, so a rollout
/// started in between cannot slip past. The phase is the hash's readable `phase` copy, or
/// the `json`'s `phase` when the copy is missing. Otherwise it writes the field, bumps the
/// marker, publishes and returns `{1, '', ''}`.
const SET_CANARY_PERCENT_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
local phase = redis.call('HGET', KEYS[4], 'phase')
local id = redis.call('HGET', KEYS[4], 'id')
if not phase then
  local raw = redis.call('HGET', KEYS[4], 'json')
  if raw then
    local ok, state = pcall(cjson.decode, raw)
    if ok and type(state) == 'table' and type(state.phase) == 'string' then
      phase = state.phase
      if type(state.id) == 'string' then id = state.id end
    end
  end
end
for i = 5, #ARGV do
  if phase == ARGV[i] then return {0, phase, id or ''} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
bump_meta(KEYS[3], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return {1, '', ''}
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
pub(super) async fn register<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
    weight: Option<Weight>,
    ttl: Option<Duration>,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let changed: i64 = script(keys, REGISTER_LUA)
        .key(keys.servers(pool))
        .key(keys.weights(pool))
        .key(keys.draining(pool))
        .key(keys.events())
        .key(keys.meta())
        .key(guard_keys(keys))
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
pub(super) async fn deregister<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<bool, StoreError> {
    let removed: i64 = script(keys, DEREGISTER_LUA)
        .key(keys.servers(pool))
        .key(keys.weights(pool))
        .key(keys.draining(pool))
        .key(keys.events())
        .key(keys.meta())
        .key(guard_keys(keys))
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
    let done: i64 = script(keys, MODIFY_REGISTERED_LUA)
        .key(keys.servers(pool))
        .key(target)
        .key(keys.events())
        .key(keys.meta())
        .key(guard_keys(keys))
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
pub(super) async fn drain<C: redis::aio::ConnectionLike>(
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
pub(super) async fn undrain<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<bool, StoreError> {
    let removed: i64 = script(keys, UNDRAIN_LUA)
        .key(keys.draining(pool))
        .key(keys.events())
        .key(keys.meta())
        .key(guard_keys(keys))
        .arg(addr.as_str())
        .arg(pool.as_str())
        .arg(now_ms())
        .invoke_async(conn)
        .await?;
    Ok(removed == 1)
}

/// Set the weight of a registered server.
pub(super) async fn set_weight<C: redis::aio::ConnectionLike>(
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
/// `routing`; [`StoreError::RolloutActive`] and nothing written while a rollout runs.
pub(super) async fn set_canary_percent<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    percent: Percent,
) -> Result<(), StoreError> {
    let lua = script(keys, SET_CANARY_PERCENT_LUA);
    let mut invocation = lua.prepare_invoke();
    invocation
        .key(keys.routing())
        .key(keys.events())
        .key(keys.meta())
        .key(keys.rollout())
        .key(guard_keys(keys))
        .arg(FIELD_CANARY_PERCENT)
        .arg(percent.as_f64().to_string())
        .arg(now_ms())
        .arg(ROUTING_EVENT);
    for phase in Phase::ALL.into_iter().filter(|p| p.is_active()) {
        invocation.arg(phase.as_str());
    }
    let (written, phase, id): (i64, String, String) = invocation.invoke_async(conn).await?;
    if written == 1 {
        Ok(())
    } else {
        Err(StoreError::RolloutActive { id, phase })
    }
}

/// The canary percent stored in `ns:routing`: `None` when unset; stored garbage is an error
/// (the proxies ignore it and use their config file).
pub(super) async fn get_canary_percent<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Option<Percent>, StoreError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(keys.routing())
        .arg(FIELD_CANARY_PERCENT)
        .query_async(conn)
        .await?;
    raw.map(|v| {
        Percent::parse(&v).map_err(|e| {
            StoreError::Invalid(Problem {
                kind: "canary_percent",
                key: keys.routing(),
                detail: e.to_string(),
            })
        })
    })
    .transpose()
}

/// How `addr` is registered in `pool` (a lapsed lease still counts as registered).
pub(super) async fn registration<C: redis::aio::ConnectionLike>(
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
        Err(e) => Err(StoreError::Invalid(Problem {
            kind: "lease",
            key: keys.servers(pool),
            detail: format!("`{addr}`: {e}"),
        })),
    }
}
