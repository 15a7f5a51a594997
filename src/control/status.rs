//! The table `ctl status` prints: the store's marker, the routing overrides, each pool's
//! servers with their weight, lease, draining and serving state, and the entries the proxies
//! ignore. Pure formatting, so it is unit-tested without Redis. The salt shows only as its
//! fingerprint, the one the proxies' `/status` shows.

use crate::model::PoolKind;
use crate::routing::salt_fingerprint;
use crate::store::{Status, Store, SERVING_FRESH_MS};

/// `12s`, `none` or `expired`.
fn lease_left(expiry_ms: Option<u64>, now_ms: u64) -> String {
    match expiry_ms {
        None => "none".to_string(),
        Some(t) if t > now_ms => format!("{}s", (t - now_ms).div_ceil(1000)),
        Some(_) => "expired".to_string(),
    }
}

pub(super) fn format_status(status: &Status, store: &Store, url: &str, now_ms: u64) -> String {
    let mut out = format!("redis {url}, namespace {}\n", store.namespace());
    match &status.marker {
        Some(m) => {
            let changed = m.updated_ms.map_or(String::new(), |t| {
                format!(
                    ", last change {}s ago",
                    now_ms.saturating_sub(t).div_ceil(1000)
                )
            });
            out += &format!("store: generation {}{changed}\n", m.generation);
        }
        None => {
            out += &format!(
                "store: NO MARKER ({} missing: a new store, or Redis lost its data); the proxies \
                 keep their last known servers until a write creates it\n",
                store.marker_key()
            )
        }
    }
    match status.canary_percent {
        Some(p) => out += &format!("canary percent: {}\n", p.as_f64()),
        None if status.problems.iter().any(|p| p.kind == "canary_percent") => {
            out += "canary percent: invalid, ignored (see problems below)\n"
        }
        None => out += "canary percent: unset (the proxies use their config)\n",
    }
    match &status.salt {
        // Never the salt itself: with it, anyone can tell which users are in canary.
        Some(s) => out += &format!("salt: fingerprint {}\n", salt_fingerprint(s)),
        None => out += "salt: unset (the proxies use their config)\n",
    }
    for pool in PoolKind::ALL {
        out += &format!("\n{pool}\n");
        let rows = status.pool(pool);
        if rows.is_empty() {
            out += "  (no servers)\n";
            continue;
        }
        let mut table = vec![[
            "SERVER".to_string(),
            "WEIGHT".to_string(),
            "LEASE".to_string(),
            "DRAINING".to_string(),
            "SERVING".to_string(),
        ]];
        for row in rows {
            let s = &row.server;
            let serving = row
                .serving_seen_ms
                .is_some_and(|seen| seen + SERVING_FRESH_MS >= now_ms);
            table.push([
                s.addr.to_string(),
                s.weight.get().to_string(),
                lease_left(s.lease_expiry_ms, now_ms),
                yes_no(s.draining),
                yes_no(serving),
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in &table {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out += &format!("  {}\n", line.join("  ").trim_end());
        }
    }
    if !status.problems.is_empty() {
        out += "\nproblems (these entries are ignored by the proxies):\n";
        for p in &status.problems {
            out += &format!("  {} [{}]: {}\n", p.key, p.kind, p.detail);
        }
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PerPool, Percent, ServerAddr, Weight};
    use crate::store::{self, ServerStatus, StoredServer};

    #[test]
    fn lease_left_is_rounded_up_seconds() {
        assert_eq!(lease_left(None, 1000), "none");
        assert_eq!(lease_left(Some(13_000), 1000), "12s");
        assert_eq!(lease_left(Some(1001), 1000), "1s");
        assert_eq!(lease_left(Some(1000), 1000), "expired");
    }

    #[test]
    fn status_table_has_every_column() {
        let now = 100_000;
        let server = |addr: &str, expiry, draining| StoredServer {
            addr: ServerAddr::parse(addr).expect("valid"),
            weight: Weight::new(2).expect("valid"),
            lease_expiry_ms: expiry,
            draining,
        };
        let status = Status {
            marker: Some(store::Marker {
                generation: 7,
                updated_ms: Some(now - 3000),
                created_ms: Some(1),
            }),
            servers: PerPool {
                production: vec![ServerStatus {
                    server: server("10.0.0.1:80", None, false),
                    serving_seen_ms: Some(now - 1000),
                }],
                canary: vec![ServerStatus {
                    server: server("10.0.0.7:3000", Some(now + 12_000), true),
                    serving_seen_ms: Some(now - 60_000),
                }],
            },
            canary_percent: Percent::parse("12.5").ok(),
            salt: Some("release-1-distinctive".into()),
            problems: vec![],
        };
        let text = format_status(&status, &Store::new("ns"), "redis://h/0", now);
        assert!(
            text.contains("store: generation 7, last change 3s ago"),
            "{text}"
        );
        let unmarked = Status {
            marker: None,
            ..status.clone()
        };
        let store = Store::new("ns");
        let unmarked = format_status(&unmarked, &store, "redis://h/0", now);
        let meta = store.marker_key();
        assert!(
            unmarked.contains(&format!("store: NO MARKER ({meta} missing")),
            "{unmarked}"
        );
        assert!(text.contains("canary percent: 12.5"), "{text}");
        assert!(
            text.contains(&format!(
                "salt: fingerprint {}",
                salt_fingerprint("release-1-distinctive")
            )),
            "{text}"
        );
        assert!(!text.contains("release-1-distinctive"), "{text}");
        let prod = text
            .lines()
            .find(|l| l.contains("10.0.0.1:80"))
            .expect("row");
        assert_eq!(
            prod.split_whitespace().collect::<Vec<_>>(),
            ["10.0.0.1:80", "2", "none", "no", "yes"]
        );
        let canary = text
            .lines()
            .find(|l| l.contains("10.0.0.7:3000"))
            .expect("row");
        assert_eq!(
            canary.split_whitespace().collect::<Vec<_>>(),
            ["10.0.0.7:3000", "2", "12s", "yes", "no"]
        );
    }
}
