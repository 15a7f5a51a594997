//! Strict framing at the edge, from raw sockets: for each class of ambiguous or hostile request
//! the test asserts the status the client gets and the exact bytes the app server received:
//! one clean request, or nothing.
//!
//! Who refuses what: `src/edge.rs` (our early request filter) or Pingora's own parser, which
//! answers 400 before our filter for differing or unparseable `Content-Length`, a final coding
//! other than `chunked` and `Transfer-Encoding` with HTTP/1.0. Errors inside a chunked body are
//! only found by Pingora while it streams the body, after the request head went upstream: for
//! those the app server gets that head and nothing more, and the proxy closes that connection
//! so nothing can be appended to the unfinished request (see `chunk_framing_errors_send_no_body_upstream`).

mod common;

use common::raw::{canonical, split_requests, RawBackend, RawClient, RawResponse, BACKEND_BODY};
use common::{wait_until, Proxy};
use std::time::Duration;

/// A proxy in front of one recording app server.
struct Edge {
    // Declared first so the proxy stops before the backend it talks to.
    proxy: Proxy,
    backend: RawBackend,
}

/// What every test request starts with, and what the proxy adds to it on the way up: the
/// request id is the client's own so the forwarded bytes are predictable.
const HOST_AND_ID: &str = "Host: t\r\nX-Request-Id: t1\r\n";
const ADDED: &str =
    "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: t\r\n";

/// The exact bytes the app server gets for a request `line` sent with [`HOST_AND_ID`]:
/// `headers` are the client's further header lines as forwarded, each ending in CRLF.
fn upstream(line: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("{line}\r\n{HOST_AND_ID}{ADDED}{headers}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

/// Assert the app server received exactly the requests in `want` and nothing else (see
/// [`canonical`] for what "exactly" allows: header order and name case).
fn assert_received(what: &str, got: &[u8], want: &[u8]) {
    let (got_reqs, got_rest) = split_requests(got);
    let (want_reqs, _) = split_requests(want);
    let got_c: Vec<String> = got_reqs.iter().map(|r| canonical(r)).collect();
    let want_c: Vec<String> = want_reqs.iter().map(|r| canonical(r)).collect();
    assert!(
        got_c == want_c && got_rest.is_empty(),
        "{what}: the app server got\n got: {}\nwant: {}",
        show(got),
        show(want)
    );
}

impl Edge {
    fn start() -> Edge {
        Edge::with("")
    }

    /// A proxy with extra top-level config lines (e.g. a `client:` section).
    fn with(extra: &str) -> Edge {
        let backend = RawBackend::start();
        let proxy = Proxy::in_front_of(
            &[backend.addr()],
            &format!(
                "threads: 1\n\
                 health_check: {{ kind: tcp, interval: 1s, timeout: 1s }}\n\
                 routing: {{ pool_response_header: false }}\n{extra}"
            ),
        );
        Edge { proxy, backend }
    }

    fn connect(&self) -> RawClient {
        RawClient::connect(self.proxy.listen_port())
    }

    /// Send `raw` on a new connection and return the first response.
    fn exchange(&self, what: &str, raw: &[u8]) -> (RawResponse, RawClient) {
        self.backend.clear();
        let mut client = self.connect();
        client.send(raw);
        let resp = client
            .read_response()
            .unwrap_or_else(|| panic!("{what}: no response to {}", show(raw)));
        (resp, client)
    }

    /// `raw` is answered with `status`, the connection is closed, and the app server gets
    /// nothing: a clean request sent afterwards is all it received.
    fn refused(&self, what: &str, raw: &[u8], status: u16) {
        let (resp, mut client) = self.exchange(what, raw);
        assert_eq!(
            resp.status,
            status,
            "{what}: {} answered {}",
            show(raw),
            resp.head
        );
        assert!(
            client.closed(),
            "{what}: connection left open after {status} (extra bytes: {})",
            show(client.leftover())
        );
        self.assert_only_clean_request_after(what);
    }

    /// A clean request on a new connection reaches the app server, and it is the only thing
    /// the app server got since the last exchange began.
    fn assert_only_clean_request_after(&self, what: &str) {
        let mut client = self.connect();
        client.send(format!("GET /clean HTTP/1.1\r\n{HOST_AND_ID}\r\n").as_bytes());
        let resp = client
            .read_response()
            .expect("an answer to a clean request");
        assert_eq!(
            resp.status, 200,
            "{what}: clean request after it: {}",
            resp.head
        );
        let want = upstream("GET /clean HTTP/1.1", "", b"");
        assert_received(what, &self.backend.bytes(), &want);
    }

    /// `raw` is answered 200 by the app server, which received exactly `want`.
    fn forwarded(&self, what: &str, raw: &[u8], want: &[u8]) {
        let (resp, _client) = self.exchange(what, raw);
        assert_eq!(
            resp.status,
            200,
            "{what}: {} answered {}",
            show(raw),
            resp.head
        );
        assert_eq!(
            resp.body, BACKEND_BODY,
            "{what}: the answer is the app server's"
        );
        assert_received(what, &self.backend.bytes(), want);
    }
}

fn req(line: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("{line}\r\n{HOST_AND_ID}{headers}\r\n{body}").into_bytes()
}

#[test]
fn duplicate_or_list_content_length_is_refused() {
    let edge = Edge::start();
    let post = "POST /p HTTP/1.1";
    edge.forwarded(
        "one Content-Length",
        &req(post, "Content-Length: 5\r\n", "hello"),
        &upstream(post, "Content-Length: 5\r\n", b"hello"),
    );
    for (what, headers) in [
        (
            "two equal lines",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
        ),
        (
            "two lines, other case",
            "Content-Length: 5\r\ncontent-length: 5\r\n",
        ),
        ("a list of equal values", "Content-Length: 5, 5\r\n"),
        ("a list without space", "Content-Length: 5,5\r\n"),
        (
            "differing lines",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        ("a plus sign", "Content-Length: +5\r\n"),
        ("hex", "Content-Length: 0x5\r\n"),
        ("empty", "Content-Length: \r\n"),
    ] {
        edge.refused(what, &req(post, headers, "hello"), 400);
    }
}

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let edge = Edge::start();
    let post = "POST /p HTTP/1.1";
    for (what, headers) in [
        (
            "CL then TE",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "TE then CL",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        ),
        (
            "TE and CL 0",
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        ),
    ] {
        edge.refused(what, &req(post, headers, "5\r\nhello\r\n0\r\n\r\n"), 400);
    }
}

#[test]
fn obfuscated_and_unknown_transfer_codings_are_refused() {
    let edge = Edge::start();
    let post = "POST /p HTTP/1.1";
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let clean = upstream(post, "Transfer-Encoding: chunked\r\n", body.as_bytes());
    edge.forwarded(
        "chunked",
        &req(post, "Transfer-Encoding: chunked\r\n", body),
        &clean,
    );
    // Optional whitespace around a field value is not part of it (RFC 9110 section 5.5), and
    // codings are case-insensitive: these are the one unambiguous `chunked`.
    edge.forwarded(
        "OWS and case",
        &req(post, "Transfer-Encoding: \tCHUNKED \r\n", body),
        &clean,
    );
    for (what, headers, status) in [
        (
            "chunked twice",
            "Transfer-Encoding: chunked, chunked\r\n",
            400,
        ),
        (
            "two TE lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
        ("xchunked", "Transfer-Encoding: xchunked\r\n", 400),
        (
            "chunked-x, chunked",
            "Transfer-Encoding: chunked-x, chunked\r\n",
            400,
        ),
        ("empty element", "Transfer-Encoding: , chunked\r\n", 400),
        ("a parameter", "Transfer-Encoding: chunked;q=1\r\n", 400),
        ("quoted", "Transfer-Encoding: \"chunked\"\r\n", 400),
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", 501),
        (
            "identity, chunked",
            "Transfer-Encoding: identity, chunked\r\n",
            501,
        ),
        // Pingora refuses a final coding other than chunked before our filter: 400, not 501.
        ("gzip", "Transfer-Encoding: gzip\r\n", 400),
        ("chunked, gzip", "Transfer-Encoding: chunked, gzip\r\n", 400),
        ("foo", "Transfer-Encoding: foo\r\n", 400),
    ] {
        edge.refused(what, &req(post, headers, body), status);
    }
    edge.refused(
        "TE with HTTP/1.0",
        b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn chunk_size_and_extension_oddities() {
    let edge = Edge::start();
    let post = "POST /p HTTP/1.1";
    let te = "Transfer-Encoding: chunked\r\n";
    // Pingora re-frames a chunked body on the way up: extensions, whitespace after the size
    // and trailers are dropped, and the app server gets one clean request.
    let clean = upstream(post, te, b"5\r\nhello\r\n0\r\n\r\n");
    for (what, body) in [
        ("an extension", "5;name=value\r\nhello\r\n0\r\n\r\n"),
        ("upper-case hex", "A\r\nhellohello\r\n0\r\n\r\n"),
        ("whitespace after the size", "5 \r\nhello\r\n0\r\n\r\n"),
        ("a trailer", "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        // httparse takes any byte up to CRLF as part of an extension, a bare LF included:
        // a front proxy that ends the size line at the LF would read another body.
        (
            "bare LF inside an extension",
            "5;a\nb\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let want = if what == "upper-case hex" {
            upstream(post, te, b"A\r\nhellohello\r\n0\r\n\r\n")
        } else {
            clean.clone()
        };
        edge.forwarded(what, &req(post, te, body), &want);
    }
    // httparse reads a size line without digits as size 0, the last chunk: the body ends there
    // and what follows up to the next empty line is taken as trailers and dropped. The app
    // server gets one clean request with an empty body; a request hidden after it is not
    // forwarded. (A finding for the lead: a front proxy may read these bytes differently.)
    let empty_body = upstream(post, te, b"0\r\n\r\n");
    for (what, body) in [
        ("an empty size line", "\r\nhello\r\n0\r\n\r\n"),
        ("only an extension", ";x\r\nhello\r\n0\r\n\r\n"),
        (
            "an empty size line, then a request",
            "\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
    ] {
        edge.forwarded(what, &req(post, te, body), &empty_body);
    }
}

#[test]
fn chunk_framing_errors_send_no_body_upstream() {
    let edge = Edge::start();
    let post = "POST /p HTTP/1.1";
    let te = "Transfer-Encoding: chunked\r\n";
    let head_only = upstream(post, te, b"");
    for (what, body) in [
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
        ("bare LF after the data", "5\r\nhello\n0\r\n\r\n"),
        ("bare LF everywhere", "5\nhello\n0\n\n"),
        (
            "bare LF ending the trailers",
            "5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
        ),
        ("a 17-digit size", "00000000000000005\r\nhello\r\n0\r\n\r\n"),
        (
            "an oversized size",
            "fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("a negative size", "-5\r\nhello\r\n0\r\n\r\n"),
        ("a 0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("data longer than the size", "3\r\nhello\r\n0\r\n\r\n"),
    ] {
        let (resp, mut client) = edge.exchange(what, &req(post, te, body));
        assert_eq!(resp.status, 400, "{what}: answered {}", resp.head);
        assert!(client.closed(), "{what}: connection left open");
        // Once a later clean request is answered, whatever the proxy wrote upstream for the
        // bad one has arrived too.
        let mut clean = edge.connect();
        clean.send(&req("GET /clean HTTP/1.1", "", ""));
        let r = clean.read_response().expect("an answer to a clean request");
        assert_eq!(
            r.status, 200,
            "{what}: the clean request after it: {}",
            r.head
        );
        let clean_req = canonical(&upstream("GET /clean HTTP/1.1", "", b""));
        // Pingora may have sent the head before it read the bad chunk: then the app server
        // got that head and not one body byte, and the proxy closed that connection so nothing
        // can be appended to the unfinished request. Or it got nothing at all.
        wait_until(
            &format!("{what}: the proxy closed the connection holding the bare head"),
            Duration::from_secs(10),
            || {
                edge.backend
                    .connection_logs()
                    .iter()
                    .all(|(bytes, closed)| canonical(bytes) == clean_req || *closed)
            },
        );
        let mut cleans = 0;
        for (bytes, _) in edge.backend.connection_logs() {
            let (reqs, rest) = split_requests(&bytes);
            if reqs.len() == 1 && rest.is_empty() && canonical(reqs[0]) == clean_req {
                cleans += 1;
            } else {
                assert!(
                    reqs.is_empty() && canonical(rest) == canonical(&head_only),
                    "{what}: the app server got\n got: {}\nwant: {} (or nothing)",
                    show(&bytes),
                    show(&head_only)
                );
            }
        }
        assert_eq!(cleans, 1, "{what}: the clean request arrived once");
    }
}

#[test]
fn missing_or_repeated_host_is_refused() {
    let edge = Edge::start();
    edge.refused(
        "HTTP/1.1 without Host",
        b"GET / HTTP/1.1\r\nX-Request-Id: t1\r\n\r\n",
        400,
    );
    // Pingora itself refuses a second Host line.
    edge.refused(
        "two Host lines",
        b"GET / HTTP/1.1\r\nHost: t\r\nHost: admin.internal\r\n\r\n",
        400,
    );
    for (what, host) in [
        ("a Host with a slash", "t/admin"),
        ("a Host with a space", "t evil"),
        ("a Host list", "t, admin.internal"),
        ("a Host with a bad port", "t:x"),
    ] {
        edge.refused(
            what,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            400,
        );
    }
    edge.refused(
        "two Host lines on HTTP/1.0",
        b"GET / HTTP/1.0\r\nHost: t\r\nHost: admin.internal\r\n\r\n",
        400,
    );
    // HTTP/1.0 needs no Host (HAProxy's default `option httpchk` sends none), so it passes.
    // Pingora forwards it as HTTP/1.1, still without Host: an app server that insists on
    // Host for HTTP/1.1 answers 400 (left for the lead to decide, see the report).
    edge.forwarded(
        "HTTP/1.0 without Host",
        b"GET /old HTTP/1.0\r\nX-Request-Id: t1\r\n\r\n",
        b"GET /old HTTP/1.1\r\nX-Request-Id: t1\r\nX-Forwarded-For: 127.0.0.1\r\n\
          X-Forwarded-Proto: http\r\n\r\n",
    );
}

#[test]
fn bad_request_targets_are_refused() {
    let edge = Edge::start();
    for (what, line) in [
        (
            "a leading space (GET %20/admin today)",
            "GET  /admin HTTP/1.1",
        ),
        ("NUL", "GET /admin\0.html HTTP/1.1"),
        ("a control byte", "GET /a\x01b HTTP/1.1"),
        ("DEL", "GET /a\x7fb HTTP/1.1"),
        ("an escaped NUL", "GET /admin%00.html HTTP/1.1"),
        ("an escaped LF", "GET /a%0a HTTP/1.1"),
        ("a relative target", "GET admin HTTP/1.1"),
        ("asterisk with GET", "GET * HTTP/1.1"),
        // Pingora escapes these to `%3Ca%3E`, then refuses the request itself.
        ("angle brackets", "GET /<a> HTTP/1.1"),
    ] {
        edge.refused(what, &req(line, "", ""), 400);
    }
    // Pingora percent-escapes a space inside a target before any filter runs, so what goes up
    // is the escaped form a careful client would have sent; httparse takes `"` as it is.
    for (what, line, sent) in [
        (
            "a space inside the path",
            "GET /a b HTTP/1.1",
            "GET /a%20b HTTP/1.1",
        ),
        ("a quote", "GET /a\"b HTTP/1.1", "GET /a\"b HTTP/1.1"),
        (
            "plain",
            "GET /a%20b?q=1%0A2 HTTP/1.1",
            "GET /a%20b?q=1%0A2 HTTP/1.1",
        ),
    ] {
        edge.forwarded(what, &req(line, "", ""), &upstream(sent, "", b""));
    }
}

/// Pipelining is off in Pingora by default: bytes that arrive after a complete request (and
/// its body) get the first request answered, then the connection closes and they are dropped.
/// Nothing after the first request's own framing reaches the app server.
#[test]
fn pipelined_requests_after_a_body_are_not_forwarded() {
    let edge = Edge::start();
    // The body of the first looks like a request: it must arrive as body bytes only.
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let cl = format!("Content-Length: {}\r\n", smuggle.len());
    let chunked = "Transfer-Encoding: chunked\r\n";
    let chunks = "5\r\nhello\r\n0\r\n\r\n";
    for (what, first, want) in [
        (
            "after a Content-Length body",
            req("POST /first HTTP/1.1", &cl, smuggle),
            upstream("POST /first HTTP/1.1", &cl, smuggle.as_bytes()),
        ),
        (
            "after a chunked body",
            req("POST /first HTTP/1.1", chunked, chunks),
            upstream("POST /first HTTP/1.1", chunked, chunks.as_bytes()),
        ),
        (
            "after a GET",
            req("GET /first HTTP/1.1", "", ""),
            upstream("GET /first HTTP/1.1", "", b""),
        ),
    ] {
        let mut raw = first;
        raw.extend_from_slice(&req("GET /second HTTP/1.1", "", ""));
        raw.extend_from_slice(&req("DELETE /third HTTP/1.1", "", ""));
        let (resp, mut client) = edge.exchange(what, &raw);
        assert_eq!(resp.status, 200, "{what}: {}", resp.head);
        assert!(
            client.closed(),
            "{what}: the connection closes after the first answer (extra: {})",
            show(client.leftover())
        );
        assert_received(what, &edge.backend.bytes(), &want);
    }
}

/// A 200 to an `Upgrade` request is not a switch: the connection is not a tunnel, and bytes
/// sent after the request are not passed on raw (CVE-2026-2833, fixed in Pingora 0.8).
#[test]
fn an_upgrade_answered_200_does_not_become_a_tunnel() {
    let edge = Edge::start();
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    let want = upstream("GET /ws HTTP/1.1", upgrade, b"");
    for (what, after) in [
        ("junk", b"\x00\x01not http at all\r\n\r\n".to_vec()),
        ("a request", req("DELETE /after HTTP/1.1", "", "")),
    ] {
        let mut raw = req("GET /ws HTTP/1.1", upgrade, "");
        raw.extend_from_slice(&after);
        let (resp, mut client) = edge.exchange(what, &raw);
        assert_eq!(resp.status, 200, "upgrade then {what}: {}", resp.head);
        assert!(
            client.closed(),
            "upgrade then {what}: the connection closes after the 200 (extra: {})",
            show(client.leftover())
        );
        assert_received(
            &format!("upgrade then {what}"),
            &edge.backend.bytes(),
            &want,
        );
    }
}

#[test]
fn underscore_headers_never_reach_the_app() {
    let edge = Edge::start();
    edge.forwarded(
        "underscore names",
        &req(
            "GET / HTTP/1.1",
            "X_Canary: 1\r\nX-Canary: 0\r\nx_forwarded_for: 10.0.0.1\r\nUser_Id: 7\r\n",
            "",
        ),
        &upstream("GET / HTTP/1.1", "", b""),
    );

    // Off: they pass untouched.
    let edge = Edge::with("client: { drop_underscore_headers: false }\n");
    edge.forwarded(
        "underscore names kept",
        &req("GET / HTTP/1.1", "X_Canary: 1\r\n", ""),
        &upstream("GET / HTTP/1.1", "X_Canary: 1\r\n", b""),
    );
}

#[test]
fn head_limits_are_refused() {
    let edge =
        Edge::with("client: { max_headers: 10, max_header_line: 1024, max_header_bytes: 4096 }\n");
    let eight: String = (0..8).map(|i| format!("X-H{i}: v\r\n")).collect();
    edge.forwarded(
        "ten header lines",
        &req("GET / HTTP/1.1", &eight, ""),
        &upstream("GET / HTTP/1.1", &eight, b""),
    );
    edge.refused(
        "eleven header lines",
        &req("GET / HTTP/1.1", &format!("{eight}X-H9: v\r\n"), ""),
        431,
    );
    let long_value = "v".repeat(1030);
    edge.refused(
        "a header line over 1024 bytes",
        &req("GET / HTTP/1.1", &format!("X-Long: {long_value}\r\n"), ""),
        431,
    );
    edge.refused(
        "a request line over 1024 bytes",
        &req(&format!("GET /{long_value} HTTP/1.1"), "", ""),
        431,
    );
    let wide: String = (0..5)
        .map(|i| format!("X-W{i}: {}\r\n", "v".repeat(1000)))
        .collect();
    // The whole head is bounded while Pingora reads it (patches/pingora/0001), so it never
    // buffers more than the limit: its parser answers 400, as nginx does.
    edge.refused(
        "a head over 4096 bytes",
        &req("GET / HTTP/1.1", &wide, ""),
        400,
    );
}

/// The edge checks every request of a keep-alive connection, not only the first.
#[test]
fn a_bad_request_on_a_reused_connection_is_refused() {
    let edge = Edge::start();
    let mut client = edge.connect();
    edge.backend.clear();
    client.send(&req("GET /first HTTP/1.1", "", ""));
    let first = client
        .read_response()
        .expect("an answer to the first request");
    assert_eq!(first.status, 200, "first: {}", first.head);
    client.send(&req(
        "POST /second HTTP/1.1",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "hello",
    ));
    let second = client
        .read_response()
        .expect("an answer to the second request");
    assert_eq!(second.status, 400, "second: {}", second.head);
    assert!(client.closed(), "the connection closes after the 400");
    assert_received(
        "reused connection",
        &edge.backend.bytes(),
        &upstream("GET /first HTTP/1.1", "", b""),
    );
}
