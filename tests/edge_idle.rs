//! Idle and half-open client connections (issue 21, findings 1 and 4): every phase of a
//! connection has a deadline on every listener kind, silent sockets cannot keep out clients
//! that send requests (the longest-idle connection makes room at the limit; the admin port's
//! own case is in tests/admin.rs), and what clients get wrong is counted, not logged as errors.

mod common;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::raw::{raw_exchange, RawClient};
use common::tls::{curl, Proto, TestCa, TlsConn};
use common::*;

/// The value of the sample `name` (with its labels, as Prometheus prints them), 0 if absent.
fn sample(proxy: &Proxy, name: &str) -> f64 {
    proxy.scrape().series(name).unwrap_or(0.0)
}

/// A proxy with a plain, an h2c and a TLS listener in front of `app`, with `client` as its
/// `client:` section. Returns it with the (plain, h2c, tls) ports.
fn three_listeners(ca: &TestCa, app: &App, client: &str) -> (Proxy, u16, u16, u16) {
    let site = ca.issue("site", &["site.test"]);
    let (plain, h2c, tls, metrics) = (free_port(), free_port(), free_port(), free_port());
    let proxy = Proxy::start(&format!(
        "listen: [\"127.0.0.1:{plain}\", {{ addr: \"127.0.0.1:{h2c}\", h2c: true }}, \
         {{ addr: \"127.0.0.1:{tls}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}]\n\
         metrics_listen: \"127.0.0.1:{metrics}\"\nthreads: 2\ngrace_period: 1s\n\
         client: {client}\n\
         pools:\n  production: {{ servers: [\"{}\"] }}\n",
        site.cert.display(),
        site.key.display(),
        app.addr(),
    ));
    (proxy, plain, h2c, tls)
}

/// Whether the server closes `c` within `within`.
fn raw_closed_within(c: &mut RawClient, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if c.closed_now() {
            return true;
        }
    }
    false
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[test]
fn every_phase_of_a_connection_has_a_deadline_on_every_listener() {
    let _serial = serial();
    let ca = TestCa::new();
    let app = App::start("prod-1", "production");
    let (proxy, plain, h2c, tls) = three_listeners(
        &ca,
        &app,
        "{ handshake_timeout: 1s, header_timeout: 1s, keepalive_timeout: 1s }",
    );

    // A whole HTTP/1.0 request shorter than the HTTP/2 preface is answered on the h2c port
    // at once: the h2c detection no longer waits for 24 bytes.
    let short = raw_exchange(h2c, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert_eq!(
        short.status, 200,
        "short HTTP/1.0 request on h2c: {short:?}"
    );

    // Each hostile opening, held without another byte. Before: the h2c ones and the TLS ones
    // were held forever (or 60 s for a TLS port's silent TCP connection).
    let mut raw: Vec<(&str, RawClient)> = vec![
        ("plain: nothing sent", RawClient::connect(plain)),
        ("h2c: nothing sent", RawClient::connect(h2c)),
        (
            "h2c: 18-byte HTTP/1.0 head, unfinished",
            RawClient::hold(h2c, b"GET / HTTP/1.0\r\n\r"),
        ),
        (
            "h2c: half a preface",
            RawClient::hold(h2c, b"PRI * HTTP/2.0\r\n"),
        ),
        (
            "h2c: preface and SETTINGS, then no stream",
            RawClient::hold(h2c, H2_PREFACE_AND_SETTINGS),
        ),
        ("tls: TCP only, no ClientHello", RawClient::connect(tls)),
    ];
    let mut h2_tls = TlsConn::connect_alpn(tls, "site.test", ca.ca_pem(), &[b"h2"])
        .expect("TLS handshake with ALPN h2");
    assert_eq!(h2_tls.alpn().as_deref(), Some(&b"h2"[..]));
    // Generous against a loaded machine; before the fix these were never closed.
    let within = Duration::from_secs(15);
    let open: Vec<&str> = raw
        .iter_mut()
        .filter_map(|(what, c)| (!raw_closed_within(c, within)).then_some(*what))
        .collect();
    assert!(open.is_empty(), "still open after {within:?}: {open:?}");
    assert!(
        h2_tls.closed_within(within),
        "tls: handshake done with ALPN h2, no preface: still open after {within:?}"
    );
    assert!(
        sample(
            &proxy,
            "canary_lb_client_errors_total{kind=\"handshake_timeout\"}"
        ) >= 3.0,
        "h2c detection, h2c preface and TLS preface deadlines counted:\n{}",
        proxy.metrics_text()
    );
}

/// Open `n` connections to each port in `ports` and send nothing; they stay open until dropped.
fn silent(ports: &[u16], n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        for &port in ports {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                held.push(s);
            }
        }
    }
    held
}

#[test]
fn silent_connections_cannot_keep_out_a_client_that_sends_requests() {
    let _serial = serial();
    let ca = TestCa::new();
    let app = App::start("prod-1", "production");
    // Deadlines far away: only the shedding at the limit can let the client in.
    let (proxy, plain, h2c, tls) = three_listeners(
        &ca,
        &app,
        "{ max_connections: 60, handshake_timeout: 60s, header_timeout: 60s, keepalive_timeout: 60s }",
    );
    // A request in flight is busy: it is never shed, however many connections arrive.
    // Its head is read as soon as it is accepted, long before the 61st connection arrives.
    let slow_url = proxy.url("/slow?ms=3000");
    let slow = thread::spawn(move || get_fresh(&slow_url, &[]).map(|r| r.status));
    wait_until(
        "the slow request's connection is open",
        Duration::from_secs(10),
        || sample(&proxy, "canary_lb_client_connections") >= 1.0,
    );

    let held = silent(&[plain, h2c, tls], 60);
    assert!(
        held.len() >= 150,
        "opened {} silent connections",
        held.len()
    );
    wait_until(
        "the proxy holds no more than its limit",
        Duration::from_secs(10),
        || sample(&proxy, "canary_lb_client_connections") <= 61.0,
    );

    let ca_pem = Some(ca.ca_pem());
    for i in 0..10 {
        let r = get_fresh(&proxy.url(&format!("/plain-{i}")), &[]).expect("plain HTTP/1.1");
        assert_eq!(r.status, 200, "plain request {i}");
        let r = curl(Proto::H2c, "site.test", h2c, "/h2c", None, &[], &[]).expect("h2c");
        assert_eq!(r.status, 200, "h2c request {i}");
        let r = curl(Proto::H2Tls, "site.test", tls, "/h2", ca_pem, &[], &[]).expect("h2 TLS");
        assert_eq!(r.status, 200, "HTTP/2 over TLS request {i}");
        let r = curl(Proto::H1Tls, "site.test", tls, "/h1", ca_pem, &[], &[]).expect("h1 TLS");
        assert_eq!(r.status, 200, "HTTP/1.1 over TLS request {i}");
    }
    let slow = slow.join().expect("slow request thread");
    assert_eq!(slow.ok(), Some(200), "the busy connection was not shed");
    assert!(
        sample(&proxy, "canary_lb_client_errors_total{kind=\"idle_shed\"}") >= 40.0,
        "idle connections shed and counted:\n{}",
        proxy.metrics_text()
    );
    drop(held);
}

#[test]
fn what_clients_get_wrong_is_counted_not_logged_as_errors() {
    let _serial = serial();
    let ca = TestCa::new();
    let app = App::start("prod-1", "production");
    let (proxy, _plain, _h2c, tls) = three_listeners(&ca, &app, "{ handshake_timeout: 2s }");
    // Plain HTTP to the TLS port, 200 times.
    for _ in 0..200 {
        let r = raw_exchange(
            tls,
            b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_ne!(r.status, 200, "no plain HTTP answer on the TLS port");
    }
    // TLS with ALPN h2, then garbage instead of the HTTP/2 preface, 20 times.
    for _ in 0..20 {
        let mut c =
            TlsConn::connect_alpn(tls, "site.test", ca.ca_pem(), &[b"h2"]).expect("TLS handshake");
        c.send_raw(b"GARBAGE GARBAGE GARBAGE GARBAGE\r\n\r\n");
        assert!(
            c.closed_within(Duration::from_secs(10)),
            "bad preface closed"
        );
    }
    wait_until("the errors are counted", Duration::from_secs(10), || {
        sample(
            &proxy,
            "canary_lb_client_errors_total{kind=\"tls_handshake\"}",
        ) >= 200.0
            && sample(
                &proxy,
                "canary_lb_client_errors_total{kind=\"h2_handshake\"}",
            ) >= 20.0
    });
    let logs = proxy.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.len() <= 2,
        "{} ERROR lines for client mistakes, e.g. {:?}",
        errors.len(),
        errors.first()
    );
}
