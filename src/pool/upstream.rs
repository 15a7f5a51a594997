//! How the proxy connects to one pool's servers: plain or TLS, HTTP/1.1 or HTTP/2.
//!
//! [`Upstream`] is the runtime form of `pools.X.tls` and `pools.X.protocol`, built once at
//! start: the CA file and the client certificate are read and checked here, so a request only
//! clones what is ready (`Arc`s) into Pingora's `HttpPeer`. The proxy and the active health
//! checks both ask [`Upstream::peer`] for their peers, so a health check connects exactly as a
//! request does (TLS, SNI, ALPN, client certificate).
//!
//! The SNI is `tls.sni`, else the server's host as configured or registered (a DNS name, or an
//! IP address, which rustls checks against the certificate's IP names and does not send). It
//! is never empty: Pingora skips every certificate check for a peer without SNI.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::listeners::ALPN;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{PoolConfig, UpstreamProtocol, UpstreamTlsConfig};
use crate::model::PoolKind;

/// HTTP/2 streams one upstream connection carries at once (Pingora's default is 1).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// A CA, certificate or key file is never larger than this.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a pool's `tls` files could not be used: the config key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct UpstreamError {
    /// E.g. `pools.canary.tls.ca_file`.
    pub key: String,
    pub reason: String,
}

/// The timeouts of one peer (the request's settings in force, or the health check's).
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

/// How to connect to one pool's servers.
#[derive(Debug, Default)]
pub struct Upstream {
    tls: Option<TlsPeer>,
    protocol: UpstreamProtocol,
    /// Mixed into Pingora's connection-reuse key: its hash leaves out the CA and the ALPN, so
    /// pools that differ only there must not share connections. 0 for plain HTTP/1.1.
    reuse_tag: u64,
}

#[derive(Debug)]
struct TlsPeer {
    sni: Option<String>,
    verify: bool,
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
}

impl Upstream {
    /// Plain HTTP/1.1, as before `tls` and `protocol` existed.
    pub fn plain() -> Upstream {
        Upstream::default()
    }

    /// Read and check `pool`'s `tls` files; the error names the key.
    pub fn load(pool: PoolKind, cfg: &PoolConfig) -> Result<Upstream, UpstreamError> {
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| TlsPeer::load(pool, t))
            .transpose()?;
        let mut tag = std::collections::hash_map::DefaultHasher::new();
        let reuse_tag = if tls.is_none() && cfg.protocol == UpstreamProtocol::H1 {
            0
        } else {
            (pool.as_str(), format!("{:?}", cfg.protocol)).hash(&mut tag);
            if let Some(ca) = tls.as_ref().and_then(|t| t.ca.as_ref()) {
                for cert in ca.iter() {
                    cert.borrow_raw_cert().hash(&mut tag);
                }
            }
            tag.finish() | 1
        };
        Ok(Upstream {
            tls,
            protocol: cfg.protocol,
            reuse_tag,
        })
    }

    /// Whether the servers are reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A peer for the server at `addr`, configured as `name` (`host:port`), with `timeouts`;
    /// `group_key` keeps connection reuse apart (the proxy's per-thread slot).
    pub fn peer(
        &self,
        addr: SocketAddr,
        name: &str,
        timeouts: &PeerTimeouts,
        group_key: u64,
    ) -> Box<HttpPeer> {
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                let sni = tls.sni.clone().unwrap_or_else(|| host_of(name).to_string());
                let mut peer = HttpPeer::new(addr, true, sni);
                peer.options.verify_cert = tls.verify;
                peer.options.verify_hostname = tls.verify;
                peer.options.ca = tls.ca.clone();
                peer.client_cert_key = tls.client.clone();
                peer
            }
        };
        let o = &mut peer.options;
        match self.protocol {
            UpstreamProtocol::H1 => {}
            // Over TLS: ALPN `h2` only; over TCP: prior knowledge (Pingora's min version 2).
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
                o.alpn = ALPN::H2;
                o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
            }
        }
        o.connection_timeout = Some(timeouts.connect);
        o.total_connection_timeout = Some(timeouts.connect);
        o.read_timeout = Some(timeouts.read);
        o.write_timeout = Some(timeouts.write);
        o.idle_timeout = Some(timeouts.idle);
        peer.group_key = group_key ^ self.reuse_tag;
        Box::new(peer)
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(name: &str) -> &str {
    let host = name.rsplit_once(':').map_or(name, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl TlsPeer {
    fn load(pool: PoolKind, cfg: &UpstreamTlsConfig) -> Result<TlsPeer, UpstreamError> {
        let key = |k: &str| format!("pools.{pool}.tls.{k}");
        let ca = match &cfg.ca_file {
            None => None,
            Some(path) => Some(load_ca(path).map_err(|reason| UpstreamError {
                key: key("ca_file"),
                reason,
            })?),
        };
        let client =
            match (&cfg.client_cert, &cfg.client_key) {
                (Some(cert), Some(k)) => Some(load_client(cert, k).map_err(
                    |(which, reason)| UpstreamError {
                        key: key(which),
                        reason,
                    },
                )?),
                // (Config validation refuses one without the other.)
                _ => None,
            };
        Ok(TlsPeer {
            sni: cfg.sni.clone(),
            verify: cfg.verify,
            ca,
            client,
        })
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("`{}`: cannot read it: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "`{}`: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The certificates of a PEM file, each checked to be X.509 (Pingora's wrapper panics on
/// one that is not); at least one.
fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = read_pem(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "`{}`: no CERTIFICATE block in it (not PEM?)",
            path.display()
        ));
    }
    for (i, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            format!(
                "`{}`: certificate {} is not X.509: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

fn load_ca(path: &Path) -> Result<Arc<CaType>, String> {
    let certs = read_certs(path)?;
    let wrapped: Vec<WrappedX509> = certs
        .into_iter()
        .map(|der| WrappedX509::new(der, parse_x509))
        .collect();
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

/// The client certificate chain and its key; the error names which key (`client_cert` or
/// `client_key`) it is about.
fn load_client(cert_path: &Path, key_path: &Path) -> Result<Arc<CertKey>, (&'static str, String)> {
    let certs = read_certs(cert_path).map_err(|e| ("client_cert", e))?;
    let key_pem = read_pem(key_path).map_err(|e| ("client_key", e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "client_key",
            format!("`{}`: no PEM private key in it: {e}", key_path.display()),
        )
    })?;
    let der = key.secret_der().to_vec();
    // Pingora turns the key's DER back into a key on every new connection, and panics if it
    // cannot tell its format: check that it can, here.
    if PrivateKeyDer::try_from(der.clone()).is_err() {
        return Err((
            "client_key",
            format!(
                "`{}`: not a PKCS#8, PKCS#1 or SEC1 private key",
                key_path.display()
            ),
        ));
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        (
            "client_key",
            format!("`{}`: unusable private key: {e}", key_path.display()),
        )
    })?;
    let chain: Vec<CertificateDer<'static>> = certs
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err((
                "client_key",
                format!(
                    "`{}` does not match the certificate `{}`: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            ))
        }
    }
    Ok(Arc::new(CertKey::new(certs, der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_defaults_to_the_servers_host() {
        assert_eq!(host_of("app.internal:8443"), "app.internal");
        assert_eq!(host_of("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
    }

    #[test]
    fn plain_h1_peer_is_unchanged() {
        let t = PeerTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(2),
            write: Duration::from_secs(3),
            idle: Duration::from_secs(4),
        };
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer = Upstream::plain().peer(addr, "127.0.0.1:8080", &t, 7);
        assert!(!peer.is_tls());
        assert!(peer.sni.is_empty());
        assert_eq!(peer.group_key, 7);
        assert_eq!(peer.options.alpn, ALPN::H1);
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn missing_or_bad_files_name_their_key() {
        let cfg = |tls: &str| -> PoolConfig {
            serde_yaml_ng::from_str(&format!("{{ tls: {tls} }}")).unwrap()
        };
        let err =
            Upstream::load(PoolKind::Canary, &cfg("{ ca_file: /nonexistent/ca.pem }")).unwrap_err();
        assert_eq!(err.key, "pools.canary.tls.ca_file");
        assert!(err.reason.contains("cannot read it"), "{err}");
        let dir = std::env::temp_dir().join(format!("canary-lb-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = Upstream::load(
            PoolKind::Production,
            &cfg(&format!(
                "{{ client_cert: {}, client_key: {} }}",
                junk.display(),
                junk.display()
            )),
        )
        .unwrap_err();
        assert_eq!(err.key, "pools.production.tls.client_cert");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_and_h2_peers() {
        let t = PeerTimeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            write: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        };
        let addr: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let cfg: PoolConfig = serde_yaml_ng::from_str("{ tls: {}, protocol: h2 }").unwrap();
        let up = Upstream::load(PoolKind::Canary, &cfg).unwrap();
        let peer = up.peer(addr, "app.internal:443", &t, 3);
        assert!(peer.is_tls());
        assert_eq!(peer.sni, "app.internal");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.options.alpn, ALPN::H2);
        assert_ne!(peer.group_key, 3);
        let cfg: PoolConfig =
            serde_yaml_ng::from_str("{ tls: { sni: api.test, verify: false } }").unwrap();
        let peer =
            Upstream::load(PoolKind::Canary, &cfg)
                .unwrap()
                .peer(addr, "10.0.0.1:443", &t, 3);
        assert_eq!(peer.sni, "api.test");
        assert!(!peer.options.verify_cert);
        let cfg: PoolConfig = serde_yaml_ng::from_str("{ protocol: h2c }").unwrap();
        let peer =
            Upstream::load(PoolKind::Canary, &cfg)
                .unwrap()
                .peer(addr, "10.0.0.1:443", &t, 3);
        assert!(!peer.is_tls());
        assert_eq!(peer.options.alpn, ALPN::H2);
    }
}
