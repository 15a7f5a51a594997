//! TLS in the tests: a CA and certificates generated at test time (rcgen), files in a temp dir,
//! and two real TLS clients: `curl` (HTTP/1.1, `--http2`, `--http2-prior-knowledge`) and a
//! Rust one (rustls over a blocking socket) that sends HTTP/1.1 on one kept-alive connection
//! and reports which certificate the server presented.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

use super::raw::find;
use super::temp_dir;

/// A test CA whose certificates are written as PEM files into its own temp dir.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    ca_pem: PathBuf,
}

/// A certificate and key pair on disk.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = temp_dir("canary-lb-tls-");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "canary-lb test CA");
        let ca = params.self_signed(&ca_key).expect("CA cert");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("write CA");
        TestCa {
            dir,
            ca,
            ca_key,
            ca_pem,
        }
    }

    /// The CA certificate (PEM file), for `curl --cacert` and the Rust client.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate for `names` valid from yesterday for a year, written as `<stem>.crt`
    /// and `<stem>.key`. The common name is `stem`, so a test can tell certificates apart.
    pub fn issue(&self, stem: &str, names: &[&str]) -> Pair {
        self.issue_valid(stem, names, -1, 365)
    }

    /// A certificate that expired yesterday (valid from ten days ago).
    pub fn issue_expired(&self, stem: &str, names: &[&str]) -> Pair {
        self.issue_valid(stem, names, -10, -1)
    }

    fn issue_valid(&self, stem: &str, names: &[&str], from_days: i64, to_days: i64) -> Pair {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, stem);
        let day = time::Duration::days(1);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + day * from_days as i32;
        params.not_after = now + day * to_days as i32;
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign");
        let pair = Pair {
            cert: self.dir.path().join(format!("{stem}.crt")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }

    /// Write `pair`'s files over `onto`'s (atomically each), as an operator renewing a
    /// certificate in place would.
    pub fn copy_over(&self, pair: &Pair, onto: &Pair) {
        for (from, to) in [(&pair.cert, &onto.cert), (&pair.key, &onto.key)] {
            let tmp = to.with_extension("new");
            std::fs::copy(from, &tmp).expect("copy");
            std::fs::rename(&tmp, to).expect("rename");
        }
    }
}

/// The common name of a DER certificate (the test's `stem`).
pub fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    cn
}

// ---------------------------------------------------------------------------------------------
// curl

/// What curl got: the HTTP version it spoke (`1.1`, `2`) and the certificate, beside the
/// response itself (status, headers, body, and `Resp`'s header lookups through `Deref`).
#[derive(Debug, Clone)]
pub struct CurlResp {
    pub version: String,
    /// The common name of the certificate the server presented (empty over plain HTTP).
    pub cert_cn: String,
    pub resp: super::Resp,
}

impl std::ops::Deref for CurlResp {
    type Target = super::Resp;

    fn deref(&self) -> &super::Resp {
        &self.resp
    }
}

/// How curl talks to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTPS, HTTP/1.1 only.
    H1Tls,
    /// HTTPS, HTTP/2 by ALPN (`--http2`).
    H2Tls,
    /// Plain HTTP/2 with prior knowledge (h2c).
    H2c,
    /// Plain HTTP/1.1.
    H1,
}

impl Proto {
    pub fn expected_version(self) -> &'static str {
        match self {
            Proto::H1Tls | Proto::H1 => "1.1",
            Proto::H2Tls | Proto::H2c => "2",
        }
    }
}

/// `curl` to `host:port` (resolved to 127.0.0.1, so SNI and Host are `host`) for `path`,
/// trusting `ca`, with `headers` and `extra` arguments. Err: curl failed (its stderr).
pub fn curl(
    proto: Proto,
    host: &str,
    port: u16,
    path: &str,
    ca: Option<&Path>,
    headers: &[(&str, &str)],
    extra: &[&str],
) -> Result<CurlResp, String> {
    let scheme = match proto {
        Proto::H1Tls | Proto::H2Tls => "https",
        Proto::H2c | Proto::H1 => "http",
    };
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "10"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("-w")
        .arg("\n__CURL__ %{http_version} %{certs}");
    match proto {
        Proto::H1Tls | Proto::H1 => {
            cmd.arg("--http1.1");
        }
        Proto::H2Tls => {
            cmd.arg("--http2");
        }
        Proto::H2c => {
            cmd.arg("--http2-prior-knowledge");
        }
    }
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    for (n, v) in headers {
        cmd.arg("-H").arg(format!("{n}: {v}"));
    }
    cmd.args(extra);
    cmd.arg(format!("{scheme}://{host}:{port}{path}"));
    let out = cmd.output().map_err(|e| format!("run curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {scheme}://{host}:{port}{path} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_curl(&text).ok_or_else(|| format!("cannot parse curl's output:\n{text}"))
}

fn parse_curl(text: &str) -> Option<CurlResp> {
    let marker = text.rfind("\n__CURL__ ")?;
    let (response, tail) = (&text[..marker], &text[marker + "\n__CURL__ ".len()..]);
    let (version, certs) = tail.split_once(' ').unwrap_or((tail, ""));
    let head_end = response.find("\r\n\r\n")?;
    let (head, body) = (&response[..head_end], &response[head_end + 4..]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // `%{certs}` (curl 7.88) prints the chain, leaf first, with a `Subject:` line each.
    let cert_cn = certs
        .lines()
        .find_map(|l| l.strip_prefix("Subject:"))
        .and_then(|s| s.split("CN = ").nth(1).or_else(|| s.split("CN=").nth(1)))
        .map(|cn| cn.split(',').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    Some(CurlResp {
        version: version.trim().to_string(),
        cert_cn,
        resp: super::Resp {
            status,
            headers,
            body: body.to_string(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// The Rust client

/// One TLS connection (rustls, blocking) to `127.0.0.1:port`, HTTP/1.1 kept alive.
pub struct TlsConn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

/// A response read off a [`TlsConn`].
#[derive(Debug)]
pub struct TlsResp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl TlsResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

impl TlsConn {
    /// Connect and finish the handshake for SNI `name`, verifying against `ca`.
    pub fn connect(port: u16, name: &str, ca: &Path) -> Result<TlsConn, String> {
        TlsConn::connect_alpn(port, name, ca, &[])
    }

    /// [`TlsConn::connect`] offering the ALPN protocols `alpn` (e.g. `b"h2"`).
    pub fn connect_alpn(
        port: u16,
        name: &str,
        ca: &Path,
        alpn: &[&[u8]],
    ) -> Result<TlsConn, String> {
        let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(client_config(ca, alpn), server_name)
            .map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| format!("TLS handshake with {name}: {e}"))?;
        }
        Ok(TlsConn {
            tls,
            buf: Vec::new(),
        })
    }

    /// Write `bytes` as they are on this connection (false when the server closed it).
    pub fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.tls
            .write_all(bytes)
            .and_then(|()| self.tls.flush())
            .is_ok()
    }

    /// The ALPN protocol the server chose, if any.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.tls.conn.alpn_protocol().map(|p| p.to_vec())
    }

    /// Whether the server closes the connection (EOF, reset or a TLS alert) within `within`;
    /// what it sends before (an HTTP/2 server's SETTINGS) is read and dropped.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let _ = self
            .tls
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            match self.tls.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// The common name of the certificate the server presented.
    pub fn cert_cn(&self) -> String {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| common_name(c))
            .unwrap_or_default()
    }

    /// The negotiated protocol version, e.g. `TLSv1_3`.
    pub fn version(&self) -> String {
        format!("{:?}", self.tls.conn.protocol_version())
    }

    /// `GET path` with `Host: host` on this connection, and the whole response.
    pub fn get(&mut self, host: &str, path: &str) -> Result<TlsResp, String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.tls
            .write_all(req.as_bytes())
            .and_then(|()| self.tls.flush())
            .map_err(|e| format!("write: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(head_end) = find(&self.buf, b"\r\n\r\n").map(|i| i + 4) {
                let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
                let len: usize = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= head_end + len {
                    let body = self.buf[head_end..head_end + len].to_vec();
                    self.buf.drain(..head_end + len);
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    return Ok(TlsResp { status, head, body });
                }
            }
            if Instant::now() > deadline {
                return Err("no complete response in time".into());
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tls.read(&mut chunk) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}
