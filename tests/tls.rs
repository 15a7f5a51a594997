//! TLS termination as a client sees it: certificates chosen by SNI, TLS 1.2/1.3 only,
//! certificates reloaded on SIGHUP without dropping connections (and bad ones refused),
//! `canary-lb check` on bad certificates, the redirect to HTTPS, and `X-Forwarded-Proto`.
//! Certificates come from a CA made at test time (`common::tls`); clients are `curl` and a
//! Rust rustls client.

mod common;

use std::time::Duration;

use common::tls::{curl, Pair, Proto, TestCa, TlsConn};
use common::*;

const NOTICE: Duration = Duration::from_secs(20);

fn tls_map(default: &Pair, sni: &[&Pair]) -> String {
    let sni: Vec<String> = sni
        .iter()
        .map(|p| {
            format!(
                "{{ cert: \"{}\", key: \"{}\" }}",
                p.cert.display(),
                p.key.display()
            )
        })
        .collect();
    format!(
        "{{ cert: \"{}\", key: \"{}\", sni: [{}] }}",
        default.cert.display(),
        default.key.display(),
        sni.join(", ")
    )
}

/// A proxy whose first listener is TLS on `tls_port` (so the harness waits on it), then
/// `more` listener entries, in front of `app`.
fn tls_proxy(tls_port: u16, tls: &str, more: &str, app: &App) -> Proxy {
    Proxy::start(&format!(
        "listen: [{{ addr: \"127.0.0.1:{tls_port}\", tls: {tls} }}{more}]\n\
         metrics_listen: \"127.0.0.1:{}\"\nthreads: 1\ngrace_period: 1s\n{}",
        free_port(),
        production_pool(&[&app.addr()])
    ))
}

#[test]
fn sni_versions_redirect_and_forwarded_proto() {
    let ca = TestCa::new();
    let default = ca.issue("default", &["default.test"]);
    let site = ca.issue("site", &["site.test"]);
    let api = ca.issue("api", &["api.test"]);
    let wild = ca.issue("wild", &["*.wild.test"]);
    let app = App::start("prod-1", "production");
    let (tls_port, plain, redirect) = (free_port(), free_port(), free_port());
    let proxy = tls_proxy(
        tls_port,
        &tls_map(&default, &[&site, &api, &wild]),
        &format!(
            ", \"127.0.0.1:{plain}\", {{ addr: \"127.0.0.1:{redirect}\", redirect_to_https: true }}"
        ),
        &app,
    );
    let ca_pem = Some(ca.ca_pem());

    // SNI picks the certificate: two exact names, a wildcard, the default for anything else.
    for (host, cn) in [
        ("site.test", "site"),
        ("api.test", "api"),
        ("a.wild.test", "wild"),
        ("default.test", "default"),
    ] {
        let r = curl(Proto::H1Tls, host, tls_port, "/", ca_pem, &[], &[])
            .unwrap_or_else(|e| panic!("{host}: {e}\n{}", proxy.logs()));
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert_eq!(r.cert_cn, cn, "{host} got the wrong certificate");
        assert_eq!(r.version, "1.1");
        // What the app saw: the request came over TLS.
        assert_eq!(r.header("x-seen-forwarded-proto"), Some("https"));
        assert_eq!(r.header("x-served-by"), Some("prod-1"));
    }
    // The access log (JSON on stdout by default) names the TLS version of those requests.
    let tls_logged = eventually(
        Duration::from_secs(10),
        "TLS lines in the access log",
        || {
            let versions: Vec<String> = proxy
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v.get("tls")?.as_str().map(str::to_string))
                .collect();
            (versions.len() >= 4).then_some(versions)
        },
    );
    assert!(
        tls_logged.iter().all(|t| t.starts_with("TLS")),
        "{tls_logged:?}"
    );
    // The Rust client agrees, and an unknown name or no SNI gets the default certificate.
    let conn = TlsConn::connect(tls_port, "a.wild.test", ca.ca_pem()).expect("TLS to a.wild.test");
    assert_eq!(conn.cert_cn(), "wild");
    assert_eq!(conn.version(), "Some(TLSv1_3)");
    for host in ["other.test", "127.0.0.1"] {
        let r = curl(Proto::H1Tls, host, tls_port, "/", None, &[], &["-k"]).expect("-k");
        assert_eq!(r.cert_cn, "default", "{host}");
    }
    // TLS 1.2 is served, TLS 1.1 and older are refused.
    let r = curl(
        Proto::H1Tls,
        "site.test",
        tls_port,
        "/",
        ca_pem,
        &[],
        &["--tls-max", "1.2"],
    )
    .expect("TLS 1.2 is served");
    assert_eq!(r.status, 200);
    let old = curl(
        Proto::H1Tls,
        "site.test",
        tls_port,
        "/",
        ca_pem,
        &[],
        &["--tlsv1.0", "--tls-max", "1.1"],
    );
    assert!(old.is_err(), "TLS 1.1 must be refused: {old:?}");

    // Plain HTTP sent to the TLS port: no HTTP answer, the connection is closed, nothing goes
    // upstream, and the listener keeps serving. (A request is counted after its answer went
    // out: wait for the 7 served so far, 4 + 2 + 1, to be counted.)
    let before = counted(&proxy, 7);
    let mut raw = common::raw::RawClient::connect(tls_port);
    raw.send(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n");
    let got = raw.read_until_close(Duration::from_secs(10));
    assert!(got.closed && !got.contains(b"HTTP/1"), "{got:?}");
    assert_eq!(proxied(&proxy), before);
    let r = curl(Proto::H1Tls, "site.test", tls_port, "/", ca_pem, &[], &[]).expect("serving");
    assert_eq!(r.status, 200);

    // The plain listener still says http, and a client's own X-Forwarded-Proto does not win.
    let r = curl(
        Proto::H1,
        "site.test",
        plain,
        "/",
        None,
        &[("X-Forwarded-Proto", "https")],
        &[],
    )
    .expect("plain");
    assert_eq!(r.header("x-seen-forwarded-proto"), Some("http"));

    let before = counted(&proxy, 9);
    // The redirect keeps path and query, goes to the TLS port, and only for served names.
    for host in ["site.test", "x.wild.test"] {
        let r =
            curl(Proto::H1, host, redirect, "/a/b?x=1&y=%20", None, &[], &[]).expect("redirect");
        assert_eq!(r.status, 308, "{host}: {r:?}");
        assert_eq!(
            r.header("location"),
            Some(format!("https://{host}:{tls_port}/a/b?x=1&y=%20").as_str())
        );
    }
    for hostile in ["evil.test", "site.test.evil.test", "127.0.0.1"] {
        let r = curl(Proto::H1, hostile, redirect, "/", None, &[], &[]).expect("answer");
        assert_eq!(r.status, 400, "{hostile} must not be redirected: {r:?}");
        assert_eq!(r.header("location"), None);
    }
    // A Host header naming another host than the URL: the Host decides, and is checked.
    let r = curl(
        Proto::H1,
        "site.test",
        redirect,
        "/",
        None,
        &[("Host", "evil.test")],
        &[],
    )
    .expect("answer");
    assert_eq!(r.status, 400);
    assert_eq!(proxied(&proxy), before, "a redirect never goes upstream");
}

/// `n`, once the proxy counts `n` requests sent to production (each is counted after its
/// answer went out, so right after a client got one it may not be yet).
fn counted(proxy: &Proxy, n: u64) -> u64 {
    wait_until(
        &format!("{n} requests counted"),
        Duration::from_secs(10),
        || proxied(proxy) == n,
    );
    n
}

/// Requests the proxy sent to the production pool so far (`/status`).
fn proxied(proxy: &Proxy) -> u64 {
    proxy.status_json()["pools"]["production"]["requests"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn reload_swaps_certificates_without_dropping_connections_and_refuses_bad_ones() {
    let ca = TestCa::new();
    let live = ca.issue("v1", &["site.test"]);
    let app = App::start("prod-1", "production");
    let tls_port = free_port();
    let proxy = tls_proxy(tls_port, &tls_map(&live, &[]), "", &app);

    let mut kept = TlsConn::connect(tls_port, "site.test", ca.ca_pem()).expect("connect");
    assert_eq!(kept.cert_cn(), "v1");
    assert_eq!(
        kept.get("site.test", "/").expect("first request").status,
        200
    );

    // A renewed certificate written over the files is served to new connections after HUP.
    ca.copy_over(&ca.issue("v2", &["site.test"]), &live);
    proxy.sighup();
    eventually(NOTICE, "the renewed certificate is served", || {
        let c = TlsConn::connect(tls_port, "site.test", ca.ca_pem()).ok()?;
        (c.cert_cn() == "v2").then_some(())
    });
    // The connection opened before the reload still works, with its certificate.
    let r = kept
        .get("site.test", "/after-reload")
        .expect("kept connection");
    assert_eq!(r.status, 200);
    assert_eq!(kept.cert_cn(), "v1");

    // An expired certificate, then a key that does not match: refused, named, v2 keeps serving.
    let expired = ca.issue_expired("expired", &["site.test"]);
    let other = ca.issue("other", &["site.test"]);
    let mismatched = Pair {
        cert: ca.issue("v3", &["site.test"]).cert,
        key: other.key.clone(),
    };
    for (bad, reason) in [(&expired, "expired on"), (&mismatched, "does not match")] {
        ca.copy_over(bad, &live);
        proxy.sighup();
        let file = if reason == "expired on" {
            &live.cert
        } else {
            &live.key
        };
        let wanted = format!("`{}`", file.display());
        wait_until(&format!("the reload refuses: {reason}"), NOTICE, || {
            proxy
                .logs()
                .lines()
                .any(|l| l.contains("SIGHUP") && l.contains(reason) && l.contains(&wanted))
        });
        let c = TlsConn::connect(tls_port, "site.test", ca.ca_pem()).expect("still serving");
        assert_eq!(c.cert_cn(), "v2", "after a refused reload ({reason})");
        let r = curl(
            Proto::H1Tls,
            "site.test",
            tls_port,
            "/",
            Some(ca.ca_pem()),
            &[],
            &[],
        )
        .expect("still serving");
        assert_eq!(r.status, 200);
    }
    let r = kept.get("site.test", "/still").expect("kept connection");
    assert_eq!(r.status, 200);
}

#[test]
fn check_refuses_bad_certificates_naming_the_file() {
    let ca = TestCa::new();
    let good = ca.issue("good", &["site.test"]);
    let expired = ca.issue_expired("expired", &["site.test"]);
    let nameless = ca.issue("nameless", &[]);
    let other = ca.issue("other", &["site.test"]);
    let not_pem = ca.dir().join("not-pem.crt");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let missing = ca.dir().join("missing.crt");
    let config = ca.dir().join("canary-lb.yaml");
    let check = |pair: &Pair| {
        std::fs::write(
            &config,
            format!(
                "listen: [{{ addr: \"127.0.0.1:{}\", tls: {} }}]\n",
                free_port(),
                tls_map(&good, &[pair])
            ),
        )
        .expect("write config");
        run_cli(
            &["check", "--config", config.to_str().expect("utf-8 path")],
            Duration::from_secs(20),
        )
    };
    let out = check(&good);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 TLS listener(s)"));
    let cases = [
        (expired.clone(), &expired.cert, "expired on"),
        (nameless.clone(), &nameless.cert, "no DNS names"),
        (
            Pair {
                cert: not_pem.clone(),
                key: good.key.clone(),
            },
            &not_pem,
            "CERTIFICATE",
        ),
        (
            Pair {
                cert: missing.clone(),
                key: good.key.clone(),
            },
            &missing,
            "cannot read",
        ),
        (
            Pair {
                cert: good.cert.clone(),
                key: other.key.clone(),
            },
            &other.key,
            "does not match",
        ),
    ];
    for (pair, file, reason) in &cases {
        let out = check(pair);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{reason}: check passed");
        assert!(
            err.contains(&format!("`{}`", file.display())) && err.contains(reason),
            "{reason}: the error must name {} and the reason: {err}",
            file.display()
        );
    }
}

#[test]
fn demo_serves_https_with_the_certificate_it_makes() {
    let (listen, metrics, tls_port) = (free_port(), free_port(), free_port());
    let base = (0..50)
        .map(|_| free_port())
        .find(|&p| {
            p < 65000 && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
        })
        .expect("three consecutive free ports");
    let demo = Background::cli(&[
        "demo",
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--app-base-port",
        &base.to_string(),
    ]);
    // The printed line: `curl --cacert <ca> https://localhost:<port>/`.
    let ca = eventually(STARTUP, "the demo prints its curl --cacert line", || {
        let logs = demo.logs();
        let line = logs.lines().find(|l| l.contains("curl --cacert"))?;
        let ca = line
            .split("--cacert ")
            .nth(1)?
            .split(' ')
            .next()?
            .to_string();
        line.contains(&format!("https://localhost:{tls_port}/"))
            .then_some(std::path::PathBuf::from(ca))
    });
    let r = eventually(STARTUP, "the demo answers over HTTPS", || {
        curl(
            Proto::H1Tls,
            "localhost",
            tls_port,
            "/",
            Some(&ca),
            &[],
            &[],
        )
        .ok()
    });
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-forwarded-proto"), Some("https"));
    let r = curl(
        Proto::H2Tls,
        "localhost",
        tls_port,
        "/",
        Some(&ca),
        &[],
        &[],
    )
    .expect("h2");
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
}
