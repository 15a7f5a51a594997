//! TLS and HTTP/2 to the app servers (`pools.X.tls`, `pools.X.protocol`), against real rustls
//! and `h2` servers with certificates made at test time: a verified connection (requests and
//! health checks), a server signed by another CA refused with 502 and counted but not held
//! against its health, mutual TLS, a gRPC-style HTTP/2 round trip with trailers through both
//! pools (h2 over TLS and h2c), and the config errors that name their key and line.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{Pair, TestCa};
use common::upstream::{Backend, Speak};
use common::{free_port, get, proxy_config, run_cli, Proxy};

/// Health checks over the pools' own transport, every 300 ms, deciding on one answer.
const HEALTH: &str = "health_check: { kind: http, path: /healthz, interval: 300ms, timeout: 2s, \
                      healthy_threshold: 1, unhealthy_threshold: 1 }\n";

/// A pool entry: `server` with `tls` (a YAML map, or empty for none) and `protocol`.
fn pool(server: &str, tls: &str, protocol: &str) -> String {
    let mut s = format!("{{ servers: [\"{server}\"]");
    if !tls.is_empty() {
        s += &format!(", tls: {tls}");
    }
    if !protocol.is_empty() {
        s += &format!(", protocol: {protocol}");
    }
    s + " }"
}

fn pools(production: &str, canary: &str) -> String {
    format!("pools:\n  production: {production}\n  canary: {canary}\n")
}

/// The value of one series (`name{labels}` exactly as exported), 0 when absent.
fn metric(proxy: &Proxy, series: &str) -> f64 {
    proxy
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn tls_failures(proxy: &Proxy, pool: &str, kind: &str) -> f64 {
    metric(
        proxy,
        &format!("canary_lb_upstream_tls_failures_total{{kind=\"{kind}\",pool=\"{pool}\"}}"),
    )
}

fn ca_map(ca: &Path) -> String {
    format!("{{ ca_file: \"{}\" }}", ca.display())
}

fn server_cert(ca: &TestCa, stem: &str) -> Pair {
    // The servers are dialled by address: the default SNI is the IP, checked against the
    // certificate's IP names.
    ca.issue(stem, &["127.0.0.1", "app.test"])
}

#[test]
fn verified_tls_to_both_pools_for_requests_and_health_checks() {
    let ca = TestCa::new();
    let prod = Backend::tls("prod-tls", &server_cert(&ca, "prod"), None, Speak::H1);
    let canary = Backend::tls("canary-tls", &server_cert(&ca, "canary"), None, Speak::H1);
    // Production by the server's IP (default SNI), canary by a configured name.
    let canary_tls = format!(
        "{{ ca_file: \"{}\", sni: app.test, verify: true }}",
        ca.ca_pem().display()
    );
    let proxy = Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "{HEALTH}{}",
            pools(
                &pool(&prod.addr(), &ca_map(ca.ca_pem()), ""),
                &pool(&canary.addr(), &canary_tls, "h1"),
            )
        ),
    ));
    let r = get(&proxy.url("/hello"), &[]);
    assert_eq!(r.status, 200, "{}", proxy.logs());
    assert_eq!(r.body, "prod-tls");
    assert_eq!(r.pool(), Some("production"));
    let r = get(&proxy.url("/hello"), &[("X-Canary", "1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "canary-tls");
    assert_eq!(r.pool(), Some("canary"));
    // The app servers saw the requests over TLS (they speak nothing else), and the health
    // checks came the same way.
    assert_eq!(prod.count("/hello"), 1);
    assert_eq!(canary.count("/hello"), 1);
    common::wait_until("health checks over TLS", Duration::from_secs(10), || {
        prod.count("/healthz") >= 2 && canary.count("/healthz") >= 2
    });
    assert!(
        prod.handshake_errors().is_empty(),
        "{:?}",
        prod.handshake_errors()
    );
    for kind in [
        "unknown_ca",
        "bad_certificate",
        "client_cert_refused",
        "handshake",
    ] {
        assert_eq!(tls_failures(&proxy, "production", kind), 0.0, "{kind}");
        assert_eq!(tls_failures(&proxy, "canary", kind), 0.0, "{kind}");
    }
}

#[test]
fn a_server_signed_by_another_ca_is_refused_counted_and_not_held_against_its_health() {
    let trusted = TestCa::new();
    let other = TestCa::new();
    let backend = Backend::tls(
        "stranger",
        &server_cert(&other, "stranger"),
        None,
        Speak::H1,
    );
    // One failure would eject the server if it counted against it.
    let proxy = Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "{HEALTH}passive_health: {{ max_failures: 1, max_ejection_percent: 100, cool_off: 60s }}\n\
             upstream: {{ max_tries: 1 }}\n{}",
            pools(&pool(&backend.addr(), &ca_map(trusted.ca_pem()), ""), "{}")
        ),
    ));
    // Let health checks run over TLS a few times first: they fail the same way.
    common::wait_until("health checks tried", Duration::from_secs(10), || {
        backend.handshake_errors().len() >= 2
    });
    for _ in 0..3 {
        let r = get(&proxy.url("/"), &[]);
        assert_eq!(r.status, 502, "{}", proxy.logs());
    }
    assert_eq!(
        backend.count("/"),
        0,
        "no request may reach an unverified server"
    );
    assert!(
        tls_failures(&proxy, "production", "unknown_ca") >= 3.0,
        "{}\n{}",
        proxy.metrics_text(),
        proxy.logs()
    );
    assert_eq!(tls_failures(&proxy, "production", "handshake"), 0.0);
    let status = proxy.status_json();
    let server = &status["pools"]["production"]["servers"][0];
    assert_eq!(server["ejected"], false, "{status}");
    assert_eq!(server["healthy"], true, "{status}");
    assert_eq!(server["in_rotation"], true, "{status}");
}

#[test]
fn mutual_tls_with_the_client_certificate_and_refused_without_it() {
    let ca = TestCa::new();
    let client = ca.issue("proxy-client", &["proxy.client"]);
    let prod = Backend::tls(
        "prod-mtls",
        &server_cert(&ca, "prod"),
        Some(ca.ca_pem()),
        Speak::H1,
    );
    let canary = Backend::tls(
        "canary-mtls",
        &server_cert(&ca, "canary"),
        Some(ca.ca_pem()),
        Speak::H1,
    );
    let with_cert = format!(
        "{{ ca_file: \"{}\", client_cert: \"{}\", client_key: \"{}\" }}",
        ca.ca_pem().display(),
        client.cert.display(),
        client.key.display()
    );
    let proxy = Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "{HEALTH}upstream: {{ max_tries: 1 }}\n{}",
            pools(
                &pool(&prod.addr(), &with_cert, ""),
                &pool(&canary.addr(), &ca_map(ca.ca_pem()), ""),
            )
        ),
    ));
    let r = get(&proxy.url("/m"), &[]);
    assert_eq!(r.status, 200, "{}", proxy.logs());
    assert_eq!(r.body, "prod-mtls");
    assert_eq!(prod.count("/m"), 1);
    // Canary has no client certificate: its server refuses the proxy.
    let r = get(&proxy.url("/m"), &[("X-Canary", "1")]);
    assert_eq!(r.status, 502);
    assert_eq!(canary.count("/m"), 0);
    assert!(!canary.handshake_errors().is_empty());
    assert!(tls_failures(&proxy, "canary", "client_cert_refused") >= 1.0);
    assert_eq!(
        tls_failures(&proxy, "production", "client_cert_refused"),
        0.0
    );
    let status = proxy.status_json();
    assert_eq!(
        status["pools"]["canary"]["servers"][0]["in_rotation"], true,
        "{status}"
    );
}

/// One gRPC-style call on an HTTP/2 connection to the proxy: a length-prefixed message,
/// `te: trailers`; the response's status, body and trailers.
async fn grpc_call(
    send: &h2::client::SendRequest<Bytes>,
    canary: bool,
    message: &[u8],
) -> (u16, String, Vec<u8>, http::HeaderMap) {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    let req = http::Request::post("http://proxy.test/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-canary", if canary { "1" } else { "0" })
        .body(())
        .expect("request");
    let mut ready = send.clone().ready().await.expect("h2 ready");
    let (resp, mut body) = ready.send_request(req, false).expect("send request");
    body.send_data(Bytes::from(framed), true)
        .expect("send body");
    let resp = resp.await.expect("response head");
    let status = resp.status().as_u16();
    let pool = resp
        .headers()
        .get("x-canary-pool")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut recv = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("body");
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.expect("trailers").unwrap_or_default();
    (status, pool, data, trailers)
}

#[test]
fn grpc_style_h2_round_trip_with_trailers_through_both_pools() {
    let ca = TestCa::new();
    // Production: HTTP/2 over TLS (ALPN h2 only); canary: h2c. Neither speaks HTTP/1.1.
    let prod = Backend::tls("prod-h2", &server_cert(&ca, "prod"), None, Speak::H2);
    let canary = Backend::h2c("canary-h2c");
    let (plain, h2c) = (free_port(), free_port());
    let yaml = format!(
        "listen: [\"127.0.0.1:{plain}\", {{ addr: \"127.0.0.1:{h2c}\", h2c: true }}]\n\
         metrics_listen: \"127.0.0.1:{}\"\n{HEALTH}{}",
        free_port(),
        pools(
            &pool(&prod.addr(), &ca_map(ca.ca_pem()), "h2"),
            &pool(&canary.addr(), "", "h2c"),
        )
    );
    let proxy = Proxy::start(&yaml);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let send = common::h2client::connect(h2c, None).await;
        for (canary_pool, name, backend) in
            [(false, "prod-h2", &prod), (true, "canary-h2c", &canary)]
        {
            let msg = format!("hello {name}");
            let (status, pool, body, trailers) =
                grpc_call(&send, canary_pool, msg.as_bytes()).await;
            assert_eq!(status, 200, "{}", proxy.logs());
            assert_eq!(pool, if canary_pool { "canary" } else { "production" });
            assert_eq!(&body[5..], msg.as_bytes(), "the message echoed");
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..]),
                "trailers: {trailers:?}"
            );
            assert_eq!(
                trailers.get("grpc-message").map(|v| v.as_bytes()),
                Some(name.as_bytes())
            );
            let seen = backend.seen();
            let call = seen
                .iter()
                .find(|s| s.path == "/echo.Echo/Say")
                .expect("the call reached its pool's server");
            assert_eq!(call.version, "HTTP/2.0");
            assert_eq!(call.method, "POST");
            assert_eq!(call.header("content-type"), Some("application/grpc"));
            assert_eq!(call.header("te"), Some("trailers"), "{call:?}");
            assert_eq!(call.header("x-canary"), canary_pool.then_some("1"));
            assert_eq!(&call.body[5..], msg.as_bytes());
        }
    });
    // Health checks speak HTTP/2 too (the servers speak nothing else).
    common::wait_until("health checks over h2", Duration::from_secs(10), || {
        prod.count("/healthz") >= 1 && canary.count("/healthz") >= 1
    });
    let status = proxy.status_json();
    for p in ["production", "canary"] {
        assert_eq!(status["pools"][p]["in_rotation"], 1, "{status}");
    }
}

/// `canary-lb check` on `body`: its exit code and stderr.
fn check(body: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, proxy_config(free_port(), free_port(), body)).expect("write");
    let out = run_cli(
        &["check", "--config", path.to_str().expect("path")],
        Duration::from_secs(20),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_settings_are_config_errors_naming_the_key_and_line() {
    let ca = TestCa::new();
    let client = ca.issue("client", &["client.test"]);
    let (ok, err) = check(&pools(
        &pool("127.0.0.1:1", "{ ca_file: /nonexistent/ca.pem }", ""),
        "{}",
    ));
    assert!(!ok);
    assert!(
        err.contains("pools.production.tls.ca_file") && err.contains("line 4"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let (ok, err) = check(&pools(
        "{}",
        &pool(
            "127.0.0.1:1",
            &format!("{{ client_cert: \"{}\" }}", client.cert.display()),
            "",
        ),
    ));
    assert!(!ok);
    assert!(
        err.contains("pools.canary.tls.client_key") && err.contains("line 5"),
        "{err}"
    );
    let (ok, err) = check(&pools(&pool("127.0.0.1:1", "", "h2"), "{}"));
    assert!(!ok);
    assert!(err.contains("pools.production.protocol"), "{err}");
    let (ok, err) = check(&pools(&pool("127.0.0.1:1", "{}", "h2c"), "{}"));
    assert!(!ok);
    assert!(err.contains("pools.production.protocol"), "{err}");
    // The good shapes pass.
    let good = format!(
        "{{ ca_file: \"{}\", client_cert: \"{}\", client_key: \"{}\", sni: app.test }}",
        ca.ca_pem().display(),
        client.cert.display(),
        client.key.display()
    );
    let (ok, err) = check(&pools(
        &pool("127.0.0.1:1", &good, "h2"),
        &pool("127.0.0.1:2", "", "h2c"),
    ));
    assert!(ok, "{err}");
}
