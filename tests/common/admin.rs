//! Raw-socket helpers for the admin port (tests/admin.rs): hostile requests go out as exact
//! bytes, and what comes back is kept as bytes, so a test can assert what a response does
//! *not* contain (the routing salt, the token, an echo of the request).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Every byte the server sent.
    pub raw: Vec<u8>,
    /// The status code, 0 when the bytes did not start with an HTTP/1.x status line.
    pub status: u16,
    /// Header names lowercased, values as sent.
    pub headers: Vec<(String, String)>,
    /// The bytes after the blank line ending the head.
    pub body: Vec<u8>,
    /// Whether the server closed the connection (false: `timeout` expired first).
    pub closed: bool,
}

impl RawResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the raw bytes contain `needle` anywhere (head or body).
    pub fn contains(&self, needle: &[u8]) -> bool {
        find(&self.raw, needle).is_some()
    }

    /// How many HTTP status lines the server sent (one request, one response).
    pub fn responses(&self) -> usize {
        count(&self.raw, b"HTTP/1.1 ") + count(&self.raw, b"HTTP/1.0 ")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() || needle.len() > hay.len() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Read until the server closes or `deadline`; returns the bytes and whether it closed.
fn read_until_close(s: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset also ends the exchange.
            Err(_) => return (out, true),
        }
    }
}

fn parse(raw: Vec<u8>, closed: bool) -> RawResponse {
    let (head, body) = match find(&raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], raw[i + 4..].to_vec()),
        None => (&raw[..], Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse {
        raw,
        status,
        headers,
        body,
        closed,
    }
}

/// Send `request` as-is to `127.0.0.1:port` and read until the server closes the connection
/// (or `timeout`).
pub fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> RawResponse {
    let deadline = Instant::now() + timeout;
    let mut s = connect(port);
    // The server may answer and close before it has read everything (e.g. a body it never
    // reads); what it sent back is still what the test looks at.
    let _ = s.write_all(request);
    let (raw, closed) = read_until_close(&mut s, deadline);
    parse(raw, closed)
}

/// Open a connection, send `partial` (an unfinished request head), then one more byte of
/// header every `interval`, never finishing the head. Returns how many bytes went out before
/// the server closed the connection, or None if it was still open after `timeout`.
pub fn drip_until_closed(
    port: u16,
    partial: &[u8],
    interval: Duration,
    timeout: Duration,
) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    let mut s = connect(port);
    let mut sent = 0;
    if s.write_all(partial).is_err() {
        return Some(sent);
    }
    sent += partial.len();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        // Wait one interval for the server to close; any answer counts as not closed yet.
        let _ = s.set_read_timeout(Some(interval));
        match s.read(&mut buf) {
            Ok(0) => return Some(sent),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(sent),
        }
        if s.write_all(b"x").is_err() {
            return Some(sent);
        }
        sent += 1;
    }
    None
}

/// A connection that sent an unfinished request head and then nothing: it holds whatever the
/// server gives an open connection until it is dropped.
pub struct HeldConnection(TcpStream);

impl HeldConnection {
    pub fn open(port: u16, partial: &[u8]) -> HeldConnection {
        let mut s = connect(port);
        s.write_all(partial)
            .unwrap_or_else(|e| panic!("write to 127.0.0.1:{port}: {e}"));
        HeldConnection(s)
    }

    /// Whether the server has closed this connection (checked without waiting long).
    pub fn closed_by_server(&mut self) -> bool {
        let _ = self.0.set_read_timeout(Some(Duration::from_millis(20)));
        let mut buf = [0u8; 1024];
        match self.0.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}
