//! An HTTP/2 client (the `h2` crate, prior knowledge over plain TCP) that can keep its
//! flow-control window shut, and [`BigBackend`], an app server whose answers are large and which
//! counts how many upstream connections the proxy holds at once.
//!
//! A client with `initial_window_size(0)` lets the proxy send response heads but never a byte
//! of body: each such stream keeps its upstream request open until the proxy gives up on it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::RecvStream;

/// The body [`BigBackend`] sends for `len` bytes: a pattern a truncation or reorder breaks.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Counts, at the backend, of what the proxy holds.
#[derive(Default)]
pub struct BackendCounts {
    /// Connections open now that carried at least one request.
    pub held: AtomicUsize,
    pub peak_held: AtomicUsize,
    /// Requests being answered now (from the head read to the last byte written).
    pub active: AtomicUsize,
    pub peak_active: AtomicUsize,
    pub requests: AtomicUsize,
}

fn raise(peak: &AtomicUsize, now: usize) {
    peak.fetch_max(now, SeqCst);
}

/// An HTTP/1.1 app server answering every request 200 with [`pattern`]`(len)` (keep-alive),
/// one thread a connection. Connections that send no request (TCP health checks) are not
/// counted. Stopped on drop; each connection ends at most 120 s after its last read.
pub struct BigBackend {
    addr: SocketAddr,
    pub counts: Arc<BackendCounts>,
    stop: Arc<AtomicBool>,
}

impl BigBackend {
    pub fn start(len: usize) -> BigBackend {
        BigBackend::start_slow(len, Duration::ZERO)
    }

    /// Each answer starts `delay` after its request (requests that overlap stay visible).
    pub fn start_slow(len: usize, delay: Duration) -> BigBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let counts = Arc::new(BackendCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let body = Arc::new(pattern(len));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (c, body) = (c.clone(), body.clone());
                std::thread::spawn(move || serve(conn, &c, &body, delay));
            }
        });
        BigBackend { addr, counts, stop }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn held(&self) -> usize {
        self.counts.held.load(SeqCst)
    }

    pub fn peak_held(&self) -> usize {
        self.counts.peak_held.load(SeqCst)
    }

    pub fn peak_active(&self) -> usize {
        self.counts.peak_active.load(SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counts.requests.load(SeqCst)
    }
}

impl Drop for BigBackend {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn serve(conn: TcpStream, c: &BackendCounts, body: &[u8], delay: Duration) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(120)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(conn);
    let mut counted = false;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    loop {
        // Read one request head (no request bodies in these tests).
        let mut saw_line = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    if counted {
                        c.held.fetch_sub(1, SeqCst);
                    }
                    return;
                }
                Ok(_) => {}
            }
            if line == "\r\n" && saw_line {
                break;
            }
            saw_line = true;
        }
        if !counted {
            counted = true;
            raise(&c.peak_held, c.held.fetch_add(1, SeqCst) + 1);
        }
        c.requests.fetch_add(1, SeqCst);
        raise(&c.peak_active, c.active.fetch_add(1, SeqCst) + 1);
        std::thread::sleep(delay);
        let ok = writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(body))
            .is_ok();
        c.active.fetch_sub(1, SeqCst);
        if !ok {
            c.held.fetch_sub(1, SeqCst);
            return;
        }
    }
}

/// An HTTP/2 connection (prior knowledge) to `127.0.0.1:port`, driven on the current Tokio
/// runtime. `window`: the initial stream window the client advertises (0: nothing may be sent).
pub async fn connect(port: u16, window: Option<u32>) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the proxy");
    let mut builder = h2::client::Builder::new();
    if let Some(w) = window {
        builder.initial_window_size(w);
    }
    let (send, conn) = builder.handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Send `GET path` on `send`; resolves with the response head, or the stream's error.
pub async fn get(
    send: &SendRequest<Bytes>,
    path: &str,
) -> Result<http::Response<RecvStream>, h2::Error> {
    let mut send = send.clone().ready().await?;
    let req = http::Request::get(format!("http://proxy.test{path}"))
        .body(())
        .expect("request");
    let (resp, _) = send.send_request(req, true)?;
    resp.await
}

/// The whole body, handing back the window as it is read (a normal client).
pub async fn read_body(mut body: RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut all = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}
