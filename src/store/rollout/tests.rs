//! The rollout store's encodings and checks that need no Redis (the Redis round trips are in
//! `tests/rollout_store.rs` and `tests/rollout_redis.rs`).

use super::encoding::bucket_count;
use super::*;
use crate::config::schema::RolloutConfig;
use crate::model::Percent;
use crate::rollout::{Phase, PoolWindow};

fn window(requests: u64, errors: u64, bucket: usize) -> PoolWindow {
    let mut w = PoolWindow {
        requests,
        errors,
        ..PoolWindow::default()
    };
    w.buckets[bucket] = requests;
    w
}

#[test]
fn counts_round_trip_through_their_fields() {
    let mut counts = WindowCounts {
        production: window(900, 3, 4),
        canary: window(100, 7, bucket_count() - 1),
    };
    counts.canary.capped = 40;
    counts.canary.client_max_errors = 1;
    counts.canary.client_max_slow = 2;
    let fields: Vec<(String, String)> = encode_counts(&counts)
        .into_iter()
        .map(|(f, v)| (f, v.to_string()))
        .collect();
    assert!(fields.contains(&("canary:b14".to_string(), "100".to_string())));
    assert!(
        !fields.iter().any(|(_, v)| v == "0"),
        "zero counts are not sent: {fields:?}"
    );
    let mut with_meta = fields.clone();
    with_meta.push(("reporters".into(), "2".into()));
    with_meta.push(("reporter:abc".into(), "1".into()));
    let decoded = decode_counts(&with_meta);
    assert_eq!(decoded.counts, counts);
    assert_eq!(decoded.reporters, 2);
    assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
}

/// The shadow step's pair counts: written as `canary:pairs`, ... (only the non-zero ones) and
/// read back; what an older release wrote (no pair fields) reads as zeros.
#[test]
fn pair_counts_round_trip_and_an_older_report_reads_as_no_pairs() {
    let mut counts = WindowCounts {
        production: window(900, 3, 4),
        canary: PoolWindow::default(),
    };
    let c = &mut counts.canary;
    (c.pairs, c.pair_mismatches, c.pair_slower, c.pair_not_slower) = (80, 3, 2, 75);
    (c.pair_body_compared, c.pair_body_mismatches, c.pairs_capped) = (60, 1, 9);
    c.client_max_pair_mismatches = 1;
    c.client_max_pair_slower = 2;
    c.client_max_pair_body_mismatches = 1;
    let fields: Vec<(String, String)> = encode_counts(&counts)
        .into_iter()
        .map(|(f, v)| (f, v.to_string()))
        .collect();
    for (f, v) in [
        ("canary:pairs", "80"),
        ("canary:pair_mismatches", "3"),
        ("canary:pair_slower", "2"),
        ("canary:pair_not_slower", "75"),
        ("canary:pair_body_compared", "60"),
        ("canary:pair_body_mismatches", "1"),
        ("canary:pairs_capped", "9"),
        ("canary:client_max_pair_mismatches", "1"),
        ("canary:client_max_pair_slower", "2"),
        ("canary:client_max_pair_body_mismatches", "1"),
    ] {
        assert!(
            fields.contains(&(f.to_string(), v.to_string())),
            "{f} missing: {fields:?}"
        );
    }
    assert!(
        !fields.iter().any(|(f, _)| f.starts_with("production:pair")),
        "no pairs, no fields: {fields:?}"
    );
    let decoded = decode_counts(&fields);
    assert_eq!(decoded.counts, counts);
    assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
    // Summed over replicas (HINCRBY of each field): the sum of the counts.
    let mut twice = counts.clone();
    twice.canary.add(&counts.canary);
    assert_eq!(twice.canary.pairs, 160);
    assert_eq!(twice.canary.client_max_pair_slower, 4);

    // A report of the release before pairs: its fields only.
    let older: Vec<(String, String)> = [
        ("canary:requests", "0"),
        ("production:requests", "400"),
        ("production:b3", "400"),
        ("reporters", "1"),
    ]
    .iter()
    .map(|(f, v)| (f.to_string(), v.to_string()))
    .collect();
    let decoded = decode_counts(&older);
    assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
    assert_eq!(decoded.counts.canary, PoolWindow::default());
    assert_eq!(decoded.counts.production.requests, 400);

    // The stored state's step counts: pair fields only when counted, and read back; JSON
    // without them (any older state) reads as zeros.
    let json = serde_json::to_value(&counts.canary).expect("json");
    assert_eq!(json["pairs"], serde_json::json!(80));
    let plain = serde_json::to_value(&counts.production).expect("json");
    assert!(plain.get("pairs").is_none(), "{plain}");
    let back: PoolWindow = serde_json::from_value(json).expect("read");
    assert_eq!(back, counts.canary);
    let old: PoolWindow =
        serde_json::from_str(r#"{"requests": 5, "errors": 0, "buckets": [5]}"#).expect("read");
    assert_eq!((old.requests, old.pairs, old.pair_slower), (5, 0, 0));
}

#[test]
fn bad_count_fields_are_listed_and_skipped() {
    let fields: Vec<(String, String)> = [
        ("canary:requests", "12"),
        ("canary:errors", "lots"),
        ("canary:b999999999", "5"),
        ("canary:b-1", "5"),
        ("staging:requests", "5"),
        ("production:latency", "5"),
        ("nonsense", "5"),
        ("reporters", "-1"),
    ]
    .iter()
    .map(|(f, v)| (f.to_string(), v.to_string()))
    .collect();
    let decoded = decode_counts(&fields);
    assert_eq!(decoded.counts.canary.requests, 12);
    assert_eq!(decoded.counts.canary.errors, 0);
    assert_eq!(decoded.counts.canary.buckets.len(), bucket_count());
    assert_eq!(decoded.reporters, 0);
    assert_eq!(decoded.problems.len(), 7, "{:?}", decoded.problems);
    assert!(decoded.problems.iter().any(|p| p.contains("lots")));
}

#[test]
fn state_and_entry_round_trip_as_json() {
    let state = RolloutState::start(
        "r-1".into(),
        RolloutConfig::default(),
        "salt-1".into(),
        1_000,
        None,
    )
    .expect("start");
    let json = encode_state(&state).expect("encode");
    assert_eq!(decode_state(json.as_bytes()).expect("decode"), state);
    assert!(decode_state(b"{\"id\": 1}").is_err());
    assert!(decode_state(b"\xff\xfe").is_err());

    let entry = HistoryEntry {
        rollout_id: "r-1".into(),
        window: Some(3),
        at_ms: 5,
        verdict: "fail".into(),
        reasons: vec!["canary error rate 4.1 % > 1 %".into()],
        numbers: vec![
            ("canary_error_percent".into(), 4.1),
            ("z".into(), f64::INFINITY),
            ("ratio".into(), f64::NAN),
        ],
        phase: Phase::Progressing,
        step: 1,
        weight: Percent::from_basis_points(1000),
    };
    let json = encode_entry(&entry).expect("encode");
    assert!(json.starts_with(r#"{"schema":1,"#), "{json}");
    let back: HistoryEntry = codec::decode(StoredKind::History, json.as_bytes())
        .expect("decode")
        .value;
    assert_eq!(back.numbers, vec![("canary_error_percent".into(), 4.1)]);
    assert_eq!(back.reasons, entry.reasons);
}

#[test]
fn a_state_a_newer_release_wrote_is_read_and_a_newer_major_is_refused() {
    let state = RolloutState::start(
        "r-1".into(),
        RolloutConfig::default(),
        "salt-1".into(),
        1_000,
        None,
    )
    .expect("start");
    let mut v: serde_json::Value =
        serde_json::from_str(&encode_state(&state).expect("encode")).expect("json");
    // What a next release might add: fields at the top, in `settings` (whose config type
    // refuses unknown keys in the file), deeper in it, and in the step counts.
    v["leader_note"] = serde_json::json!({"by": "next"});
    v["settings"]["cohort_size"] = serde_json::json!(0.99);
    v["settings"]["latency"]["p999_max"] = serde_json::json!("900ms");
    v["step_counts"]["canary"]["slow"] = serde_json::json!(3);
    let raw = serde_json::to_vec(&v).expect("json");
    assert_eq!(decode_state(&raw).expect("read leniently"), state);

    v["schema"] = serde_json::json!(2);
    let raw = serde_json::to_vec(&v).expect("json");
    assert_eq!(decode_state(&raw), Err(DecodeError::Newer { found: 2 }));
}

#[test]
fn stream_replies_are_read_in_both_shapes() {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let reply = Value::Array(vec![
        Value::Array(vec![
            bulk("2-0"),
            Value::Array(vec![bulk("entry"), bulk("{}")]),
        ]),
        Value::Array(vec![
            bulk("1-0"),
            Value::Map(vec![(bulk("entry"), bulk("x"))]),
        ]),
        bulk("garbage"),
    ]);
    let entries = stream_entries(&reply);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].0, "2-0");
    assert_eq!(entries[1].1, vec![("entry".to_string(), "x".to_string())]);
}
