//! `listen:` (plain, TLS with SNI, h2c, redirect listeners) and `server_header:`.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::super::de::*;
use super::access_log::ser_off;
use super::error::invalid;
use super::{Config, InvalidConfig};

/// `server_header`: the `Server` header of the answers canary-lb writes itself (its 502, 503,
/// 504, its refusals, the `redirect_to_https` listener's answers), like nginx's
/// `server_tokens`. `off`, the default, sends none: nothing tells a scanner what answers;
/// `on` sends `canary-lb`; any other text is sent as it is. Proxied answers keep the app's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ServerHeader {
    #[default]
    #[serde(serialize_with = "ser_off")]
    Off,
    Text(String),
}

/// Longest `server_header` text.
pub const MAX_SERVER_HEADER: usize = 128;

impl ServerHeader {
    /// The header's text, None when `off`.
    pub fn text(&self) -> Option<&str> {
        match self {
            ServerHeader::Off => None,
            ServerHeader::Text(t) => Some(t),
        }
    }
}

impl<'de> Deserialize<'de> for ServerHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ServerHeader;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`off`, `on` or the header's text")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ServerHeader, E> {
                // YAML 1.1 readers turn a bare `off` into false and `on` into true.
                self.visit_str(if v { "on" } else { "off" })
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ServerHeader, E> {
                match v {
                    "off" => Ok(ServerHeader::Off),
                    "on" => Ok(ServerHeader::Text("canary-lb".to_string())),
                    text if text.is_empty()
                        || text.len() > MAX_SERVER_HEADER
                        || text.trim() != text
                        || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
                    {
                        Err(E::custom(format!(
                            "expected `off`, `on` or 1..={MAX_SERVER_HEADER} printable ASCII \
                             characters without spaces at either end, got {text:?}"
                        )))
                    }
                    text => Ok(ServerHeader::Text(text.to_string())),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One entry of `listen:`. Written as `"ip:port"` (a plain HTTP/1.1 listener) or as a map:
/// `{ addr: "0.0.0.0:8443", tls: { cert: FILE, key: FILE, sni: [{ cert, key }] } }`,
/// `{ addr: .., h2c: true }`, `{ addr: .., redirect_to_https: true }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(deserialize_with = "de_listen_addr")]
    pub addr: SocketAddr,
    /// TLS termination on this listener (HTTP/2 offered by ALPN, then HTTP/1.1).
    #[serde(default)]
    pub tls: Option<TlsListenerConfig>,
    /// HTTP/2 with prior knowledge on a plain listener (HTTP/1.1 keeps working beside it).
    #[serde(default)]
    pub h2c: bool,
    /// Answer every request with a 308 to the same path on the TLS listener.
    #[serde(default)]
    pub redirect_to_https: bool,
}

impl Listener {
    /// A plain HTTP/1.1 listener, what `"ip:port"` means.
    pub fn plain(addr: SocketAddr) -> Listener {
        Listener {
            addr,
            tls: None,
            h2c: false,
            redirect_to_https: false,
        }
    }

    /// The listener without its certificate files: what a SIGHUP cannot change (the
    /// certificates themselves are live).
    pub fn shape(&self) -> (SocketAddr, bool, bool, bool) {
        (
            self.addr,
            self.tls.is_some(),
            self.h2c,
            self.redirect_to_https,
        )
    }
}

impl Serialize for Listener {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.tls.is_none() && !self.h2c && !self.redirect_to_https {
            return s.serialize_str(&self.addr.to_string());
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("addr", &self.addr.to_string())?;
        if let Some(tls) = &self.tls {
            m.serialize_entry("tls", tls)?;
        }
        if self.h2c {
            m.serialize_entry("h2c", &true)?;
        }
        if self.redirect_to_https {
            m.serialize_entry("redirect_to_https", &true)?;
        }
        m.end()
    }
}

/// `listen[].tls`: the default certificate (served when the client sends no SNI name or one no
/// certificate covers) and more certificates chosen by SNI. Each certificate serves the DNS
/// names of its subjectAltName, exact (`api.example.com`) or wildcard (`*.example.com`).
/// The files are read at start and at every SIGHUP (`tls` module).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// PEM: the certificate, then its intermediates.
    pub cert: std::path::PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    #[serde(default)]
    pub sni: Vec<CertPair>,
}

impl TlsListenerConfig {
    /// The default pair first, then the SNI pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&std::path::Path, &std::path::Path)> {
        std::iter::once((self.cert.as_path(), self.key.as_path()))
            .chain(self.sni.iter().map(|p| (p.cert.as_path(), p.key.as_path())))
    }
}

/// `listen[].tls.sni[]`: one more certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl Config {
    /// The listeners' combinations: one role each, addresses unique, a redirect needs a TLS
    /// listener to send clients to. Certificate contents are checked by the `tls` module.
    pub(super) fn validate_listen(&self) -> Result<(), InvalidConfig> {
        for (i, l) in self.listen.iter().enumerate() {
            let key = |k: &str| format!("listen[{i}]{k}");
            if self.listen[..i].iter().any(|o| o.addr == l.addr) {
                return Err(invalid(key(".addr"), format!("{} is listed twice", l.addr)));
            }
            if l.tls.is_some() && (l.h2c || l.redirect_to_https) {
                return Err(invalid(
                    key(""),
                    "a TLS listener offers HTTP/2 by ALPN: `h2c` and \
                              `redirect_to_https` are for plain listeners",
                ));
            }
            if l.h2c && l.redirect_to_https {
                return Err(invalid(
                    key(""),
                    "`h2c` and `redirect_to_https` exclude each other",
                ));
            }
            if l.redirect_to_https && !self.listen.iter().any(|o| o.tls.is_some()) {
                return Err(invalid(
                    key(".redirect_to_https"),
                    "no TLS listener to redirect to",
                ));
            }
            if let Some(tls) = &l.tls {
                for (j, (cert, key_file)) in tls.pairs().enumerate() {
                    if cert.as_os_str().is_empty() || key_file.as_os_str().is_empty() {
                        let at = if j == 0 {
                            String::new()
                        } else {
                            format!(".sni[{}]", j - 1)
                        };
                        return Err(invalid(
                            key(&format!(".tls{at}")),
                            "`cert` and `key` must name files",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The first TLS listener's port: where `redirect_to_https` sends clients.
    pub fn https_port(&self) -> Option<u16> {
        self.listen
            .iter()
            .find(|l| l.tls.is_some())
            .map(|l| l.addr.port())
    }
}
