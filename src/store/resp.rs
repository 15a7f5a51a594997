//! Reading RESP replies in either protocol version: RESP2 flat arrays and RESP3 maps, sets and
//! arrays of pairs all come out as the same pairs and strings.

use redis::Value;

/// The bytes of a scalar reply (bulk, simple, integer or double).
pub(super) fn scalar(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Double(d) if d.is_infinite() => Some(
            if *d > 0.0 { "inf" } else { "-inf" }
                .to_string()
                .into_bytes(),
        ),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        _ => None,
    }
}

/// Field/value pairs of an `HGETALL` or `ZRANGE .. WITHSCORES` reply, in RESP2 (flat array)
/// or RESP3 (map, or array of pairs) form.
pub(super) fn raw_pairs(v: &Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    match v {
        Value::Map(m) => {
            for (k, v) in m {
                if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                    out.push((k, v));
                }
            }
        }
        Value::Array(items) if items.iter().all(|i| matches!(i, Value::Array(_))) => {
            for item in items {
                if let Value::Array(kv) = item {
                    if let [k, v] = kv.as_slice() {
                        if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                            out.push((k, v));
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            for kv in items.chunks_exact(2) {
                if let (Some(k), Some(v)) = (scalar(&kv[0]), scalar(&kv[1])) {
                    out.push((k, v));
                }
            }
        }
        _ => {}
    }
    out
}

/// [`raw_pairs`] as text (invalid UTF-8 replaced).
pub(super) fn pairs(v: &Value) -> Vec<(String, String)> {
    raw_pairs(v)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

/// The members of an `SMEMBERS` reply (RESP2 array or RESP3 set).
pub(super) fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items
            .iter()
            .filter_map(scalar)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect(),
        _ => Vec::new(),
    }
}
