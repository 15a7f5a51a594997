//! Issue 22, observation 2: every answer the proxy writes itself can be traced. Its 502 (a dead
//! upstream), 503 (no server), 504 (a slow one), its refusals (400, 431), Pingora's own 400 and
//! 405 (through Pingora patch 0009) and the
//! `redirect_to_https` listener's 308 and 400 carry an `X-Request-Id`: the client's valid one,
//! else a new one, the same the access log line names. None says `Server: Pingora`; the
//! `server_header` setting names a `Server` for them, or none (the default).
//!
//! Before: the 502 and the refusals carried no id and `Server: Pingora`, the 503 no id, and the
//! access log wrote `"request_id":null` for a 502 although the client had sent one.

mod common;

use std::time::Duration;

use common::raw::{raw_exchange, RawBackend, RawResponse};
use common::tls::TestCa;
use common::{eventually, free_port, pools, production_pool, Proxy};
use serde_json::Value;

const ANSWER: Duration = Duration::from_secs(10);

/// Health checks that never take a server out during a test: a refused port stays in rotation.
const LAZY_HEALTH: &str = "{ kind: tcp, interval: 1h, timeout: 1s, healthy_threshold: 1, \
                           unhealthy_threshold: 100 }";

fn get(port: u16, path: &str, headers: &str) -> RawResponse {
    raw_exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n{headers}\r\n")
            .as_bytes(),
        ANSWER,
    )
}

/// The access log line (JSON on stdout) of the request with id `id`.
fn logged(proxy: &Proxy, id: &str) -> Value {
    eventually(
        Duration::from_secs(10),
        &format!("an access log line for request {id}"),
        || {
            proxy
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["request_id"] == id)
        },
    )
}

fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        })
}

/// The answer's status, its id (checked: the client's when `sent`, else a new UUID) and that
/// it has no `Server` header.
fn assert_traced(what: &str, r: &RawResponse, status: u16, sent: Option<&str>) -> String {
    assert_eq!(r.status, status, "{what}: {}", r.head);
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| {
            panic!(
                "{what}: no X-Request-Id on the proxy's own {status}:\n{}",
                r.head
            )
        })
        .to_string();
    match sent {
        Some(sent) => assert_eq!(id, sent, "{what}: the client's id is not kept"),
        None => assert!(is_uuid(&id), "{what}: {id:?} is not a new UUID"),
    }
    assert_eq!(
        r.header("server"),
        None,
        "{what}: server_header is off by default:\n{}",
        r.head
    );
    id
}

#[test]
fn the_proxys_own_errors_and_refusals_carry_the_request_id_and_no_server() {
    let dead = format!("127.0.0.1:{}", free_port());
    let backend = RawBackend::start();
    let (listen, metrics) = (free_port(), free_port());
    let proxy = Proxy::start(&common::proxy_config(
        listen,
        metrics,
        &format!(
            "threads: 1\ngrace_period: 1s\n{}\
             health_check: {LAZY_HEALTH}\n\
             upstream: {{ read_timeout: 500ms }}\n\
             client: {{ max_headers: 20 }}\n",
            pools(&[&dead], &[&backend.addr()])
        ),
    ));

    // 502, a dead upstream: the client's id comes back and is logged (it was `null`).
    let r = get(listen, "/", "X-Request-Id: my-trace-123\r\n");
    assert_traced("502 dead upstream", &r, 502, Some("my-trace-123"));
    let line = logged(&proxy, "my-trace-123");
    assert_eq!(line["status"], 502, "{line}");
    // Without one (or with an invalid one), a new id, the same in the log.
    let r = get(listen, "/", "X-Request-Id: not valid!\r\n");
    let id = assert_traced("502 with an invalid id", &r, 502, None);
    assert_eq!(logged(&proxy, &id)["status"], 502);

    // 504, an upstream slower than upstream.read_timeout.
    let r = get(
        listen,
        "/slow?ms=3000",
        "X-Canary: 1\r\nX-Request-Id: slow-1\r\n",
    );
    assert_traced("504 slow upstream", &r, 504, Some("slow-1"));
    assert_eq!(logged(&proxy, "slow-1")["status"], 504);

    // Refusals at the edge: ambiguous framing (400), too many header lines (431).
    let r = raw_exchange(
        listen,
        b"POST / HTTP/1.1\r\nHost: site.test\r\nX-Request-Id: cl-1\r\nContent-Length: 5, 5\r\n\r\nhello",
        ANSWER,
    );
    assert_traced("400 refusal", &r, 400, Some("cl-1"));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = get(listen, "/", &many);
    assert_traced("431 refusal", &r, 431, None);

    // What Pingora answers before canary-lb's request code runs (patch 0009): a head it
    // cannot parse (400, no request: a new id) and CONNECT (405, the client's id).
    let r = raw_exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: site.test\r\nno colon here\r\n\r\n",
        ANSWER,
    );
    assert_traced("Pingora's 400 for an unparseable head", &r, 400, None);
    let r = raw_exchange(
        listen,
        b"CONNECT site.test:443 HTTP/1.1\r\nHost: site.test:443\r\nX-Request-Id: tunnel-1\r\n\r\n",
        ANSWER,
    );
    assert_traced("Pingora's 405 for CONNECT", &r, 405, Some("tunnel-1"));

    // A proxied answer: the client's id goes upstream once, as sent, and comes back.
    let r = get(listen, "/ok", "X-Canary: 1\r\nX-Request-Id: ok-1\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("x-request-id"), Some("ok-1"));
    let seen = backend
        .received()
        .into_iter()
        .find(|q| q.header_lines("x-request-id") == ["ok-1"]);
    assert!(
        seen.is_some(),
        "the app did not get X-Request-Id: ok-1 once"
    );
    assert_eq!(logged(&proxy, "ok-1")["status"], 200);
}

#[test]
fn server_header_names_the_proxy_on_its_503_and_redirects() {
    let ca = TestCa::new();
    let site = ca.issue("site", &["site.test"]);
    let (tls_port, redirect, plain, metrics) = (free_port(), free_port(), free_port(), free_port());
    let proxy = Proxy::start(&format!(
        "listen: [{{ addr: \"127.0.0.1:{tls_port}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}, \
                  {{ addr: \"127.0.0.1:{redirect}\", redirect_to_https: true }}, \
                  \"127.0.0.1:{plain}\"]\n\
         metrics_listen: \"127.0.0.1:{metrics}\"\nthreads: 1\ngrace_period: 1s\n\
         server_header: edge/1\n{}",
        site.cert.display(),
        site.key.display(),
        production_pool(&[]),
    ));
    let with_server = |what: &str, r: &RawResponse, status: u16, sent: Option<&str>| {
        assert_eq!(r.status, status, "{what}: {}", r.head);
        assert_eq!(r.header("server"), Some("edge/1"), "{what}:\n{}", r.head);
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id:\n{}", r.head));
        match sent {
            Some(sent) => assert_eq!(id, sent, "{what}"),
            None => assert!(is_uuid(id), "{what}: {id:?}"),
        }
    };

    // 503: no production server at all.
    let r = get(plain, "/", "X-Request-Id: none-left-1\r\n");
    with_server("503 no server", &r, 503, Some("none-left-1"));
    assert_eq!(logged(&proxy, "none-left-1")["status"], 503);

    // The redirect listener: 308 to a name the certificate covers, 400 for any other Host.
    let r = get(redirect, "/a?b=1", "X-Request-Id: hop-1\r\n");
    with_server("308 redirect", &r, 308, Some("hop-1"));
    assert_eq!(
        r.header("location"),
        Some(format!("https://site.test:{tls_port}/a?b=1").as_str())
    );
    let r = raw_exchange(
        redirect,
        b"GET / HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
        ANSWER,
    );
    with_server("400 from the redirect listener", &r, 400, None);
}
