//! Raw sockets on both sides of the proxy: exact bytes go out, exact bytes are kept.
//!
//! [`RawBackend`] is an app server that records every byte it receives, per connection (with
//! whether the peer closed it), and each complete request parsed ([`Received`]). It answers each
//! request as soon as it is complete, so what the proxy sent is recorded before the client sees
//! the answer. The path decides the answer: `/reset` closes the connection without a byte,
//! `/slow?ms=N` waits N ms first, `/status/NNN` answers NNN, `/big?bytes=N` answers N bytes,
//! anything else 200 with [`BACKEND_BODY`]. Tests that use it give the proxy `kind: tcp` health
//! checks: those connect and send nothing, so they are not requests.
//!
//! [`RawBackend::scripted`] plays a misbehaving server instead, for clients that must not trust
//! what answers on a port (`canary-lb health`): after the first complete request of a
//! connection it plays a [`Script`] (fixed bytes then close, silence, an endless trickle). Every
//! connection ends when the client goes, when the backend is dropped, or after
//! [`CONNECTION_LIMIT`].
//!
//! [`RawClient`] is a loopback connection that writes exact bytes and reads responses, or
//! everything until the server closes, always against a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The body of [`RawBackend`]'s default answer.
pub const BACKEND_BODY: &[u8] = b"backend";

/// The longest any one connection to a [`RawBackend`] is served (idle, or playing a script).
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// What a [`RawBackend::scripted`] backend does once it has a complete request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Send these bytes, then close.
    Reply(Vec<u8>),
    /// Send nothing and keep the connection open until the client closes it.
    Silent,
    /// Send `byte` every `every`, without end.
    Trickle { byte: u8, every: Duration },
}

/// How long [`RawClient`] waits for a response, or for the server to close.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The first place `needle` stands in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The app server

/// One request as the app server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request head, exactly as received (request line and headers, up to CRLFCRLF).
    pub head: Vec<u8>,
    /// The body, chunked coding removed.
    pub body: Vec<u8>,
    pub method: String,
    /// The request target, query included.
    pub path: String,
}

impl Received {
    /// Values of header `name` (any case), one per header line, in order.
    pub fn header_lines(&self, name: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.head)
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// What one connection to the backend carried, and whether the peer closed it.
#[derive(Default)]
struct Conn {
    bytes: Mutex<Vec<u8>>,
    closed_by_peer: AtomicBool,
}

#[derive(Default)]
struct Log {
    conns: Mutex<Vec<Arc<Conn>>>,
    requests: Mutex<Vec<Received>>,
}

/// A loopback HTTP/1 app server that records what it receives; see the module doc.
pub struct RawBackend {
    addr: SocketAddr,
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl RawBackend {
    /// An HTTP/1 app server answering by path (see the module doc).
    pub fn start() -> RawBackend {
        RawBackend::with_answers(None)
    }

    /// A server that answers every connection's first complete request with `script`.
    pub fn scripted(script: Script) -> RawBackend {
        RawBackend::with_answers(Some(script))
    }

    fn with_answers(script: Option<Script>) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the raw backend");
        let addr = listener.local_addr().expect("raw backend address");
        let log = Arc::new(Log::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = Arc::new(Conn::default());
                    log.conns.lock().unwrap().push(conn.clone());
                    let (log, stop, script) = (log.clone(), stop.clone(), script.clone());
                    std::thread::spawn(move || {
                        if serve(stream, &conn, &log.requests, &stop, script.as_ref()) {
                            conn.closed_by_peer.store(true, Ordering::SeqCst);
                        }
                    });
                }
            })
        };
        RawBackend {
            addr,
            log,
            stop,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Every complete request received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.log.requests.lock().unwrap().clone()
    }

    /// How many requests for `path` (query included) arrived.
    pub fn count(&self, path: &str) -> usize {
        self.received().iter().filter(|r| r.path == path).count()
    }

    /// Per connection that received bytes, in accept order: the bytes, and whether the peer
    /// has closed it.
    pub fn connection_logs(&self) -> Vec<(Vec<u8>, bool)> {
        self.log
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let bytes = c.bytes.lock().unwrap().clone();
                (bytes, c.closed_by_peer.load(Ordering::SeqCst))
            })
            .filter(|(b, _)| !b.is_empty())
            .collect()
    }

    /// Every byte received on all connections, concatenated in accept order.
    pub fn bytes(&self) -> Vec<u8> {
        self.connection_logs()
            .into_iter()
            .flat_map(|(b, _)| b)
            .collect()
    }

    /// Forget what was received so far (connections stay open).
    pub fn clear(&self) {
        for c in self.log.conns.lock().unwrap().iter() {
            c.bytes.lock().unwrap().clear();
        }
        self.log.requests.lock().unwrap().clear();
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Read from `stream`, record, and answer each complete request (or play `script` after the
/// first); stop on EOF, error, `/reset`, an idle [`CONNECTION_LIMIT`] or the backend's drop.
/// True when the peer closed the connection.
fn serve(
    mut stream: TcpStream,
    conn: &Conn,
    requests: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
    script: Option<&Script>,
) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut idle_since = Instant::now();
    while !stop.load(Ordering::SeqCst) && idle_since.elapsed() < CONNECTION_LIMIT {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                conn.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                idle_since = Instant::now();
                while let Some(req) = parse_request(&pending) {
                    pending.drain(..req.len);
                    let path = req.received.path.clone();
                    requests.lock().unwrap().push(req.received);
                    if let Some(script) = script {
                        return play(stream, conn, script, stop);
                    }
                    if path == "/reset" {
                        let _ = stream.shutdown(Shutdown::Both);
                        return false;
                    }
                    if stream.write_all(&answer(&path)).is_err() {
                        return true;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    false
}

/// Play `script` on `stream` until it is done, the client goes, the backend is dropped or
/// [`CONNECTION_LIMIT`] passes. True when the peer closed the connection.
fn play(mut stream: TcpStream, conn: &Conn, script: &Script, stop: &AtomicBool) -> bool {
    let until = Instant::now() + CONNECTION_LIMIT;
    let live = || !stop.load(Ordering::SeqCst) && Instant::now() < until;
    match script {
        Script::Reply(bytes) => {
            let _ = stream.write_all(bytes);
            let _ = stream.shutdown(Shutdown::Both);
            false
        }
        Script::Silent => {
            let mut buf = [0u8; 1024];
            while live() {
                match stream.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(n) => conn.bytes.lock().unwrap().extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return true,
                }
            }
            false
        }
        Script::Trickle { byte, every } => {
            while live() {
                if stream.write_all(&[*byte]).is_err() {
                    return true;
                }
                std::thread::sleep(*every);
            }
            false
        }
    }
}

/// The answer to a request for `path` (see the module doc); `/slow` sleeps here.
fn answer(path: &str) -> Vec<u8> {
    let mut status = 200;
    let mut body = BACKEND_BODY.to_vec();
    if let Some(ms) = path.strip_prefix("/slow?ms=") {
        let ms = ms.split('&').next().and_then(|v| v.parse().ok());
        std::thread::sleep(Duration::from_millis(ms.unwrap_or(1000)));
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(400);
    } else if let Some(n) = path.strip_prefix("/big?bytes=") {
        body = vec![b'x'; n.parse().unwrap_or(0)];
    }
    let reason = if status == 200 { "OK" } else { "Status" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

struct Parsed {
    /// Head plus body as framed on the wire.
    len: usize,
    received: Received,
}

/// The first complete request in `buf`, None while incomplete or when its framing is not
/// understood (`Content-Length`, or `Transfer-Encoding: chunked` with trailers).
fn parse_request(buf: &[u8]) -> Option<Parsed> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut words = head.split(' ');
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let mut content_length = 0usize;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let request = |len: usize, body: Vec<u8>| Parsed {
        len,
        received: Received {
            head: buf[..head_end].to_vec(),
            body,
            method: method.clone(),
            path: path.clone(),
        },
    };
    if !chunked {
        let end = head_end.checked_add(content_length)?;
        return (buf.len() >= end).then(|| request(end, buf[head_end..end].to_vec()));
    }
    // size[;ext] CRLF data CRLF ... 0 CRLF *(trailer CRLF) CRLF
    let mut body = Vec::new();
    let mut at = head_end;
    loop {
        let line_end = at + find(&buf[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let end = at + find(&buf[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(request(at, body));
                }
            }
        }
        let data = at;
        at = at.checked_add(size)?.checked_add(2)?;
        if buf.len() < at {
            return None;
        }
        body.extend_from_slice(&buf[data..data + size]);
    }
}

/// Split what a backend received into complete requests; the second part is what is left that
/// is not a complete request.
pub fn split_requests(mut bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut requests = Vec::new();
    while let Some(req) = parse_request(bytes) {
        requests.push(&bytes[..req.len]);
        bytes = &bytes[req.len..];
    }
    (requests, bytes)
}

/// One request in a form to compare: the request line and the body byte for byte, the header
/// lines with lower-case names, sorted by name (lines of one name keep their order). Pingora's
/// header map reorders lines when one is removed and may change a name's case; neither changes
/// what the request means.
pub fn canonical(request: &[u8]) -> String {
    let head_end = find(request, b"\r\n\r\n").map_or(request.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&request[..head_end]);
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let line = lines.next().unwrap_or("").to_string();
    let mut headers: Vec<(String, String)> = lines
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.to_ascii_lowercase(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = format!("{line}\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\n"));
    }
    out.push_str(&format!(
        "\n{}",
        String::from_utf8_lossy(&request[head_end..]).escape_debug()
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// The client

/// What a server sent, as bytes.
#[derive(Clone)]
pub struct RawResponse {
    /// Every byte this response is made of (from [`RawClient::read_until_close`]: every byte
    /// the server sent).
    pub raw: Vec<u8>,
    /// The status code, 0 when the bytes do not start with an HTTP/1.x status line.
    pub status: u16,
    /// The head, status line through the empty line.
    pub head: String,
    /// The bytes after the head.
    pub body: Vec<u8>,
    /// Whether the server had closed the connection when this was read.
    pub closed: bool,
}

impl RawResponse {
    fn parse(raw: Vec<u8>, closed: bool) -> RawResponse {
        let head_end = find(&raw, b"\r\n\r\n").map_or(raw.len(), |i| i + 4);
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let status = head
            .strip_prefix("HTTP/1.")
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        RawResponse {
            body: raw[head_end..].to_vec(),
            raw,
            status,
            head,
            closed,
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Whether the raw bytes contain `needle` anywhere (head or body).
    pub fn contains(&self, needle: &[u8]) -> bool {
        find(&self.raw, needle).is_some()
    }

    /// How many HTTP/1.x status lines the bytes hold (one request, one response).
    pub fn responses(&self) -> usize {
        let lines: [&[u8]; 2] = [b"HTTP/1.1 ", b"HTTP/1.0 "];
        lines
            .iter()
            .map(|l| self.raw.windows(l.len()).filter(|w| w == l).count())
            .sum()
    }
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = String::from_utf8_lossy(&self.raw[..self.raw.len().min(4096)]);
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("closed", &self.closed)
            .field("bytes", &self.raw.len())
            .field("raw", &shown)
            .finish()
    }
}

/// A client connection to `127.0.0.1:port` that writes exact bytes.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes received and not yet returned in a response.
    buf: Vec<u8>,
    eof: bool,
}

impl RawClient {
    /// Connect, panicking when that fails.
    pub fn connect(port: u16) -> RawClient {
        RawClient::try_connect(port).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
    }

    pub fn try_connect(port: u16) -> std::io::Result<RawClient> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Write `bytes` as they are; false when the server closed already (the answer it sent
    /// before closing is what a test looks at, so most callers ignore this).
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Connect and send `partial` (an unfinished request head), then nothing: the connection
    /// holds whatever the server gives an open connection until it is dropped.
    pub fn hold(port: u16, partial: &[u8]) -> RawClient {
        let mut c = RawClient::connect(port);
        assert!(c.send(partial), "write to 127.0.0.1:{port} failed");
        c
    }

    /// Stop sending (a half-close); reading goes on.
    pub fn half_close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The next complete response (head plus `Content-Length` body), or None when the
    /// connection ends or [`READ_TIMEOUT`] passes without one.
    pub fn read_response(&mut self) -> Option<RawResponse> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(r) = self.take_response() {
                return Some(r);
            }
            if self.eof || Instant::now() >= deadline {
                return None;
            }
            self.fill(Duration::from_millis(100));
        }
    }

    /// Everything not yet read, up to the server's close (EOF or reset) or `timeout`.
    pub fn read_until_close(&mut self, timeout: Duration) -> RawResponse {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.fill(left.min(Duration::from_millis(100)));
        }
        RawResponse::parse(std::mem::take(&mut self.buf), self.eof)
    }

    /// Whether the server closes the connection (EOF or reset) within [`READ_TIMEOUT`], with no
    /// further bytes after the responses read so far.
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + READ_TIMEOUT;
        while !self.eof && Instant::now() < deadline {
            self.fill(Duration::from_millis(100));
        }
        self.eof && self.buf.is_empty()
    }

    /// Whether the server has closed the connection, looking for at most 20 ms.
    pub fn closed_now(&mut self) -> bool {
        if !self.eof {
            self.fill(Duration::from_millis(20));
        }
        self.eof
    }

    /// Bytes received and not part of a response read so far.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Read once, waiting at most `wait`; sets `eof` when the connection has ended.
    fn fill(&mut self, wait: Duration) {
        let _ = self
            .stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => self.eof = true,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // A reset also ends the connection.
            Err(_) => self.eof = true,
        }
    }

    fn take_response(&mut self) -> Option<RawResponse> {
        let head_end = find(&self.buf, b"\r\n\r\n")? + 4;
        let head = RawResponse::parse(self.buf[..head_end].to_vec(), false);
        if head.status == 0 {
            return None;
        }
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let end = head_end.checked_add(len)?;
        if self.buf.len() < end {
            return None;
        }
        let raw: Vec<u8> = self.buf.drain(..end).collect();
        Some(RawResponse::parse(raw, self.eof && self.buf.is_empty()))
    }
}

/// Send `request` as-is on a new connection to `127.0.0.1:port` and read until the server
/// closes it (or `timeout`).
pub fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> RawResponse {
    let mut c = RawClient::connect(port);
    // The server may answer and close before it has read everything (e.g. a body it never
    // reads); what it sent back is still what the test looks at.
    c.send(request);
    c.read_until_close(timeout)
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
    let mut c = RawClient::connect(port);
    if !c.send(partial) {
        return Some(0);
    }
    let mut sent = partial.len();
    while Instant::now() < deadline {
        // Wait one interval for the server to close; any answer counts as not closed yet.
        c.fill(interval);
        if c.eof || !c.send(b"x") {
            return Some(sent);
        }
        sent += 1;
    }
    None
}
