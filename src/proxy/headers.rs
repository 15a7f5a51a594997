//! The headers canary-lb reads and writes on the way through: the forwarding headers
//! (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`) and the trusted-proxy rule, the request id, the request's cookie lines, and
//! whether a request carries a body. Routing reads none of these directly: it gets plain
//! facts from the proxy.

use std::net::IpAddr;

use ipnet::IpNet;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{CasedHeaderName, RequestHeader};

// Header names as `&'static str` in the case they go out on the wire: the spelling of the
// prepared names below, and what removals and tests name.
pub const X_CANARY_POOL: &str = "X-Canary-Pool";
pub const X_REQUEST_ID: &str = "X-Request-Id";
pub const X_FORWARDED_FOR: &str = "X-Forwarded-For";
pub const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
pub const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
/// Single-address client headers some apps read instead of `X-Forwarded-For`; like
/// `Forwarded`, believed only from a trusted peer and otherwise removed (the proxy does not
/// write its own: `X-Forwarded-For` already names the client).
pub const X_REAL_IP: &str = "X-Real-IP";
pub const TRUE_CLIENT_IP: &str = "True-Client-IP";

// The same names for lookups: a `&str` is parsed and lower-cased on every lookup, a
// `HeaderName` only hashed (about 350 instructions a lookup less, BENCHMARKS.md).
const N_X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const N_X_CANARY_POOL: HeaderName = HeaderName::from_static("x-canary-pool");
const N_X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const N_TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

// The names the request path inserts, prepared once with their spelling (Pingora patch 0017):
// inserted without the name being parsed and lower-cased into a new allocation each time, and
// written in the same spelling as the `&str` above.
pub const C_X_CANARY_POOL: CasedHeaderName =
    CasedHeaderName::from_static("x-canary-pool", X_CANARY_POOL);
pub const C_X_REQUEST_ID: CasedHeaderName =
    CasedHeaderName::from_static("x-request-id", X_REQUEST_ID);
const C_X_FORWARDED_FOR: CasedHeaderName =
    CasedHeaderName::from_static("x-forwarded-for", X_FORWARDED_FOR);
const C_X_FORWARDED_PROTO: CasedHeaderName =
    CasedHeaderName::from_static("x-forwarded-proto", X_FORWARDED_PROTO);
const C_X_FORWARDED_HOST: CasedHeaderName =
    CasedHeaderName::from_static("x-forwarded-host", X_FORWARDED_HOST);

/// Longest `X-Request-Id` kept from a client.
pub const MAX_REQUEST_ID: usize = 128;

/// `Cookie` lines of a request that routing looks at; more are ignored.
pub const MAX_COOKIE_LINES: usize = 8;

/// A client's `X-Request-Id` is kept only when it is 1..=128 bytes of `[A-Za-z0-9._:-]`:
/// it is echoed in the response and logged, so nothing else may pass.
pub fn valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A request's id, taken before anything else looks at the request, so every answer (the
/// app's, and the proxy's own errors, refusals and redirects) and the access log line carry
/// the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    pub value: HeaderValue,
    /// The client sent it (it goes upstream as sent); else it is new and must be set there.
    pub from_client: bool,
}

/// The request's id: the client's `X-Request-Id` when it sent exactly one valid line, else a
/// new UUID v4.
pub fn request_id_of(req: &RequestHeader) -> RequestId {
    let mut sent = req.headers.get_all(N_X_REQUEST_ID).iter();
    if let (Some(id), None) = (sent.next(), sent.next()) {
        if valid_request_id(id.as_bytes()) {
            return RequestId {
                value: id.clone(),
                from_client: true,
            };
        }
    }
    new_request_id()
}

/// A new id: a UUID v4. (Measured, issue 23: the random draw is about 120 of the id's 340
/// instructions, the rest formatting and the value's copy; an id made of a per-thread random
/// prefix and a counter, as a version-8 UUID, cost 490, so the UUID v4 stays.)
pub fn new_request_id() -> RequestId {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    RequestId {
        // A hyphenated UUID is always a valid header value.
        value: HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("invalid-uuid")),
        from_client: false,
    }
}

/// Send `id` upstream: a new id replaces whatever `X-Request-Id` lines the client sent (none,
/// several, or an invalid one); the client's valid one is already there.
pub fn set_request_id(upstream: &mut RequestHeader, id: &RequestId) -> Result<()> {
    if !id.from_client {
        upstream.insert_header(&C_X_REQUEST_ID, id.value.clone())?;
    }
    Ok(())
}

/// Hops of a trusted peer's `X-Forwarded-For` looked at and sent on: the rightmost ones (the
/// nearest proxies); the rest, written by whoever the farthest client was, are dropped.
pub const MAX_FORWARDED_HOPS: usize = 20;

/// Longest `X-Forwarded-Host` kept from a trusted peer (a DNS name is at most 253 bytes).
pub const MAX_FORWARDED_HOST: usize = 255;

/// One `X-Forwarded-For` entry: an address (`1.2.3.4`, `2001:db8::1`, also with a port,
/// `1.2.3.4:80`, `[2001:db8::1]:80`), or None for anything else (`unknown`, garbage).
pub fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if text.len() > 64 {
        return None;
    }
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        })
}

/// The last [`MAX_FORWARDED_HOPS`] entries of the request's `X-Forwarded-For` lines, nearest
/// first (the rightmost entry of the last line is the proxy that connected to us's client);
/// empty entries are skipped. Work is bounded by the hop cap and the request head limits.
pub fn forwarded_hops(req: &RequestHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for line in req.headers.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in line.as_bytes().rsplit(|&b| b == b',') {
            if hops.len() == MAX_FORWARDED_HOPS {
                return hops;
            }
            if !entry.trim_ascii().is_empty() {
                hops.push(parse_hop(entry));
            }
        }
    }
    hops
}

fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// Who a request came from, by the trusted-proxy rule: the TCP peer, unless it is a trusted
/// proxy; then the rightmost untrusted address of its `X-Forwarded-For` (`hops`, nearest
/// first). The walk stops at an entry that is not an address (the client is then the trusted
/// hop before it) and after [`MAX_FORWARDED_HOPS`] (the farthest one seen).
pub fn client_address(peer: IpAddr, hops: &[Option<IpAddr>], nets: &[IpNet]) -> IpAddr {
    let mut client = peer;
    if !trusted(nets, peer) {
        return client;
    }
    for hop in hops {
        let Some(ip) = *hop else { break };
        client = ip;
        if !trusted(nets, ip) {
            break;
        }
    }
    client
}

/// The `X-Forwarded-For` value sent on for a trusted peer: its hops, farthest first, at most
/// [`MAX_FORWARDED_HOPS`], each an address or `unknown` (RFC 7239's word for it), then the
/// peer.
pub fn forwarded_for(hops: &[Option<IpAddr>], peer: IpAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 18 * hops.len());
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => push_ip(&mut v, *ip),
            None => v.extend_from_slice(b"unknown"),
        }
        v.extend_from_slice(b", ");
    }
    push_ip(&mut v, peer);
    v
}

/// `ip` as text: an IPv4 address digit by digit (every request writes one; `core::fmt` costs
/// about 1,000 instructions for it), an IPv6 address through its `Display`.
fn push_ip(v: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    v.push(b'.');
                }
                if octet >= 100 {
                    v.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    v.push(b'0' + octet / 10 % 10);
                }
                v.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(ip) => {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(v, "{ip}");
        }
    }
}

/// What the proxy knows of a request's origin, worked out once in `request_filter`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// Whether the peer is in `trusted_proxies`: its forwarding headers are believed.
    pub peer_trusted: bool,
    /// The client by the trusted-proxy rule ([`client_address`]).
    pub client: Option<IpAddr>,
}

impl Origin {
    pub fn of(req: &RequestHeader, peer: Option<IpAddr>, nets: &[IpNet]) -> Origin {
        let Some(peer) = peer else {
            return Origin::default();
        };
        if !trusted(nets, peer) {
            return Origin {
                peer: Some(peer),
                peer_trusted: false,
                client: Some(peer),
            };
        }
        Origin {
            peer: Some(peer),
            peer_trusted: true,
            client: Some(client_address(peer, &forwarded_hops(req), nets)),
        }
    }
}

/// The one value of header `name`, when the request has exactly one such line.
fn single<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a HeaderValue> {
    let mut all = req.headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// Whether `v` looks like a host (and port) and nothing else.
fn host_like(v: &[u8]) -> bool {
    (1..=MAX_FORWARDED_HOST).contains(&v.len())
        && v.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// Set the forwarding headers of a request going upstream, and drop any `X-Canary-Pool` the
/// client sent (only the proxy says which pool served a request).
///
/// From an untrusted peer (any peer unless `trusted_proxies` names it), the client's
/// `X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`, `X-Real-IP` and `True-Client-IP` are
/// discarded and the proxy writes its own: the peer's address, `proto` (`https` when the client came over TLS), the `Host`. From a trusted peer, its `X-Forwarded-For` is
/// kept (its last [`MAX_FORWARDED_HOPS`] hops, normalized) with the peer appended, and its
/// `X-Forwarded-Proto` (`http` or `https`), `X-Forwarded-Host` (one host-like value) and
/// `Forwarded` are passed on; a missing or malformed one is replaced by the proxy's own.
pub fn set_forwarding(
    upstream: &mut RequestHeader,
    origin: &Origin,
    proto: &'static str,
) -> Result<()> {
    let trusted = origin.peer_trusted;
    match origin.peer {
        Some(peer) => {
            let hops = if trusted {
                forwarded_hops(upstream)
            } else {
                Vec::new()
            };
            let xff = forwarded_for(&hops, peer);
            match HeaderValue::from_maybe_shared(Bytes::from(xff)) {
                Ok(xff) => {
                    upstream.insert_header(&C_X_FORWARDED_FOR, xff)?;
                }
                Err(_) => {
                    upstream.remove_header(X_FORWARDED_FOR);
                }
            }
        }
        None => {
            upstream.remove_header(X_FORWARDED_FOR);
        }
    }
    let proto_ok = trusted
        && single(upstream, X_FORWARDED_PROTO).is_some_and(|v| {
            v.as_bytes().eq_ignore_ascii_case(b"http")
                || v.as_bytes().eq_ignore_ascii_case(b"https")
        });
    if !proto_ok {
        upstream.insert_header(&C_X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
    }
    let host_ok =
        trusted && single(upstream, X_FORWARDED_HOST).is_some_and(|v| host_like(v.as_bytes()));
    if !host_ok {
        let host = upstream.headers.get(header::HOST).cloned().or_else(|| {
            upstream
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(host) => {
                upstream.insert_header(&C_X_FORWARDED_HOST, host)?;
            }
            None => {
                upstream.remove_header(X_FORWARDED_HOST);
            }
        }
    }
    if !trusted {
        if upstream.headers.contains_key(header::FORWARDED) {
            upstream.remove_header(&header::FORWARDED);
        }
        for name in [&N_X_REAL_IP, &N_TRUE_CLIENT_IP] {
            if upstream.headers.contains_key(name) {
                upstream.remove_header(name);
            }
        }
    }
    if upstream.headers.contains_key(N_X_CANARY_POOL) {
        upstream.remove_header(&N_X_CANARY_POOL);
    }
    Ok(())
}

/// Replace whatever feature header the client sent (every line, any case) with `features`
/// (`a,b`; `None`: no header), sent as `wire` (the same name, spelled as configured), and
/// drop the client's override header when `drop_override` names it (the client is not on a
/// trusted network).
pub fn set_features(
    upstream: &mut RequestHeader,
    (header, wire): (&HeaderName, &Bytes),
    drop_override: Option<&HeaderName>,
    features: Option<String>,
) -> Result<()> {
    if upstream.headers.contains_key(header) {
        upstream.remove_header(header);
    }
    if let Some(h) = drop_override {
        if upstream.headers.contains_key(h) {
            upstream.remove_header(h);
        }
    }
    if let Some(v) = features {
        let v = HeaderValue::from_maybe_shared(Bytes::from(v))
            .map_err(|e| Error::because(ErrorType::InternalError, "features header", e))?;
        upstream.append_header(wire.clone(), v)?;
    }
    Ok(())
}

/// The first [`MAX_COOKIE_LINES`] `Cookie` lines of a request, borrowed, without allocating:
/// routing finds the flag and user cookies in them.
pub struct CookieLines<'a> {
    lines: [&'a [u8]; MAX_COOKIE_LINES],
    len: usize,
}

impl<'a> CookieLines<'a> {
    pub fn of(req: &'a RequestHeader) -> CookieLines<'a> {
        let mut c = CookieLines {
            lines: [&[]; MAX_COOKIE_LINES],
            len: 0,
        };
        for v in req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .take(MAX_COOKIE_LINES)
        {
            c.lines[c.len] = v.as_bytes();
            c.len += 1;
        }
        c
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.lines[..self.len]
    }
}

/// Whether the request announces a body (chunked, or a non-zero `Content-Length`).
pub fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request header");
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).expect("header");
        }
        req
    }

    #[test]
    fn request_id_rule() {
        let long = "a".repeat(MAX_REQUEST_ID);
        let too_long = "a".repeat(MAX_REQUEST_ID + 1);
        for (id, ok) in [
            ("abc-123", true),
            ("a.b_c:d-E9", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            ("<script>", false),
            ("a b", false),
            ("a\"b", false),
            ("é", false),
        ] {
            assert_eq!(valid_request_id(id.as_bytes()), ok, "{id:?}");
        }
    }

    #[test]
    fn request_id_kept_once_valid_else_replaced() {
        let mut kept = request(&[(X_REQUEST_ID, "abc-1")]);
        let id = request_id_of(&kept);
        assert_eq!(id.value, "abc-1");
        assert!(id.from_client);
        set_request_id(&mut kept, &id).expect("set");
        let sent: Vec<_> = kept.headers.get_all(X_REQUEST_ID).iter().collect();
        assert_eq!(sent, vec!["abc-1"]);
        for headers in [
            &[(X_REQUEST_ID, "a b")][..],
            &[(X_REQUEST_ID, "one"), (X_REQUEST_ID, "two")][..],
            &[][..],
        ] {
            let mut req = request(headers);
            let id = request_id_of(&req);
            assert!(!id.from_client, "{headers:?}");
            assert_eq!(id.value.len(), uuid::fmt::Hyphenated::LENGTH, "{headers:?}");
            set_request_id(&mut req, &id).expect("set");
            let sent: Vec<_> = req.headers.get_all(X_REQUEST_ID).iter().collect();
            assert_eq!(sent, vec![&id.value], "{headers:?}");
        }
        assert_ne!(request_id_of(&request(&[])), request_id_of(&request(&[])));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_keeps_every_line_in_order() {
        let req = request(&[
            (X_FORWARDED_FOR, "1.1.1.1"),
            (X_FORWARDED_FOR, "2.2.2.2, 3.3.3.3"),
            (X_FORWARDED_FOR, " "),
        ]);
        assert_eq!(
            forwarded_for(&forwarded_hops(&req), ip("10.0.0.9")),
            b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"
        );
        assert_eq!(forwarded_for(&[], ip("10.0.0.9")), b"10.0.0.9");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut addrs: Vec<IpAddr> = ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.20.199.250"]
            .iter()
            .map(|a| ip(a))
            .collect();
        addrs.extend(
            ["::1", "2001:db8::1", "::ffff:1.2.3.4"]
                .iter()
                .map(|a| ip(a)),
        );
        // Every octet value once, in each position.
        addrs.extend((0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 3, o / 7])));
        for a in addrs {
            let mut v = Vec::new();
            push_ip(&mut v, a);
            assert_eq!(String::from_utf8_lossy(&v), a.to_string());
        }
    }

    #[test]
    fn hops_are_parsed_normalized_and_bounded() {
        assert_eq!(parse_hop(b" 1.2.3.4 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop(b"1.2.3.4:8080"), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop(b"[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop(b"[2001:db8::1]"), Some(ip("2001:db8::1")));
        for bad in [
            &b"unknown"[..],
            b"<script>",
            b"1.2.3",
            b"\xff\xfe",
            b"999.1.1.1",
        ] {
            assert_eq!(parse_hop(bad), None, "{bad:?}");
        }
        let many = vec!["9.9.9.9"; 500].join(",");
        let req = request(&[(X_FORWARDED_FOR, "1.1.1.1, junk"), (X_FORWARDED_FOR, &many)]);
        let hops = forwarded_hops(&req);
        assert_eq!(hops.len(), MAX_FORWARDED_HOPS);
        let req = request(&[(X_FORWARDED_FOR, "1.1.1.1, junk, 2.2.2.2")]);
        assert_eq!(
            forwarded_for(&forwarded_hops(&req), ip("10.0.0.1")),
            b"1.1.1.1, unknown, 2.2.2.2, 10.0.0.1"
        );
    }

    #[test]
    fn client_is_the_rightmost_untrusted_address() {
        let t = nets(&["10.0.0.0/8"]);
        let hops = |s: &str| forwarded_hops(&request(&[(X_FORWARDED_FOR, s)]));
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client_address(ip("8.8.8.8"), &hops("1.1.1.1"), &t),
            ip("8.8.8.8")
        );
        // A trusted peer: walk from the right past trusted hops.
        assert_eq!(
            client_address(ip("10.0.0.1"), &hops("6.6.6.6, 1.1.1.1, 10.0.0.2"), &t),
            ip("1.1.1.1")
        );
        // Every hop trusted: the farthest one.
        assert_eq!(
            client_address(ip("10.0.0.1"), &hops("10.0.0.3, 10.0.0.2"), &t),
            ip("10.0.0.3")
        );
        // No header: the peer.
        assert_eq!(client_address(ip("10.0.0.1"), &[], &t), ip("10.0.0.1"));
        // Garbage stops the walk at the trusted hop before it.
        assert_eq!(
            client_address(ip("10.0.0.1"), &hops("1.1.1.1, junk, 10.0.0.2"), &t),
            ip("10.0.0.2")
        );
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_address(ip("10.0.0.1"), &hops("1.1.1.1"), &[]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarding_headers_set_and_pool_header_dropped() {
        let mut req = request(&[
            ("Host", "example.test"),
            (X_FORWARDED_FOR, "1.1.1.1"),
            (X_CANARY_POOL, "canary"),
        ]);
        let origin = Origin::of(&req, Some(ip("10.0.0.9")), &nets(&["10.0.0.0/8"]));
        set_forwarding(&mut req, &origin, "http").expect("forwarding");
        assert_eq!(req.headers[X_FORWARDED_FOR], "1.1.1.1, 10.0.0.9");
        assert_eq!(req.headers[X_FORWARDED_PROTO], "http");
        assert_eq!(req.headers[X_FORWARDED_HOST], "example.test");
        assert!(!req.headers.contains_key(X_CANARY_POOL));
    }

    #[test]
    fn untrusted_peer_forwarding_headers_are_replaced() {
        let sent = [
            ("Host", "example.test"),
            (X_FORWARDED_FOR, "1.1.1.1"),
            (X_FORWARDED_PROTO, "https"),
            (X_FORWARDED_HOST, "evil.test"),
            ("Forwarded", "for=1.1.1.1"),
            (X_REAL_IP, "6.6.6.6"),
            (TRUE_CLIENT_IP, "6.6.6.6"),
        ];
        let mut req = request(&sent);
        let origin = Origin::of(&req, Some(ip("10.0.0.9")), &[]);
        assert_eq!(origin.client, Some(ip("10.0.0.9")));
        set_forwarding(&mut req, &origin, "http").expect("forwarding");
        assert_eq!(req.headers[X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(req.headers[X_FORWARDED_PROTO], "http");
        assert_eq!(req.headers[X_FORWARDED_HOST], "example.test");
        assert!(!req.headers.contains_key("forwarded"));
        assert!(!req.headers.contains_key(X_REAL_IP));
        assert!(!req.headers.contains_key(TRUE_CLIENT_IP));
        // The same from a trusted peer is passed on.
        let mut req = request(&sent);
        let origin = Origin::of(&req, Some(ip("10.0.0.9")), &nets(&["10.0.0.9/32"]));
        assert_eq!(origin.client, Some(ip("1.1.1.1")));
        set_forwarding(&mut req, &origin, "http").expect("forwarding");
        assert_eq!(req.headers[X_FORWARDED_FOR], "1.1.1.1, 10.0.0.9");
        assert_eq!(req.headers[X_FORWARDED_PROTO], "https");
        assert_eq!(req.headers[X_FORWARDED_HOST], "evil.test");
        assert_eq!(req.headers["forwarded"], "for=1.1.1.1");
        assert_eq!(req.headers[X_REAL_IP], "6.6.6.6");
        assert_eq!(req.headers[TRUE_CLIENT_IP], "6.6.6.6");
    }

    #[test]
    fn client_feature_headers_are_replaced() {
        let x = HeaderName::from_static("x-features");
        let o = HeaderName::from_static("x-feature-override");
        let mut req = request(&[
            ("X-Features", "admin"),
            ("x-FEATURES", "root"),
            ("X-Feature-Override", "a=on"),
        ]);
        let wire = Bytes::from_static(b"X-Features");
        set_features(&mut req, (&x, &wire), Some(&o), Some("a,b".into())).expect("features");
        let sent: Vec<_> = req.headers.get_all(&x).iter().collect();
        assert_eq!(sent, ["a,b"]);
        assert!(!req.headers.contains_key(&o));
        let mut head = Vec::new();
        req.header_to_h1_wire(&mut head);
        let head = String::from_utf8_lossy(&head);
        assert!(head.contains("X-Features: a,b\r\n"), "{head}");
        assert!(!head.contains("admin") && !head.contains("root"), "{head}");
        let mut req = request(&[("X-Features", "admin"), ("X-Feature-Override", "a=on")]);
        set_features(&mut req, (&x, &wire), None, None).expect("features");
        assert!(!req.headers.contains_key(&x));
        assert_eq!(req.headers[&o], "a=on");
    }

    #[test]
    fn cookie_lines_are_bounded() {
        let many: Vec<(&str, &str)> = (0..MAX_COOKIE_LINES + 2)
            .map(|_| ("Cookie", "a=b"))
            .collect();
        let req = request(&many);
        assert_eq!(CookieLines::of(&req).as_slice().len(), MAX_COOKIE_LINES);
        let req = request(&[("Cookie", "canary=always"), ("Cookie", "uid=7")]);
        assert_eq!(
            CookieLines::of(&req).as_slice(),
            &[&b"canary=always"[..], &b"uid=7"[..]]
        );
    }

    #[test]
    fn body_announced_by_chunked_or_nonzero_length() {
        assert!(!has_body(&request(&[])));
        assert!(!has_body(&request(&[("Content-Length", "0")])));
        assert!(has_body(&request(&[("Content-Length", "5")])));
        assert!(has_body(&request(&[("Transfer-Encoding", "chunked")])));
    }
}
