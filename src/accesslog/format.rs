//! The two line formats. Every string a client controls (path, query, method, `Referer`,
//! `User-Agent`) is cut to a bound and escaped: JSON through serde_json (control bytes as
//! `\u00XX`, invalid UTF-8 replaced), text as nginx escapes (`"`, `\` and bytes outside
//! printable ASCII as `\xHH`), so one request is always one line.

use std::io::Write;
use std::time::{Duration, SystemTime};

use http::Version;
use serde::Serialize;

use super::{user_hash_text, Entry};

/// Longest path (with its query) kept in a line, in bytes.
pub const MAX_PATH: usize = 2048;
/// Longest header value (`Referer`, `User-Agent`) and method kept, in bytes.
pub const MAX_HEADER: usize = 512;

fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// The bytes of the path, with the query when `query`, cut to [`MAX_PATH`].
fn target(entry: &Entry, query: bool) -> &[u8] {
    let uri = &entry.uri;
    let text = match (query, uri.path_and_query()) {
        (true, Some(pq)) => pq.as_str(),
        _ => uri.path(),
    };
    cut(text.as_bytes(), MAX_PATH)
}

fn cut(b: &[u8], max: usize) -> &[u8] {
    &b[..b.len().min(max)]
}

fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Text for JSON: lossy UTF-8 (serde_json escapes the rest).
fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// A `Display` value serialized as a string, without an intermediate `String`.
struct Text<T>(T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// The user-key hash as [`user_hash_text`] writes it.
struct UserHash(u64);

impl std::fmt::Display for UserHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}", self.0 >> 16)
    }
}

// Every field borrows from the entry or is a number: formatting a line allocates nothing.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: Text<humantime::Rfc3339Timestamp>,
    client: Option<std::net::IpAddr>,
    method: std::borrow::Cow<'a, str>,
    path: std::borrow::Cow<'a, str>,
    http: &'static str,
    status: Option<u16>,
    bytes_in: usize,
    bytes_out: usize,
    duration_ms: f64,
    upstream: Option<std::net::SocketAddr>,
    upstream_time_ms: Option<f64>,
    pool: Option<&'static str>,
    reason: Option<&'static str>,
    user: Option<Text<UserHash>>,
    request_id: Option<std::borrow::Cow<'a, str>>,
    tls: Option<&'a str>,
    referer: Option<std::borrow::Cow<'a, str>>,
    user_agent: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "is_false")]
    shadow: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One JSON object, without the newline.
pub fn json_line<'a>(out: &mut Vec<u8>, e: &'a Entry, query: bool) {
    let header =
        |v: &'a Option<http::HeaderValue>| v.as_ref().map(|v| lossy(cut(v.as_bytes(), MAX_HEADER)));
    let line = JsonLine {
        time: Text(humantime::format_rfc3339_millis(e.time)),
        client: e.client,
        method: lossy(cut(e.method.as_str().as_bytes(), MAX_HEADER)),
        path: lossy(target(e, query)),
        http: version_text(e.version),
        status: e.status,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        duration_ms: millis(e.duration),
        upstream: e.upstream,
        upstream_time_ms: e.upstream_time.map(millis),
        pool: e.pool,
        reason: e.reason,
        user: e.user_hash.map(|h| Text(UserHash(h))),
        request_id: e.request_id.as_ref().map(|v| lossy(v.as_bytes())),
        tls: e.tls.as_deref(),
        referer: header(&e.referer),
        user_agent: header(&e.user_agent),
        shadow: e.shadow,
    };
    // Serializing plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
}

/// `b` as nginx writes a variable into a quoted log field.
fn escaped(out: &mut Vec<u8>, b: &[u8]) {
    for &c in b {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            let _ = write!(out, "\\x{c:02X}");
        } else {
            out.push(c);
        }
    }
}

fn opt<T: std::fmt::Display>(out: &mut Vec<u8>, v: Option<T>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push(b'-'),
    }
}

/// nginx's `combined` line, then canary-lb's fields as `key=value` (`-` when absent):
/// `client - - [time] "METHOD path HTTP/x" status bytes_out "referer" "user_agent" pool=..
/// reason=.. upstream=.. upstream_time=.. duration=.. bytes_in=.. user=.. request_id=.. tls=..`
/// (times in seconds with milliseconds, as nginx's `$request_time`).
pub fn text_line(out: &mut Vec<u8>, e: &Entry, query: bool) {
    opt(out, e.client);
    out.extend_from_slice(b" - - [");
    clf_time(out, e.time);
    out.extend_from_slice(b"] \"");
    escaped(out, cut(e.method.as_str().as_bytes(), MAX_HEADER));
    out.push(b' ');
    escaped(out, target(e, query));
    out.push(b' ');
    out.extend_from_slice(version_text(e.version).as_bytes());
    out.extend_from_slice(b"\" ");
    opt(out, e.status);
    let _ = write!(out, " {} \"", e.bytes_out);
    for (i, v) in [&e.referer, &e.user_agent].into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b" \"");
        }
        match v {
            Some(v) => escaped(out, cut(v.as_bytes(), MAX_HEADER)),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    out.extend_from_slice(b" pool=");
    opt(out, e.pool);
    out.extend_from_slice(b" reason=");
    opt(out, e.reason);
    out.extend_from_slice(b" upstream=");
    opt(out, e.upstream);
    out.extend_from_slice(b" upstream_time=");
    opt(
        out,
        e.upstream_time.map(|d| format!("{:.3}", d.as_secs_f64())),
    );
    let _ = write!(
        out,
        " duration={:.3} bytes_in={} user=",
        e.duration.as_secs_f64(),
        e.bytes_in
    );
    opt(out, e.user_hash.map(user_hash_text));
    out.extend_from_slice(b" request_id=");
    match &e.request_id {
        // Only `[A-Za-z0-9._:-]` passes `proxy::headers::valid_request_id`; escaped anyway.
        Some(id) => escaped(out, cut(id.as_bytes(), MAX_HEADER)),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" tls=");
    opt(out, e.tls.as_deref());
    if e.shadow {
        out.extend_from_slice(b" shadow=1");
    }
}

/// `10/Oct/2000:13:55:36 +0000` (UTC), nginx's `$time_local` format.
fn clf_time(out: &mut Vec<u8>, t: SystemTime) {
    const CLF: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    // A clock before 1970 (or past year 9999) is written as the epoch, as before.
    let t = time::OffsetDateTime::from(t);
    let t = if (1970..=9999).contains(&t.year()) {
        t
    } else {
        time::OffsetDateTime::UNIX_EPOCH
    };
    let _ = t.format_into(out, CLF);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method, Uri};
    use std::time::UNIX_EPOCH;

    fn entry() -> Entry {
        Entry {
            time: UNIX_EPOCH + Duration::from_secs(971_186_136),
            client: Some("10.0.0.7".parse().unwrap()),
            method: Method::GET,
            uri: Uri::from_static("/a/b?token=secret"),
            version: Version::HTTP_11,
            status: Some(200),
            bytes_in: 3,
            bytes_out: 7,
            duration: Duration::from_micros(1500),
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
            upstream_time: Some(Duration::from_millis(1)),
            pool: Some("canary"),
            reason: Some("header"),
            user_hash: Some(0x0123_4567_89ab_cdef),
            request_id: Some(HeaderValue::from_static("rid-1")),
            tls: None,
            referer: None,
            user_agent: Some(HeaderValue::from_bytes(b"a\"b\\c\t\xff").unwrap()),
            shadow: false,
        }
    }

    #[test]
    fn json_line_is_one_object_with_every_field() {
        let mut out = Vec::new();
        json_line(&mut out, &entry(), false);
        assert!(!out.contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["time"], "2000-10-10T13:55:36.000Z");
        assert_eq!(v["client"], "10.0.0.7");
        assert_eq!(v["path"], "/a/b", "no query unless asked");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["pool"], "canary");
        assert_eq!(v["user"], "0123456789ab");
        assert_eq!(v["tls"], serde_json::Value::Null);
        assert_eq!(v["http"], "HTTP/1.1");
        assert_eq!(v["user_agent"], "a\"b\\c\t\u{fffd}");
        let mut out = Vec::new();
        json_line(&mut out, &entry(), true);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["path"], "/a/b?token=secret");
    }

    #[test]
    fn text_line_is_combined_and_escaped() {
        let mut out = Vec::new();
        text_line(&mut out, &entry(), false);
        let line = String::from_utf8(out).expect("ascii");
        assert_eq!(
            line,
            "10.0.0.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /a/b HTTP/1.1\" 200 7 \"-\" \
             \"a\\x22b\\x5Cc\\x09\\xFF\" pool=canary reason=header upstream=127.0.0.1:9000 \
             upstream_time=0.001 duration=0.002 bytes_in=3 user=0123456789ab request_id=rid-1 \
             tls=-"
        );
    }

    #[test]
    fn long_values_are_cut() {
        let mut e = entry();
        let long = format!("/{}", "a".repeat(10_000));
        e.uri = Uri::try_from(long.as_str()).unwrap();
        let mut out = Vec::new();
        json_line(&mut out, &e, false);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["path"].as_str().unwrap().len(), MAX_PATH);
    }

    #[test]
    fn clf_dates() {
        let clf = |secs: u64| {
            let mut out = Vec::new();
            clf_time(&mut out, UNIX_EPOCH + Duration::from_secs(secs));
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(clf(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf(11_016 * 86_400 + 3_661), "29/Feb/2000:01:01:01 +0000");
        assert_eq!(clf(20_819 * 86_400 + 86_399), "01/Jan/2027:23:59:59 +0000");
    }
}
