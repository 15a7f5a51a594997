//! Which key layout a store is in, and keeping to it while `ctl migrate-keys` moves a store.
//!
//! A store whose legacy marker `ns:meta` exists and whose tagged marker `{ns}:meta` does not
//! is in the legacy layout: this release reads and writes it under the legacy names, so a fleet
//! upgrades one replica at a time and old and new replicas agree. Any other store (tagged
//! marker present, or no marker at all: new, or lost) is in the tagged layout, which the first
//! write creates. Nothing is configured: every [`super::Store`] call looks (one `EXISTS` of the
//! tagged marker, a second one of the legacy marker when the first is missing).
//!
//! `ctl migrate-keys` renames a legacy store's keys in one script, so the layout changes once
//! and atomically, and only from legacy to tagged. A call that looked before the move and acts
//! after it must not act on the old names:
//! - a write in the legacy layout runs its script with the tagged marker as an extra last key
//!   and a guard that refuses (`CANARYLB_MOVED`, nothing written) when it exists; the write
//!   then runs again in the tagged layout (`layout_write!`);
//! - a read in the legacy layout checks the tagged marker after reading and reads again in the
//!   tagged layout when it appeared meanwhile (`layout_read!`).
//!
//! Legacy stores only ever exist on a single Redis (the legacy names span many Cluster slots),
//! so the legacy path may mix both layouts' keys in one script or MULTI; the tagged path never
//! names a legacy key.

use redis::aio::ConnectionLike;
use redis::RedisError;

use super::keys::{Keys, Layout};
use super::{FlagWriteError, StoreError};

/// The error code of a legacy-layout write refused because the store was migrated meanwhile.
const MOVED_CODE: &str = "CANARYLB_MOVED";

/// Prepended to a write script run in the legacy layout, whose last KEY is then the tagged
/// marker.
const GUARD_LUA: &str = r#"
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then
  return redis.error_reply('CANARYLB_MOVED ' .. KEYS[#KEYS] .. ' exists: the store moved to the tagged key layout')
end
"#;

/// What a store's two markers say about its key layout (`ctl migrate-keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// Neither marker: a new store (or one that lost its data); the first write creates it in
    /// the tagged layout.
    New,
    /// Only the legacy marker: read and written under the legacy names until migrated.
    Legacy,
    /// Only the tagged marker.
    Tagged,
    /// Both markers: the tagged layout is in force, and something wrote the legacy names after
    /// a migration (a `ctl` or heartbeat of an older release, or a script by hand).
    Both,
}

/// A write refused because the store moved to the tagged layout while it ran.
pub(super) trait Moved {
    fn moved(&self) -> bool;
}

impl Moved for RedisError {
    fn moved(&self) -> bool {
        self.code() == Some(MOVED_CODE)
    }
}

impl Moved for StoreError {
    fn moved(&self) -> bool {
        matches!(self, StoreError::Redis(e) if e.moved())
    }
}

impl Moved for FlagWriteError {
    fn moved(&self) -> bool {
        matches!(self, FlagWriteError::Store(e) if e.moved())
    }
}

pub(super) async fn exists<C: ConnectionLike>(conn: &mut C, key: &str) -> Result<bool, RedisError> {
    let n: i64 = redis::cmd("EXISTS").arg(key).query_async(conn).await?;
    Ok(n > 0)
}

/// Both markers (two commands: on Cluster they are in different slots).
pub(super) async fn key_layout<C: ConnectionLike>(
    conn: &mut C,
    base: &Keys,
) -> Result<KeyLayout, RedisError> {
    let tagged = exists(conn, &base.with_layout(Layout::Tagged).meta()).await?;
    let legacy = exists(conn, &base.with_layout(Layout::Legacy).meta()).await?;
    Ok(match (legacy, tagged) {
        (false, false) => KeyLayout::New,
        (true, false) => KeyLayout::Legacy,
        (false, true) => KeyLayout::Tagged,
        (true, true) => KeyLayout::Both,
    })
}

/// `base`'s namespace in the layout in force (see the module documentation).
pub(super) async fn in_force<C: ConnectionLike>(
    conn: &mut C,
    base: &Keys,
) -> Result<Keys, RedisError> {
    let tagged = base.with_layout(Layout::Tagged);
    if exists(conn, &tagged.meta()).await? {
        return Ok(tagged);
    }
    if exists(conn, &base.with_layout(Layout::Legacy).meta()).await? {
        return Ok(base.with_layout(Layout::Legacy));
    }
    Ok(tagged)
}

/// A write script in `keys`' layout; pass [`guard_keys`] as its last keys.
pub(super) fn script(keys: &Keys, body: &str) -> redis::Script {
    match keys.layout() {
        Layout::Tagged => redis::Script::new(body),
        Layout::Legacy => redis::Script::new(&format!("{GUARD_LUA}{body}")),
    }
}

/// The keys a [`script`] takes after its own: the tagged marker in the legacy layout.
pub(super) fn guard_keys(keys: &Keys) -> Vec<String> {
    match keys.layout() {
        Layout::Tagged => Vec::new(),
        Layout::Legacy => vec![keys.with_layout(Layout::Tagged).meta()],
    }
}

/// `layout_write!(conn, base, |k| body)`: run the write `body` (an expression using `conn`, a
/// `&mut impl ConnectionLike`, and `k`, the [`Keys`] in force, that ends in `.await` and gives a
/// `Result` whose error converts from [`RedisError`] and is [`Moved`]) in the layout in force;
/// when the store moved to the tagged layout meanwhile (the guard of [`script`] refused, nothing
/// written), run it again there. A macro rather than a function taking an async closure: such
/// closures do not yet make `Send` futures, which the rollout's `async_trait` needs.
macro_rules! layout_write {
    ($conn:ident, $base:expr, |$k:ident| $body:expr) => {{
        let in_force = $crate::store::layout::in_force(&mut *$conn, $base).await?;
        let first = {
            let $k = &in_force;
            $body
        };
        match first {
            Err(e) if $crate::store::layout::Moved::moved(&e) => {
                let tagged = in_force.with_layout($crate::store::keys::Layout::Tagged);
                let $k = &tagged;
                $body
            }
            done => done,
        }
    }};
}

/// `layout_read!(conn, base, |k| body)`: run the read `body` (as for [`layout_write`]) in the
/// layout in force; when the store moved to the tagged layout by the time it answered, read
/// again there.
macro_rules! layout_read {
    ($conn:ident, $base:expr, |$k:ident| $body:expr) => {{
        let in_force = $crate::store::layout::in_force(&mut *$conn, $base).await?;
        let got = {
            let $k = &in_force;
            $body
        }?;
        let tagged = in_force.with_layout($crate::store::keys::Layout::Tagged);
        if in_force.layout() == $crate::store::keys::Layout::Legacy
            && $crate::store::layout::exists(&mut *$conn, &tagged.meta()).await?
        {
            let $k = &tagged;
            $body
        } else {
            Ok(got)
        }
    }};
}
