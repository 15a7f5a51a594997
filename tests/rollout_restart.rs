//! A restart in the middle of a rollout (issue 20): with the file provider the rollout is kept
//! in `rollout.state_file`, so a proxy killed and started again with the same config takes the
//! rollout back (same id, weight and salt: users in canary stay in canary) and says so in its
//! log and `/status`; an ended rollout's weight survives a restart too; an explicit state file
//! that cannot be written stops the start, naming the key.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::load::{Load, LoadSpec};
use common::rollout_admin::{admin, rollout, wait_rollout};
use common::{free_port, get, post, proxy_config, run_cli, serial, wait_until, App, Proxy};

/// Users whose pools are compared across the restart.
const USERS: usize = 300;

struct Apps {
    prod: App,
    canary: App,
}

fn apps() -> Apps {
    Apps {
        prod: App::start("prod-1", "production"),
        canary: App::start("canary-1", "canary"),
    }
}

/// A file-provider proxy config at canary_percent 0 whose rollout is kept in `state_file`.
fn yaml(apps: &Apps, state_file: &str) -> String {
    proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 2\npools:\n  production: {{ servers: [\"{}\"] }}\n  canary: {{ servers: [\"{}\"] }}\n\
             health_check: {{ kind: http, path: /healthz, interval: 500ms, timeout: 2s }}\n\
             routing: {{ canary_percent: 0, salt: restart-it }}\n\
             rollout: {{ interval: 1s, min_requests: 5, max_inconclusive: 30, \
                         latency: {{ floor: 200ms }}, state_file: \"{state_file}\" }}\n",
            apps.prod.addr(),
            apps.canary.addr()
        ),
    )
}

/// Each sampled user's pool (`X-Canary-Pool`) through `proxy`.
fn pools(proxy: &Proxy) -> BTreeMap<usize, String> {
    (0..USERS)
        .map(|u| {
            let cookie = format!("canary_uid=u-{u}");
            let r = get(&proxy.url("/"), &[("cookie", &cookie)]);
            assert_eq!(r.status, 200, "user u-{u}: {r:?}");
            (u, r.pool().unwrap_or("none").to_string())
        })
        .collect()
}

fn in_canary(pools: &BTreeMap<usize, String>) -> Vec<usize> {
    pools
        .iter()
        .filter(|(_, p)| *p == "canary")
        .map(|(u, _)| *u)
        .collect()
}

#[test]
fn a_restarted_proxy_resumes_the_rollout_and_canary_users_stay_in_canary() {
    let _serial = serial();
    let apps = apps();
    let dir = tempfile::tempdir().expect("temp dir");
    let state_file = dir.path().join("rollout-state.json");
    let yaml = yaml(&apps, &state_file.display().to_string());
    let proxy = Proxy::start(&yaml);
    let mut spec = LoadSpec::new(vec![proxy.url("")]);
    spec.threads = 2;
    spec.pause = Duration::from_millis(10);
    spec.max_run = Duration::from_secs(90);
    let load = Load::start(spec);
    wait_until("traffic flows", Duration::from_secs(10), || {
        load.count("production") > 30
    });
    let r = post(
        &admin(
            &proxy,
            "/rollout/start?steps=10,40,100&interval=1s&windows_per_step=3",
        ),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "start: {}", r.body);
    let before = wait_rollout(&proxy, "the second step", Duration::from_secs(30), |v| {
        v["state"]["step"].as_u64() == Some(1)
    });
    let id = before["state"]["id"].as_str().expect("id").to_string();
    let pools_before = pools(&proxy);
    let still = rollout(&proxy);
    assert_eq!(
        (
            still["state"]["step"].as_u64(),
            still["state"]["weight"].as_f64()
        ),
        (Some(1), Some(40.0)),
        "the rollout moved while sampling: {still:#}"
    );
    let canary_before = in_canary(&pools_before);
    assert!(
        canary_before.len() > USERS / 5,
        "about 40 % of users are in canary: {canary_before:?}"
    );

    // SIGKILL: the state must already be on disk.
    drop(proxy);
    let proxy = Proxy::start(&yaml);

    // Right away, before any window after the restart can be judged.
    let after = rollout(&proxy);
    let state = &after["state"];
    assert_eq!(state["id"], id.as_str(), "{after:#}");
    assert_eq!(state["phase"], "progressing", "{after:#}");
    assert_eq!(state["weight"].as_f64(), Some(40.0), "{after:#}");
    let resumed = &state["resumed_from_file"];
    assert!(
        resumed["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("resumed after a restart")),
        "/rollout says it resumed: {after:#}"
    );
    assert!(resumed["skipped_windows"].as_u64().is_some(), "{after:#}");
    let status = proxy.status_json();
    assert_eq!(
        status["routing"]["canary_percent"].as_f64(),
        Some(40.0),
        "{status:#}"
    );
    assert_eq!(
        status["rollout"]["state"]["resumed_from_file"], *resumed,
        "/status says it resumed too: {status:#}"
    );
    assert!(
        proxy
            .logs()
            .contains(&format!("rollout {id}: taken over from")),
        "{}",
        proxy.logs()
    );
    let pools_after = pools(&proxy);
    let weight_now = rollout(&proxy)["state"]["weight"].as_f64();
    let moved: Vec<_> = canary_before
        .iter()
        .filter(|u| pools_after[u] != "canary")
        .collect();
    assert!(
        moved.is_empty(),
        "canary users moved out of canary: {moved:?}"
    );
    if weight_now == Some(40.0) {
        assert_eq!(
            pools_after, pools_before,
            "same weight, same salt: nobody moves"
        );
    }

    // The rollout goes on from there (the load never stopped: same ports), judging only
    // windows that began after the restart.
    let first_after = state["next_window"].as_u64().expect("next_window");
    let done = wait_rollout(&proxy, "the rollout ends", Duration::from_secs(60), |v| {
        v["state"]["phase"] != "progressing"
    });
    let mut load = load;
    load.stop();
    assert!(load.flip_flops().is_empty(), "{:?}", load.flip_flops());
    assert_eq!(done["state"]["phase"], "succeeded", "{done:#}");
    let history = done["history"].as_array().expect("history");
    let restart = history
        .iter()
        .position(|e| e["verdict"] == "restart")
        .unwrap_or_else(|| panic!("a restart entry in the history: {done:#}"));
    for e in &history[restart + 1..] {
        if let Some(w) = e["window"].as_u64() {
            assert!(
                w >= first_after,
                "window {w} was judged across the restart: {done:#}"
            );
        }
    }
}

#[test]
fn an_ended_rollouts_weight_survives_a_restart() {
    let _serial = serial();
    let apps = apps();
    let dir = tempfile::tempdir().expect("temp dir");
    let state_file = dir.path().join("rollout-state.json");
    let yaml = yaml(&apps, &state_file.display().to_string());
    let proxy = Proxy::start(&yaml);
    let r = post(
        &admin(&proxy, "/rollout/start?steps=10,50,100&interval=1h"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "start: {}", r.body);
    let r = post(&admin(&proxy, "/rollout/promote"), &[], b"");
    assert_eq!(r.status, 200, "promote: {}", r.body);
    let saved = std::fs::read_to_string(&state_file).expect("the state file is written");
    assert!(saved.starts_with(r#"{"schema":1,"#), "{saved}");
    drop(proxy);

    let proxy = Proxy::start(&yaml);
    let status = proxy.status_json();
    assert_eq!(
        status["routing"]["canary_percent"].as_f64(),
        Some(100.0),
        "the promoted weight, not the file's 0: {status:#}"
    );
    assert_eq!(
        status["rollout"]["state"]["phase"], "succeeded",
        "{status:#}"
    );
    let r = get(&proxy.url("/"), &[("cookie", "canary_uid=anyone")]);
    assert_eq!(r.pool(), Some("canary"), "{r:?}");
}

#[test]
fn the_default_state_file_is_beside_the_config_and_an_unwritable_one_stops_the_start() {
    let apps = apps();
    let yaml = proxy_config(
        free_port(),
        free_port(),
        &format!(
            "pools:\n  production: {{ servers: [\"{}\"] }}\n  canary: {{ servers: [\"{}\"] }}\n",
            apps.prod.addr(),
            apps.canary.addr()
        ),
    );
    let proxy = Proxy::start(&yaml);
    let r = post(
        &admin(&proxy, "/rollout/start?steps=10,100&interval=1h"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "start: {}", r.body);
    let mut beside = proxy.config_path().as_os_str().to_owned();
    beside.push(".rollout-state.json");
    let saved = std::fs::read_to_string(&beside).expect("the default state file");
    assert!(saved.contains(r#""phase":"progressing""#), "{saved}");
    drop(proxy);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("canary-lb.yaml");
    let unwritable = "/nonexistent-canary-lb-dir/rollout-state.json";
    std::fs::write(
        &config,
        format!(
            "{yaml}rollout: {{ state_file: \"{unwritable}\" }}\n",
            yaml = proxy_config(free_port(), free_port(), "")
        ),
    )
    .expect("write config");
    let out = run_cli(
        &["serve", "--config", &config.display().to_string()],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rollout.state_file") && stderr.contains(unwritable),
        "{stderr}"
    );
}
