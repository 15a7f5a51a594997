//! The store's `ns:meta` marker (docs/redis-schema.md): what a pipeline writing with plain
//! Redis commands does to mark a store as initialised, and what a Redis that lost its data
//! looks like to the proxies.

use super::redis_cmd;

/// `ns:meta`, the hash every store write bumps.
pub fn meta_key(namespace: &str) -> String {
    format!("{namespace}:meta")
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
