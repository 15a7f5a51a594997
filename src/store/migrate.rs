//! `ctl migrate-keys`: a legacy-layout store's keys moved to their tagged names in one script,
//! so the proxies see the store either wholly under the old names or wholly under the new ones
//! (see `layout.rs` for how every call follows the move).

use redis::aio::ConnectionLike;

use super::keys::{Keys, Layout};
use super::layout::{self, KeyLayout};
use super::StoreError;

/// KEYS: the n legacy names (the marker first), then their n tagged names in the same order.
/// ARGV: the legacy events channel, the tagged one.
/// Renames every legacy key that exists (a TTL moves with its key) and returns how many; -1
/// when the tagged marker exists, -2 when the legacy one does not (nothing renamed). The
/// markers are checked in the script, so a concurrent migration or write cannot interleave.
/// Publishes `layout` on both channels so the proxies re-read at once.
const MIGRATE_LUA: &str = r#"
local n = #KEYS / 2
if redis.call('EXISTS', KEYS[n + 1]) == 1 then return -1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local moved = 0
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[n + i])
    moved = moved + 1
  end
end
redis.call('PUBLISH', ARGV[1], 'layout')
redis.call('PUBLISH', ARGV[2], 'layout')
return moved
"#;

/// What `migrate-keys` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    /// The store was in the legacy layout: `moved` keys now have their tagged names.
    Moved { moved: usize, tagged_meta: String },
    /// Nothing to do: the store is already in the tagged layout.
    AlreadyTagged { tagged_meta: String },
    /// Nothing to do: no marker at all (a new store, or one that lost its data); the first
    /// write creates it in the tagged layout.
    NoStore {
        legacy_meta: String,
        tagged_meta: String,
    },
    /// Nothing done: both markers exist (see [`KeyLayout::Both`]).
    BothMarkers {
        legacy_meta: String,
        tagged_meta: String,
    },
}

async fn scan<C: ConnectionLike>(conn: &mut C, pattern: &str) -> Result<Vec<String>, StoreError> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        found.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// See [`super::Store::migrate_keys`].
pub(super) async fn migrate_keys<C: ConnectionLike>(
    conn: &mut C,
    base: &Keys,
) -> Result<Migration, StoreError> {
    let legacy = base.with_layout(Layout::Legacy);
    let tagged = base.with_layout(Layout::Tagged);
    let (legacy_meta, tagged_meta) = (legacy.meta(), tagged.meta());
    match layout::key_layout(conn, base).await? {
        KeyLayout::Tagged => return Ok(Migration::AlreadyTagged { tagged_meta }),
        KeyLayout::New => {
            return Ok(Migration::NoStore {
                legacy_meta,
                tagged_meta,
            })
        }
        KeyLayout::Both => {
            return Ok(Migration::BothMarkers {
                legacy_meta,
                tagged_meta,
            })
        }
        KeyLayout::Legacy => {}
    }
    let mut from = legacy.fixed();
    from.extend(scan(conn, &legacy.rollout_window_pattern()).await?);
    from.extend(scan(conn, &legacy.proxy_pattern()).await?);
    let (from, to): (Vec<String>, Vec<String>) = from
        .into_iter()
        .filter_map(|k| Some((legacy.rename_to(&k, &tagged)?, k)))
        .map(|(to, from)| (from, to))
        .unzip();
    let script = redis::Script::new(MIGRATE_LUA);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&from)
        .key(&to)
        .arg(legacy.events())
        .arg(tagged.events());
    let moved: i64 = invocation.invoke_async(conn).await?;
    match moved {
        -1 => Ok(Migration::BothMarkers {
            legacy_meta,
            tagged_meta,
        }),
        // The legacy marker went meanwhile, and no migration put a tagged one: wiped.
        -2 => Ok(Migration::NoStore {
            legacy_meta,
            tagged_meta,
        }),
        n => {
            // A window a replica opened between the SCAN and the script (reports after it go
            // to the tagged names): moved unless a tagged one was opened since.
            let mut moved = n.max(0) as usize;
            for key in scan(conn, &legacy.rollout_window_pattern()).await? {
                if let Some(target) = legacy.rename_to(&key, &tagged) {
                    let done: i64 = redis::cmd("RENAMENX")
                        .arg(&key)
                        .arg(target)
                        .query_async(conn)
                        .await?;
                    moved += done.max(0) as usize;
                }
            }
            Ok(Migration::Moved { moved, tagged_meta })
        }
    }
}
