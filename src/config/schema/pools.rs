//! `pools:` (servers, balance, upstream TLS and protocol) and `upstream:` (timeouts, retries).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::super::de::*;
use super::default_true;
use super::error::invalid;
use super::InvalidConfig;
use crate::model::{PerPool, Percent, ServerAddr, Weight};

/// `pools: { production: .., canary: .. }`.
pub type Pools = PerPool<PoolConfig>;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
    #[serde(default)]
    pub balance: Balance,
    /// TLS to this pool's servers (README, "TLS and HTTP/2 to the app servers"); none: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// What the proxy speaks to this pool's servers: `h1` (default), `h2` (over `tls`, by
    /// ALPN) or `h2c` (cleartext HTTP/2 with prior knowledge).
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_default")]
    pub protocol: UpstreamProtocol,
}

/// `pools.X.tls`: how the proxy connects to the pool's servers over TLS. The files are read
/// once at start by `pool::upstream` (a restart applies a change).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name sent as SNI and checked against the certificate; none: each server's host
    /// (its DNS name, or its IP address checked against the certificate's IP names).
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM file of the CA certificates that sign the servers' certificates; none: the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Check the server's certificate (chain and name). `false` accepts any certificate.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Client certificate (PEM chain) for servers that require one (mutual TLS).
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
}

/// `pools.X.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS: ALPN `http/1.1`).
    #[default]
    H1,
    /// HTTP/2 over TLS, negotiated by ALPN (`pools.X.tls` required), e.g. gRPC servers.
    H2,
    /// HTTP/2 over cleartext TCP with prior knowledge (no `tls`).
    H2c,
}

impl UpstreamProtocol {
    fn is_default(&self) -> bool {
        *self == UpstreamProtocol::H1
    }
}

impl PoolConfig {
    /// The rules between `tls` and `protocol` serde cannot state; `pool` names the pool in
    /// the key of the error.
    pub(super) fn validate_upstream(&self, pool: &str) -> Result<(), InvalidConfig> {
        match (self.protocol, &self.tls) {
            (UpstreamProtocol::H2, None) => {
                return Err(invalid(
                    format!("pools.{pool}.protocol"),
                    format!(
                        "`h2` is HTTP/2 over TLS and needs pools.{pool}.tls; for cleartext \
                         HTTP/2 use `h2c`"
                    ),
                ))
            }
            (UpstreamProtocol::H2c, Some(_)) => {
                return Err(invalid(
                    format!("pools.{pool}.protocol"),
                    "`h2c` is cleartext HTTP/2; with `tls` use `h2`",
                ))
            }
            _ => {}
        }
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let key = |k: &str| format!("pools.{pool}.tls.{k}");
        match (&tls.client_cert, &tls.client_key) {
            (Some(_), None) => {
                return Err(invalid(
                    key("client_key"),
                    "client_cert is set but client_key is not: both or neither",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    key("client_cert"),
                    "client_key is set but client_cert is not: both or neither",
                ))
            }
            _ => {}
        }
        if let Some(sni) = &tls.sni {
            if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                return Err(invalid(
                    key("sni"),
                    format!("`{sni}` is not a DNS name or an IP address"),
                ));
            }
        }
        for (k, path) in [
            ("ca_file", &tls.ca_file),
            ("client_cert", &tls.client_cert),
            ("client_key", &tls.client_key),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(key(k), "must not be empty"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Consistent hashing (Ketama) on the user key, so a user keeps hitting the same server.
    ConsistentHash,
}

/// One upstream server: `"host:port"` or `{ addr: "host:port", weight: N }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerSpec {
    pub addr: ServerAddr,
    pub weight: Weight,
}

impl<'de> Deserialize<'de> for ServerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum, so errors keep the element's path and line.
        struct SpecVisitor;
        impl<'de> serde::de::Visitor<'de> for SpecVisitor {
            type Value = ServerSpec;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"host:port\" or { addr: \"host:port\", weight: N }")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ServerSpec, E> {
                Ok(ServerSpec {
                    addr: ServerAddr::parse(v).map_err(E::custom)?,
                    weight: Weight::default(),
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ServerSpec, A::Error> {
                use serde::de::Error;
                let (mut addr, mut weight) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "addr" => {
                            let a: String = map.next_value()?;
                            addr = Some(ServerAddr::parse(&a).map_err(A::Error::custom)?);
                        }
                        "weight" => {
                            let w: i64 = map.next_value()?;
                            weight = Some(Weight::new(w).map_err(A::Error::custom)?);
                        }
                        other => return Err(A::Error::unknown_field(other, &["addr", "weight"])),
                    }
                }
                Ok(ServerSpec {
                    addr: addr.ok_or_else(|| A::Error::missing_field("addr"))?,
                    weight: weight.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(SpecVisitor)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |v| Weight::new(v.int()?).map_err(|e| e.to_string()))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |v| {
            Percent::from_f64(v.float()?).map_err(|e| e.to_string())
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(default = "default_io_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long an idle upstream keep-alive connection stays pooled.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Attempts per request on connect failure, each on a different server of the pool.
    #[serde(default = "default_max_tries", deserialize_with = "de_tries")]
    pub max_tries: usize,
    #[serde(default = "default_pool_size")]
    pub keepalive_pool_size: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: default_connect_timeout(),
            read_timeout: default_io_timeout(),
            write_timeout: default_io_timeout(),
            idle_timeout: default_idle_timeout(),
            max_tries: default_max_tries(),
            keepalive_pool_size: default_pool_size(),
        }
    }
}

/// The largest `upstream.max_tries`; Pingora's own retry bound is set to it at start, so the
/// live `max_tries` alone decides.
pub const MAX_TRIES: usize = 10;

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_io_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_tries() -> usize {
    2
}

fn default_pool_size() -> usize {
    128
}
