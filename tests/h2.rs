//! HTTP/2 downstream: the routing promises checked over HTTP/1.1 on TLS, HTTP/2 on TLS (ALPN)
//! and h2c (prior knowledge) against one proxy, with curl. Each protocol must route, set
//! cookies, say `X-Canary-Pool`, forward `X-Canary` and count metrics exactly like the others.

mod common;

use common::tls::{curl, CurlResp, Proto, TestCa};
use common::*;

/// The sum of every `canary_lb_requests_total` sample of `pool`.
fn requests_total(proxy: &Proxy, pool: &str) -> f64 {
    let label = format!("pool=\"{pool}\"");
    proxy
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("canary_lb_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn pool_of(r: &CurlResp) -> &str {
    assert_eq!(r.status, 200, "{r:?}");
    let said = r.header("x-canary-pool").expect("X-Canary-Pool");
    assert_eq!(
        Some(said),
        r.header("x-app-pool"),
        "X-Canary-Pool agrees with the app"
    );
    said
}

#[test]
fn routing_is_the_same_over_h1_tls_h2_tls_and_h2c() {
    let _serial = serial();
    let ca = TestCa::new();
    let site = ca.issue("site", &["site.test"]);
    let prod = App::start("prod-1", "production");
    let canary = App::start("canary-1", "canary");
    let (tls_port, h2c_port, metrics) = (free_port(), free_port(), free_port());
    let proxy = Proxy::start(&format!(
        "listen: [{{ addr: \"127.0.0.1:{tls_port}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}, \
         {{ addr: \"127.0.0.1:{h2c_port}\", h2c: true }}]\n\
         metrics_listen: \"127.0.0.1:{metrics}\"\nthreads: 2\ngrace_period: 1s\n{}\
         routing: {{ canary_percent: 50, salt: \"h2-salt\" }}\n",
        site.cert.display(),
        site.key.display(),
        pools(&[&prod.addr()], &[&canary.addr()]),
    ));
    let ca_pem = Some(ca.ca_pem());
    let mut sticky: Option<Vec<String>> = None;
    for proto in [Proto::H1Tls, Proto::H2Tls, Proto::H2c] {
        let port = if proto == Proto::H2c {
            h2c_port
        } else {
            tls_port
        };
        let get = |path: &str, headers: &[(&str, &str)]| {
            let r = curl(proto, "site.test", port, path, ca_pem, headers, &[])
                .unwrap_or_else(|e| panic!("{proto:?}: {e}\n{}", proxy.logs()));
            assert_eq!(
                r.version,
                proto.expected_version(),
                "{proto:?} spoke {}",
                r.version
            );
            r
        };
        let (prod_before, canary_before) = (
            requests_total(&proxy, "production"),
            requests_total(&proxy, "canary"),
        );

        // The header forces either way, whatever the cookie says; canary sees X-Canary: 1.
        let r = get("/", &[("X-Canary", "1"), ("Cookie", "canary=never")]);
        // Host or :authority, the app sees the same forwarding headers.
        let proto_seen = if proto == Proto::H2c { "http" } else { "https" };
        assert_eq!(
            r.header("x-seen-forwarded-proto"),
            Some(proto_seen),
            "{proto:?}"
        );
        let host = format!("site.test:{port}");
        assert_eq!(
            r.header("x-seen-forwarded-host"),
            Some(host.as_str()),
            "{proto:?}"
        );
        assert_eq!(pool_of(&r), "canary", "{proto:?}");
        assert_eq!(r.header("x-seen-canary"), Some("1"), "{proto:?}");
        let r = get("/", &[("X-Canary", "0"), ("Cookie", "canary=always")]);
        assert_eq!(pool_of(&r), "production", "{proto:?}");
        assert_eq!(r.header("x-seen-canary"), Some("-"), "{proto:?}");
        // The flag cookie, alone or among others (h2 clients may split cookies).
        let r = get("/", &[("Cookie", "a=1; canary=always; b=2")]);
        assert_eq!(pool_of(&r), "canary", "{proto:?}");
        let r = get("/", &[("Cookie", "canary=never")]);
        assert_eq!(pool_of(&r), "production", "{proto:?}");
        let mut routed = 4;
        if proto != Proto::H1Tls {
            // Nine cookie fields, the flag last: joined into one line, so routing sees it.
            let crumbs: Vec<String> = (0..8).map(|i| format!("c{i}=x")).collect();
            let mut headers: Vec<(&str, &str)> =
                crumbs.iter().map(|c| ("Cookie", c.as_str())).collect();
            headers.push(("Cookie", "canary=always"));
            let r = get("/", &headers);
            assert_eq!(pool_of(&r), "canary", "{proto:?}: split cookies");
            routed += 1;
        }

        // A new user gets a canary_uid cookie, and keeps its pool when sending it back.
        let r = get("/", &[]);
        let first = pool_of(&r).to_string();
        let set = r
            .headers_all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with("canary_uid="))
            .unwrap_or_else(|| panic!("{proto:?}: no canary_uid cookie: {r:?}"))
            .to_string();
        let id = set["canary_uid=".len()..].split(';').next().unwrap_or("");
        for _ in 0..3 {
            let r = get("/", &[("Cookie", &format!("canary_uid={id}"))]);
            assert_eq!(
                pool_of(&r),
                first,
                "{proto:?}: a returning user changed pool"
            );
            assert!(
                r.headers_all("set-cookie").is_empty(),
                "{proto:?}: new id for a known user"
            );
        }

        // Sticky percent: twenty fixed users land in the same pools on every protocol.
        let pools: Vec<String> = (0..20)
            .map(|i| {
                let r = get("/", &[("Cookie", &format!("canary_uid=user-{i}"))]);
                pool_of(&r).to_string()
            })
            .collect();
        assert!(pools.iter().any(|p| p == "canary") && pools.iter().any(|p| p == "production"));
        match &sticky {
            None => sticky = Some(pools.clone()),
            Some(first) => assert_eq!(&pools, first, "{proto:?} routed users differently"),
        }
        let canaries = (routed - 2)
            + pools.iter().filter(|p| *p == "canary").count()
            + if first == "canary" { 4 } else { 0 };
        let total = routed + 4 + 20;

        // Metrics count every request, per pool, on this protocol too.
        let (prod_after, canary_after) = (
            requests_total(&proxy, "production"),
            requests_total(&proxy, "canary"),
        );
        assert_eq!(
            canary_after - canary_before,
            canaries as f64,
            "{proto:?} canary count"
        );
        assert_eq!(
            (prod_after - prod_before) + (canary_after - canary_before),
            total as f64,
            "{proto:?} total count"
        );
    }
}

#[test]
fn h2_heads_are_held_to_the_client_limits() {
    let _serial = serial();
    let app = App::start("prod-1", "production");
    let (h2c_port, metrics) = (free_port(), free_port());
    let proxy = Proxy::start(&format!(
        "listen: [{{ addr: \"127.0.0.1:{h2c_port}\", h2c: true }}]\n\
         metrics_listen: \"127.0.0.1:{metrics}\"\nthreads: 1\ngrace_period: 1s\n{}\
         client: {{ max_header_line: 1024, max_headers: 16 }}\n",
        production_pool(&[&app.addr()]),
    ));
    let ok = curl(Proto::H2c, "site.test", h2c_port, "/", None, &[], &[]).expect("h2c");
    assert_eq!((ok.status, ok.version.as_str()), (200, "2"));
    // HTTP/1.1 still works on an h2c listener.
    let h1 = curl(Proto::H1, "site.test", h2c_port, "/", None, &[], &[]).expect("h1");
    assert_eq!((h1.status, h1.version.as_str()), (200, "1.1"));

    let long = "v".repeat(2000);
    let r = curl(
        Proto::H2c,
        "site.test",
        h2c_port,
        "/",
        None,
        &[("X-Long", &long)],
        &[],
    )
    .expect("answer");
    assert_eq!(r.status, 431, "a field over max_header_line: {r:?}");
    let many: Vec<(String, String)> = (0..20).map(|i| (format!("X-H{i}"), "1".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let r = curl(Proto::H2c, "site.test", h2c_port, "/", None, &many, &[]).expect("answer");
    assert_eq!(r.status, 431, "more than max_headers fields: {r:?}");
    // None of the refused requests reached the app.
    let seen = proxy.status_json()["pools"]["production"]["requests"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(seen, 2, "only the two good requests went upstream");
}

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream id) and `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET's HEADERS block with `:path` sent as raw text (HPACK literals, no Huffman): what
/// curl cannot send, as it normalizes the path.
fn h2_get(path: &str) -> Vec<u8> {
    // :method GET (static 2), :scheme http (static 6), then :authority (1) and :path (4)
    // as literals without indexing whose names are static entries.
    let mut b = vec![0x82, 0x86];
    for (index, value) in [(1u8, "site.test"), (4u8, path)] {
        b.push(index);
        b.push(u8::try_from(value.len()).expect("short value"));
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// Issue 21: an HTTP/2 `:path` that is not origin-form (`?x=1`) is refused with 400 like
/// HTTP/1's target and nothing reaches the app; a valid path on the same connection does.
#[test]
fn h2_path_is_held_to_the_http1_target_rules() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let backend = common::raw::RawBackend::start();
    let (h2c_port, metrics) = (free_port(), free_port());
    let proxy = Proxy::start(&format!(
        "listen: [{{ addr: \"127.0.0.1:{h2c_port}\", h2c: true }}]\n\
         metrics_listen: \"127.0.0.1:{metrics}\"\nthreads: 1\ngrace_period: 1s\n{}",
        production_pool(&[&backend.addr()]),
    ));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", h2c_port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[])); // SETTINGS
    out.extend(h2_frame(1, 0x5, 1, &h2_get("?x=1"))); // HEADERS, END_STREAM|END_HEADERS
    out.extend(h2_frame(1, 0x5, 3, &h2_get("/ok")));
    conn.write_all(&out).expect("send");
    wait_until(
        "the valid stream reaches the app",
        Duration::from_secs(10),
        || backend.count("/ok") == 1,
    );
    // Read what came back until the stream-1 answer arrives: its HEADERS block starts with
    // the static-table :status 400 (index 12).
    let mut got = Vec::new();
    let mut status_400 = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !status_400 && std::time::Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let mut rest = &got[..];
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            if rest.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
            if rest[3] == 1 && stream == 1 && rest.get(9) == Some(&0x8c) {
                status_400 = true;
            }
            rest = &rest[9 + len..];
        }
    }
    assert!(
        status_400,
        "no 400 for `:path ?x=1`: {got:?}\n{}",
        proxy.logs()
    );
    // (The pool's health checks of `/healthz` are not the client's.)
    let seen: Vec<String> = backend
        .received()
        .iter()
        .filter(|r| r.path != "/healthz")
        .map(|r| {
            String::from_utf8_lossy(&r.head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(seen, ["GET /ok HTTP/1.1"], "what reached the app");
}
