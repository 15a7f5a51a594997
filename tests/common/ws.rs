//! A real WebSocket echo server and client for tests (tokio-tungstenite).
//!
//! [`WsEcho`] runs on its own small Tokio runtime on a free loopback port. On each connection it
//! records the upgrade request's headers, greets with `hello from NAME`, answers every text
//! message `NAME: TEXT` and every binary message with the same bytes, and answers a close with
//! a close (the handshake). Connections that are not WebSocket handshakes (TCP health checks)
//! are dropped. Tests drive the client side with [`block_on`] and [`connect`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The client's side of a WebSocket through the proxy.
pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Per accepted WebSocket, the upgrade request's headers (lower-case names).
type Upgrades = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// How long a test waits for any one WebSocket event.
pub const WS_WAIT: Duration = Duration::from_secs(10);

/// A WebSocket echo server; see the module doc. Stopped when dropped.
pub struct WsEcho {
    addr: SocketAddr,
    name: String,
    upgrades: Upgrades,
    runtime: Option<tokio::runtime::Runtime>,
}

impl WsEcho {
    pub fn start(name: &str) -> WsEcho {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime for the WebSocket server");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the WebSocket server");
        let addr = listener.local_addr().expect("WebSocket server address");
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let (seen, me) = (upgrades.clone(), name.to_string());
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, me.clone(), seen.clone()));
            }
        });
        WsEcho {
            addr,
            name: name.to_string(),
            upgrades,
            runtime: Some(runtime),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The headers of every upgrade request accepted so far.
    pub fn upgrades(&self) -> Vec<Vec<(String, String)>> {
        self.upgrades.lock().unwrap().clone()
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(stream: TcpStream, name: String, seen: Upgrades) {
    // The callback's error type is tungstenite's (large) error response; it never fails.
    #[allow(clippy::result_large_err)]
    let record = |req: &Request, resp: Response| {
        seen.lock()
            .unwrap()
            .push(super::header_lines(req.headers()));
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    if ws
        .send(Message::text(format!("hello from {name}")))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) => Message::text(format!("{name}: {}", t.as_str())),
            Message::Binary(b) => Message::Binary(b),
            // tungstenite answers pings and a close itself.
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

/// Run `f` to completion on a fresh current-thread runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for the test")
        .block_on(f)
}

/// Open a WebSocket to `url` (`ws://127.0.0.1:PORT/path`) with extra request headers; Err
/// describes what failed (e.g. the status the server answered instead of 101).
pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("request for {url}: {e}"))?;
    for (n, v) in headers {
        let name = http::HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_str(v).map_err(|e| e.to_string())?;
        req.headers_mut().insert(name, value);
    }
    let fut = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(WS_WAIT, fut).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("WebSocket {url}: {e}")),
        Err(_) => Err(format!("WebSocket {url}: no handshake within {WS_WAIT:?}")),
    }
}

/// The next text message, or Err naming what came instead (a close, an error, nothing within
/// [`WS_WAIT`]).
pub async fn next_text(ws: &mut WsClient) -> Result<String, String> {
    loop {
        match tokio::time::timeout(WS_WAIT, ws.next()).await {
            Err(_) => return Err(format!("no message within {WS_WAIT:?}")),
            Ok(None) => return Err("the connection ended".into()),
            Ok(Some(Err(e))) => return Err(format!("error: {e}")),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(other))) => return Err(format!("got {other:?}")),
        }
    }
}

/// Send `text` and return the reply.
pub async fn echo(ws: &mut WsClient, text: &str) -> Result<String, String> {
    ws.send(Message::text(text.to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    next_text(ws).await
}

/// Wait (at most `within`) until the connection ends without a message: Ok(true) when it
/// ended, Ok(false) when it was still open at the deadline, Err on a message.
pub async fn ends_within(ws: &mut WsClient, within: Duration) -> Result<bool, String> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return Ok(false),
            Ok(None) | Ok(Some(Err(_))) => return Ok(true),
            Ok(Some(Ok(Message::Close(_)))) => continue,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return Err(format!("unexpected message {m:?}")),
        }
    }
}
