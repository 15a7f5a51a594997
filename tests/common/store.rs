//! The Redis schema as the tests see it: key names from the library (so a key rename touches
//! `src/store` only), and the store's `ns:meta` marker (docs/redis-schema.md): what a pipeline
//! writing with plain Redis commands does to mark a store as initialised, and what a Redis that
//! lost its data looks like to the proxies.
//!
//! Pools are named as on the command line (`production`, `canary`).

use canary_lb::model::PoolKind;
use canary_lb::store::Store;

use super::redis_cmd;

fn pool_kind(pool: &str) -> PoolKind {
    PoolKind::parse(pool).unwrap_or_else(|e| panic!("test pool name `{pool}`: {e}"))
}

/// Unix milliseconds on the clock the proxies compare lease scores with.
pub fn now_ms() -> u64 {
    canary_lb::store::now_ms()
}

/// The library's handle on namespace `ns` (the same one the proxy and `ctl` use).
pub fn store(namespace: &str) -> Store {
    Store::new(namespace)
}

/// `ns:servers:pool`, the sorted set of registered servers (score = lease expiry or `+inf`).
pub fn servers_key(namespace: &str, pool: &str) -> String {
    store(namespace).servers_key(pool_kind(pool))
}

/// `ns:weights:pool`, the hash of weights.
pub fn weights_key(namespace: &str, pool: &str) -> String {
    store(namespace).weights_key(pool_kind(pool))
}

/// `ns:draining:pool`, the set of draining servers.
pub fn draining_key(namespace: &str, pool: &str) -> String {
    store(namespace).draining_key(pool_kind(pool))
}

/// `ns:serving:pool`, what the proxies report in rotation.
pub fn serving_key(namespace: &str, pool: &str) -> String {
    store(namespace).serving_key(pool_kind(pool))
}

/// `ns:routing`, the routing overrides (`canary_percent`, `salt`).
pub fn routing_key(namespace: &str) -> String {
    store(namespace).routing_key()
}

/// `ns:events`, the channel every writer publishes on.
pub fn events_channel(namespace: &str) -> String {
    store(namespace).events_channel()
}

/// `ns:meta`, the hash every store write bumps.
pub fn meta_key(namespace: &str) -> String {
    store(namespace).marker_key()
}

/// Mark the store as initialised the way the `redis-cli` recipe does
/// (`HINCRBY ns:meta generation 1`), for tests that then write the other keys by hand.
pub fn mark_store(redis_url: &str, namespace: &str) {
    redis_cmd(
        redis_url,
        &["HINCRBY", &meta_key(namespace), "generation", "1"],
    );
}

/// The store's generation, or None when there is no marker.
pub fn store_generation(redis_url: &str, namespace: &str) -> Option<i64> {
    match redis_cmd(redis_url, &["HGET", &meta_key(namespace), "generation"]) {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).parse().ok(),
        redis::Value::Int(n) => Some(n),
        _ => None,
    }
}

/// `FLUSHALL`: what a Redis restarted without persistence (or failed over to an empty
/// replica) holds.
pub fn wipe(redis_url: &str) {
    redis_cmd(redis_url, &["FLUSHALL"]);
}

/// `ns:flags`, the hash of feature flags (field = name, value = JSON).
pub fn flags_key(namespace: &str) -> String {
    store(namespace).flags_key()
}
