//! Stored values across a rolling upgrade (issue 20, observation 6): a real redis-server and a
//! real proxy of this release read what a newer release of the same schema major wrote (extra
//! fields at the top and nested in `settings` or a flag, written here by hand as the newer
//! writer would), and refuse a newer major with a log line and a metric, keeping what they
//! had instead of reading it as "no rollout".

mod common;

use std::time::Duration;

use canary_lb::config::schema::RolloutConfig;
use canary_lb::model::Percent;
use canary_lb::rollout::RolloutState;
use common::metrics::Scrape;
use common::store::{events_channel, flags_key, now_ms};
use common::*;
use serde_json::{json, Value};

/// Generous deadline for anything the proxy must notice on a loaded machine.
const NOTICE: Duration = Duration::from_secs(20);

/// A rollout at its second step (30 %) as a newer release of schema 1 would store it: this
/// release's fields plus some it does not know, at the top, in `settings` and deeper.
fn newer_writers_rollout(schema: u64) -> (RolloutState, String) {
    let settings = RolloutConfig {
        steps: [10, 30, 100]
            .into_iter()
            .map(|p| Percent::from_basis_points(p * 100))
            .collect(),
        interval: Duration::from_secs(3600),
        ..RolloutConfig::default()
    };
    let mut state = RolloutState::start(
        "r-next".into(),
        settings,
        "versions-salt".into(),
        now_ms(),
        None,
    )
    .expect("start");
    state.step = 1;
    state.weight = state.settings.steps[1];
    let mut v = serde_json::to_value(&state).expect("json");
    v["schema"] = json!(schema);
    v["judged_by"] = json!({ "rule": "binomial", "confidence": 0.99 });
    v["settings"]["confidence"] = json!(0.99);
    v["settings"]["client_share_max"] = json!(0.1);
    v["settings"]["error_rate"]["per_route"] = json!(true);
    v["step_counts"]["canary"]["clients"] = json!(12);
    (state, v.to_string())
}

/// Store `json` as the rollout the way the rollout script does (the readable copies too).
fn write_rollout(redis: &RedisServer, ns: &str, state: &RolloutState, json: &str) {
    let key = common::store::store(ns).rollout_key();
    let weight = state.weight.as_f64().to_string();
    let version = state.version.to_string();
    let updated = state.updated_ms.to_string();
    redis_cmd(
        &redis.url(),
        &[
            "HSET",
            &key,
            "json",
            json,
            "id",
            &state.id,
            "phase",
            "progressing",
            "weight",
            &weight,
            "step",
            "2/3",
            "version",
            &version,
            "updated_ms",
            &updated,
        ],
    );
}

fn write_flag(redis: &RedisServer, ns: &str, name: &str, json: &str) {
    let url = redis.url();
    redis_cmd(&url, &["HSET", &flags_key(ns), name, json]);
    redis_cmd(
        &url,
        &["HINCRBY", &common::store::meta_key(ns), "generation", "1"],
    );
    redis_cmd(&url, &["PUBLISH", &events_channel(ns), "flags"]);
}

fn metric(text: &str, series: &str) -> f64 {
    Scrape::parse(text).series(series).unwrap_or(-1.0)
}

fn flag_percent(status: &Value, name: &str) -> Option<f64> {
    status["flags"]["items"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["percent"].as_f64())
}

struct Rig {
    // Declared first: dropped (its log printed on panic) before the rest.
    proxy: Proxy,
    redis: RedisServer,
    _app: App,
}

fn rig(ns: &str) -> Rig {
    let redis = RedisServer::start();
    let app = App::start("versions-app", "production");
    ctl_ok(
        &redis.url(),
        ns,
        &["register", "--pool", "production", &app.addr()],
    );
    let proxy = Proxy::start(&redis_proxy_config(
        redis.port(),
        ns,
        "routing: { canary_percent: 0, salt: \"versions-salt\", user_header: X-User-Id }\n",
    ));
    Rig {
        proxy,
        redis,
        _app: app,
    }
}

#[test]
fn a_newer_writers_rollout_and_flag_of_the_same_major_are_applied() {
    let ns = "it-versions-same";
    let rig = rig(ns);
    let (state, json) = newer_writers_rollout(1);
    write_rollout(&rig.redis, ns, &state, &json);
    write_flag(
        &rig.redis,
        ns,
        "next-checkout",
        r#"{"schema":1,"enabled":true,"percent":30,"cohort":"b","allow":["u1"],"ramp":{"to":50}}"#,
    );
    wait_until("the rollout and the flag apply", NOTICE, || {
        let s = rig.proxy.status_json();
        s["rollout"]["state"]["id"] == "r-next"
            && s["routing"]["canary_percent"].as_f64() == Some(30.0)
            && flag_percent(&s, "next-checkout") == Some(30.0)
    });
    let s = rig.proxy.status_json();
    assert_eq!(s["rollout"]["state"]["phase"], "progressing", "{s:#}");
    assert_eq!(s["routing"]["canary_percent_from"], "rollout", "{s:#}");
    // The allow list of the flag applies: u1 gets it whatever its bucket.
    let r = get(&rig.proxy.url("/"), &[("X-User-Id", "u1")]);
    assert!(
        r.header("x-seen-features")
            .is_some_and(|f| f.contains("next-checkout")),
        "{r:?}"
    );
    let text = rig.proxy.metrics_text();
    assert_eq!(
        metric(&text, "canary_lb_discovery_errors_total{kind=\"flag\"}"),
        0.0,
        "{text}"
    );
    // Nothing was refused, and every kind of refusal is a series (at 0) all the same.
    for kind in ["rollout", "history", "flag", "state_file"] {
        let series = format!("canary_lb_store_newer_schema_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&text, &series), 0.0, "{series} missing:\n{text}");
    }
}

#[test]
fn a_newer_major_is_refused_with_a_log_line_and_a_metric_and_the_last_state_holds() {
    let ns = "it-versions-newer";
    let rig = rig(ns);
    let (state, json) = newer_writers_rollout(1);
    write_rollout(&rig.redis, ns, &state, &json);
    write_flag(&rig.redis, ns, "kept", r#"{"percent":100}"#);
    wait_until("the rollout applies", NOTICE, || {
        rig.proxy.status_json()["routing"]["canary_percent"].as_f64() == Some(30.0)
    });

    // A release with schema 2 writes the rollout and a flag.
    let (_, newer) = newer_writers_rollout(2);
    write_rollout(&rig.redis, ns, &state, &newer);
    write_flag(&rig.redis, ns, "newer", r#"{"schema":2,"percent":100}"#);
    wait_until("both refusals are counted", NOTICE, || {
        let text = rig.proxy.metrics_text();
        metric(
            &text,
            "canary_lb_store_newer_schema_total{kind=\"rollout\"}",
        ) >= 1.0
            && metric(&text, "canary_lb_store_newer_schema_total{kind=\"flag\"}") >= 1.0
    });
    let s = rig.proxy.status_json();
    // Not "no rollout": an error that says why, and the weight in force holds.
    let error = s["rollout"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("schema 2, newer than this release reads (1)"),
        "{s:#}"
    );
    assert_eq!(s["routing"]["canary_percent"].as_f64(), Some(30.0), "{s:#}");
    assert_eq!(flag_percent(&s, "kept"), Some(100.0), "{s:#}");
    assert_eq!(flag_percent(&s, "newer"), None, "{s:#}");
    let logs = rig.proxy.logs();
    assert!(
        logs.contains("is written with schema 2, newer than this release reads (1): upgrade"),
        "{logs}"
    );
    assert!(
        logs.contains("flag `newer`: written with schema 2"),
        "{logs}"
    );
    assert_eq!(
        rig.proxy
            .metrics_text()
            .lines()
            .find(|l| l.starts_with("canary_lb_rollout_leader ")),
        Some("canary_lb_rollout_leader 0"),
        "a replica that cannot read the rollout leaves the lease to one that can"
    );
}
