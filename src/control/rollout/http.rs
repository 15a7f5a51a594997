//! `ctl rollout --admin URL`: the proxy's admin endpoints (`GET /rollout`, `POST
//! /rollout/start?...`, `POST /rollout/<command>`) over a minimal HTTP/1.1 client.
//!
//! One request per connection (`Connection: close`), plain `http://` only (the admin listener
//! is loopback or an internal network), one deadline for the whole exchange and at most
//! [`MAX_RESPONSE`] bytes read, so a hung or babbling listener makes the command fail, never
//! hang. No HTTP client crate: this is the only client `ctl` needs, and it is a few lines.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{StartFlags, View};
use crate::control::CtlError;
use crate::rollout::Command;

/// The most bytes of one response read (the rollout JSON with 20 history entries is a few KiB).
pub const MAX_RESPONSE: usize = 1 << 20;

pub(crate) struct Admin {
    /// `host:port`
    authority: String,
    /// Any path before `/rollout` (a proxy behind a prefix), without a trailing `/`.
    prefix: String,
    token: Option<String>,
    timeout: Duration,
}

fn admin_error(url: &str, problem: impl ToString) -> CtlError {
    CtlError::Admin {
        url: url.to_string(),
        problem: problem.to_string(),
    }
}

impl Admin {
    /// `http://host:port[/prefix]`, or `host:port`.
    pub(crate) fn new(
        url: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Admin, CtlError> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(admin_error(
                    url,
                    format!("`{scheme}://` is not supported: give http://host:port"),
                ))
            }
            None => url,
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || !authority.contains(':') {
            return Err(admin_error(
                url,
                "give http://host:port (the proxy's metrics_listen)",
            ));
        }
        if prefix.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
            return Err(admin_error(url, "the path must be plain"));
        }
        Ok(Admin {
            authority: authority.to_string(),
            prefix: prefix.to_string(),
            token,
            timeout,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}{path}", self.authority, self.prefix)
    }

    pub(crate) fn view(&self) -> Result<View, CtlError> {
        self.json("GET", "/rollout")
    }

    pub(crate) fn start(&self, flags: &StartFlags) -> Result<View, CtlError> {
        self.json("POST", &format!("/rollout/start{}", start_query(flags)))
    }

    pub(crate) fn command(&self, cmd: Command) -> Result<View, CtlError> {
        self.json("POST", &format!("/rollout/{}", cmd.as_str()))
    }

    /// 200 with the rollout JSON; 409 is a refused command (its text is the reason).
    fn json(&self, method: &str, path: &str) -> Result<View, CtlError> {
        let url = self.url(path);
        let (status, body) = self.request(method, path)?;
        let text = String::from_utf8_lossy(&body);
        match status {
            200 => serde_json::from_slice(&body)
                .map_err(|e| admin_error(&url, format!("the answer is not the rollout JSON: {e}"))),
            409 => Err(CtlError::Rollout(text.trim().to_string())),
            401 | 403 => Err(admin_error(
                &url,
                format!("{status}: pass --admin-token-file (the proxy's metrics_auth_token_file)"),
            )),
            _ => Err(admin_error(&url, format!("{status}: {}", text.trim()))),
        }
    }

    fn request(&self, method: &str, path: &str) -> Result<(u16, Vec<u8>), CtlError> {
        let url = self.url(path);
        let fail = |e: &dyn std::fmt::Display| admin_error(&url, e);
        let deadline = Instant::now() + self.timeout;
        let addr = self
            .authority
            .to_socket_addrs()
            .map_err(|e| fail(&e))?
            .next()
            .ok_or_else(|| fail(&"the name resolves to no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| fail(&e))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| fail(&e))?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\
             Accept: application/json\r\n",
            self.prefix, self.authority
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(|e| fail(&e))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let late = || {
            fail(&format!(
                "no complete answer within {}",
                humantime::format_duration(self.timeout)
            ))
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(late());
            }
            stream.set_read_timeout(Some(left)).map_err(|e| fail(&e))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.len() > MAX_RESPONSE {
                        return Err(fail(&format!("answer longer than {MAX_RESPONSE} bytes")));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(late())
                }
                Err(e) => return Err(fail(&e)),
            }
        }
        parse_response(&raw).map_err(|e| fail(&e))
    }
}

/// `?steps=5,10&interval=2s&...` with only the flags given, as typed (the proxy parses them
/// with the same parser and fills in the rest from its config).
pub(crate) fn start_query(flags: &StartFlags) -> String {
    let params: Vec<String> = flags
        .keys
        .iter()
        .map(|(key, value)| format!("{key}={}", percent_encode(value)))
        .collect();
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// What a value keeps as it is: letters, digits and `,._-`; every other byte is `%XX` (never
/// `+` for a space: releases before `form_urlencoded` read `+` as itself).
const VALUE_AS_IS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b',')
    .remove(b'.')
    .remove(b'_')
    .remove(b'-');

fn percent_encode(value: &str) -> String {
    utf8_percent_encode(value, VALUE_AS_IS).to_string()
}

/// Status code and body of a whole `Connection: close` response (chunked or not).
pub(crate) fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete head")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the head is not text")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP status line: `{status_line}`"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length `{value}`"))?,
            );
        }
    }
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    match length {
        Some(n) if n > body.len() => Err(format!("body cut short: {} of {n} bytes", body.len())),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line cut short")?;
        let line = std::str::from_utf8(&body[..eol]).map_err(|_| "chunk size is not text")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_chunked_or_to_the_end() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nno r\r\n6;x=1\r\nunning\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (409, b"no running".to_vec())
        );
        let to_end = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope";
        assert_eq!(parse_response(to_end).unwrap(), (404, b"nope".to_vec()));
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffff\r\nab",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn admin_urls_are_checked() {
        let a = Admin::new("http://127.0.0.1:9091/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(a.url("/rollout"), "http://127.0.0.1:9091/rollout");
        let a = Admin::new("127.0.0.1:9091/lb", None, Duration::from_secs(1)).unwrap();
        assert_eq!(a.url("/rollout"), "http://127.0.0.1:9091/lb/rollout");
        for bad in [
            "https://127.0.0.1:9091",
            "http://user:pw@127.0.0.1:9091",
            "http://",
            "localhost",
            "http://127.0.0.1:9091/a b",
        ] {
            assert!(
                Admin::new(bad, None, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_start_query_carries_only_the_given_flags() {
        assert_eq!(start_query(&StartFlags::default()), "");
        let flags = StartFlags {
            keys: vec![
                ("steps", "5,12.5".into()),
                ("interval", "1500ms".into()),
                ("threshold", "2".into()),
                ("min_requests", "25%& x".into()),
            ],
        };
        assert_eq!(
            start_query(&flags),
            "?steps=5,12.5&interval=1500ms&threshold=2&min_requests=25%25%26%20x"
        );
    }
}
