//! The feature flags in Redis: `ns:flags`, one hash, field = flag name, value = the flag as
//! JSON (`{"enabled":true,"percent":30,"salt":"s","allow":["u1"],"deny":[]}`; only `percent`
//! is needed, the rest default as in the file's `flags.items`).
//!
//! The JSON is versioned (`codec.rs`): no `"schema"` field means major 1, which is how this
//! release writes it (the release before refuses unknown keys in a flag); fields a newer
//! release added are ignored; a flag of a newer major is skipped (off) as a problem that says
//! so, never read as something else.
//!
//! Read by the proxies with every resync (a second round trip after the snapshot), written by
//! `ctl flag` with Lua scripts that validate, bump the marker and publish `flags`.

use std::collections::BTreeMap;

use redis::Value;

use super::codec::{self, StoredKind};
use super::keys::Keys;
use super::layout::{guard_keys, script};
use super::resp::raw_pairs;
use super::{now_ms, Problem, StoreError};
use crate::config::schema::{check_flag_name, FlagConfig, MAX_FLAGS};

/// The `ns:events` message of a flag change.
pub const FLAGS_EVENT: &str = "flags";
/// Longest flag value read from Redis (larger is a problem, skipped).
const MAX_FLAG_JSON: usize = 512 * 1024;

/// The flags stored in Redis at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredFlags {
    /// Whether `ns:flags` has any field (valid or not): Redis's flags then replace the file's.
    pub present: bool,
    /// The valid flags, by name (at most [`MAX_FLAGS`], the first by name).
    pub flags: BTreeMap<String, FlagConfig>,
    /// Bad entries, skipped (kind `flag`).
    pub problems: Vec<Problem>,
}

/// Parse an `HGETALL ns:flags` reply: a pure function, tested without a Redis.
pub(super) fn parse_flags(raw: &Value, keys: &Keys) -> StoredFlags {
    let mut out = StoredFlags::default();
    let problem = |detail: String| Problem {
        kind: "flag",
        key: keys.flags(),
        detail,
    };
    let mut entries = raw_pairs(raw);
    entries.sort();
    for (field, value) in entries {
        out.present = true;
        let name = String::from_utf8_lossy(&field).into_owned();
        if let Err(e) = check_flag_name(&name) {
            out.problems.push(problem(e));
            continue;
        }
        let parsed = if value.len() > MAX_FLAG_JSON {
            Err(format!("value of {} bytes is too long", value.len()))
        } else {
            decode_flag(&value)
        };
        match parsed {
            Ok(_) if out.flags.len() >= MAX_FLAGS => out.problems.push(problem(format!(
                "flag `{name}`: more than {MAX_FLAGS} flags, ignored"
            ))),
            Ok(f) => {
                out.flags.insert(name, f);
            }
            Err(e) => out.problems.push(problem(format!("flag `{name}`: {e}"))),
        }
    }
    out
}

/// One stored flag's JSON as a checked [`FlagConfig`] (unknown fields of the same major
/// ignored); the error says what is wrong, a newer major included. `ctl flag` reads a flag it
/// is about to change with this, so it keeps what it does not change.
pub fn decode_flag(raw: &[u8]) -> Result<FlagConfig, String> {
    let flag: FlagConfig = codec::decode(StoredKind::Flag, raw)
        .map_err(|e| e.to_string())?
        .value;
    flag.check().map_err(|(k, e)| format!("{k}: {e}"))?;
    Ok(flag)
}

/// See [`super::Store::read_flags`].
pub(super) async fn read_flags<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<StoredFlags, StoreError> {
    let raw: Value = redis::cmd("HGETALL")
        .arg(keys.flags())
        .query_async(conn)
        .await?;
    Ok(parse_flags(&raw, keys))
}

/// The stored JSON of one flag (`None`: absent).
pub(super) async fn get_flag_raw<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
) -> Result<Option<String>, StoreError> {
    Ok(redis::cmd("HGET")
        .arg(keys.flags())
        .arg(name)
        .query_async(conn)
        .await?)
}

/// KEYS: flags, events, meta. ARGV: name, json, now_ms, max flags, expected (`\0` = any).
/// Returns 1 when written, -1 when that would be more than the max flags, -2 when the flag's
/// value is no longer `expected`.
const SET_FLAG_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[5] ~= '\0' and (cur or '') ~= ARGV[5] then return -2 end
if not cur and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
bump_meta(KEYS[3], ARGV[3])
redis.call('PUBLISH', KEYS[2], 'flags')
return 1
"#
);

/// KEYS: flags, events, meta. ARGV: name, now_ms. Returns 1 when the flag existed.
const DELETE_FLAG_LUA: &str = concat!(
    bump_meta_lua!(),
    r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  bump_meta(KEYS[3], ARGV[2])
  redis.call('PUBLISH', KEYS[2], 'flags')
end
return removed
"#
);

/// Why a flag write was refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagWriteError {
    #[error("{0}")]
    Invalid(String),
    #[error("there are already {MAX_FLAGS} flags: delete one first")]
    TooMany,
    #[error("flag `{0}` changed while this command ran: try again")]
    Changed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redis::RedisError> for FlagWriteError {
    fn from(e: redis::RedisError) -> Self {
        FlagWriteError::Store(StoreError::Redis(e))
    }
}

/// Validate and write one flag. `expected`: the JSON the caller read (`Some("")` = absent),
/// written only if the stored value is still that; `None` writes whatever is there.
pub(super) async fn set_flag<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
    flag: &FlagConfig,
    expected: Option<&str>,
) -> Result<(), FlagWriteError> {
    check_flag_name(name).map_err(FlagWriteError::Invalid)?;
    flag.check()
        .map_err(|(k, e)| FlagWriteError::Invalid(format!("{k}: {e}")))?;
    let json = codec::encode(StoredKind::Flag, flag)
        .map_err(|e| FlagWriteError::Invalid(format!("flag `{name}`: {e}")))?;
    let written: i64 = script(keys, SET_FLAG_LUA)
        .key(keys.flags())
        .key(keys.events())
        .key(keys.meta())
        .key(guard_keys(keys))
        .arg(name)
        .arg(&json)
        .arg(now_ms())
        .arg(MAX_FLAGS)
        .arg(expected.unwrap_or("\0"))
        .invoke_async(conn)
        .await
        .map_err(StoreError::from)?;
    match written {
        1 => Ok(()),
        -1 => Err(FlagWriteError::TooMany),
        _ => Err(FlagWriteError::Changed(name.to_string())),
    }
}

/// Delete one flag; returns whether it existed.
pub(super) async fn delete_flag<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
) -> Result<bool, StoreError> {
    let removed: i64 = script(keys, DELETE_FLAG_LUA)
        .key(keys.flags())
        .key(keys.events())
        .key(keys.meta())
        .key(guard_keys(keys))
        .arg(name)
        .arg(now_ms())
        .invoke_async(conn)
        .await?;
    Ok(removed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn bad_flags_are_skipped_and_named() {
        let keys = Keys::new("t");
        let raw = Value::Array(
            [
                "good",
                r#"{"percent": 30}"#,
                "full",
                r#"{"enabled": true, "percent": 100, "salt": "s", "allow": ["u1"]}"#,
                "Bad_Name",
                r#"{"percent": 1}"#,
                "over",
                r#"{"percent": 150}"#,
                "junk",
                "not json",
                "typo",
                r#"{"percnt": 5}"#,
                "next",
                r#"{"schema": 1, "percent": 20, "rollout_group": "b", "allow": ["u2"]}"#,
                "newer",
                r#"{"schema": 2, "percent": 40}"#,
            ]
            .iter()
            .map(|s| bulk(s))
            .collect(),
        );
        let got = parse_flags(&raw, &keys);
        assert!(got.present);
        assert_eq!(
            got.flags.keys().collect::<Vec<_>>(),
            ["full", "good", "next", "typo"]
        );
        assert_eq!(got.flags["good"].percent.basis_points(), 3000);
        assert!(got.flags["good"].enabled);
        assert_eq!(got.flags["full"].allow, ["u1"]);
        // A field this release does not know (a newer writer's, or a typo: the same to a
        // reader) is ignored; the rest of the flag applies.
        assert_eq!(got.flags["next"].percent.basis_points(), 2000);
        assert_eq!(got.flags["next"].allow, ["u2"]);
        assert_eq!(got.flags["typo"].percent.basis_points(), 0);
        assert_eq!(got.problems.len(), 4, "{:?}", got.problems);
        assert!(got.problems.iter().any(|p| p.detail.contains("`newer`")
            && p.detail
                .contains("schema 2, newer than this release reads (1)")));
        assert!(got
            .problems
            .iter()
            .all(|p| p.kind == "flag" && p.key == "{t}:flags"));
        assert!(got.problems.iter().any(|p| p.detail.contains("`over`")));
        assert!(!parse_flags(&Value::Array(vec![]), &keys).present);
    }

    #[test]
    fn json_round_trips() {
        let flag: FlagConfig =
            serde_json::from_str(r#"{"percent": 12.5, "deny": ["x"]}"#).expect("flag");
        // Major 1 without the field: the release before refuses unknown keys in a flag.
        let json = codec::encode(StoredKind::Flag, &flag).expect("json");
        assert_eq!(json, r#"{"enabled":true,"percent":12.5,"deny":["x"]}"#);
        assert_eq!(decode_flag(json.as_bytes()), Ok(flag));
        assert!(decode_flag(br#"{"percent": 150}"#).is_err());
    }
}
