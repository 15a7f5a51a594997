//! The shadow step (issue 25): before any user is routed to the canary, the proxy copies a
//! share of production's requests to it and judges the pairs (production's answer and the
//! canary's to the same request). Real demo apps (whose errors and latency change through
//! `/_control`) or raw backends that record every byte they receive, the real proxy, the
//! rollout driven through the admin endpoints with 1 s windows.

mod common;

use std::path::Path;
use std::time::Duration;

use common::load::{Load, LoadSpec};
use common::raw::{raw_exchange, RawBackend, Received};
use common::rollout_admin::{command, wait_rollout};
use common::rollout_rig::{rig, Rig};
use common::{free_port, pools, post, proxy_config, serial, wait_until, App, Proxy};
use serde_json::Value;

/// `canary_lb_shadow_requests_total{outcome}` now.
fn copies(proxy: &Proxy, outcome: &str) -> f64 {
    proxy.scrape().sum(
        "canary_lb_shadow_requests_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
}

fn phase(v: &Value) -> &str {
    v["state"]["phase"].as_str().unwrap_or("none")
}

/// Shadow-step runs on the one-box rig (`tests/common/rollout_rig.rs`).
impl Rig {
    /// With the canary set by `control` (a `/_control` query, if any): load through the proxy,
    /// a rollout started with `steps`, waited on until it ends. Returns its last `/rollout`
    /// and the load, stopped.
    fn run_rollout(&self, control: Option<&str>, steps: &str) -> (Value, Load) {
        if let Some(query) = control {
            self.control(query);
        }
        let mut load = self.load(4, 5);
        wait_until("traffic flows", Duration::from_secs(10), || {
            load.count("production") > 50
        });
        command(&self.proxy, &format!("/rollout/start?steps={steps}"));
        let v = wait_rollout(
            &self.proxy,
            "the rollout ends",
            Duration::from_secs(40),
            |v| phase(v) != "progressing",
        );
        load.stop();
        (v, load)
    }
}

/// What every user saw: (answers, answers not 200, answers from canary).
fn user_outcomes(load: &Load) -> (usize, usize, usize) {
    let seen = load.seen();
    let bad = seen.iter().filter(|s| s.status != 200).count();
    let canary = seen
        .iter()
        .filter(|s| s.pool.as_deref() == Some("canary"))
        .count();
    (seen.len(), bad, canary)
}

/// Rolled back in the shadow step, and no user saw an error or the canary.
fn assert_rolled_back_unseen(v: &Value, load: &Load) {
    assert_eq!(phase(v), "rolled_back", "{v:#}");
    assert_weight_stayed_zero(v);
    let (answers, bad, canary) = user_outcomes(load);
    assert!(answers > 100, "only {answers} answers");
    assert_eq!(bad, 0, "users got errors");
    assert_eq!(canary, 0, "users were routed to canary");
}

/// Every history entry and the state say no user was routed to canary.
fn assert_weight_stayed_zero(v: &Value) {
    assert_eq!(v["state"]["weight"].as_f64(), Some(0.0), "{v:#}");
    for e in v["history"].as_array().into_iter().flatten() {
        assert_eq!(e["weight"].as_f64(), Some(0.0), "weight rose: {e}");
    }
    assert_eq!(
        v["state"]["shadow"]["done"].as_bool(),
        Some(false),
        "the shadow step was passed: {v:#}"
    );
}

const SHADOW: &str = "shadow: { percent: 100, windows: 5, timeout: 500ms }";

#[test]
fn a_healthy_canary_passes_the_shadow_step_and_then_meets_users() {
    let _serial = serial();
    let rig = rig("{ interval: 1s, min_requests: 20, threshold: 2, \
         shadow: { percent: 100, windows: 2, timeout: 500ms } }");
    let (v, load) = rig.run_rollout(None, "20,100");
    assert_eq!(phase(&v), "succeeded", "{v:#}");
    assert_eq!(v["state"]["shadow"]["done"].as_bool(), Some(true), "{v:#}");
    // The judged windows: two shadow passes at weight 0, then the steps.
    let judged: Vec<(String, f64)> = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["window"].is_u64())
        .map(|e| {
            (
                e["verdict"].as_str().unwrap_or("").to_string(),
                e["weight"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    assert!(
        judged.iter().all(|(verdict, _)| verdict == "pass"),
        "{judged:?}"
    );
    assert_eq!(judged.first().map(|j| j.1), Some(0.0), "{judged:?}");
    assert_eq!(
        judged.get(1).map(|j| j.1),
        Some(20.0),
        "step 1 after 2 shadow passes: {judged:?}"
    );
    let (_, bad, canary) = user_outcomes(&load);
    assert_eq!(bad, 0);
    assert!(canary > 0, "users reached the canary after the shadow step");
}

#[test]
fn a_canary_failing_30_percent_of_copies_is_rolled_back_in_the_shadow_step() {
    let _serial = serial();
    let rig = rig(&format!(
        "{{ interval: 1s, min_requests: 20, threshold: 2, {SHADOW} }}"
    ));
    let (v, load) = rig.run_rollout(Some("error_rate=0.3"), "10,50,100");
    assert_rolled_back_unseen(&v, &load);
    let answered = copies(&rig.proxy, "answered");
    assert!(answered > 20.0, "copies answered: {answered}");
}

#[test]
fn a_canary_50ms_slower_fails_the_paired_latency_rule() {
    let _serial = serial();
    let rig = rig(&format!(
        "{{ interval: 1s, min_requests: 20, threshold: 2, {SHADOW} }}"
    ));
    let (v, load) = rig.run_rollout(Some("latency_ms=50"), "10,50,100");
    assert_rolled_back_unseen(&v, &load);
    assert_eq!(
        v["state"]["reason"].as_str(),
        Some(LATENCY_FINDING),
        "{v:#}"
    );
}

/// The paired latency rule's finding, as a rollback's `reason` names it.
const LATENCY_FINDING: &str = "shadow latency";

#[test]
fn a_hanging_canary_costs_users_nothing_and_copies_stay_bounded() {
    let _serial = serial();
    let rig = rig("{ interval: 1s, min_requests: 20, threshold: 2, \
         shadow: { percent: 100, windows: 5, timeout: 300ms, max_in_flight: 4 } }");
    let (v, load) = rig.run_rollout(Some("latency_ms=60000"), "10,50,100");
    assert_rolled_back_unseen(&v, &load);
    let count = |outcome: &str| copies(&rig.proxy, outcome);
    assert!(count("timeout") > 0.0, "no copy timed out");
    // At most 4 copies out at once, each 300 ms: far fewer than the users' requests.
    assert!(
        count("dropped") > 0.0,
        "no copy was dropped at max_in_flight"
    );
    assert_eq!(count("answered"), 0.0);
}

// --- What a copy carries, byte for byte (raw backends) ---

/// A proxy over raw backends in a shadow step that never ends by itself (windows and
/// inconclusive runs at their maximum): every production request is copied.
fn raw_proxy(prod: &RawBackend, canary: &RawBackend, shadow: &str, log: &Path) -> Proxy {
    let proxy = Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\ngrace_period: 1s\n{}\
             health_check: {{ kind: tcp, interval: 1s, timeout: 500ms }}\n\
             routing: {{ canary_percent: 0 }}\n\
             access_log: {{ path: \"{}\" }}\n\
             rollout: {{ interval: 1s, min_requests: 1000000, max_inconclusive: 10000, \
             shadow: {{ percent: 100, windows: 10000, {shadow} }} }}\n",
            pools(&[&prod.addr()], &[&canary.addr()]),
            log.display()
        ),
    ));
    command(&proxy, "/rollout/start?steps=100");
    wait_until("the shadow step copies", Duration::from_secs(10), || {
        send(&proxy, "GET", "/warm", "", "");
        canary.count("/warm") > 0
    });
    proxy
}

/// One request as raw bytes; returns the status.
fn send(proxy: &Proxy, method: &str, path: &str, headers: &str, body: &str) -> u16 {
    let length = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: app.test\r\n{headers}{length}Connection: close\r\n\r\n{body}"
    );
    raw_exchange(proxy.listen_port(), req.as_bytes(), Duration::from_secs(10)).status
}

fn got(backend: &RawBackend, path: &str) -> Option<Received> {
    backend.received().into_iter().find(|r| r.path == path)
}

/// The copy of `path` once the canary received it.
fn copy_of(canary: &RawBackend, path: &str) -> Received {
    let mut copy = None;
    wait_until(
        &format!("the canary receives the copy of {path}"),
        Duration::from_secs(10),
        || {
            copy = got(canary, path);
            copy.is_some()
        },
    );
    copy.expect("waited for")
}

const CREDENTIALS: &str = "Cookie: session=secret-user-session\r\n\
                           Authorization: Bearer user-token\r\n\
                           Proxy-Authorization: Basic cHJveHk6cHc=\r\n";

#[test]
fn copies_carry_no_credentials_and_the_shadow_mark_no_client_can_forge() {
    let (prod, canary) = (RawBackend::start(), RawBackend::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let proxy = raw_proxy(&prod, &canary, "", &log);

    // A user request with credentials and a forged shadow mark.
    let forged = format!("{CREDENTIALS}X-Canary-Shadow: 1\r\nX-Request-Id: idcreds\r\n");
    assert_eq!(send(&proxy, "GET", "/creds?q=1", &forged, ""), 200);
    let real = got(&prod, "/creds?q=1").expect("production got the request");
    assert!(
        real.header_lines("x-canary-shadow").is_empty(),
        "a client's shadow mark reached production"
    );
    assert_eq!(real.header_lines("cookie"), ["session=secret-user-session"]);

    let copy = copy_of(&canary, "/creds?q=1");
    assert_eq!(copy.method, "GET");
    assert_eq!(copy.header_lines("x-canary-shadow"), ["1"]);
    assert_eq!(copy.header_lines("x-canary"), ["1"]);
    assert_eq!(copy.header_lines("x-request-id"), ["idcreds"]);
    for name in ["cookie", "authorization", "proxy-authorization"] {
        assert!(
            copy.header_lines(name).is_empty(),
            "the copy carried {name}: {:?}",
            String::from_utf8_lossy(&copy.head)
        );
    }
    let head = String::from_utf8_lossy(&copy.head).to_string();
    assert!(!head.contains("secret-user-session") && !head.contains("user-token"));

    // The access log marks the copy.
    wait_until("the copy is logged", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["request_id"] == "idcreds" && v["shadow"] == true && v["pool"] == "canary")
    });
}

#[test]
fn credentials_go_to_the_canary_only_when_configured() {
    let (prod, canary) = (RawBackend::start(), RawBackend::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let proxy = raw_proxy(&prod, &canary, "forward_credentials: true", &log);
    assert_eq!(send(&proxy, "GET", "/withcreds", CREDENTIALS, ""), 200);
    let copy = copy_of(&canary, "/withcreds");
    assert_eq!(copy.header_lines("cookie"), ["session=secret-user-session"]);
    assert_eq!(copy.header_lines("authorization"), ["Bearer user-token"]);
    assert!(copy.header_lines("proxy-authorization").is_empty());
}

#[test]
fn a_post_is_copied_only_when_its_method_is_listed() {
    let (prod, canary) = (RawBackend::start(), RawBackend::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let proxy = raw_proxy(&prod, &canary, "", &log);
    assert_eq!(send(&proxy, "POST", "/order", "", "item=1"), 200);
    assert_eq!(
        got(&prod, "/order").map(|r| r.body),
        Some(b"item=1".to_vec())
    );
    // A GET after it is copied, so the POST's copy would have been sent by now.
    assert_eq!(send(&proxy, "GET", "/after-post", "", ""), 200);
    copy_of(&canary, "/after-post");
    assert!(
        got(&canary, "/order").is_none(),
        "an unlisted POST was copied"
    );
    drop(proxy);

    let (prod, canary) = (RawBackend::start(), RawBackend::start());
    let proxy = raw_proxy(&prod, &canary, "methods: [GET, POST], max_body: 16", &log);
    assert_eq!(send(&proxy, "POST", "/listed", "", "item=2"), 200);
    let copy = copy_of(&canary, "/listed");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.body, b"item=2");
    assert_eq!(copy.header_lines("content-length"), ["6"]);
    // A body over max_body is not copied (production gets it whole).
    let big = "x".repeat(17);
    assert_eq!(send(&proxy, "POST", "/too-big", "", &big), 200);
    assert_eq!(got(&prod, "/too-big").map(|r| r.body.len()), Some(17));
    assert_eq!(send(&proxy, "GET", "/after-big", "", ""), 200);
    copy_of(&canary, "/after-big");
    assert!(
        got(&canary, "/too-big").is_none(),
        "a body over max_body was copied"
    );
    assert!(copies(&proxy, "too_large") >= 1.0);
    // A client that hangs up in the middle of its body: the request is never copied.
    let mut cut = common::raw::RawClient::connect(proxy.listen_port());
    cut.send(b"POST /cut HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc");
    drop(cut);
    assert_eq!(send(&proxy, "GET", "/after-cut", "", ""), 200);
    copy_of(&canary, "/after-cut");
    assert!(got(&canary, "/cut").is_none(), "a cut request was copied");
}

// --- Across replicas: the pairs of two proxies summed in Redis ---

#[test]
fn two_replicas_judge_the_shadow_step_together_through_redis() {
    let _serial = serial();
    let ns = "shadow-fleet";
    let redis = common::RedisServer::start();
    let prod = App::start("prod", "production");
    let canary = App::start("canary", "canary");
    for (pool, addr) in [("production", prod.addr()), ("canary", canary.addr())] {
        common::ctl_ok(&redis.url(), ns, &["register", "--pool", pool, &addr]);
    }
    let yaml = || {
        common::redis_proxy_config(
            redis.port(),
            ns,
            "routing: { canary_percent: 0, salt: \"shadow-salt\" }\n\
             trusted_proxies: [\"127.0.0.1/32\"]\n\
             rollout: { interval: 1s, min_requests: 20, threshold: 2, max_inconclusive: 100, \
                        shadow: { windows: 5, timeout: 500ms } }\n",
        )
    };
    let proxies = [Proxy::start(&yaml()), Proxy::start(&yaml())];
    for p in &proxies {
        wait_until(
            "the replica serves both pools",
            Duration::from_secs(20),
            || {
                let s = p.status_json();
                s["pools"]["production"]["in_rotation"] == 1
                    && s["pools"]["canary"]["in_rotation"] == 1
            },
        );
    }
    let r = post(&canary.url("/_control?error_rate=0.3"), &[], b"");
    assert_eq!(r.status, 200);
    let mut spec = LoadSpec::new(proxies.iter().map(|p| p.url("")).collect());
    spec.forwarded_for = true;
    spec.max_run = Duration::from_secs(90);
    let mut load = Load::start(spec);
    wait_until("traffic flows", Duration::from_secs(10), || {
        load.count("production") > 50
    });
    let config = proxies[0].config_path().display().to_string();
    let url = redis.url();
    let out = common::run_cli(
        &[
            "ctl",
            "--redis",
            &url,
            "--namespace",
            ns,
            "--config",
            &config,
            "rollout",
            "start",
            "--shadow",
            "100",
            "--steps",
            "10,100",
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = |p: &Proxy| p.status_json()["rollout"].clone();
    let mut last = Value::Null;
    wait_until(
        "both replicas see the rollback",
        Duration::from_secs(40),
        || {
            last = status(&proxies[0]);
            proxies
                .iter()
                .all(|p| status(p)["state"]["phase"] == "rolled_back")
        },
    );
    load.stop();
    assert_rolled_back_unseen(&last, &load);
    // Both replicas copied: each counted answered copies, and the judged pairs are their sum.
    for p in &proxies {
        assert!(copies(p, "answered") > 0.0, "a replica copied nothing");
    }
    let pairs: f64 = last["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e["numbers"]
                .as_array()?
                .iter()
                .find(|n| n[0] == "shadow_pairs")
                .and_then(|n| n[1].as_f64())
        })
        .sum();
    assert!(pairs >= 20.0, "pairs judged: {pairs}\n{last:#}");
}
