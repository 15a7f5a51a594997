//! App servers that speak TLS and HTTP/2, for `pools.X.tls` and `pools.X.protocol`: a real
//! rustls server (tokio-rustls) with an optional client-certificate requirement, in front of
//! either a small HTTP/1.1 responder or a real HTTP/2 server (the `h2` crate) that answers
//! gRPC-style: the request body echoed, then trailers `grpc-status: 0` and `grpc-message:
//! <name>`. Without a certificate the HTTP/2 server speaks h2c (prior knowledge).
//!
//! Each backend runs on its own Tokio runtime, dropped (and every connection with it) when the
//! backend is dropped; it records what it received, so a test can check what went over the
//! wire.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::tls::Pair;

/// What the backend speaks over its transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speak {
    H1,
    H2,
}

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Header lines, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
    handshake_errors: Mutex<Vec<String>>,
}

pub struct Backend {
    addr: SocketAddr,
    log: Arc<Log>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Backend {
    /// A TLS backend named `name` presenting `cert`; with `client_ca`, it requires a client
    /// certificate signed by that CA.
    pub fn tls(name: &str, cert: &Pair, client_ca: Option<&Path>, speak: Speak) -> Backend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).expect("read client CA") {
                    roots.add(c.expect("client CA PEM")).expect("add client CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
            .expect("read cert")
            .collect::<Result<_, _>>()
            .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_file(&cert.key).expect("key PEM");
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = match speak {
            Speak::H1 => vec![b"http/1.1".to_vec()],
            Speak::H2 => vec![b"h2".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Backend::start(name, speak, Some(acceptor))
    }

    /// A cleartext HTTP/2 backend (prior knowledge), for `protocol: h2c`.
    pub fn h2c(name: &str) -> Backend {
        Backend::start(name, Speak::H2, None)
    }

    fn start(name: &str, speak: Speak, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("backend runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let log = Arc::new(Log::default());
        let name: Arc<str> = Arc::from(name);
        let task_log = log.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (log, name, tls) = (task_log.clone(), name.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, speak, name, log).await,
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => serve(stream, speak, name, log).await,
                            Err(e) => log.handshake_errors.lock().unwrap().push(e.to_string()),
                        },
                    }
                });
            }
        });
        Backend {
            addr,
            log,
            rt: Some(rt),
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }

    /// Requests received on `path`.
    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    /// TLS handshakes this backend failed (the client's certificate refused, ...).
    pub fn handshake_errors(&self) -> Vec<String> {
        self.log.handshake_errors.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve<S>(stream: S, speak: Speak, name: Arc<str>, log: Arc<Log>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match speak {
        Speak::H1 => serve_h1(stream, &name, &log).await,
        Speak::H2 => serve_h2(stream, name, log).await,
    }
}

/// HTTP/1.1, keep-alive, no request bodies: answers `name` with 200.
async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(stream: S, name: &str, log: &Log) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let Some(first) = head.first() else { return };
        let mut parts = first.split(' ');
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let headers = head[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        log.seen.lock().unwrap().push(Seen {
            method,
            path,
            version: "HTTP/1.1".into(),
            headers,
            body: Vec::new(),
        });
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// HTTP/2: each request's body is read whole and echoed, then trailers (`/healthz`: `ok`).
/// Each stream in its own task: the connection makes progress only while `accept` is polled.
async fn serve_h2<S>(stream: S, name: Arc<str>, log: Arc<Log>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(answer_h2(req, respond, name.clone(), log.clone()));
    }
}

async fn answer_h2(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    name: Arc<str>,
    log: Arc<Log>,
) {
    {
        let (parts, mut body) = req.into_parts();
        let mut data = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let path = parts.uri.path().to_string();
        log.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            version: format!("{:?}", parts.version),
            headers,
            body: data.clone(),
        });
        let grpc = path != "/healthz";
        let resp = http::Response::builder()
            .status(200)
            .header(
                "content-type",
                if grpc {
                    "application/grpc"
                } else {
                    "text/plain"
                },
            )
            .header("x-served-by", &*name)
            .body(())
            .expect("response");
        let Ok(mut send) = respond.send_response(resp, false) else {
            return;
        };
        if !grpc {
            let _ = send.send_data(Bytes::from_static(b"ok"), true);
            return;
        }
        let _ = send.send_data(Bytes::from(data), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        if let Ok(v) = http::HeaderValue::from_str(&name) {
            trailers.insert("grpc-message", v);
        }
        let _ = send.send_trailers(trailers);
    }
}
