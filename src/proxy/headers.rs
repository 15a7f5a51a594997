//! The headers canary-lb reads and writes on the way through: the forwarding headers
//! (`X-Forwarded-For`, `-Proto`, `-Host`), the request id, the request's cookie lines, and
//! whether a request carries a body. Routing reads none of these directly: it gets plain
//! facts from the proxy.

use std::net::IpAddr;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;

// Header names as `&'static str` in the case they go out on the wire: Pingora's header
// insertion takes these without copying the name (a `HeaderName` is copied and re-parsed).
pub const X_CANARY_POOL: &str = "X-Canary-Pool";
pub const X_REQUEST_ID: &str = "X-Request-Id";
pub const X_FORWARDED_FOR: &str = "X-Forwarded-For";
pub const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
pub const X_FORWARDED_HOST: &str = "X-Forwarded-Host";

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

/// The request's id: the client's `X-Request-Id` when it sent exactly one valid line, else a
/// new UUID v4, which is then set on `upstream`.
pub fn request_id(upstream: &mut RequestHeader) -> Result<HeaderValue> {
    if let Some(id) = upstream.headers.get(X_REQUEST_ID) {
        if upstream.headers.get_all(X_REQUEST_ID).iter().count() == 1
            && valid_request_id(id.as_bytes())
        {
            return Ok(id.clone());
        }
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    let id = HeaderValue::from_bytes(text.as_bytes())
        .map_err(|e| Error::because(ErrorType::InternalError, "request id", e))?;
    upstream.insert_header(X_REQUEST_ID, id.clone())?;
    Ok(id)
}

/// The `X-Forwarded-For` value to send upstream: every line the client sent, in order, then
/// the client's address.
pub fn forwarded_for<'a>(
    previous: impl IntoIterator<Item = &'a HeaderValue>,
    ip: IpAddr,
) -> Vec<u8> {
    use std::io::Write;
    let mut v = Vec::with_capacity(64);
    for prev in previous {
        let prev = prev.as_bytes().trim_ascii();
        if prev.is_empty() {
            continue;
        }
        v.extend_from_slice(prev);
        v.extend_from_slice(b", ");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(v, "{ip}");
    v
}

/// Set the forwarding headers of a request going upstream (`X-Forwarded-For` with the client's
/// address appended, `X-Forwarded-Proto`, `X-Forwarded-Host`), and drop any `X-Canary-Pool`
/// the client sent: only the proxy says which pool served a request.
pub fn set_forwarding(upstream: &mut RequestHeader, client_ip: Option<IpAddr>) -> Result<()> {
    if let Some(ip) = client_ip {
        let xff = forwarded_for(upstream.headers.get_all(X_FORWARDED_FOR), ip);
        if let Ok(xff) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
            upstream.insert_header(X_FORWARDED_FOR, xff)?;
        }
    }
    upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static("http"))?;
    let host = upstream.headers.get(header::HOST).cloned().or_else(|| {
        upstream
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        upstream.insert_header(X_FORWARDED_HOST, host)?;
    }
    if upstream.headers.contains_key(X_CANARY_POOL) {
        upstream.remove_header(X_CANARY_POOL);
    }
    Ok(())
}

/// Replace whatever feature header the client sent (every line, any case) with `features`
/// (`a,b`; `None`: no header), and drop the client's override header when `drop_override`
/// names it (the client is not on a trusted network).
pub fn set_features(
    upstream: &mut RequestHeader,
    header: &HeaderName,
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
        upstream.insert_header(header.clone(), v)?;
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
        assert_eq!(request_id(&mut kept).expect("id"), "abc-1");
        for headers in [
            &[(X_REQUEST_ID, "a b")][..],
            &[(X_REQUEST_ID, "one"), (X_REQUEST_ID, "two")][..],
            &[][..],
        ] {
            let mut req = request(headers);
            let id = request_id(&mut req).expect("id");
            assert_eq!(id.len(), uuid::fmt::Hyphenated::LENGTH, "{headers:?}");
            let sent: Vec<_> = req.headers.get_all(X_REQUEST_ID).iter().collect();
            assert_eq!(sent, vec![&id], "{headers:?}");
        }
    }

    #[test]
    fn forwarded_for_keeps_every_line_in_order() {
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let lines = [
            HeaderValue::from_static("1.1.1.1"),
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
            HeaderValue::from_static(" "),
        ];
        assert_eq!(
            forwarded_for(lines.iter(), ip),
            b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"
        );
        assert_eq!(forwarded_for([].iter(), ip), b"10.0.0.9");
    }

    #[test]
    fn forwarding_headers_set_and_pool_header_dropped() {
        let mut req = request(&[
            ("Host", "example.test"),
            (X_FORWARDED_FOR, "1.1.1.1"),
            (X_CANARY_POOL, "canary"),
        ]);
        set_forwarding(&mut req, Some("10.0.0.9".parse().unwrap())).expect("forwarding");
        assert_eq!(req.headers[X_FORWARDED_FOR], "1.1.1.1, 10.0.0.9");
        assert_eq!(req.headers[X_FORWARDED_PROTO], "http");
        assert_eq!(req.headers[X_FORWARDED_HOST], "example.test");
        assert!(!req.headers.contains_key(X_CANARY_POOL));
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
        set_features(&mut req, &x, Some(&o), Some("a,b".into())).expect("features");
        let sent: Vec<_> = req.headers.get_all(&x).iter().collect();
        assert_eq!(sent, ["a,b"]);
        assert!(!req.headers.contains_key(&o));
        let mut req = request(&[("X-Features", "admin"), ("X-Feature-Override", "a=on")]);
        set_features(&mut req, &x, None, None).expect("features");
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
