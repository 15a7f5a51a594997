//! A proxy's rollout through its admin endpoint (`metrics_listen`): read it, command it, wait
//! on it, as an operator with curl would.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{get, post, Proxy};

/// The admin URL of `path` on `proxy`.
pub fn admin(proxy: &Proxy, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", proxy.metrics_port())
}

/// `GET /rollout`: `{state, history, leader, replica}`.
pub fn rollout(proxy: &Proxy) -> Value {
    let r = get(&admin(proxy, "/rollout"), &[]);
    assert_eq!(r.status, 200, "GET /rollout: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// POST a rollout command (`/rollout/start?steps=..`); panics unless it answers 200.
pub fn command(proxy: &Proxy, path_and_query: &str) -> String {
    let r = post(&admin(proxy, path_and_query), &[], b"");
    assert_eq!(r.status, 200, "POST {path_and_query}: {}", r.body);
    r.body
}

/// Poll `/rollout` until `done` holds; returns the last answer. On timeout the panic shows
/// the last answer (history with its numbers), which says why.
pub fn wait_rollout(
    proxy: &Proxy,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = rollout(proxy);
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}; last /rollout:\n{v:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `rollout` object of a replica's `/status`.
pub fn rollout_of(proxy: &Proxy) -> Value {
    proxy.status_json()["rollout"].clone()
}

/// The phase of [`rollout_of`] (`none` without a rollout).
pub fn phase_of(proxy: &Proxy) -> String {
    rollout_of(proxy)["state"]["phase"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}
