//! WebSockets through the proxy (issue 10): a real echo server behind each pool and a real
//! client; routing is decided on the upgrade request; only a `101` switches to a tunnel; a
//! quiet WebSocket outlives the body and upstream read timeouts, and `tunnel_idle_timeout` of
//! silence ends it.

mod common;

use std::time::Duration;

use common::raw::{RawBackend, RawClient};
use common::ws::{block_on, connect, echo, ends_within, next_text, WsEcho};
use common::{free_port, pools, production_pool, proxy_config, Proxy};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Short request timeouts, so the test shows a WebSocket outliving them; a longer tunnel idle
/// timeout.
const TIMEOUTS: &str = "client: { body_timeout: 400ms, send_timeout: 2s, tunnel_idle_timeout: 3s }\n\
                        upstream: { connect_timeout: 1s, read_timeout: 400ms, write_timeout: 2s }\n";

fn proxy(production: &str, canary: &str) -> Proxy {
    Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\ngrace_period: 1s\n{}\
             health_check: {{ kind: tcp, interval: 1s, timeout: 500ms }}\n{TIMEOUTS}",
            pools(&[production], &[canary])
        ),
    ))
}

#[test]
fn websocket_works_through_both_pools_with_a_close_handshake() {
    let prod = WsEcho::start("prod-ws");
    let canary = WsEcho::start("canary-ws");
    let proxy = proxy(&prod.addr(), &canary.addr());
    let url = format!("ws://127.0.0.1:{}/chat", proxy.listen_port());
    block_on(async {
        for (headers, name) in [
            (&[][..], prod.name()),
            (&[("X-Canary", "1")][..], canary.name()),
        ] {
            let mut ws = connect(&url, headers)
                .await
                .expect("WebSocket through the proxy");
            // Server to client, unprompted, then both ways.
            assert_eq!(next_text(&mut ws).await, Ok(format!("hello from {name}")));
            assert_eq!(echo(&mut ws, "one").await, Ok(format!("{name}: one")));
            ws.send(Message::binary(vec![0u8, 1, 2, 255]))
                .await
                .expect("send binary");
            let reply = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
            assert!(
                matches!(&reply, Ok(Some(Ok(Message::Binary(b)))) if b.as_ref() == [0u8, 1, 2, 255]),
                "{reply:?}"
            );
            // The close handshake: our close is answered with the server's, then the end.
            ws.close(None).await.expect("send close");
            let mut closed_by_server = false;
            while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await
            {
                match msg {
                    Ok(Message::Close(_)) => closed_by_server = true,
                    Ok(other) => panic!("after close: {other:?}"),
                    Err(_) => break,
                }
            }
            assert!(closed_by_server, "no close frame came back from {name}");
        }
    });
    // Routing was decided on the upgrade request, which reached each server with the proxy's
    // headers: the canary one with X-Canary: 1, production's without.
    let header =
        |h: &[(String, String)], n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (p, c) = (prod.upgrades(), canary.upgrades());
    assert_eq!((p.len(), c.len()), (1, 1), "one upgrade each");
    assert_eq!(header(&p[0], "x-canary"), None);
    assert_eq!(header(&c[0], "x-canary").as_deref(), Some("1"));
    assert_eq!(
        header(&p[0], "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert!(header(&p[0], "x-request-id").is_some());
}

#[test]
fn a_quiet_websocket_lives_until_the_tunnel_idle_timeout() {
    let prod = WsEcho::start("prod-ws");
    let canary = WsEcho::start("canary-ws");
    let proxy = proxy(&prod.addr(), &canary.addr());
    let url = format!("ws://127.0.0.1:{}/quiet", proxy.listen_port());
    block_on(async {
        let mut ws = connect(&url, &[])
            .await
            .expect("WebSocket through the proxy");
        assert_eq!(next_text(&mut ws).await, Ok("hello from prod-ws".into()));
        // Silent for three times client.body_timeout and upstream.read_timeout (400 ms), well
        // within tunnel_idle_timeout (3 s): still alive.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            echo(&mut ws, "still there").await,
            Ok("prod-ws: still there".into())
        );
        // Then silent for good: the proxy ends the tunnel (3 s idle), long before the 60 s a
        // raw backend connection lives.
        assert_eq!(
            ends_within(&mut ws, Duration::from_secs(20)).await,
            Ok(true),
            "an idle tunnel was kept open"
        );
    });
}

/// An upstream that answers an upgrade request with a 200 does not get a tunnel: the
/// connection stays HTTP, so the next bytes the client sends are parsed as a request (with the
/// proxy's headers added) or refused, never passed through raw.
#[test]
fn only_a_101_switches_to_a_tunnel() {
    let backend = RawBackend::start();
    let proxy = Proxy::start(&proxy_config(
        free_port(),
        free_port(),
        &format!(
            "threads: 1\ngrace_period: 1s\n{}\
             health_check: {{ kind: tcp, interval: 1s, timeout: 500ms }}\n",
            production_pool(&[&backend.addr()])
        ),
    ));
    let mut c = RawClient::connect(proxy.listen_port());
    c.send(
        b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let first = c.read_response().expect("an answer to the upgrade request");
    assert_eq!(first.status, 200, "{first:?}");
    // What a client believing in a tunnel would send next, then a plain request.
    c.send(b"RAWBYTES-NOT-HTTP\r\n\r\n");
    let after = c.read_until_close(Duration::from_secs(10));
    let raw = backend.bytes();
    assert!(
        common::raw::find(&raw, b"RAWBYTES-NOT-HTTP").is_none(),
        "raw bytes after a 200 reached the app server: {}",
        String::from_utf8_lossy(&raw)
    );
    // The proxy treated them as a (bad) request, or closed the connection: either way no
    // second 200.
    assert!(after.status != 200, "{after:?}");
    assert_eq!(backend.count("/up"), 1);
}
