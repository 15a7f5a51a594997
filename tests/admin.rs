//! The admin port (`metrics_listen`) as an attacker sees it: the container image and the
//! compose stack publish it. Real `canary-lb serve` and `canary-lb app` processes on loopback;
//! hostile requests go out as raw bytes and responses are checked as raw bytes.

mod common;

use std::time::Duration;

use common::raw::{drip_until_closed, raw_exchange, RawClient, RawResponse};
use common::*;
use serde_json::Value;

/// Generous deadline for anything the proxy must notice or answer on a loaded machine.
const NOTICE: Duration = Duration::from_secs(20);

/// A salt no other byte sequence in a response would contain by chance.
const SALT: &str = "Zq7-distinctive-salt-4431";

/// A proxy with one production app, `extra` appended to the config.
fn start_proxy(app: &App, extra: &str) -> Proxy {
    Proxy::in_front_of(
        &[app.addr()],
        &format!(
            "threads: 1\n\
             grace_period: 1s\n\
             routing: {{ canary_percent: 10, salt: \"{SALT}\" }}\n{extra}"
        ),
    )
}

fn get_raw(port: u16, path: &str, extra_headers: &str) -> RawResponse {
    raw_exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{extra_headers}\r\n").as_bytes(),
        NOTICE,
    )
}

#[test]
fn status_shows_a_salt_fingerprint_never_the_salt() {
    let app = App::start("adm-p1", "production");
    let proxy = start_proxy(&app, "");
    let port = proxy.metrics_port();

    let r = get_raw(port, "/status", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.contains(SALT.as_bytes()),
        "/status shows the salt: {r:?}"
    );
    let status: Value = serde_json::from_slice(&r.body).expect("/status is JSON");
    assert_eq!(
        status["routing"]["salt_fingerprint"],
        canary_lb::routing::salt_fingerprint(SALT),
        "{status}"
    );
    assert!(status["routing"].get("salt").is_none(), "{status}");
    assert_eq!(status["routing"]["salt_from"], "file", "{status}");

    let m = get_raw(port, "/metrics", "");
    assert_eq!(m.status, 200, "{m:?}");
    assert!(!m.contains(SALT.as_bytes()), "/metrics shows the salt");

    // A rollout freezes the salt (file provider: in this process); it shows only as its
    // fingerprint in the start's answer, `GET /rollout` and `/status` (issue 20, obs. 7).
    let fingerprint = canary_lb::routing::salt_fingerprint(SALT);
    let start = raw_exchange(
        port,
        format!(
            "POST /rollout/start?steps=10,50&interval=1m HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        )
        .as_bytes(),
        NOTICE,
    );
    assert_eq!(start.status, 200, "{start:?}");
    for (what, r) in [
        ("POST /rollout/start", start),
        ("GET /rollout", get_raw(port, "/rollout", "")),
        ("GET /status", get_raw(port, "/status", "")),
    ] {
        assert!(!r.contains(SALT.as_bytes()), "{what} shows the salt: {r:?}");
        let v: Value = serde_json::from_slice(&r.body).expect("JSON");
        let state = if what == "GET /status" {
            &v["rollout"]["state"]
        } else {
            &v["state"]
        };
        assert_eq!(
            state["salt_fingerprint"],
            fingerprint.as_str(),
            "{what}: {v}"
        );
        assert!(state.get("salt").is_none(), "{what}: {v}");
    }
    let abort = raw_exchange(
        port,
        format!("POST /rollout/abort HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
        NOTICE,
    );
    assert_eq!(abort.status, 200, "{abort:?}");
    assert!(
        !abort.contains(SALT.as_bytes()),
        "the abort's answer shows the salt"
    );

    // A new salt on reload shows as a new fingerprint, still never as the salt.
    let new_salt = "Zq7-second-salt-9902";
    proxy.rewrite_config(
        &std::fs::read_to_string(proxy.config_path())
            .expect("read config")
            .replace(SALT, new_salt),
    );
    proxy.sighup();
    let want = canary_lb::routing::salt_fingerprint(new_salt);
    wait_until("/status shows the new salt's fingerprint", NOTICE, || {
        proxy.status_json()["routing"]["salt_fingerprint"] == want.as_str()
    });
    let r = get_raw(port, "/status", "");
    assert!(!r.contains(new_salt.as_bytes()), "/status shows the salt");
}

/// Issue 21, finding 5: a web page the operator has open must not drive the admin port
/// (loopback, no token). Its form POST carries another site's `Origin`, a rebinding page's
/// `Host` is its own name: both are refused and nothing starts; `ctl` and curl (the admin
/// address as `Host`, no `Origin`) still work.
#[test]
fn rollout_commands_from_a_web_page_are_refused() {
    let app = App::start("adm-csrf", "production");
    let proxy = start_proxy(&app, "");
    let port = proxy.metrics_port();
    let post = |path: &str, headers: &str| {
        raw_exchange(
            port,
            format!(
                "POST {path} HTTP/1.1\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: 3\r\nConnection: close\r\n\r\na=1"
            )
            .as_bytes(),
            NOTICE,
        )
    };
    let state = || {
        let r = get_raw(port, "/rollout", "");
        assert_eq!(r.status, 200, "{r:?}");
        let v: Value = serde_json::from_slice(&r.body).expect("JSON");
        v["state"].clone()
    };
    let own = format!("Host: 127.0.0.1:{port}\r\n");
    for (what, headers) in [
        (
            "cross-site form",
            format!("{own}Origin: http://evil.example\r\n"),
        ),
        (
            "rebinding page",
            format!("Host: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n"),
        ),
        (
            "rebinding, no Origin",
            format!("Host: evil.example:{port}\r\n"),
        ),
        ("sandboxed page", format!("{own}Origin: null\r\n")),
    ] {
        for path in ["/rollout/start?steps=50,100", "/rollout/promote"] {
            let r = post(path, &headers);
            assert_eq!(r.status, 403, "{what} POST {path}: {r:?}");
            assert!(
                !r.contains(b"evil.example"),
                "{what}: the answer echoes the request"
            );
        }
        assert!(state().is_null(), "{what}: a rollout started");
    }
    // The operator's tools: the admin address as Host, no Origin.
    let r = post("/rollout/start?steps=50,100&interval=1m", &own);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state()["phase"], "progressing", "{r:?}");
    let r = post("/rollout/abort", &format!("Host: localhost:{port}\r\n"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(state()["phase"], "aborted");
    // And `ctl rollout --admin` (it sends the address it was given as Host).
    let admin = format!("http://127.0.0.1:{port}");
    let out = run_cli(
        &[
            "ctl",
            "rollout",
            "--admin",
            &admin,
            "start",
            "--steps",
            "10,50",
            "--interval",
            "1m",
        ],
        NOTICE,
    );
    assert!(out.status.success(), "ctl rollout --admin start: {out:?}");
    assert_eq!(state()["phase"], "progressing");
}

#[test]
fn only_get_and_head_are_served() {
    let app = App::start("adm-p2", "production");
    let proxy = start_proxy(&app, "");
    let port = proxy.metrics_port();

    let requests: [&[u8]; 7] = [
        b"POST /status HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"PUT /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
        b"DELETE /status HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PATCH /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"TRACE /status HTTP/1.1\r\nHost: a\r\nX-Echo: <script>x</script>\r\n\r\n",
        b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for req in requests {
        let shown = String::from_utf8_lossy(req);
        let r = raw_exchange(port, req, NOTICE);
        assert_eq!(r.status, 405, "{shown:?} -> {r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{shown:?} -> {r:?}");
        assert!(!r.contains(b"<script>"), "{shown:?}: request echoed: {r:?}");
        assert!(!r.contains(SALT.as_bytes()), "{shown:?} -> {r:?}");
        assert!(r.closed, "{shown:?}: connection left open");
    }

    // A body that looks like a second request is never run as one: one answer, then close.
    let smuggle = b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 33\r\n\r\n\
                    GET /status HTTP/1.1\r\nHost: a\r\n\r\n";
    let r = raw_exchange(port, smuggle, NOTICE);
    assert_eq!((r.status, r.responses()), (405, 1), "{r:?}");
    assert!(r.closed, "{r:?}");

    // HEAD: the GET's head (length included), no body.
    let get = get_raw(port, "/status", "");
    let head = raw_exchange(port, b"HEAD /status HTTP/1.1\r\nHost: a\r\n\r\n", NOTICE);
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty(), "HEAD sent a body: {head:?}");
    assert!(head.closed, "{head:?}");
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("HEAD without Content-Length: {head:?}"));
    // In-flight and counters may move between the two requests; the size is close.
    assert!(
        len.abs_diff(get.body.len()) < 64,
        "HEAD {len} vs GET {}",
        get.body.len()
    );

    // Nothing of the request comes back, not in a 404, not in a 400.
    let r = get_raw(port, "/%3Cscript%3Ealert(1)%3C/script%3E", "");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(!r.contains(b"script"), "request echoed: {r:?}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    let r = get_raw(port, "/<b>x</b>", "");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.contains(b"<b>") && r.closed, "{r:?}");
}

#[test]
fn bearer_token_guards_metrics_and_status_not_healthz() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin-token");
    let token = "tok-3b1f0c5e9a7d4c2f8e6a";
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");
    let app = App::start("adm-p3", "production");
    let proxy = start_proxy(
        &app,
        &format!("metrics_auth_token_file: \"{}\"\n", token_file.display()),
    );
    let port = proxy.metrics_port();
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");

    for path in ["/status", "/metrics"] {
        for (what, auth) in [
            ("no token", String::new()),
            ("wrong token", bearer("tok-3b1f0c5e9a7d4c2f8e6b")),
            ("token prefix", bearer("tok-3b1f0c5e9a7d")),
            ("basic scheme", format!("Authorization: Basic {token}\r\n")),
            ("two headers", format!("{}{}", bearer(token), bearer(token))),
        ] {
            let r = get_raw(port, path, &auth);
            assert_eq!(r.status, 401, "{path} with {what}: {r:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"canary-lb\""),
                "{path} with {what}: {r:?}"
            );
            assert!(!r.contains(token.as_bytes()), "{path}: token in the answer");
            assert!(!r.contains(b"canary_lb_"), "{path}: 401 carries metrics");
        }
        let r = get_raw(port, path, &bearer(token));
        assert_eq!(r.status, 200, "{path} with the token: {r:?}");
        let r = get_raw(port, path, &format!("authorization: bearer {token}\r\n"));
        assert_eq!(r.status, 200, "{path} with lowercase scheme: {r:?}");
    }
    let r = get_raw(port, "/healthz", "");
    assert_eq!(r.status, 200, "/healthz needs no token: {r:?}");

    // SIGHUP re-reads the file: the old token stops working, the new one works.
    let new_token = "tok-new-77aa0e3d2c1b9f8e";
    std::fs::write(&token_file, new_token).expect("rewrite token");
    proxy.sighup();
    wait_until("the new token is accepted", NOTICE, || {
        get_raw(port, "/status", &bearer(new_token)).status == 200
    });
    assert_eq!(get_raw(port, "/status", &bearer(token)).status, 401);

    // A token file that breaks keeps the running config (and its token).
    std::fs::write(&token_file, "").expect("empty the token file");
    proxy.sighup();
    wait_until("the reload of the empty file is refused", NOTICE, || {
        proxy.logs().contains("is empty; it must hold the token")
    });
    assert_eq!(get_raw(port, "/status", &bearer(new_token)).status, 200);

    let logs = proxy.logs();
    assert!(
        !logs.contains(token) && !logs.contains(new_token),
        "a token is in the log:\n{logs}"
    );
}

#[test]
fn drip_fed_admin_head_is_cut_at_the_deadline() {
    let app = App::start("adm-p4", "production");
    let proxy = start_proxy(&app, "client: { header_timeout: 1s }\n");
    // A head that never ends, one byte every 200 ms: closed at the 1 s head deadline (before,
    // each byte restarted a 60 s read timeout and the connection stayed as long as it dripped).
    let sent = drip_until_closed(
        proxy.metrics_port(),
        b"GET /status HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        Duration::from_millis(200),
        NOTICE,
    );
    assert!(
        sent.is_some(),
        "a drip-fed head was still open after {NOTICE:?}"
    );
}

/// Finding 3 of issue 21: idle sockets on the admin port used to take all of its 64 places, so
/// `/healthz` failed 50 of 50 times and a container health check would restart a healthy
/// proxy. A connection that has not sent a whole head is idle: a new one at the limit closes
/// the longest-idle one instead of being refused, and one address holds at most 16 places.
#[test]
fn idle_sockets_cannot_knock_out_the_admin_port() {
    let app = App::start("adm-p5", "production");
    let proxy = start_proxy(&app, "client: { header_timeout: 60s }\n");
    let port = proxy.metrics_port();
    let request: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    // More idle sockets than the admin port has places, half of them with an unfinished head.
    let max = canary_lb::runtime::admin::MAX_CONNECTIONS;
    let mut idle: Vec<RawClient> = (0..max + 16)
        .map(|i| match i % 2 {
            0 => RawClient::connect(port),
            _ => RawClient::hold(port, b"GET /status HTTP/1.1\r\n"),
        })
        .collect();
    let ok = (0..50)
        .filter(|_| raw_exchange(port, request, NOTICE).status == 200)
        .count();
    assert_eq!(ok, 50, "/healthz answered {ok} of 50 times");
    // The oldest made room: one address holds at most MAX_PER_ADDRESS places.
    let per_address = canary_lb::runtime::admin::MAX_PER_ADDRESS;
    wait_until("one address holds at most its share", NOTICE, || {
        let open = idle
            .iter_mut()
            .map(|c| c.closed_now())
            .filter(|closed| !closed);
        open.count() <= per_address
    });
    // The proxy port is another service: it still answers.
    assert_eq!(get(&proxy.url("/"), &[]).status, 200);
}
