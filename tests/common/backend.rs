//! A scriptable app server on raw sockets that records every request it receives, byte for
//! byte, so a test can say exactly what reached the app: how many times, with which headers.
//!
//! The path decides the answer: `/reset` closes the connection without a byte, `/slow?ms=N`
//! waits N ms first, `/status/NNN` answers NNN, `/big?bytes=N` answers N bytes, anything else
//! 200 with a short body. Health checks in tests that
//! use it are `kind: tcp`, so connections that send nothing are not requests.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the app received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request head, exactly as received (request line and headers, up to CRLFCRLF).
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub method: String,
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

pub struct RawBackend {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawBackend {
    pub fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = listener.local_addr().expect("backend address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (received, stop) = (received.clone(), stop.clone());
                            std::thread::spawn(move || serve(conn, &received, &stop));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        RawBackend {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every request received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests for `path` (query included) arrived.
    pub fn count(&self, path: &str) -> usize {
        self.received().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve one connection: requests one after another until the peer closes, a `/reset`, or
/// the backend stops.
fn serve(mut conn: TcpStream, received: &Mutex<Vec<Received>>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut conn, &mut buf, stop) else {
            return;
        };
        let path = req.path.clone();
        received.lock().unwrap().push(req);
        if path == "/reset" {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        let mut status = 200;
        let mut body = format!("backend saw {path}\n").into_bytes();
        if let Some(ms) = path.strip_prefix("/slow?ms=") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(1000)));
        } else if let Some(code) = path.strip_prefix("/status/") {
            status = code.parse().unwrap_or(400);
        } else if let Some(n) = path.strip_prefix("/big?bytes=") {
            body = vec![b'x'; n.parse().unwrap_or(0)];
        }
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
            body.len()
        );
        let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&body).is_err() {
            return;
        }
    }
}

/// Read one request (head, then a Content-Length or chunked body) from `conn`, keeping bytes
/// that follow it in `buf`. None when the peer closes or sends something unparseable.
fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Received> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 || !fill(conn, buf, stop) {
            return None;
        }
    };
    let head: Vec<u8> = buf.drain(..head_end).collect();
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split(' ');
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let header = |name: &str| {
        text.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                if !fill(conn, buf, stop) {
                    return None;
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            while buf.len() < line_end + 2 + size + 2 {
                if !fill(conn, buf, stop) {
                    return None;
                }
            }
            let chunk: Vec<u8> = buf.drain(..line_end + 2 + size + 2).collect();
            body.extend_from_slice(&chunk[line_end + 2..line_end + 2 + size]);
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            if !fill(conn, buf, stop) {
                return None;
            }
        }
        body = buf.drain(..len).collect();
    }
    Some(Received {
        head,
        body,
        method,
        path,
    })
}

/// Read more bytes into `buf`; false when the peer closed or the backend stops.
fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Send `bytes` to `addr` on a fresh connection and read what comes back until the server
/// closes or `wait` passes without a byte.
pub fn raw_exchange(addr: &str, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut conn = TcpStream::connect(addr).expect("connect to the proxy");
    conn.set_read_timeout(Some(wait)).expect("read timeout");
    conn.write_all(bytes).expect("send request bytes");
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return out,
        }
    }
}
