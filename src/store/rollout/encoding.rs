//! What the rollout writes in Redis and reads back: state, history entries, window counts.

use redis::Value;

use super::super::codec::{self, DecodeError, StoredKind};
use super::super::resp::{pairs, scalar};
use crate::model::{PoolKind, LATENCY_BUCKETS_S};
use crate::rollout::{CoordError, HistoryEntry, PoolWindow, RolloutState, WindowCounts};

pub(super) fn encode_state(state: &RolloutState) -> Result<String, CoordError> {
    codec::encode(StoredKind::Rollout, state)
        .map_err(|e| CoordError(format!("encode the rollout state: {e}")))
}

/// The stored state (unknown fields of the same major ignored); an error names what does not
/// parse, or the newer major.
pub(crate) fn decode_state(raw: &[u8]) -> Result<RolloutState, DecodeError> {
    codec::decode(StoredKind::Rollout, raw).map(|d| d.value)
}

/// JSON cannot hold NaN or infinity (serde_json writes `null`, which would not read back):
/// such numbers are left out of the stored entry.
pub(super) fn encode_entry(entry: &HistoryEntry) -> Result<String, CoordError> {
    let mut entry = entry.clone();
    entry.numbers.retain(|(_, v)| v.is_finite());
    codec::encode(StoredKind::History, &entry)
        .map_err(|e| CoordError(format!("encode a history entry: {e}")))
}

/// The increments of a report: only the non-zero counts, as `(field, value)`.
pub(super) fn encode_counts(counts: &WindowCounts) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for pool in PoolKind::ALL {
        let w = &counts[pool];
        let mut push = |name: String, v: u64| {
            if v > 0 {
                out.push((name, v.min(i64::MAX as u64)));
            }
        };
        push(format!("{pool}:requests"), w.requests);
        push(format!("{pool}:errors"), w.errors);
        // The per-client figures sum over replicas like the counts (HINCRBY), which is what
        // the judgement takes out ("the busiest client of each replica, summed").
        push(format!("{pool}:capped"), w.capped);
        push(format!("{pool}:client_max_errors"), w.client_max_errors);
        push(format!("{pool}:client_max_slow"), w.client_max_slow);
        // The shadow step's pairs (the canary's only; 0, so not written, otherwise).
        for (name, v) in pair_fields(w) {
            push(format!("{pool}:{name}"), v);
        }
        for (i, b) in w.buckets.iter().enumerate().take(bucket_count()) {
            push(format!("{pool}:b{i}"), *b);
        }
    }
    out
}

/// The pair counts of a window by field name (after `<pool>:`), in the order written. A
/// release before them lists each as an unknown field (one warning per field and collected
/// window, and its bad-data count) and judges the window without them, as it would anyway:
/// it knows no shadow step, and they are written only while one runs.
fn pair_fields(w: &PoolWindow) -> [(&'static str, u64); 10] {
    [
        ("pairs", w.pairs),
        ("pair_mismatches", w.pair_mismatches),
        ("pair_slower", w.pair_slower),
        ("pair_not_slower", w.pair_not_slower),
        ("pair_body_compared", w.pair_body_compared),
        ("pair_body_mismatches", w.pair_body_mismatches),
        ("pairs_capped", w.pairs_capped),
        ("client_max_pair_mismatches", w.client_max_pair_mismatches),
        ("client_max_pair_slower", w.client_max_pair_slower),
        (
            "client_max_pair_body_mismatches",
            w.client_max_pair_body_mismatches,
        ),
    ]
}

/// The pair count of `w` named `name` (as in [`pair_fields`]).
fn pair_field<'a>(w: &'a mut PoolWindow, name: &str) -> Option<&'a mut u64> {
    Some(match name {
        "pairs" => &mut w.pairs,
        "pair_mismatches" => &mut w.pair_mismatches,
        "pair_slower" => &mut w.pair_slower,
        "pair_not_slower" => &mut w.pair_not_slower,
        "pair_body_compared" => &mut w.pair_body_compared,
        "pair_body_mismatches" => &mut w.pair_body_mismatches,
        "pairs_capped" => &mut w.pairs_capped,
        "client_max_pair_mismatches" => &mut w.client_max_pair_mismatches,
        "client_max_pair_slower" => &mut w.client_max_pair_slower,
        "client_max_pair_body_mismatches" => &mut w.client_max_pair_body_mismatches,
        _ => return None,
    })
}

/// Per-bucket counts kept per pool: the bounds plus `+Inf`.
pub(super) fn bucket_count() -> usize {
    LATENCY_BUCKETS_S.len() + 1
}

#[derive(Debug, Default)]
pub(super) struct DecodedCounts {
    pub(super) counts: WindowCounts,
    pub(super) reporters: u32,
    pub(super) problems: Vec<String>,
}

/// A window hash's fields as counts; unknown fields and bad numbers are listed, not counted.
pub(super) fn decode_counts(fields: &[(String, String)]) -> DecodedCounts {
    let mut out = DecodedCounts::default();
    for (field, value) in fields {
        if field.starts_with("reporter:") {
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            out.problems
                .push(format!("`{field}` = `{value}` is not a count"));
            continue;
        };
        if field == "reporters" {
            out.reporters = u32::try_from(n).unwrap_or(u32::MAX);
            continue;
        }
        let parsed = field.split_once(':').and_then(|(pool, what)| {
            let pool = PoolKind::parse(pool).ok()?;
            Some((pool, what))
        });
        let window = parsed.map(|(pool, what)| (&mut out.counts[pool], what));
        match window {
            Some((w, "requests")) => w.requests = n,
            Some((w, "errors")) => w.errors = n,
            Some((w, "capped")) => w.capped = n,
            Some((w, "client_max_errors")) => w.client_max_errors = n,
            Some((w, "client_max_slow")) => w.client_max_slow = n,
            Some((w, what)) => match pair_field(w, what) {
                Some(v) => *v = n,
                None => match what
                    .strip_prefix('b')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|i| *i < bucket_count())
                {
                    Some(i) => {
                        if w.buckets.len() < bucket_count() {
                            w.buckets.resize(bucket_count(), 0);
                        }
                        w.buckets[i] = n;
                    }
                    None => out.problems.push(format!("unknown field `{field}`")),
                },
            },
            None => out.problems.push(format!("unknown field `{field}`")),
        }
    }
    out
}

/// The entries of an `XRANGE`/`XREVRANGE` reply: (stream id, field/value pairs).
pub(super) fn stream_entries(v: &Value) -> Vec<(String, Vec<(String, String)>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(parts) => match parts.as_slice() {
                [id, fields] => {
                    let id = String::from_utf8_lossy(&scalar(id)?).into_owned();
                    Some((id, pairs(fields)))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}
