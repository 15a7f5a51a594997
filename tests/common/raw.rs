//! Raw sockets on both sides of the proxy, for framing tests.
//!
//! [`RawBackend`] is an app server that records every byte it receives, per connection, and
//! understands just enough HTTP/1 framing (`Content-Length`, `chunked`) to answer
//! `HTTP/1.1 200 OK` after each request it sees; it answers before it parses further, so
//! whatever the proxy sent is recorded before the client can see the answer. [`RawClient`]
//! writes exact bytes to the proxy and reads the answers with a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The body every answer of [`RawBackend`] carries.
pub const BACKEND_BODY: &[u8] = b"backend";

/// How long a read may wait for the next bytes before the test gives up on more.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What one connection to the backend carried, and whether the proxy closed it.
#[derive(Default)]
struct Conn {
    bytes: Mutex<Vec<u8>>,
    closed_by_peer: AtomicBool,
}

type Recorded = Arc<Mutex<Vec<Arc<Conn>>>>;

/// A loopback HTTP/1 server that records every byte received, one buffer per connection.
pub struct RawBackend {
    addr: SocketAddr,
    conns: Recorded,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl RawBackend {
    pub fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the raw backend");
        let addr = listener.local_addr().expect("raw backend address");
        let conns: Recorded = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (conns, stop) = (conns.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = Arc::new(Conn::default());
                    conns.lock().unwrap().push(conn.clone());
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        if serve(stream, &conn.bytes, &stop) {
                            conn.closed_by_peer.store(true, Ordering::SeqCst);
                        }
                    });
                }
            })
        };
        RawBackend {
            addr,
            conns,
            stop,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The bytes of every connection that received any, in the order they were accepted
    /// (TCP health checks connect and send nothing, so they do not show).
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.bytes.lock().unwrap().clone())
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// Per connection that received bytes: the bytes, and whether the proxy has closed it.
    pub fn connection_logs(&self) -> Vec<(Vec<u8>, bool)> {
        self.conns
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

    /// Everything received on all connections, concatenated in accept order.
    pub fn received(&self) -> Vec<u8> {
        self.connections().concat()
    }

    /// Forget what was received so far (connections stay open).
    pub fn clear(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.bytes.lock().unwrap().clear();
        }
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

/// Read from `stream`, record, and answer each complete request; stop on EOF, error, an idle
/// minute or the backend's drop. True when the peer closed the connection.
fn serve(mut stream: TcpStream, log: &Mutex<Vec<u8>>, stop: &AtomicBool) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut idle_since = Instant::now();
    while !stop.load(Ordering::SeqCst) && idle_since.elapsed() < Duration::from_secs(60) {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                idle_since = Instant::now();
                while let Some(len) = request_len(&pending) {
                    pending.drain(..len);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        BACKEND_BODY.len()
                    );
                    let mut out = answer.into_bytes();
                    out.extend_from_slice(BACKEND_BODY);
                    if stream.write_all(&out).is_err() {
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

/// The length of the first complete request in `buf` (head plus body), None while incomplete
/// or when its framing is not understood.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
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
    if !chunked {
        let end = head_end.checked_add(content_length)?;
        return (buf.len() >= end).then_some(end);
    }
    // size[;ext] CRLF data CRLF ... 0 CRLF *(trailer CRLF) CRLF
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
                    return Some(at);
                }
            }
        }
        at = at.checked_add(size)?.checked_add(2)?;
        if buf.len() < at {
            return None;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The head, status line through the empty line.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A client connection to the proxy that writes exact bytes.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawClient {
    pub fn connect(addr: &str) -> RawClient {
        let addr: SocketAddr = addr.parse().expect("socket address");
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set read timeout");
        RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Write `bytes` as they are. A write the proxy refuses (it closed already) is ignored:
    /// the answer it sent before closing is what the test looks at.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The next complete response (head plus `Content-Length` body), or None when the
    /// connection ends or [`READ_TIMEOUT`] passes without one.
    pub fn read_response(&mut self) -> Option<RawResponse> {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(r) = self.take_response() {
                return Some(r);
            }
            if self.eof || Instant::now() >= deadline || !self.fill() {
                return None;
            }
        }
    }

    /// Whether the proxy closes the connection (EOF or reset) within [`READ_TIMEOUT`], with no
    /// further bytes after the responses read so far.
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + READ_TIMEOUT;
        while !self.eof && Instant::now() < deadline {
            if !self.fill() {
                break;
            }
        }
        self.eof && self.buf.is_empty()
    }

    /// Bytes received and not part of a response read so far.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Read once (up to 100 ms); false once the connection has ended.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => true,
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    fn take_response(&mut self) -> Option<RawResponse> {
        let head_end = find(&self.buf, b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let mut r = RawResponse {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if self.buf.len() < head_end + len {
            return None;
        }
        r.body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Some(r)
    }
}

/// Split what a backend received into complete requests; the second part is what is left that
/// is not a complete request.
pub fn split_requests(mut bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut requests = Vec::new();
    while let Some(len) = request_len(bytes) {
        requests.push(&bytes[..len]);
        bytes = &bytes[len..];
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
