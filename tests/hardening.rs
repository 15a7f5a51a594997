//! Issue #8, hardening: what an anonymous client can and cannot do to the proxy and to the app
//! servers behind it. Each test sends the hostile version of a request, mostly as raw bytes,
//! and checks both what the client gets and what the app servers received (through
//! [`RawBackend`], which records every request byte for byte).

mod common;

use std::time::Duration;

use common::raw::{drip_until_closed, raw_exchange, RawBackend, RawClient, Script, BACKEND_BODY};
use common::*;
use serde_json::Value;

const NOTICE: Duration = Duration::from_secs(20);

/// A proxy in front of `production` (addresses), with TCP health checks that take 100 failed
/// probes to mark a server down: passive detection alone decides within a test.
fn proxy_for(production: &[String], extra: &str) -> Proxy {
    Proxy::in_front_of(
        production,
        &format!(
            "threads: 2\n\
             grace_period: 1s\n\
             health_check: {{ kind: tcp, interval: 1s, timeout: 500ms, \
                              healthy_threshold: 1, unhealthy_threshold: 100 }}\n\
             upstream: {{ connect_timeout: 1s, read_timeout: 5s, write_timeout: 5s, max_tries: 2 }}\n\
             {extra}"
        ),
    )
}

/// An address nothing listens on.
fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn servers(status: &Value, pool: &str) -> Vec<Value> {
    status["pools"][pool]["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ejected(proxy: &Proxy) -> Vec<String> {
    servers(&proxy.status_json(), "production")
        .iter()
        .filter(|s| s["ejected"] == true)
        .filter_map(|s| s["addr"].as_str().map(String::from))
        .collect()
}

fn in_flight(proxy: &Proxy) -> i64 {
    proxy.status_json()["in_flight"].as_i64().unwrap_or(-1)
}

/// Defect 1: three 500s in a row used to eject the only server for `cool_off`.
#[test]
fn answers_of_500_never_eject_a_server() {
    let app = App::start("h-500", "production");
    let proxy = proxy_for(
        &[app.addr()],
        "passive_health: { max_failures: 3, cool_off: 30s }\n",
    );
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/status/500"), &[]).status, 500);
    }
    let r = get(&proxy.url("/after"), &[]);
    assert_eq!(
        r.status, 200,
        "a client's 500s took the server out: {}",
        r.body
    );
    assert!(ejected(&proxy).is_empty());
}

/// Passive detection never takes out more than half a pool (rounded down): a pool of one is
/// never passively ejected, a pool of two loses at most one server.
#[test]
fn passive_ejection_is_capped_at_half_the_pool() {
    let conf = "passive_health: { max_failures: 2, cool_off: 60s }\n";
    let lone = dead_addr();
    let proxy = proxy_for(std::slice::from_ref(&lone), conf);
    for _ in 0..6 {
        let r = get(&proxy.url("/"), &[]);
        assert!(r.status == 502 || r.status == 503, "got {}", r.status);
    }
    assert!(ejected(&proxy).is_empty(), "the only server was ejected");
    drop(proxy);

    let (a, b) = (dead_addr(), dead_addr());
    let proxy = proxy_for(&[a.clone(), b.clone()], conf);
    for _ in 0..10 {
        let _ = get(&proxy.url("/"), &[]);
    }
    let out = ejected(&proxy);
    assert_eq!(
        out.len(),
        1,
        "expected exactly one of two ejected, got {out:?}"
    );
}

/// Connect failures still eject a dead server while its pool has others.
#[test]
fn a_dead_server_is_ejected_and_requests_go_on() {
    let live = RawBackend::start();
    let dead = dead_addr();
    let proxy = proxy_for(
        &[dead.clone(), live.addr()],
        "passive_health: { max_failures: 2, cool_off: 60s }\n",
    );
    for i in 0..8 {
        let r = post(&proxy.url(&format!("/p{i}")), &[], b"payload");
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert_eq!(ejected(&proxy), vec![dead]);
    // A connect failure is retried for any method, and the live server got each POST once.
    for i in 0..8 {
        assert_eq!(live.count(&format!("/p{i}")), 1, "POST /p{i}");
    }
}

/// The optional 5xx-rate detection: judged over a minimum volume, and still capped.
#[test]
fn the_error_rate_option_ejects_within_the_cap() {
    let (a, b) = (
        App::start("h-rate-a", "production"),
        App::start("h-rate-b", "production"),
    );
    let proxy = proxy_for(
        &[a.addr(), b.addr()],
        "passive_health: { max_failures: 3, cool_off: 60s, \
           error_rate: { window: 60s, min_requests: 10, max_percent: 50 } }\n",
    );
    // Nine answers each: below the minimum volume, nothing happens however bad they are.
    for _ in 0..18 {
        assert_eq!(get(&proxy.url("/status/500"), &[]).status, 500);
    }
    assert!(ejected(&proxy).is_empty());
    for _ in 0..4 {
        let _ = get(&proxy.url("/status/500"), &[]);
    }
    let out = ejected(&proxy);
    assert_eq!(out.len(), 1, "expected one of two ejected: {out:?}");
}

/// Send a request, then hang up (`half` = only stop sending) after `after`.
fn hang_up(port: u16, request: &[u8], after: Duration, half: bool) {
    let mut conn = RawClient::connect(port);
    assert!(conn.send(request), "send");
    std::thread::sleep(after);
    if half {
        conn.half_close();
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(conn);
}

/// Defect 3: a client that goes away used to make the app run its request twice.
#[test]
fn a_client_that_hangs_up_never_makes_a_request_run_twice() {
    let backend = RawBackend::start();
    let proxy = proxy_for(&[backend.addr()], "");
    let cases: [(&str, &[u8], bool); 6] = [
        ("DELETE", b"", false),
        ("PUT", b"x=1", false),
        ("GET", b"", false),
        ("DELETE", b"", true),
        ("POST", b"x=1", true),
        ("GET", b"", true),
    ];
    for (i, (method, body, half)) in cases.iter().enumerate() {
        let path = format!("/slow?ms=700&case={i}");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n").into_bytes();
        if !body.is_empty() {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        hang_up(proxy.listen_port(), &req, Duration::from_millis(150), *half);
        wait_until("the request reached the backend", NOTICE, || {
            backend.count(&path) >= 1
        });
        wait_until("the proxy finished the request", NOTICE, || {
            in_flight(&proxy) == 0
        });
        // The slow answer is due 700 ms after the request; a repeat would land by then.
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(
            backend.count(&path),
            1,
            "{method} (half-close: {half}) reached the app more than once"
        );
    }
    // And the client's hang-ups did not count against the server.
    assert!(ejected(&proxy).is_empty());
}

/// Only an idempotent request without a body, reset before any response byte, is retried,
/// and only once; everything else reaches the app exactly once.
#[test]
fn a_reset_is_retried_once_only_for_idempotent_requests_without_a_body() {
    let backend = RawBackend::start();
    let proxy = proxy_for(
        &[backend.addr()],
        "passive_health: { max_failures: 100, cool_off: 1s }\n",
    );
    let r = get(&proxy.url("/reset"), &[]);
    assert_eq!(r.status, 502);
    assert_eq!(
        backend.count("/reset"),
        2,
        "GET: the first try and one retry"
    );
    let before = backend.count("/reset");
    let r = post(&proxy.url("/reset"), &[], b"body");
    assert_eq!(r.status, 502);
    assert_eq!(
        backend.count("/reset") - before,
        1,
        "POST is never replayed"
    );
    let before = backend.count("/reset");
    let out = raw_exchange(
        proxy.listen_port(),
        b"PUT /reset HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
        Duration::from_secs(10),
    );
    assert!(
        out.raw.starts_with(b"HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&out.raw)
    );
    assert_eq!(
        backend.count("/reset") - before,
        1,
        "PUT with a body is never replayed"
    );
}

/// Defect 4 and the forwarding rules: every `X-Forwarded-For` line kept in order, a client's
/// `X-Canary-Pool` removed, `X-Request-Id` kept only when short and plain.
#[test]
fn forwarding_headers_cannot_be_forged() {
    let backend = RawBackend::start();
    // The client (127.0.0.1) is a trusted proxy here, so its X-Forwarded-For is kept
    // (issue 10: an untrusted client's is replaced, tests/forwarding.rs).
    let proxy = proxy_for(&[backend.addr()], "trusted_proxies: [\"127.0.0.1/32\"]\n");
    let port = proxy.listen_port();
    let out = raw_exchange(
        port,
        b"GET /xff HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\n\
          X-Forwarded-For: 198.51.100.1, 198.51.100.2\r\nX-Canary-Pool: canary\r\n\
          X-Request-Id: ok-id_1.2:3\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("X-Request-Id: ok-id_1.2:3\r\n"), "{text}");
    let got = backend.received();
    let req = got
        .iter()
        .find(|r| r.path == "/xff")
        .expect("request reached the app");
    assert_eq!(
        req.header_lines("x-forwarded-for"),
        vec!["203.0.113.7, 198.51.100.1, 198.51.100.2, 127.0.0.1"]
    );
    assert!(
        req.header_lines("x-canary-pool").is_empty(),
        "client's X-Canary-Pool forwarded"
    );
    assert_eq!(req.header_lines("x-request-id"), vec!["ok-id_1.2:3"]);

    // Defect 5: a 60,000-byte id used to come back as a 60 KB response header. Its line is
    // now over `client.max_header_line`: refused before routing, nothing reflected or sent on.
    let huge = "a".repeat(60_000);
    let req = format!("GET /huge HTTP/1.1\r\nHost: t\r\nX-Request-Id: {huge}\r\n\r\n");
    let out = raw_exchange(port, req.as_bytes(), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.raw);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(out.raw.len() < 1024, "{} bytes came back", out.raw.len());
    assert_eq!(backend.count("/huge"), 0);
    // A long or HTML id under the line limit is replaced, upstream and in the response.
    let hostile = [
        "a".repeat(10_000),
        "<script>alert(1)</script>".to_string(),
        "a".repeat(129),
    ];
    for (i, id) in hostile.iter().enumerate() {
        let path = format!("/rid{i}");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
        );
        let out = raw_exchange(port, req.as_bytes(), Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.raw);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{}",
            &text[..text.len().min(200)]
        );
        assert!(!text.contains(id.as_str()), "request id {i} reflected");
        let got = backend.received();
        let req = got
            .iter()
            .find(|r| r.path == path)
            .expect("request reached the app");
        let ids = req.header_lines("x-request-id");
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].len(), 36, "a fresh UUID replaces it: {}", ids[0]);
        assert!(text.contains(&format!("X-Request-Id: {}\r\n", ids[0])));
    }
}

/// Defect 2 (first half): a reused connection that goes idle is closed after
/// `client.keepalive_timeout`.
#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let backend = RawBackend::start();
    let proxy = proxy_for(&[backend.addr()], "client: { keepalive_timeout: 1s }\n");
    let mut conn = RawClient::connect(proxy.listen_port());
    assert!(conn.send(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n"), "send");
    let r = conn.read_response().expect("closed before the response");
    assert_eq!(r.body, BACKEND_BODY, "the app's answer to /one: {r:?}");
    // The proxy must close the now idle connection (EOF) well before the 30 s deadline.
    let rest = conn.read_until_close(Duration::from_secs(30));
    let n = rest.raw.len();
    assert_eq!(n, 0, "unexpected bytes on an idle connection: {n}");
    assert!(rest.closed, "the idle connection was still open after 30 s");
}

/// Running out of file descriptors is the proxy's trouble, not the servers': while it lasts,
/// requests fail; afterwards every server is still in rotation, none was ejected or marked
/// down by a health check that could not open a socket.
#[test]
fn running_out_of_descriptors_does_not_count_against_servers() {
    let (a, b) = (RawBackend::start(), RawBackend::start());
    let list: Vec<String> = [&a, &b]
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    let yaml = proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\n\
             pools:\n  production: {{ servers: [{}] }}\n\
             health_check: {{ kind: tcp, interval: 200ms, timeout: 500ms, \
                              healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
             passive_health: {{ max_failures: 1, cool_off: 60s }}\n",
            list.join(", ")
        ),
    );
    let proxy = Proxy::start_with_nofile(&yaml, Some(96));
    // Hold enough connections, each with a request, to use up the proxy's descriptors.
    let mut held = Vec::new();
    for i in 0..150 {
        let Ok(mut c) = RawClient::try_connect(proxy.listen_port()) else {
            continue;
        };
        c.send(format!("GET /hold{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        held.push(c);
    }
    wait_until("the proxy ran out of descriptors", NOTICE, || {
        proxy.logs().contains("Too many open files") || proxy.logs().contains("os error 24")
    });
    // Let a few health-check rounds run into the limit too.
    std::thread::sleep(Duration::from_millis(800));
    drop(held);
    wait_until(
        "the proxy serves again",
        NOTICE,
        || matches!(try_get(&proxy.url("/after"), &[]), Ok(r) if r.status == 200),
    );
    let status = proxy.status_json();
    for s in servers(&status, "production") {
        assert_eq!(
            s["ejected"], false,
            "ejected for the proxy's own trouble: {s}"
        );
        assert_eq!(
            s["healthy"], true,
            "marked down for the proxy's own trouble: {s}"
        );
    }
    let logs = proxy.logs();
    assert!(
        !logs.contains("becomes unhealthy"),
        "a health check failed for the proxy's own trouble:\n{logs}"
    );
}

/// A client that stops reading a large response is cut off after `client.send_timeout`, and one
/// that stops sending its body after `client.body_timeout`: neither holds the proxy open.
#[test]
fn clients_that_stall_are_cut_off() {
    let backend = RawBackend::start();
    let proxy = proxy_for(
        &[backend.addr()],
        "client: { send_timeout: 1s, body_timeout: 1s }\n",
    );
    let port = proxy.listen_port();

    // Never reads a 32 MiB answer: far more than the socket buffers hold.
    let mut reader = RawClient::connect(port);
    assert!(
        reader.send(b"GET /big?bytes=33554432 HTTP/1.1\r\nHost: t\r\n\r\n"),
        "send"
    );
    wait_until("the request reached the backend", NOTICE, || {
        backend.count("/big?bytes=33554432") == 1
    });
    wait_until("the proxy gave up on the stalled reader", NOTICE, || {
        in_flight(&proxy) == 0
    });

    // Sends 2 of 10 announced body bytes, then nothing.
    let mut sender = RawClient::connect(port);
    assert!(
        sender.send(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab"),
        "send"
    );
    // The proxy answers or closes; either way the connection ends well before 30 s.
    let ended = sender.read_until_close(Duration::from_secs(30)).closed;
    assert!(ended, "the stalled body held the connection for 30 s");
    drop(reader);
}

/// Defect 2 (second half): a head drip-fed one byte at a time used to be read for ever (the
/// timeout was per read). Now the whole head has `client.header_timeout`, on a new connection
/// and on a reused one, and nothing reaches the app.
#[test]
fn a_drip_fed_head_is_cut_off_at_the_head_deadline() {
    let backend = RawBackend::start();
    let proxy = proxy_for(&[backend.addr()], "client: { header_timeout: 1s }\n");
    let port = proxy.listen_port();
    let sent = drip_until_closed(
        port,
        b"GET /drip HTTP/1.1\r\nHost: t\r\nX-A: ",
        Duration::from_millis(200),
        Duration::from_secs(30),
    );
    assert!(sent.is_some(), "a drip-fed head was still read after 30 s");

    // The same on a kept-alive connection, after one good request.
    let mut conn = RawClient::connect(port);
    assert!(conn.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"));
    let r = conn.read_response().expect("first response");
    assert_eq!(r.status, 200);
    let mut open_for = 0;
    while !conn.closed_now() && open_for < 150 {
        if !conn.send(b"G") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        open_for += 1;
    }
    assert!(
        open_for < 150,
        "a drip-fed second head was still read after 30 s"
    );
    assert_eq!(backend.count("/drip"), 0);
    assert_eq!(backend.received().len(), 1, "only /first reached the app");
}

/// A head over `client.max_header_bytes` is refused while it is read (memory stays bounded:
/// the proxy never buffers more than the limit), and nothing reaches the app.
#[test]
fn an_endless_head_is_refused_at_the_size_limit() {
    let backend = RawBackend::start();
    // A long head deadline, so that only the size limit can end this.
    let proxy = proxy_for(&[backend.addr()], "client: { header_timeout: 60s }\n");
    let mut conn = RawClient::connect(proxy.listen_port());
    conn.send(b"GET /endless HTTP/1.1\r\nHost: t\r\n");
    // 320 KiB of header lines, each under the line limit, never ending the head.
    let line = format!("X-Pad: {}\r\n", "p".repeat(8000));
    for _ in 0..40 {
        if !conn.send(line.as_bytes()) {
            break;
        }
    }
    let r = conn.read_until_close(Duration::from_secs(20));
    assert!(
        r.closed,
        "the connection stayed open with 320 KiB of head: {r:?}"
    );
    assert!(
        r.status == 400 || r.status == 431,
        "expected a refusal, got {r:?}"
    );
    assert_eq!(backend.received().len(), 0);
}

/// `client.max_connections`: past it, with every connection busy (a request in flight; idle
/// ones would make room, see tests/edge_idle.rs), a new connection is closed at once, counted,
/// and the proxy serves again as soon as connections close.
#[test]
fn connections_past_the_limit_are_refused_and_counted() {
    let backend = RawBackend::scripted(Script::Silent);
    let proxy = proxy_for(
        &[backend.addr()],
        "client: { max_connections: 4, header_timeout: 60s }\n",
    );
    let port = proxy.listen_port();
    // The harness's own probe of the port must have left first.
    wait_until("no client connection is open", NOTICE, || {
        metric(&proxy, "canary_lb_client_connections") == 0.0
    });
    let held: Vec<RawClient> = (0..4)
        .map(|_| RawClient::hold(port, b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    wait_until("four requests are in flight", NOTICE, || {
        backend.count("/held") == 4
    });
    let mut extra = RawClient::connect(port);
    extra.send(b"GET /extra HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(extra.closed(), "a connection past the limit was kept");
    assert_eq!(backend.count("/extra"), 0);
    assert!(metric(&proxy, "canary_lb_client_connections_refused_total") >= 1.0);
    drop(held);
    wait_until("the held connections are gone", NOTICE, || {
        metric(&proxy, "canary_lb_client_connections") == 0.0
    });
    // The (silent) app gets the next request: the proxy accepts again.
    let _after = RawClient::hold(port, b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the request after reaches the app", NOTICE, || {
        backend.count("/after") == 1
    });
}

/// The value of an unlabelled metric in the proxy's `/metrics`, or -1.
fn metric(proxy: &Proxy, name: &str) -> f64 {
    proxy.scrape().series(name).unwrap_or(-1.0)
}
