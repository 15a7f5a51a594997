//! Forwarding headers an operator can trust (issue 10). Every test client connects from
//! 127.0.0.1, so one proxy trusts 127.0.0.1 as a proxy in front of it and another does not.
//! What the app server received is checked byte for byte with a raw backend; the client
//! address used for `routing.header_trusted_networks` and the access log follows the same rule.

mod common;

use std::path::Path;
use std::time::Duration;

use common::raw::{raw_exchange, RawBackend, Received};
use common::{free_port, pools, proxy_config, wait_until, Proxy};

/// The routing header is honoured only from 10.0.0.0/8: from 127.0.0.1 directly it is not.
fn proxy(prod: &RawBackend, canary: &RawBackend, trusted: &str, log: &Path) -> Proxy {
    proxy_with(
        prod,
        canary,
        "header_trusted_networks: [\"10.0.0.0/8\"]",
        &format!(
            "trusted_proxies: [{trusted}]\naccess_log: {{ path: \"{}\" }}\n",
            log.display()
        ),
    )
}

/// A proxy in front of `prod` and `canary` with `routing: { <routing> }` and `extra` lines.
fn proxy_with(prod: &RawBackend, canary: &RawBackend, routing: &str, extra: &str) -> Proxy {
    Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\ngrace_period: 1s\n{}\
             health_check: {{ kind: tcp, interval: 1s, timeout: 500ms }}\n\
             routing: {{ {routing} }}\n{extra}",
            pools(&[&prod.addr()], &[&canary.addr()]),
        ),
    ))
}

/// Send `headers` (CRLF-terminated lines) on a request for `path` with `X-Canary: 1` and return
/// which backend got it and how.
fn send(proxy: &Proxy, path: &str, headers: &str) -> u16 {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nX-Canary: 1\r\nX-Request-Id: id{}\r\n{headers}Connection: close\r\n\r\n",
        path.trim_start_matches('/')
    );
    raw_exchange(proxy.listen_port(), req.as_bytes(), Duration::from_secs(10)).status
}

fn got(backend: &RawBackend, path: &str) -> Option<Received> {
    backend.received().into_iter().find(|r| r.path == path)
}

/// The access log's `client` for request id `id`.
fn logged_client(log: &Path, id: &str) -> String {
    let mut client = String::new();
    wait_until(
        &format!("request {id} is logged"),
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["request_id"] == id)
                .map(|v| client = v["client"].as_str().unwrap_or("").to_string())
                .is_some()
        },
    );
    client
}

const FORGED: &str = "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\n\
                      X-Forwarded-Host: evil.test\r\nForwarded: for=10.1.2.3;proto=https\r\n";

#[test]
fn an_untrusted_client_cannot_forge_forwarding_headers() {
    let (prod, canary) = (RawBackend::start(), RawBackend::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let proxy = proxy(&prod, &canary, "", &log);
    assert_eq!(send(&proxy, "/forged", FORGED), 200);
    // The forged 10.1.2.3 did not make the routing header count: production served it.
    let r = got(&prod, "/forged").expect("production got the request");
    assert!(got(&canary, "/forged").is_none());
    assert_eq!(r.header_lines("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.header_lines("x-forwarded-proto"), ["http"]);
    assert_eq!(r.header_lines("x-forwarded-host"), ["app.test"]);
    assert!(
        r.header_lines("forwarded").is_empty(),
        "Forwarded passed on"
    );
    assert_eq!(logged_client(&log, "idforged"), "127.0.0.1");
}

#[test]
fn a_trusted_proxy_forwarding_headers_are_kept_and_name_the_client() {
    let (prod, canary) = (RawBackend::start(), RawBackend::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let proxy = proxy(&prod, &canary, "\"127.0.0.1/32\"", &log);

    // The client is 10.1.2.3 (the trusted peer says so): the routing header counts.
    assert_eq!(send(&proxy, "/kept", FORGED), 200);
    let r = got(&canary, "/kept").expect("canary got the request");
    assert_eq!(r.header_lines("x-forwarded-for"), ["10.1.2.3, 127.0.0.1"]);
    assert_eq!(r.header_lines("x-forwarded-proto"), ["https"]);
    assert_eq!(r.header_lines("x-forwarded-host"), ["evil.test"]);
    assert_eq!(r.header_lines("forwarded"), ["for=10.1.2.3;proto=https"]);
    assert_eq!(logged_client(&log, "idkept"), "10.1.2.3");

    // The rightmost untrusted address is the client: 203.0.113.9 was added after 10.1.2.3
    // by someone not trusted, so it is the client and the header does not count.
    let chain = "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-For: 203.0.113.9\r\n";
    assert_eq!(send(&proxy, "/chain", chain), 200);
    let r = got(&prod, "/chain").expect("production got the request");
    assert_eq!(
        r.header_lines("x-forwarded-for"),
        ["10.1.2.3, 203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(logged_client(&log, "idchain"), "203.0.113.9");
    // Malformed values from a trusted peer are replaced by the proxy's own.
    let bad = "X-Forwarded-Proto: gopher\r\nX-Forwarded-Host: a b<c>\r\n";
    assert_eq!(send(&proxy, "/badvals", bad), 200);
    let r = got(&prod, "/badvals").expect("production got the request");
    assert_eq!(r.header_lines("x-forwarded-proto"), ["http"]);
    assert_eq!(r.header_lines("x-forwarded-host"), ["app.test"]);
}

/// `X-Real-IP` and `True-Client-IP` (issue 21): some apps read them instead of
/// `X-Forwarded-For`, so an untrusted client must not set them; a trusted proxy's pass.
#[test]
fn real_ip_headers_are_removed_from_an_untrusted_client() {
    let forged = "X-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n";
    let dir = tempfile::tempdir().expect("temp dir");
    for (trusted, path) in [
        ("", "/realip-untrusted"),
        ("\"127.0.0.1/32\"", "/realip-trusted"),
    ] {
        let (prod, canary) = (RawBackend::start(), RawBackend::start());
        let log = dir.path().join(format!("access{}.log", path.len()));
        let proxy = proxy(&prod, &canary, trusted, &log);
        assert_eq!(send(&proxy, path, forged), 200);
        let r = got(&prod, path).expect("production got the request");
        let want: &[&str] = if trusted.is_empty() {
            &[]
        } else {
            &["6.6.6.6"]
        };
        assert_eq!(r.header_lines("x-real-ip"), want, "{path}");
        assert_eq!(r.header_lines("true-client-ip"), want, "{path}");
    }
}

/// The flag cookie is gated like the routing header (issue 21): with
/// `header_trusted_networks` set, `canary=always` forces canary only from those networks.
#[test]
fn flag_cookie_forces_only_from_trusted_networks() {
    for (networks, forced) in [("10.0.0.0/8", false), ("127.0.0.0/8", true)] {
        let (prod, canary) = (RawBackend::start(), RawBackend::start());
        let routing = format!("canary_percent: 0, header_trusted_networks: [\"{networks}\"]");
        let proxy = proxy_with(&prod, &canary, &routing, "");
        let req = "GET /flag HTTP/1.1\r\nHost: app.test\r\nCookie: canary=always\r\n\
                   Connection: close\r\n\r\n";
        let r = raw_exchange(proxy.listen_port(), req.as_bytes(), Duration::from_secs(10));
        assert_eq!(r.status, 200, "{networks}");
        let (served, idle) = if forced {
            (&canary, &prod)
        } else {
            (&prod, &canary)
        };
        assert!(
            got(served, "/flag").is_some(),
            "{networks}: forced {forced}"
        );
        assert!(got(idle, "/flag").is_none(), "{networks}: forced {forced}");
    }
}

/// Hostile `X-Forwarded-For`: many lines, one long line, garbage. Through a trusted peer the
/// app gets at most 20 hops plus the peer, each an address or `unknown`; through an
/// untrusted one only the peer; past the head limits, nothing at all.
#[test]
fn hostile_forwarded_for_is_bounded() {
    let (prod, canary) = (RawBackend::start(), RawBackend::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let (log_t, log_u) = (dir.path().join("t.log"), dir.path().join("u.log"));
    let trusting = proxy(&prod, &canary, "\"127.0.0.1/32\"", &log_t);
    let untrusting = proxy(&prod, &canary, "", &log_u);

    // 90 lines of 3 addresses each (under client.max_headers: 100).
    let many: String = (0..90)
        .map(|i| format!("X-Forwarded-For: 192.0.2.{i}, 198.51.100.{i}, 203.0.113.{i}\r\n"))
        .collect();
    // One 8 KB line of garbage, then real addresses.
    let long = format!(
        "X-Forwarded-For: {}, 999.1.1.1, <script>, 1.2.3.4:80, [2001:db8::1]:8080, not-an-ip\r\n",
        "x".repeat(8000)
    );
    let expect_many: Vec<String> = (83..90)
        .flat_map(|i| {
            [
                format!("192.0.2.{i}"),
                format!("198.51.100.{i}"),
                format!("203.0.113.{i}"),
            ]
        })
        .skip(1)
        .chain(["127.0.0.1".to_string()])
        .collect();
    for (proxy, path_many, path_long, trusted) in [
        (&trusting, "/many-t", "/long-t", true),
        (&untrusting, "/many-u", "/long-u", false),
    ] {
        assert_eq!(send(proxy, path_many, &many), 200);
        assert_eq!(send(proxy, path_long, &long), 200);
        let m = got(&prod, path_many)
            .or_else(|| got(&canary, path_many))
            .expect("many got through");
        let l = got(&prod, path_long)
            .or_else(|| got(&canary, path_long))
            .expect("long got through");
        if trusted {
            assert_eq!(m.header_lines("x-forwarded-for"), [expect_many.join(", ")]);
            assert_eq!(
                l.header_lines("x-forwarded-for"),
                ["unknown, unknown, unknown, 1.2.3.4, 2001:db8::1, unknown, 127.0.0.1"]
            );
        } else {
            assert_eq!(m.header_lines("x-forwarded-for"), ["127.0.0.1"]);
            assert_eq!(l.header_lines("x-forwarded-for"), ["127.0.0.1"]);
        }
        // The log names a client either way (for the trusted peer: the rightmost untrusted).
        let id = format!("id{}", path_many.trim_start_matches('/'));
        let want = if trusted { "203.0.113.89" } else { "127.0.0.1" };
        assert_eq!(
            logged_client(if trusted { &log_t } else { &log_u }, &id),
            want
        );
        let id = format!("id{}", path_long.trim_start_matches('/'));
        // `not-an-ip` is the rightmost entry: the walk stops there, at the trusted peer.
        assert_eq!(
            logged_client(if trusted { &log_t } else { &log_u }, &id),
            "127.0.0.1"
        );
    }

    // 200 lines are over client.max_headers: refused, nothing reaches an app.
    let too_many: String = (0..200)
        .map(|i| format!("X-Forwarded-For: 192.0.2.{i}\r\n"))
        .collect();
    let before = prod.received().len() + canary.received().len();
    assert_eq!(send(&trusting, "/too-many", &too_many), 431);
    assert_eq!(prod.received().len() + canary.received().len(), before);
}
