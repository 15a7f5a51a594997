//! Reading the store: the snapshot the proxies follow, and the `ctl status` view of the same
//! keys. The Redis round trip and the parsing are separate, so every bad-data case is a
//! table-driven test of [`parse_snapshot`] without a Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redis::Value;

use super::keys::Keys;
use super::resp::{pairs, raw_pairs, strings};
use super::{
    Marker, Problem, ServerStatus, Snapshot, Status, StoreError, StoredServer,
    FIELD_CANARY_PERCENT, FIELD_CREATED_MS, FIELD_GENERATION, FIELD_SALT, FIELD_UPDATED_MS,
};
use crate::model::{PerPool, Percent, PoolKind, ServerAddr, Weight};

/// A stored value that does not parse; its text becomes a [`Problem`]'s detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum BadValue {
    #[error("lease score `{0}` is not a number or +inf")]
    Lease(String),
    #[error("weight must be an integer 1..={max}, got `{0}`", max = Weight::MAX)]
    WeightNotInteger(String),
    /// Out of range: the model's own message.
    #[error("{0}")]
    Weight(String),
}

/// The raw replies for one pool, as Redis returned them.
#[derive(Debug, Clone, Default)]
pub(super) struct RawPool {
    /// `ZRANGE servers 0 -1 WITHSCORES`.
    pub(super) servers: Value,
    /// `HGETALL weights`.
    pub(super) weights: Value,
    /// `SMEMBERS draining`.
    pub(super) draining: Value,
}

/// The raw replies of one snapshot read.
#[derive(Debug, Clone, Default)]
pub(super) struct RawSnapshot {
    pub(super) pools: PerPool<RawPool>,
    /// `HGETALL routing`.
    pub(super) routing: Value,
    /// `HGETALL meta`.
    pub(super) meta: Value,
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
pub(super) fn parse_snapshot(raw: &RawSnapshot, keys: &Keys, now_ms: u64) -> Snapshot {
    let mut snap = Snapshot::default();
    for pool in PoolKind::ALL {
        let live: Vec<StoredServer> = parse_pool(&raw.pools[pool], keys, pool, &mut snap.problems)
            .into_iter()
            .filter(|s| s.is_live(now_ms))
            .collect();
        snap.servers[pool] = live;
    }
    let routing = parse_routing(&raw.routing, keys, &mut snap.problems);
    snap.canary_percent = routing.canary_percent;
    snap.salt = routing.salt;
    snap.marker = parse_marker(&raw.meta, keys, &mut snap.problems);
    snap
}

/// The marker in an `HGETALL meta` reply; `None` without a `generation` field.
pub(super) fn parse_marker(
    raw: &Value,
    keys: &Keys,
    problems: &mut Vec<Problem>,
) -> Option<Marker> {
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
pub(super) fn parse_lease(score: &str) -> Result<Option<u64>, BadValue> {
    let v: f64 = score
        .trim()
        .parse()
        .map_err(|_| BadValue::Lease(score.to_string()))?;
    if v.is_nan() {
        return Err(BadValue::Lease(score.to_string()));
    }
    if v == f64::INFINITY {
        return Ok(None);
    }
    // Negative or -inf: expired long ago.
    Ok(Some(v.max(0.0) as u64))
}

fn parse_weight(w: &str) -> Result<Weight, BadValue> {
    let n: i64 = w
        .trim()
        .parse()
        .map_err(|_| BadValue::WeightNotInteger(w.to_string()))?;
    Weight::new(n).map_err(|e| BadValue::Weight(e.to_string()))
}

fn normalize(addr: &str) -> String {
    ServerAddr::parse(addr).map_or_else(|_| addr.to_string(), |a| a.as_str().to_string())
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
        pools: PerPool { production, canary },
        routing,
        meta: replies.next().unwrap_or_default(),
    }
}

/// See [`super::Store::read_snapshot`].
pub(super) async fn read_snapshot<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    now_ms: u64,
) -> Result<Snapshot, StoreError> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    queue_snapshot_reads(&mut pipe, keys);
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let raw = take_raw_snapshot(&mut replies.into_iter());
    Ok(parse_snapshot(&raw, keys, now_ms))
}

/// See [`super::Store::read_marker`].
pub(super) async fn read_marker<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Option<Marker>, StoreError> {
    let raw: Value = redis::cmd("HGETALL")
        .arg(keys.meta())
        .query_async(conn)
        .await?;
    Ok(parse_marker(&raw, keys, &mut Vec::new()))
}

/// See [`super::Store::read_status`]: the snapshot's reads plus the serving reports, in one
/// MULTI/EXEC round trip.
pub(super) async fn read_status<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Status, StoreError> {
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
        let rows = parse_pool(&raw.pools[pool], keys, pool, &mut status.problems)
            .into_iter()
            .map(|server| ServerStatus {
                serving_seen_ms: serving.get(server.addr.as_str()).copied(),
                server,
            })
            .collect();
        status.servers[pool] = rows;
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
                pools: PerPool {
                    canary: RawPool {
                        servers: flat(servers),
                        weights: flat(weights),
                        draining: flat(draining),
                    },
                    ..PerPool::default()
                },
                ..RawSnapshot::default()
            };
            let snap = parse_snapshot(&raw, &keys, NOW);
            let got: Vec<(&str, u32, bool)> = snap
                .servers
                .canary
                .iter()
                .map(|s| (s.addr.as_str(), s.weight.get(), s.draining))
                .collect();
            assert_eq!(&got, want, "case `{name}`");
            let kinds: Vec<&str> = snap.problems.iter().map(|p| p.kind).collect();
            assert_eq!(&kinds, want_problems, "case `{name}`: {:?}", snap.problems);
            assert!(snap.servers.production.is_empty(), "case `{name}`");
        }
    }

    #[test]
    fn problems_name_key_and_value() {
        let keys = Keys::new("t");
        let raw = RawSnapshot {
            pools: PerPool {
                production: RawPool {
                    servers: flat(&["10.0.0.1:80", "inf"]),
                    weights: flat(&["10.0.0.1:80", "0"]),
                    draining: Value::Nil,
                },
                ..PerPool::default()
            },
            ..RawSnapshot::default()
        };
        let snap = parse_snapshot(&raw, &keys, NOW);
        assert_eq!(snap.problems.len(), 1);
        assert_eq!(snap.problems[0].key, "{t}:weights:production");
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
            pools: PerPool {
                canary: RawPool {
                    servers: Value::Array(vec![
                        Value::Array(vec![bulk("10.0.0.1:80"), Value::Double(f64::INFINITY)]),
                        Value::Array(vec![bulk("10.0.0.2:80"), Value::Double(2_000_000.0)]),
                    ]),
                    weights: Value::Map(vec![(bulk("10.0.0.2:80"), bulk("3"))]),
                    draining: Value::Set(vec![bulk("10.0.0.1:80")]),
                },
                ..PerPool::default()
            },
            routing: Value::Map(vec![(bulk("canary_percent"), bulk("7.5"))]),
            ..RawSnapshot::default()
        };
        let snap = parse_snapshot(&raw, &keys, NOW);
        assert_eq!(snap.servers.canary.len(), 2);
        assert_eq!(snap.servers.canary[0].lease_expiry_ms, None);
        assert!(snap.servers.canary[0].draining);
        assert_eq!(snap.servers.canary[1].weight.get(), 3);
        assert_eq!(snap.servers.canary[1].lease_expiry_ms, Some(2_000_000));
        assert_eq!(snap.next_lease_expiry_ms(), Some(2_000_000));
        assert_eq!(snap.canary_percent.map(|p| p.basis_points()), Some(750));
        assert!(snap.problems.is_empty());
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert_eq!(parse_lease("+inf"), Ok(None));
        assert_eq!(parse_lease("-inf"), Ok(Some(0)));
        assert_eq!(parse_lease("12"), Ok(Some(12)));
        assert_eq!(
            parse_lease("soon").map_err(|e| e.to_string()),
            Err("lease score `soon` is not a number or +inf".to_string())
        );
        assert!(parse_lease("nan").is_err());
        assert_eq!(parse_weight("7").map(|w| w.get()), Ok(7));
        assert_eq!(
            parse_weight("abc").map_err(|e| e.to_string()),
            Err("weight must be an integer 1..=1000, got `abc`".to_string())
        );
        assert!(matches!(parse_weight("0"), Err(BadValue::Weight(_))));
    }
}
