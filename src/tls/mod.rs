//! TLS termination: the certificates of each TLS listener, chosen by SNI, and swapped on
//! SIGHUP without touching open connections.
//!
//! Why Pingora's `rustls` backend: it needs no system library (the image stays free of
//! OpenSSL and the build of BoringSSL's cmake/clang), rustls speaks only TLS 1.2 and 1.3 with
//! modern AEAD cipher suites by default, and `ring`, its crypto provider here, is already in
//! the tree for `rediss://`. Its listener takes a [`ResolvesServerCert`], which is all SNI
//! selection and live reload need: each TLS listener gets one [`SniResolver`] holding an
//! `ArcSwap` of a [`CertSet`]; a reload builds a new set (refusing it whole if any file is
//! bad) and swaps it in. A handshake reads the set once; connections already open keep the
//! certificate they were given.
//!
//! Every pair is checked when it is loaded, at start, by `canary-lb check` and on reload, and a
//! refusal names the file and the reason: unreadable, not PEM, no certificate, no key, a key
//! that does not match the certificate, not yet valid or expired, no DNS names.

pub mod redirect;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::TlsSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;

/// A certificate or key file is never larger than this (a chain of a few certificates is a
/// few KiB); a bigger file is refused before it is parsed.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a certificate or key file was refused: the file and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLS certificate `{}`: {reason}", path.display())]
pub struct CertError {
    pub path: PathBuf,
    pub reason: String,
}

fn refuse(path: &Path, reason: impl Into<String>) -> CertError {
    CertError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One loaded certificate with its key, and the DNS names it serves.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    /// Seconds since the epoch after which the certificate is expired.
    pub not_after: i64,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, CertError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| refuse(path, format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(refuse(path, format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

/// Load and check one certificate chain and its key, as of `now` (seconds since the epoch).
pub fn load_pair(cert_path: &Path, key_path: &Path, now: i64) -> Result<LoadedCert, CertError> {
    let pem = read_pem(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| refuse(cert_path, format!("not PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(refuse(cert_path, "no CERTIFICATE block in it (not PEM?)"));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| refuse(cert_path, format!("not an X.509 certificate: {e}")))?;
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < not_before {
        return Err(refuse(
            cert_path,
            format!("not valid before {}", validity.not_before),
        ));
    }
    if now > not_after {
        return Err(refuse(
            cert_path,
            format!("expired on {}", validity.not_after),
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        return Err(refuse(
            cert_path,
            "no DNS names in its subjectAltName (clients match names there, not in the CN)",
        ));
    }

    let key_pem = read_pem(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| refuse(key_path, format!("no PEM private key in it: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| refuse(key_path, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(refuse(
                key_path,
                format!(
                    "does not match the certificate `{}`: {e}",
                    cert_path.display()
                ),
            ))
        }
    }
    Ok(LoadedCert {
        names,
        key: Arc::new(certified),
        not_after,
    })
}

/// The certificates of one TLS listener: the names they serve and the default one.
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`: covers exactly one more label.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Seconds since the epoch, for certificate validity.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl CertSet {
    /// `loaded` must not be empty; its first certificate is the default. A name served by two
    /// certificates goes to the first listed (the default, then `sni` in order).
    fn from_loaded(loaded: Vec<LoadedCert>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in &loaded {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        let default = loaded
            .first()
            .map(|c| c.key.clone())
            .unwrap_or_else(|| Arc::new(CertifiedKey::new(Vec::new(), no_key())));
        CertSet {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for an SNI name (already lowercase from rustls; lowercased again for
    /// callers such as the redirect's Host check), if one covers it.
    pub fn covering(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k);
        }
        let (first, parent) = name.split_once('.')?;
        if first.is_empty() || first == "*" {
            return None;
        }
        self.wildcard.get(parent)
    }

    /// The certificate a handshake gets: the one covering its SNI name, else the default.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        sni.and_then(|n| self.covering(n))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// A signing key that is never used: [`CertSet::from_loaded`] is always given a certificate;
/// this only spares it a panic path.
fn no_key() -> Arc<dyn rustls::sign::SigningKey> {
    #[derive(Debug)]
    struct NoKey;
    impl rustls::sign::SigningKey for NoKey {
        fn choose_scheme(
            &self,
            _offered: &[rustls::SignatureScheme],
        ) -> Option<Box<dyn rustls::sign::Signer>> {
            None
        }
        fn algorithm(&self) -> rustls::SignatureAlgorithm {
            rustls::SignatureAlgorithm::Anonymous
        }
    }
    Arc::new(NoKey)
}

/// A TLS listener's certificate resolver: rustls asks it for every handshake.
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl SniResolver {
    pub fn new(set: CertSet) -> Arc<SniResolver> {
        Arc::new(SniResolver {
            set: ArcSwap::from_pointee(set),
        })
    }

    /// New handshakes get `set` from now on.
    pub fn swap(&self, set: CertSet) {
        self.set.store(Arc::new(set));
    }

    /// Whether a certificate of this listener covers `host` (a name, no port).
    pub fn covers(&self, host: &str) -> bool {
        self.set.load().covering(host).is_some()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()))
    }
}

/// Pingora's TLS settings for a listener served by `resolver`: TLS 1.2 and 1.3 (rustls'
/// default cipher suites: AES-GCM and ChaCha20-Poly1305 with ECDHE only), ALPN `h2` then
/// `http/1.1`.
pub fn settings(resolver: Arc<SniResolver>) -> anyhow::Result<TlsSettings> {
    // No files: `build()` ignores the paths once a resolver is set.
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

/// The certificates of every TLS listener of a config, keyed by the listener's address.
pub struct ListenerCerts {
    pub sets: Vec<(std::net::SocketAddr, CertSet)>,
}

/// A [`CertError`] with the config key of the file it is about (`listen[0].tls.cert`,
/// `listen[1].tls.sni[0].key`), which `check` names; shown as the `CertError` alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ListenerCertError {
    pub key: String,
    pub error: CertError,
}

impl ListenerCerts {
    /// Load the certificates of every TLS listener of `config`, each listener's default pair
    /// first, then its `sni` pairs in order; the first bad file refuses all.
    pub fn load(config: &Config) -> Result<ListenerCerts, ListenerCertError> {
        let now = now_secs();
        let mut sets = Vec::new();
        for (i, l) in config.listen.iter().enumerate() {
            let Some(tls) = &l.tls else { continue };
            let mut loaded = Vec::new();
            for (j, (cert, key)) in tls.pairs().enumerate() {
                let pair = load_pair(cert, key, now).map_err(|error| {
                    let pair = match j {
                        0 => format!("listen[{i}].tls"),
                        j => format!("listen[{i}].tls.sni[{}]", j - 1),
                    };
                    // A reason about the key file is the `key`'s; any other the certificate's.
                    let which = if error.path == key && error.path != cert {
                        "key"
                    } else {
                        "cert"
                    };
                    ListenerCertError {
                        key: format!("{pair}.{which}"),
                        error,
                    }
                })?;
                loaded.push(pair);
            }
            sets.push((l.addr, CertSet::from_loaded(loaded)));
        }
        Ok(ListenerCerts { sets })
    }
}

/// The live resolvers of a running proxy, one per TLS listener, for SIGHUP to swap.
#[derive(Default, Clone)]
pub struct Resolvers {
    by_addr: Vec<(std::net::SocketAddr, Arc<SniResolver>)>,
}

impl Resolvers {
    pub fn add(&mut self, addr: std::net::SocketAddr, resolver: Arc<SniResolver>) {
        self.by_addr.push((addr, resolver));
    }

    pub fn get(&self, addr: std::net::SocketAddr) -> Option<Arc<SniResolver>> {
        self.by_addr
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, r)| r.clone())
    }

    /// Swap in the new certificates of the listeners that run; a listener added by the reload
    /// waits for a restart (`config::reload`).
    pub fn swap(&self, certs: ListenerCerts) -> usize {
        let mut swapped = 0;
        for (addr, set) in certs.sets {
            if let Some((_, r)) = self.by_addr.iter().find(|(a, _)| *a == addr) {
                r.swap(set);
                swapped += 1;
            }
        }
        swapped
    }

    /// Whether any TLS listener's certificates cover `host`.
    pub fn cover(&self, host: &str) -> bool {
        self.by_addr.iter().any(|(_, r)| r.covers(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> LoadedCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let c = params.self_signed(&key).expect("self-signed");
        let der = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).expect("signing");
        LoadedCert {
            names: names.iter().map(|n| n.to_string()).collect(),
            key: Arc::new(CertifiedKey::new(vec![c.der().clone()], signing)),
            not_after: i64::MAX,
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let (d, a, w) = (
            cert(&["default.test"]),
            cert(&["a.example.test"]),
            cert(&["*.example.test"]),
        );
        let (dk, ak, wk) = (d.key.clone(), a.key.clone(), w.key.clone());
        let set = CertSet::from_loaded(vec![d, a, w]);
        let same = |x: &Arc<CertifiedKey>, y: &Arc<CertifiedKey>| Arc::ptr_eq(x, y);
        assert!(same(&set.pick(Some("a.example.test")), &ak));
        assert!(same(&set.pick(Some("A.Example.Test")), &ak));
        assert!(same(&set.pick(Some("b.example.test")), &wk));
        assert!(
            same(&set.pick(Some("x.b.example.test")), &dk),
            "one label only"
        );
        assert!(same(&set.pick(Some("example.test")), &dk));
        assert!(same(&set.pick(Some("default.test")), &dk));
        assert!(same(&set.pick(None), &dk));
        assert!(set.covering("evil.test").is_none());
        assert!(set.covering(".example.test").is_none());
        assert!(set.covering("*.example.test").is_none());
    }
}
