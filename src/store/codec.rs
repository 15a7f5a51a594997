//! The version every JSON value canary-lb stores carries, and the lenient reading that lets a
//! release read what the next one wrote (docs/redis-schema.md, "Versions"; README, "Upgrading
//! a fleet").
//!
//! A stored value is a JSON object with a top-level `"schema": <major>` ([`SCHEMA`]); a value
//! without it is major 1, which is what releases before the field wrote. One exception while
//! the major is 1: a flag carries its version by leaving the field out
//! ([`StoredKind::writes_version`]), because the release before this one refuses any key it
//! does not know in a flag, `schema` included, and a stored value must stay readable by the
//! previous release (the first flag of major 2 will say so explicitly). Within one major a
//! writer only *adds* fields (and writes a new one only when it differs from its default), so
//! [`decode`] reads any same-major value: fields this release does not know are ignored at any
//! depth (logged at debug), even in types that refuse unknown keys in the config file (the
//! config types keep `deny_unknown_fields`, so a typo in the file is still an error naming
//! the key and the line). A value of a newer major is refused ([`DecodeError::Newer`]): its
//! meaning changed in a way this release cannot know, and guessing would route users by a
//! misread value. Every refusal is counted through the hook the runtime installs
//! ([`on_newer_schema`]: the metric `canary_lb_store_newer_schema_total{kind}`).
//!
//! How unknown fields are ignored: the value is parsed to a `serde_json::Value`, deserialized
//! with `serde_path_to_error`, and on an `unknown field` error the field at the error's path
//! is removed and the deserialization tried again (at most [`MAX_IGNORED`] times). Only that
//! error is forgiven; a wrong type, a missing required field or an unknown enum value still
//! refuses the value.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// The top-level field that holds the major version.
pub const SCHEMA_FIELD: &str = "schema";
/// The major version this release writes, and the newest it reads.
pub const SCHEMA: u64 = 1;
/// The most unknown fields one value may have before it is refused (a bound on the retries).
pub const MAX_IGNORED: usize = 64;

/// What a stored value is, for log lines and the `kind` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredKind {
    /// `ns:rollout` field `json`: the rollout state.
    Rollout,
    /// An entry of `ns:rollout:history`.
    History,
    /// A field of `ns:flags`.
    Flag,
    /// The file provider's rollout state file (`rollout.state_file`).
    StateFile,
}

impl StoredKind {
    pub const ALL: [StoredKind; 4] = [
        StoredKind::Rollout,
        StoredKind::History,
        StoredKind::Flag,
        StoredKind::StateFile,
    ];

    /// Whether values of this kind carry `"schema"` explicitly. Not a flag while the major is
    /// 1: releases before the version refuse unknown keys at a flag's top level (its config
    /// type), so `"schema": 1` would turn every flag off on them during an upgrade; the
    /// rollout state and history entries never refused unknown top-level keys.
    pub const fn writes_version(self) -> bool {
        !matches!(self, StoredKind::Flag) || SCHEMA > 1
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            StoredKind::Rollout => "rollout",
            StoredKind::History => "history",
            StoredKind::Flag => "flag",
            StoredKind::StateFile => "state_file",
        }
    }
}

/// Why a stored value was not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Written by a newer release whose format this one cannot read.
    #[error(
        "written with schema {found}, newer than this release reads ({SCHEMA}): upgrade this \
         process (README, \"Upgrading a fleet\")"
    )]
    Newer { found: u64 },
    /// Not JSON, not an object, or not the type expected; the text says where.
    #[error("{0}")]
    Invalid(String),
}

/// A value read, and the unknown fields that were ignored to read it (JSON paths).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    pub value: T,
    pub ignored: Vec<String>,
}

type Hook = Box<dyn Fn(StoredKind) + Send + Sync>;
static NEWER_SCHEMA_HOOK: OnceLock<Hook> = OnceLock::new();

/// Call `hook` for every value of `kind` refused as [`DecodeError::Newer`] in this process
/// (the runtime counts them in a metric; `ctl` installs none). The first hook stays.
pub fn on_newer_schema(hook: impl Fn(StoredKind) + Send + Sync + 'static) {
    let _ = NEWER_SCHEMA_HOOK.set(Box::new(hook));
}

#[derive(Serialize)]
struct Versioned<'a, T> {
    schema: u64,
    #[serde(flatten)]
    value: &'a T,
}

/// `value`, a value of `kind`, as JSON with `"schema": SCHEMA` first (unless the kind carries
/// major 1 by leaving it out). `value` must serialize as an object.
pub fn encode<T: Serialize>(kind: StoredKind, value: &T) -> Result<String, String> {
    let json = if kind.writes_version() {
        serde_json::to_string(&Versioned {
            schema: SCHEMA,
            value,
        })
    } else {
        serde_json::to_string(value)
    };
    json.map_err(|e| e.to_string())
}

/// Read a stored value of `kind` (see the module documentation).
pub fn decode<T: DeserializeOwned>(
    kind: StoredKind,
    raw: &[u8],
) -> Result<Decoded<T>, DecodeError> {
    let result = decode_value(raw);
    if matches!(result, Err(DecodeError::Newer { .. })) {
        if let Some(hook) = NEWER_SCHEMA_HOOK.get() {
            hook(kind);
        }
    }
    let decoded = result?;
    if !decoded.ignored.is_empty() {
        log::debug!(
            "store: read a {} ignoring fields this release does not know: {}",
            kind.as_str(),
            decoded.ignored.join(", ")
        );
    }
    Ok(decoded)
}

fn decode_value<T: DeserializeOwned>(raw: &[u8]) -> Result<Decoded<T>, DecodeError> {
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(DecodeError::Invalid("not a JSON object".into()));
    };
    let found = match object.remove(SCHEMA_FIELD) {
        None => 1,
        Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            DecodeError::Invalid(format!(
                "`{SCHEMA_FIELD}` must be an integer above 0, got {v}"
            ))
        })?,
    };
    if found > SCHEMA {
        return Err(DecodeError::Newer { found });
    }
    let mut value = Value::Object(object);
    let mut ignored = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return Ok(Decoded { value: v, ignored }),
            Err(e) => e,
        };
        let message = error.inner().to_string();
        let path = error.path().to_string();
        let removed = unknown_field_name(&message)
            .filter(|_| ignored.len() < MAX_IGNORED)
            .and_then(|name| remove_field(&mut value, error.path(), name));
        match removed {
            Some(at) => ignored.push(at),
            None if path == "." || path.is_empty() => return Err(DecodeError::Invalid(message)),
            None => return Err(DecodeError::Invalid(format!("{path}: {message}"))),
        }
    }
}

/// The field named by serde's `unknown field `x`, expected ...` message.
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Remove field `name` from the object the error's `path` leads to (the path names the
/// field itself, or the object holding it); returns the removed field's path.
fn remove_field(value: &mut Value, path: &serde_path_to_error::Path, name: &str) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut segments: Vec<&Segment> = path.iter().collect();
    if matches!(segments.last(), Some(Segment::Map { key }) if key == name) {
        segments.pop();
    }
    let mut at = value;
    let mut shown = Vec::new();
    for segment in segments {
        at = match segment {
            Segment::Map { key } => {
                shown.push(key.clone());
                at.as_object_mut()?.get_mut(key)?
            }
            Segment::Seq { index } => {
                shown.push(index.to_string());
                at.as_array_mut()?.get_mut(*index)?
            }
            // Our stored types have no enum variants holding structs; anything else is not a
            // place a field can be removed from.
            _ => return None,
        };
    }
    let object: &mut Map<String, Value> = at.as_object_mut()?;
    object.remove(name)?;
    shown.push(name.to_string());
    Some(shown.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
        #[serde(default)]
        b: Vec<String>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Inner,
        list: Vec<Inner>,
    }

    fn outer() -> Outer {
        Outer {
            name: "x".into(),
            inner: Inner { a: 1, b: vec![] },
            list: vec![Inner {
                a: 2,
                b: vec!["y".into()],
            }],
        }
    }

    #[test]
    fn encode_puts_the_version_first_and_decode_reads_it_back() {
        let json = encode(StoredKind::Rollout, &outer()).expect("encode");
        assert!(json.starts_with(r#"{"schema":1,"name":"x""#), "{json}");
        let back: Decoded<Outer> = decode(StoredKind::Rollout, json.as_bytes()).expect("decode");
        assert_eq!(back.value, outer());
        assert!(back.ignored.is_empty());
        // A flag of major 1 says so by leaving the field out (see `writes_version`).
        let json = encode(StoredKind::Flag, &outer()).expect("encode");
        assert!(json.starts_with(r#"{"name":"x""#), "{json}");
        let back: Decoded<Outer> = decode(StoredKind::Flag, json.as_bytes()).expect("decode");
        assert_eq!(back.value, outer());
    }

    #[test]
    fn a_value_without_a_version_is_major_1() {
        let json = serde_json::to_string(&outer()).expect("json");
        let back: Decoded<Outer> = decode(StoredKind::Flag, json.as_bytes()).expect("decode");
        assert_eq!(back.value, outer());
    }

    #[test]
    fn unknown_fields_of_the_same_major_are_ignored_at_any_depth() {
        let json = r#"{"schema":1,"name":"x","new_top":{"deep":[1,2]},
            "inner":{"a":1,"new_inner":true},
            "list":[{"a":2,"b":["y"],"new_in_list":"z","another":0}]}"#;
        let back: Decoded<Outer> = decode(StoredKind::Flag, json.as_bytes()).expect("decode");
        assert_eq!(back.value, outer());
        let mut ignored = back.ignored.clone();
        ignored.sort();
        assert_eq!(
            ignored,
            [
                "inner.new_inner",
                "list.0.another",
                "list.0.new_in_list",
                "new_top"
            ],
            "{:?}",
            back.ignored
        );
    }

    #[test]
    fn a_newer_major_is_refused_and_counted_through_the_hook() {
        static SEEN: std::sync::Mutex<Vec<StoredKind>> = std::sync::Mutex::new(Vec::new());
        on_newer_schema(|kind| SEEN.lock().expect("lock").push(kind));
        let json = r#"{"schema":2,"name":"x","inner":{"a":1},"list":[]}"#;
        let err = decode::<Outer>(StoredKind::Rollout, json.as_bytes()).expect_err("newer");
        assert_eq!(err, DecodeError::Newer { found: 2 });
        assert!(err
            .to_string()
            .contains("schema 2, newer than this release reads (1)"));
        // The hook is process-wide: another test may have installed its own first.
        if let Ok(seen) = SEEN.lock() {
            if !seen.is_empty() {
                assert_eq!(*seen, [StoredKind::Rollout]);
            }
        }
    }

    #[test]
    fn other_errors_still_refuse_the_value_and_name_the_place() {
        let wrong_type = r#"{"name":"x","inner":{"a":"one"},"list":[]}"#;
        let err = decode::<Outer>(StoredKind::Flag, wrong_type.as_bytes()).expect_err("type");
        assert!(err.to_string().starts_with("inner.a:"), "{err}");
        let missing = r#"{"name":"x","list":[]}"#;
        assert!(decode::<Outer>(StoredKind::Flag, missing.as_bytes()).is_err());
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"{"schema":"1"}"#,
            br#"{"schema":0}"#,
        ] {
            assert!(
                matches!(
                    decode::<Outer>(StoredKind::Flag, bad),
                    Err(DecodeError::Invalid(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: String = (0..=MAX_IGNORED).map(|i| format!(r#""x{i}":0,"#)).collect();
        let json = format!(r#"{{{many}"name":"x","inner":{{"a":1}},"list":[]}}"#);
        assert!(decode::<Outer>(StoredKind::Flag, json.as_bytes()).is_err());
    }
}
