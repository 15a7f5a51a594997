//! Strict HTTP/1 framing at the edge: what a client may send before anything goes upstream.
//!
//! Pingora's parser is lenient where nginx and HAProxy are strict (duplicate `Content-Length`,
//! a request without `Host`, a request target it percent-escapes instead of refusing), and a
//! proxy that reads a message differently from the server behind it is how requests get
//! smuggled. [`check_head`] looks at the request head once more, this time at the raw bytes
//! Pingora kept, because some of what matters is gone from the parsed header: with both
//! `Content-Length` and `Transfer-Encoding` Pingora has already removed the length.
//!
//! It answers 400 for ambiguous framing (more than one or a non-numeric `Content-Length`, both
//! `Content-Length` and `Transfer-Encoding`, any `Transfer-Encoding` but one final `chunked`),
//! for HTTP/1.1 without `Host`, a `Host` that is not `host[:port]` and a bad request target;
//! 501 for a transfer coding we do not implement; 431 for a head over the configured limits. A [`Rejection`] carries only fixed text, so the
//! answer never reflects client bytes. The module does no I/O; `proxy.rs` writes the answer.
//!
//! What Pingora already refuses with 400 before this runs (so those cases never reach here):
//! differing or unparseable `Content-Length` values, a final coding other than `chunked`,
//! `Transfer-Encoding` with HTTP/1.0, two `Host` lines, `CONNECT` (405). Pingora percent-escapes a request target
//! holding a space, a control byte or NUL (`GET  /a` becomes `GET %20/a`) before anyone sees it;
//! the original bytes are gone, so the escaped forms are what can be refused here: a target
//! that does not start like one of the four RFC 9112 forms, or a path with an escaped control
//! byte (`%00`-`%1F`, `%7F`; nginx refuses `%00` in a path too).

use bytes::Bytes;
use http::{header, HeaderName, Method, Version};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};

/// The limits [`check_head`] enforces, built once from the `client` section with the settings
/// in force (`state::Live`).
pub use crate::state::HeadLimits as Limits;

/// Why a request is refused: the status and a fixed reason (never client bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

impl Rejection {
    const fn bad(reason: &'static str) -> Rejection {
        Rejection {
            status: 400,
            reason,
        }
    }

    const fn too_large(reason: &'static str) -> Rejection {
        Rejection {
            status: 431,
            reason,
        }
    }

    /// The short text body sent to the client: `"<status> <reason>\n"`.
    pub fn body(&self) -> Bytes {
        Bytes::from(format!("{} {}\n", self.status, self.reason))
    }

    /// The response head for [`Rejection::body`]; the connection is closed after it.
    pub fn response_header(&self, body_len: usize) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(4))?;
        resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(header::CONTENT_LENGTH, body_len)?;
        resp.insert_header(header::CONNECTION, "close")?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        Ok(resp)
    }
}

/// Check a request head before anything reads it: `req` is what Pingora parsed, `raw` the head
/// bytes it parsed them from (request line through the empty line).
pub fn check_head(req: &RequestHeader, raw: &[u8], limits: &Limits) -> Result<(), Rejection> {
    if raw.len() > limits.max_header_bytes {
        return Err(Rejection::too_large("request head too large"));
    }
    let mut lines = raw_lines(raw);
    let request_line = lines.next().unwrap_or(b"");
    if request_line.len() > limits.max_header_line {
        return Err(Rejection::too_large("request line too long"));
    }
    check_request_line(request_line, &req.method)?;

    let mut n_headers = 0;
    let (mut content_length, mut transfer_encoding, mut host) = (None, None, None);
    let mut n_hosts = 0;
    let (mut n_cl, mut n_te) = (0, 0);
    for line in lines {
        if line.is_empty() {
            break; // the end of the head
        }
        n_headers += 1;
        if n_headers > limits.max_headers {
            return Err(Rejection::too_large("too many header lines"));
        }
        if line.len() > limits.max_header_line {
            return Err(Rejection::too_large("header line too long"));
        }
        // Pingora parsed this head, so every line has a name, a colon and no space before it.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Rejection::bad("malformed header line"));
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            n_cl += 1;
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            n_te += 1;
            transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            n_hosts += 1;
            host = Some(value);
        }
    }

    if n_cl > 1 {
        return Err(Rejection::bad("more than one Content-Length"));
    }
    if let Some(cl) = content_length {
        if cl.is_empty() || cl.len() > 19 || !cl.iter().all(u8::is_ascii_digit) {
            return Err(Rejection::bad("Content-Length must be one decimal number"));
        }
    }
    if let Some(te) = transfer_encoding {
        if n_cl > 0 {
            return Err(Rejection::bad("both Content-Length and Transfer-Encoding"));
        }
        if n_te > 1 {
            return Err(Rejection::bad("more than one Transfer-Encoding"));
        }
        if req.version != Version::HTTP_11 {
            return Err(Rejection::bad("Transfer-Encoding needs HTTP/1.1"));
        }
        check_transfer_encoding(te)?;
    }

    if n_hosts > 1 {
        return Err(Rejection::bad("more than one Host"));
    }
    if n_hosts == 0 && req.version == Version::HTTP_11 {
        return Err(Rejection::bad("HTTP/1.1 request without Host"));
    }
    // `uri-host [":" port]`, or empty (RFC 9112 section 3.2). Apps build links from Host:
    // a slash, space or `@` in it has no honest use.
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        if !valid_host(host) {
            return Err(Rejection::bad("invalid Host"));
        }
    }
    Ok(())
}

/// Check an HTTP/2 request head (over TLS or h2c), the counterpart of [`check_head`]. The h2
/// codec has already refused what HTTP/2 forbids (connection-specific fields such as
/// `Transfer-Encoding` or `Connection`, uppercase names, a `Content-Length` that disagrees with
/// the DATA frames) and Pingora a missing or conflicting `:authority`/`Host`; what is left is
/// the same limits and Host rule as on HTTP/1, measured on the decoded fields (a field counts
/// as `name: value`, the request line as method, target and version).
pub fn check_h2_head(req: &RequestHeader, limits: &Limits) -> Result<(), Rejection> {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let request_line = req.method.as_str().len() + target.len() + " HTTP/2".len() + 1;
    if request_line > limits.max_header_line {
        return Err(Rejection::too_large("request line too long"));
    }
    if req.headers.len() > limits.max_headers {
        return Err(Rejection::too_large("too many header lines"));
    }
    let mut total = request_line + 2;
    let mut n_cl = 0;
    for (name, value) in &req.headers {
        let line = name.as_str().len() + 2 + value.len();
        if line > limits.max_header_line {
            return Err(Rejection::too_large("header line too long"));
        }
        total += line + 2;
        if name == header::CONTENT_LENGTH {
            n_cl += 1;
            let v = value.as_bytes();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Rejection::bad("Content-Length must be one decimal number"));
            }
        }
    }
    if total > limits.max_header_bytes {
        return Err(Rejection::too_large("request head too large"));
    }
    if n_cl > 1 {
        return Err(Rejection::bad("more than one Content-Length"));
    }
    // `:path` must be origin-form (`/…`), or `*` for OPTIONS (RFC 9113 section 8.3.1), as
    // HTTP/1's target: the h2 codec takes `?x=1` or `x`, which would go upstream as
    // `GET ?x=1 HTTP/1.1`. (`uri.path()` reads `/` for `?x=1`, so look at the raw text.)
    if let Some(target) = req.uri.path_and_query().map(|p| p.as_str()) {
        let asterisk = target == "*" && req.method == Method::OPTIONS;
        if !(target.starts_with('/') || asterisk) {
            return Err(Rejection::bad("invalid request target"));
        }
    }
    if has_escaped_control(req.uri.path().as_bytes()) {
        return Err(Rejection::bad("invalid request target"));
    }
    let host = req.uri.authority().map(|a| a.as_str().as_bytes());
    let host = host.or_else(|| req.headers.get(header::HOST).map(|h| h.as_bytes()));
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        if !valid_host(host) {
            return Err(Rejection::bad("invalid Host"));
        }
    }
    Ok(())
}

/// HTTP/2 lets a client split `Cookie` into one field per cookie (RFC 9113 section 8.2.3,
/// browsers do for compression); join them into one `Cookie` line with `"; "`, as that RFC
/// asks before an HTTP/1.1 hop, so routing sees every cookie and the app gets one line.
/// Returns whether anything was joined.
pub fn join_cookie_crumbs(req: &mut RequestHeader) -> bool {
    let mut crumbs = req.headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return false;
    }
    let mut joined = Vec::with_capacity(256);
    for crumb in req.headers.get_all(header::COOKIE) {
        let crumb = crumb.as_bytes().trim_ascii();
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb);
    }
    match http::HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        Ok(v) => req.insert_header(header::COOKIE, v).is_ok(),
        Err(_) => false,
    }
}

/// A Host value: `host [":" port]` where host is a bracketed IPv6 literal or a name made of
/// letters, digits, `-`, `.`, `_`, `~` and `%` escapes (stricter than RFC 3986's reg-name:
/// no sub-delims such as `,`, so a list of hosts is refused), port 0..=65535.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host {
        [b'[', rest @ ..] => {
            let Some(close) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &rest[..close];
            let literal_ok = !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !literal_ok {
                return false;
            }
            match &rest[close + 1..] {
                [] => return true,
                [b':', port @ ..] => (&b"x"[..], port),
                _ => return false,
            }
        }
        _ => match host.iter().rposition(|&b| b == b':') {
            Some(i) => (&host[..i], &host[i + 1..]),
            None => (host, &b"0"[..]),
        },
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%'));
    let port_ok = (1..=5).contains(&port.len())
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535;
    name_ok && port_ok
}

/// The lines of a head, each without its line ending (CRLF, or a bare LF which Pingora's
/// parser accepts as RFC 9112 section 2.2 allows).
fn raw_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `method SP request-target SP HTTP-version`, with exactly one space each and a target in
/// one of the RFC 9112 section 3.2 forms.
fn check_request_line(line: &[u8], method: &Method) -> Result<(), Rejection> {
    const BAD_TARGET: Rejection = Rejection::bad("invalid request target");
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(target), Some(_version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::bad("malformed request line"));
    };
    // Visible ASCII only (bytes from 0x80 up are tolerated as nginx does); no SP, CTL or NUL.
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(BAD_TARGET);
    }
    let path = match target {
        [b'/', ..] => target,
        b"*" if method == Method::OPTIONS => return Ok(()),
        _ => match absolute_form_path(target) {
            Some(path) => path,
            None => return Err(BAD_TARGET),
        },
    };
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
    if has_escaped_control(path) {
        return Err(BAD_TARGET);
    }
    Ok(())
}

/// The path of an absolute-form target (`http://host/path`), `b""` when it has none.
fn absolute_form_path(target: &[u8]) -> Option<&[u8]> {
    let rest = [&b"http://"[..], b"https://"].iter().find_map(|scheme| {
        (target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| &target[scheme.len()..])
    })?;
    Some(
        rest.iter()
            .position(|&b| b == b'/' || b == b'?')
            .map_or(&b""[..], |i| &rest[i..]),
    )
}

/// Whether `path` holds `%00`-`%1F` or `%7F`: what Pingora makes of a raw control byte or NUL,
/// and a decoded control byte has no business in a path either way.
fn has_escaped_control(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'0' | b'1', b'0'..=b'9' | b'A'..=b'F') | (b'7', b'F')
            )
    })
}

/// A `Transfer-Encoding` value (one line, OWS trimmed) must be exactly `chunked`.
/// A list holding a well-formed coding other than `chunked` is a coding we do not implement:
/// 501 (RFC 9112 section 6.1). Anything ambiguous is 400: empty elements, parameters, a
/// coding that only resembles `chunked`, `chunked` twice.
fn check_transfer_encoding(te: &[u8]) -> Result<(), Rejection> {
    if te.eq_ignore_ascii_case(b"chunked") {
        return Ok(());
    }
    let mut n_chunked = 0;
    let mut unknown = false;
    for coding in te.split(|&b| b == b',').map(trim_ows) {
        if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
            return Err(Rejection::bad("malformed Transfer-Encoding"));
        }
        if coding.eq_ignore_ascii_case(b"chunked") {
            n_chunked += 1;
        } else if contains_ignore_case(coding, b"chunked") {
            return Err(Rejection::bad("malformed Transfer-Encoding"));
        } else {
            unknown = true;
        }
    }
    if n_chunked > 1 {
        return Err(Rejection::bad("chunked applied more than once"));
    }
    if unknown {
        return Err(Rejection {
            status: 501,
            reason: "transfer coding not implemented",
        });
    }
    Ok(())
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// RFC 9110 section 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Remove every request header whose name contains `_` (nginx's `underscores_in_headers off`):
/// some frameworks read `X_Canary` as `X-Canary`. Returns how many names were removed.
pub fn drop_underscore_headers(req: &mut RequestHeader) -> usize {
    if !req.headers.keys().any(|n| n.as_str().contains('_')) {
        return 0;
    }
    let names: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in &names {
        req.remove_header(name);
    }
    names.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_headers: 8,
        max_header_line: 64,
        max_header_bytes: 400,
    };

    /// The parsed header Pingora would hand over for `raw` (method, target and version are all
    /// `check_head` reads from it).
    fn parsed(raw: &[u8]) -> RequestHeader {
        let line = raw.split(|&b| b == b'\n').next().unwrap_or(b"");
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut parts = line.split(|&b| b == b' ');
        let method = std::str::from_utf8(parts.next().unwrap_or(b"GET")).unwrap();
        let version = parts.next_back().unwrap_or(b"HTTP/1.1");
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        req.set_version(if version == b"HTTP/1.0" {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
        req
    }

    fn check(raw: &str) -> Result<(), Rejection> {
        check_head(&parsed(raw.as_bytes()), raw.as_bytes(), &LIMITS)
    }

    fn status(raw: &str) -> u16 {
        match check(raw) {
            Ok(()) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn framing_table() {
        let cases: &[(&str, &str, u16)] = &[
            ("plain GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            ("bare LF lines", "GET / HTTP/1.1\nHost: a\n\n", 200),
            ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", 200),
            ("one CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 200),
            ("CL with OWS", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\n", 200),
            ("CL 0", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 200),
            (
                "two equal CL",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                400,
            ),
            ("CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            ("CL plus sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            ("CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
            ("CL empty", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
            (
                "CL 20 digits",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000005\r\n\r\n",
                400,
            ),
            ("TE chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 200),
            ("TE Chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n", 200),
            ("TE with OWS", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked \r\n\r\n", 200),
            (
                "CL and TE",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "TE and CL",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (
                "chunked twice in a list",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                400,
            ),
            (
                "two TE lines",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            ("xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            ("chunked-x", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked-x\r\n\r\n", 400),
            (
                "empty list element",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n",
                400,
            ),
            (
                "coding parameter",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
                400,
            ),
            (
                "quoted coding",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
                400,
            ),
            ("TE with HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
            ("foo", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", 501),
            (
                "gzip, chunked",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            ("no Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
            ("two Host", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
            ("two Host on 1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("empty Host", "GET / HTTP/1.1\r\nHost: \r\n\r\n", 200),
            ("Host with port", "GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", 200),
            ("IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 200),
            ("Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
            ("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            ("Host list", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
            ("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
            ("Host with a bad port", "GET / HTTP/1.1\r\nHost: a:x\r\n\r\n", 400),
            ("Host with a big port", "GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", 400),
            ("Host with an empty port", "GET / HTTP/1.1\r\nHost: a:\r\n\r\n", 400),
            ("Host with two colons", "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", 400),
            ("Host comma list", "GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400),
            ("Host IPv4", "GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n", 200),
            ("Host IPv6, no port", "GET / HTTP/1.1\r\nHost: [fe80::1]\r\n\r\n", 200),
            ("Host IPv6, junk after", "GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", 400),
            ("Host IPv6, unclosed", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
        ];
        for (what, raw, want) in cases {
            assert_eq!(status(raw), *want, "{what}: {raw:?} -> {:?}", check(raw));
        }
    }

    #[test]
    fn request_target_table() {
        let cases: &[(&str, &str, u16)] = &[
            (
                "origin form",
                "GET /a/b?c=d HTTP/1.1\r\nHost: a\r\n\r\n",
                200,
            ),
            (
                "escaped space mid-path",
                "GET /a%20b HTTP/1.1\r\nHost: a\r\n\r\n",
                200,
            ),
            (
                "escaped newline in query",
                "GET /f?t=a%0D%0Ab HTTP/1.1\r\nHost: a\r\n\r\n",
                200,
            ),
            (
                "absolute form",
                "GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
                200,
            ),
            (
                "absolute form, no path",
                "GET HTTPS://a HTTP/1.1\r\nHost: a\r\n\r\n",
                200,
            ),
            (
                "asterisk form",
                "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                200,
            ),
            (
                "asterisk with GET",
                "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
            ),
            ("UTF-8 path", "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            (
                "double space",
                "GET  /admin HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
            ),
            (
                "space in target",
                "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
            ),
            (
                "escaped leading space",
                "GET %20/admin HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
            ),
            ("NUL", "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("escaped NUL", "GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("escaped tab", "GET /a%09 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("escaped DEL", "GET /a%7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("tab", "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("DEL", "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (
                "relative target",
                "GET admin HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
            ),
            (
                "other scheme",
                "GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
            ),
            ("no target", "GET HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("trailing space", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
        ];
        for (what, raw, want) in cases {
            assert_eq!(status(raw), *want, "{what}: {raw:?} -> {:?}", check(raw));
        }
    }

    #[test]
    fn limits_table() {
        let long_value = "v".repeat(LIMITS.max_header_line);
        let long_path = "a".repeat(LIMITS.max_header_line);
        let many: String = (0..LIMITS.max_headers)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let line_at_limit = format!("X: {}", "v".repeat(LIMITS.max_header_line - 3));
        let cases: Vec<(&str, String, u16)> = vec![
            (
                "max headers (Host included)",
                format!(
                    "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
                    &many[many.find('\n').unwrap() + 1..]
                ),
                200,
            ),
            (
                "one header too many",
                format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
                431,
            ),
            (
                "line at the limit",
                format!("GET / HTTP/1.1\r\nHost: a\r\n{line_at_limit}\r\n\r\n"),
                200,
            ),
            (
                "header line too long",
                format!("GET / HTTP/1.1\r\nHost: a\r\nX: {long_value}\r\n\r\n"),
                431,
            ),
            (
                "request line too long",
                format!("GET /{long_path} HTTP/1.1\r\nHost: a\r\n\r\n"),
                431,
            ),
            (
                "head too large",
                format!(
                    "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
                    format!("X: {}\r\n", "v".repeat(60)).repeat(7)
                ),
                431,
            ),
        ];
        for (what, raw, want) in &cases {
            assert_eq!(status(raw), *want, "{what}: {raw:?} -> {:?}", check(raw));
        }
    }

    #[test]
    fn rejections_carry_no_client_bytes() {
        let r = check("GET /<script> HTTP/1.1\r\nHost: a\r\nContent-Length: <x>\r\n\r\n")
            .expect_err("a bad Content-Length is refused");
        let body = r.body();
        assert_eq!(
            &body[..],
            b"400 Content-Length must be one decimal number\n"
        );
        let resp = r.response_header(body.len()).unwrap();
        assert_eq!(resp.status.as_u16(), 400);
        assert_eq!(resp.headers.get("connection").unwrap(), "close");
        assert_eq!(resp.headers.get("content-length").unwrap(), "46");
    }

    #[test]
    fn h2_heads_get_the_same_limits_and_host_rule() {
        let limits = Limits {
            max_headers: 8,
            max_header_line: 100,
            max_header_bytes: 400,
        };
        let h2 = |target: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("GET", target.as_bytes(), None).expect("request");
            r.set_version(Version::HTTP_2);
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).expect("header");
            }
            check_h2_head(&r, &limits).map_err(|e| e.status)
        };
        assert_eq!(h2("https://site.test/a?b", &[("cookie", "a=1")]), Ok(()));
        assert_eq!(h2("/a", &[("x", &"v".repeat(100))]), Err(431));
        assert_eq!(h2(&format!("/{}", "a".repeat(100)), &[]), Err(431));
        let many: Vec<(&str, &str)> = (0..9).map(|_| ("x-a", "1")).collect();
        assert_eq!(h2("/", &many), Err(431));
        let big: Vec<(&str, &str)> = (0..5).map(|_| ("x-a", "v")).collect();
        assert_eq!(h2("/", &big), Ok(()));
        let v = "v".repeat(90);
        let big: Vec<(&str, &str)> = (0..5).map(|_| ("x-a", v.as_str())).collect();
        assert_eq!(h2("/", &big), Err(431));
        assert_eq!(
            h2("/", &[("content-length", "1"), ("content-length", "1")]),
            Err(400)
        );
        assert_eq!(h2("/", &[("content-length", "+1")]), Err(400));
        assert_eq!(h2("/a%00b", &[]), Err(400));
        // The same target forms as HTTP/1 (issue 21): a `:path` of `?x=1` or `x` is refused.
        // The h2 codec builds the URI from its pseudo-headers as here, unchecked.
        let by_parts = |method: &str, path: &str| {
            let uri = http::Uri::builder()
                .scheme("https")
                .authority("site.test")
                .path_and_query(path)
                .build()
                .expect("uri");
            let mut r = RequestHeader::build(method, b"/", None).expect("request");
            r.set_uri(uri);
            r.set_version(Version::HTTP_2);
            check_h2_head(&r, &limits).map_err(|e| e.status)
        };
        // (`http` already refuses a non-empty path without `/`, such as `x`, in a URI with an
        // authority; an empty path with a query it takes.)
        assert_eq!(by_parts("GET", "?x=1"), Err(400));
        assert_eq!(by_parts("HEAD", "?"), Err(400));
        assert_eq!(by_parts("GET", "/?x=1"), Ok(()));
        assert_eq!(h2("/", &[("host", "a b")]), Err(400));
        assert_eq!(h2("/", &[("host", "evil.test,good.test")]), Err(400));
    }

    #[test]
    fn h2_cookie_crumbs_are_joined() {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        assert!(!join_cookie_crumbs(&mut r));
        r.append_header("cookie", "a=1").expect("cookie");
        assert!(!join_cookie_crumbs(&mut r));
        r.append_header("cookie", "canary=1").expect("cookie");
        r.append_header("cookie", " ").expect("cookie");
        r.append_header("cookie", "u=x").expect("cookie");
        assert!(join_cookie_crumbs(&mut r));
        let all: Vec<_> = r.headers.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; canary=1; u=x"]);
    }

    #[test]
    fn underscore_headers_are_dropped() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X_Canary", "1").unwrap();
        req.append_header("x_canary", "2").unwrap();
        req.append_header("X-Canary", "0").unwrap();
        req.append_header("Host", "a").unwrap();
        req.append_header("My_Header_", "v").unwrap();
        assert_eq!(drop_underscore_headers(&mut req), 2);
        let mut names: Vec<&str> = req.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "x-canary"]);
        assert_eq!(drop_underscore_headers(&mut req), 0);
    }
}
