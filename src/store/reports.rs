//! What the proxies write back: the servers each has in rotation (`serving`) and its requests
//! in flight per server (`proxy:<id>`), and the reads `ctl replace` makes of them. None of
//! these writes touches the marker: a proxy's report is not a change to the store.

use std::collections::BTreeSet;

use super::keys::{Keys, LAYOUT_FIELD, LAYOUT_TAGGED};
use super::{InFlight, ProxyReport, StoreError, PROXY_REPORT_TTL_MS, SERVING_RETENTION_MS};
use crate::model::{PoolKind, ServerAddr};

/// A proxy reports the servers it has in rotation for `pool`: each gets score `now_ms` in
/// `ns:serving:pool`. In the same round trip, reports older than [`SERVING_RETENTION_MS`] are
/// deleted and the key is set to expire after that long, so servers no proxy serves any more
/// (and proxies that went away) disappear without a coordinator. With several proxies the set
/// is the union of their rotations; a server counts as serving while some proxy re-reported it
/// within [`super::SERVING_FRESH_MS`].
pub(super) async fn report_serving<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addrs: &[String],
    now_ms: u64,
) -> Result<(), StoreError> {
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
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// A proxy reports, per server in its pools, how many requests it has in flight there
/// (`ns:proxy:<id>`, field `pool/host:port`), and that its release follows the tagged key
/// layout (field [`LAYOUT_FIELD`] = `tagged`, which `ctl migrate-keys` looks for; readers of the
/// in-flight counts only read `pool/host:port` fields, so older releases ignore it). The key is
/// rewritten whole and expires after [`PROXY_REPORT_TTL_MS`], so a proxy that stops reporting
/// drops out by itself. `ctl replace` sums these over all proxies to know when a drained server
/// has finished its requests.
pub(super) async fn report_proxy<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    proxy_id: &str,
    in_flight: &[(PoolKind, String, i64)],
) -> Result<(), StoreError> {
    let key = keys.proxy(proxy_id);
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("DEL").arg(&key).ignore();
    let mut hset = redis::cmd("HSET");
    hset.arg(&key).arg(LAYOUT_FIELD).arg(LAYOUT_TAGGED);
    for (pool, addr, n) in in_flight {
        hset.arg(format!("{}/{addr}", pool.as_str())).arg(*n);
    }
    pipe.add_command(hset).ignore();
    pipe.cmd("PEXPIRE")
        .arg(&key)
        .arg(PROXY_REPORT_TTL_MS)
        .ignore();
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// When a proxy last reported `addr` in rotation (Unix ms, the proxy's clock), if ever within
/// [`SERVING_RETENTION_MS`].
pub(super) async fn serving_seen_ms<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<Option<u64>, StoreError> {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.serving(pool))
        .arg(addr.as_str())
        .query_async(conn)
        .await?;
    Ok(score.map(|s| s.max(0.0) as u64))
}

/// Every `ns:proxy:<id>` key (SCAN, never KEYS, so a big Redis is not blocked).
async fn report_keys<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<BTreeSet<String>, StoreError> {
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
    Ok(report_keys)
}

/// Sum the `pool/host:port` field of every `ns:proxy:<id>` report. Reports expire
/// [`PROXY_REPORT_TTL_MS`] after a proxy stops.
pub(super) async fn in_flight<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    pool: PoolKind,
    addr: &ServerAddr,
) -> Result<InFlight, StoreError> {
    let report_keys = report_keys(conn, keys).await?;
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

/// Every current proxy report in `keys`' layout: the proxy's id, and whether it says its
/// release follows the tagged layout.
pub(super) async fn proxy_reports<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Vec<ProxyReport>, StoreError> {
    let report_keys = report_keys(conn, keys).await?;
    if report_keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for key in &report_keys {
        pipe.cmd("HGET").arg(key).arg(LAYOUT_FIELD);
    }
    let layouts: Vec<Option<String>> = pipe.query_async(conn).await?;
    Ok(report_keys
        .iter()
        .zip(layouts)
        .filter_map(|(key, layout)| {
            Some(ProxyReport {
                proxy_id: keys.proxy_id(key)?.to_string(),
                follows_tagged_layout: layout.as_deref() == Some(LAYOUT_TAGGED),
            })
        })
        .collect())
}
