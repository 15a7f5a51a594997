//! A loopback listener that plays a misbehaving server for clients that must not trust what
//! answers on a port (`canary-lb health`): it records the request head of every connection,
//! then answers with fixed bytes, nothing at all, or an endless trickle. Every loop ends when
//! the client goes, when the listener is dropped, or after [`CONNECTION_LIMIT`].

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any one connection is served.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// What the listener does once it has read a request head.
#[derive(Debug, Clone)]
pub enum Script {
    /// Send these bytes, then close.
    Reply(Vec<u8>),
    /// Send nothing and keep the connection open.
    Silent,
    /// Send `byte` every `every`, without end.
    Trickle { byte: u8, every: Duration },
}

pub struct CannedListener {
    port: u16,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CannedListener {
    pub fn start(script: Script) -> CannedListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind canned listener");
        let port = listener
            .local_addr()
            .expect("canned listener address")
            .port();
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
                            let (received, stop, script) =
                                (received.clone(), stop.clone(), script.clone());
                            std::thread::spawn(move || serve(conn, &script, &received, &stop));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        CannedListener {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request head of each connection so far (up to the blank line, or what came).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for CannedListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, script: &Script, received: &Mutex<Vec<Vec<u8>>>, stop: &AtomicBool) {
    let until = Instant::now() + CONNECTION_LIMIT;
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let live = || !stop.load(Ordering::Relaxed) && Instant::now() < until;

    // The request head: up to CRLFCRLF, 16 KiB, the client's close, or 5 s.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let head_until = Instant::now() + Duration::from_secs(5);
    while live() && Instant::now() < head_until && head.len() < 16 * 1024 {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    received.lock().unwrap().push(head);

    match script {
        Script::Reply(bytes) => {
            let _ = conn.write_all(bytes);
        }
        Script::Silent => {
            // Hold the connection until the client closes it.
            while live() {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        }
        Script::Trickle { byte, every } => {
            while live() {
                if conn.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(*every);
            }
        }
    }
}
