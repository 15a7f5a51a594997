//! The configuration file's format: serde structs, their defaults and their validation.
//!
//! Validation happens while deserializing (newtypes such as [`Weight`] and [`Percent`] refuse
//! bad values themselves), so every error carries the key path and the line that `serde_yaml_ng`
//! reports, e.g. `pools.production.servers[1].weight: weight must be 1..=1000, got 0 at line 6
//! column 44`. Unknown keys are refused for the same reason: a typo must not silently fall back
//! to a default. Nothing here reads a file or the environment (`config/mod.rs` does).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use super::de::*;
use super::AuthTokenFile;
use crate::model::{PerPool, Percent, ServerAddr, Weight};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The proxy's listeners: `"ip:port"` (plain HTTP/1.1) or a [`Listener`] map (TLS, h2c,
    /// redirect to HTTPS).
    #[serde(default = "default_listen", deserialize_with = "de_listen")]
    pub listen: Vec<Listener>,
    #[serde(default = "default_threads", deserialize_with = "de_threads")]
    pub threads: usize,
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// When set, `/metrics` and `/status` want `Authorization: Bearer <token>` (SECURITY.md).
    #[serde(default)]
    pub metrics_auth_token_file: Option<AuthTokenFile>,
    #[serde(default)]
    pub pools: Pools,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Limits on what a client may send and how long it may take (SECURITY.md).
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// When production has no healthy server, send production traffic to canary instead of 503.
    #[serde(default)]
    pub fallback_to_canary: bool,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace_period: Duration,
    /// Progressive delivery: the defaults of `ctl rollout start` and the judgement's thresholds.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Networks of the proxies in front of canary-lb whose forwarding headers are believed
    /// (README, "Headers"); empty: no one's, every client's are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// One line per request (README, "Access log"); `off` disables it.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Feature flags evaluated per request (README "Feature flags").
    #[serde(default)]
    pub flags: FlagsConfig,
    /// Where `serve` writes its pid once the listeners are bound (removed on exit), for
    /// `canary-lb reload` / `reopen-logs` and logrotate's `kill -USR1`.
    #[serde(default)]
    pub pid_file: Option<std::path::PathBuf>,
    /// The `Server` header of the answers the proxy writes itself; `off` (default): none.
    #[serde(default)]
    pub server_header: ServerHeader,
}

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

/// `access_log: off`, or its settings (every key has a default: JSON lines on stdout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AccessLogConfig {
    #[serde(serialize_with = "ser_off")]
    Off,
    On(AccessLogSettings),
}

fn ser_off<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("off")
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig::On(AccessLogSettings::default())
    }
}

impl AccessLogConfig {
    pub fn settings(&self) -> Option<&AccessLogSettings> {
        match self {
            AccessLogConfig::Off => None,
            AccessLogConfig::On(s) => Some(s),
        }
    }
}

impl<'de> Deserialize<'de> for AccessLogConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum, so errors keep the key's path and line.
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AccessLogConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`off` or { path, format, query, buffer }")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AccessLogConfig, E> {
                // YAML 1.1 readers turn a bare `off` into false.
                match v {
                    false => Ok(AccessLogConfig::Off),
                    true => Ok(AccessLogConfig::default()),
                }
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AccessLogConfig, E> {
                match v {
                    "off" => Ok(AccessLogConfig::Off),
                    "on" => Ok(AccessLogConfig::default()),
                    other => Err(E::custom(format!(
                        "expected `off` or a map of settings, got `{other}`"
                    ))),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AccessLogConfig, A::Error> {
                AccessLogSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AccessLogConfig::On)
            }
        }
        d.deserialize_any(V)
    }
}

/// `access_log: { path, format, query, buffer }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSettings {
    /// A file the lines are appended to (reopened on SIGUSR1); absent: stdout.
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Log the query string with the path (off: it may carry tokens).
    #[serde(default)]
    pub query: bool,
    /// Lines queued for the writer; when it cannot keep up, further lines are dropped and
    /// counted (`canary_lb_access_log_dropped_total`), never delaying a request.
    #[serde(default = "default_log_buffer", deserialize_with = "de_log_buffer")]
    pub buffer: usize,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            path: None,
            format: AccessLogFormat::default(),
            query: false,
            buffer: default_log_buffer(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// nginx's `combined` with canary-lb's fields appended.
    Text,
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
    fn validate_upstream(&self, pool: &str) -> Result<(), InvalidConfig> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_check_kind")]
    pub kind: CheckKind,
    #[serde(default = "default_health_path", deserialize_with = "de_check_path")]
    pub path: String,
    /// Host header sent with HTTP checks.
    #[serde(default = "default_health_host", deserialize_with = "de_check_host")]
    pub host: String,
    /// Accepted status range for HTTP checks, e.g. `200-399` or `200`.
    #[serde(default = "default_status_range", deserialize_with = "de_status_range")]
    pub expect_status: (u16, u16),
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_threshold", deserialize_with = "de_threshold")]
    pub healthy_threshold: usize,
    #[serde(default = "default_threshold", deserialize_with = "de_threshold")]
    pub unhealthy_threshold: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: default_check_kind(),
            path: default_health_path(),
            host: default_health_host(),
            expect_status: default_status_range(),
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            healthy_threshold: default_threshold(),
            unhealthy_threshold: default_threshold(),
        }
    }
}

/// Passive failure detection, from what real requests see.
///
/// By default only *transport* failures count against a server: a connect refused, timed out
/// or unroutable, and a reset or timeout before the first response byte. A 5xx answer does not
/// count (any client can make an app answer 500), unless `error_rate` is set, and then only as
/// a rate over a minimum volume in a window. Errors that are the proxy's own (out of file
/// descriptors or buffers, a client that went away) never count. A server failing
/// `max_failures` times in a row gets no new requests for `cool_off`; passive detection never
/// takes out more than `max_ejection_percent` of a pool (rounded down, as Envoy does: a pool of
/// one server is never passively ejected); past that, only active health checks decide.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    #[serde(
        default = "default_max_failures",
        deserialize_with = "de_threshold_u32"
    )]
    pub max_failures: u32,
    #[serde(default = "default_cool_off", with = "humantime_serde")]
    pub cool_off: Duration,
    #[serde(
        default = "default_max_ejection_percent",
        deserialize_with = "de_ejection_percent"
    )]
    pub max_ejection_percent: u32,
    /// Eject on a high share of 5xx answers; off unless set.
    #[serde(default)]
    pub error_rate: Option<ErrorRateConfig>,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            max_failures: default_max_failures(),
            cool_off: default_cool_off(),
            max_ejection_percent: default_max_ejection_percent(),
            error_rate: None,
        }
    }
}

/// `passive_health.error_rate`: within each `window`, a server that answered at least
/// `min_requests` requests of which more than `max_percent` % were 5xx is ejected.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateConfig {
    #[serde(default = "default_error_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(
        default = "default_error_min_requests",
        deserialize_with = "de_error_min_requests"
    )]
    pub min_requests: u32,
    #[serde(default = "default_error_max_percent")]
    pub max_percent: Percent,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub canary_percent: Percent,
    #[serde(default)]
    pub salt: String,
    #[serde(default = "default_canary_header")]
    pub header: String,
    /// Client networks whose routing header is honoured; empty means everyone.
    #[serde(default)]
    pub header_trusted_networks: Vec<IpNet>,
    #[serde(default = "default_flag_cookie")]
    pub flag_cookie: String,
    #[serde(default = "default_user_cookie")]
    pub user_cookie: String,
    /// A request header that identifies the user when the user cookie is absent, e.g. X-User-Id.
    #[serde(default)]
    pub user_header: Option<String>,
    /// Max-Age of the user cookie the proxy sets for new users.
    #[serde(default = "default_cookie_max_age", with = "humantime_serde")]
    pub cookie_max_age: Duration,
    /// Add `X-Canary-Pool: production|canary` to every response.
    #[serde(default = "default_true")]
    pub pool_response_header: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            canary_percent: Percent::default(),
            salt: String::new(),
            header: default_canary_header(),
            header_trusted_networks: Vec::new(),
            flag_cookie: default_flag_cookie(),
            user_cookie: default_user_cookie(),
            user_header: None,
            cookie_max_age: default_cookie_max_age(),
            pool_response_header: true,
        }
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

/// Limits on downstream clients: every value a client controls has a bound or a timeout.
/// The defaults follow nginx and HAProxy (SECURITY.md lists them side by side).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// How long an idle keep-alive connection waits for the next request.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Deadline for the whole request head (request line and headers), like HAProxy's
    /// `timeout http-request`; a drip-fed head is cut off when it expires.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Deadline for a new connection to show its protocol: the TLS handshake, the h2c
    /// detection and the HTTP/2 connection preface each get this long (nginx's
    /// `ssl_handshake_timeout`); a connection that misses it is closed.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest a response write to the client may wait (nginx's `send_timeout`): a client that
    /// stops reading is cut off.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Largest request head in bytes (request line plus all headers), enforced while the head
    /// is read so no more is ever buffered; beyond it: 400 (as nginx).
    #[serde(
        default = "default_max_header_bytes",
        deserialize_with = "de_head_bytes"
    )]
    pub max_header_bytes: usize,
    /// Largest single header line or request line in bytes; beyond it: 431.
    #[serde(
        default = "default_max_header_line",
        deserialize_with = "de_head_bytes"
    )]
    pub max_header_line: usize,
    /// Most header lines in one request; beyond it: 431.
    #[serde(default = "default_max_headers", deserialize_with = "de_max_headers")]
    pub max_headers: usize,
    /// Open client connections per proxy process; past it new connections are closed at once.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "de_max_connections"
    )]
    pub max_connections: usize,
    /// Drop request headers whose names contain `_` (nginx's `underscores_in_headers off`):
    /// some frameworks read `X_Canary` as `X-Canary`.
    #[serde(default = "default_true")]
    pub drop_underscore_headers: bool,
    /// A switched connection (WebSocket) is closed when either side sends nothing for this
    /// long (HAProxy's `timeout tunnel`; a server's pings and the browser's automatic pongs
    /// keep both sides busy). It replaces `body_timeout` and `upstream.read_timeout` for
    /// upgrade requests (the wait for the `101` included).
    #[serde(default = "default_tunnel_idle_timeout", with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once (nginx's
    /// `http2_max_concurrent_streams`, HAProxy's `tune.h2.max-concurrent-streams`).
    #[serde(
        default = "default_h2_max_concurrent_streams",
        deserialize_with = "de_h2_streams"
    )]
    pub h2_max_concurrent_streams: u32,
    /// Upstream requests in flight at once for one client connection: HTTP/2 streams beyond
    /// it wait (up to `upstream_queue_timeout`) for a place, then get 503. HTTP/1 carries one
    /// request at a time and is not counted.
    #[serde(
        default = "default_max_upstream_per_connection",
        deserialize_with = "de_budget"
    )]
    pub max_upstream_per_connection: usize,
    /// Upstream requests in flight at once from all HTTP/2 streams of this process: what a
    /// few connections x many streams can hold (upstream connections, buffered bodies).
    #[serde(
        default = "default_max_upstream_connections",
        deserialize_with = "de_budget"
    )]
    pub max_upstream_connections: usize,
    /// How long an HTTP/2 stream waits for a place in those budgets before its 503 (HAProxy's
    /// `timeout queue`).
    #[serde(default = "default_upstream_queue_timeout", with = "humantime_serde")]
    pub upstream_queue_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            keepalive_timeout: default_keepalive_timeout(),
            header_timeout: default_header_timeout(),
            handshake_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            send_timeout: default_body_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_header_line: default_max_header_line(),
            max_headers: default_max_headers(),
            max_connections: default_max_connections(),
            drop_underscore_headers: true,
            tunnel_idle_timeout: default_tunnel_idle_timeout(),
            h2_max_concurrent_streams: default_h2_max_concurrent_streams(),
            max_upstream_per_connection: default_max_upstream_per_connection(),
            max_upstream_connections: default_max_upstream_connections(),
            upstream_queue_timeout: default_upstream_queue_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// The pools' `servers` lists in this file.
    #[default]
    Static,
    /// The Redis store shared by all replicas (see docs/redis-schema.md).
    Redis,
    /// A servers file beside the config (`discovery.path`), read again when it changes.
    FileWatch,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub provider: Provider,
    #[serde(default = "default_redis_url")]
    pub url: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Full resync period (Redis) or DNS re-resolution period (static).
    #[serde(default = "default_resync", with = "humantime_serde")]
    pub resync_interval: Duration,
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// After the store was re-initialised (wiped, re-created, or restored from an older copy),
    /// how long at least each proxy keeps its last known servers beside the new registrations
    /// (longer when a kept server's lease runs longer). See docs/redis-schema.md.
    #[serde(default = "default_reinit_grace", with = "humantime_serde")]
    pub reinit_grace: Duration,
    /// `file_watch`: the servers file, relative to the config file's directory
    /// (`Config::load` resolves it). Per-provider settings: `config/discovery.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            provider: Provider::Static,
            url: default_redis_url(),
            namespace: default_namespace(),
            resync_interval: default_resync(),
            sentinel: None,
            reinit_grace: default_reinit_grace(),
            path: None,
        }
    }
}

/// Redis Sentinel: the proxies ask these Sentinels for the current master of `master_name`
/// at every (re)connect. `discovery.url` still supplies the database and credentials.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    pub master_name: String,
    /// Sentinel addresses as URLs, e.g. `redis://10.0.0.5:26379`.
    pub nodes: Vec<String>,
}

impl Config {
    /// Parse and validate YAML text; the error names the key and the line.
    pub fn parse(text: &str) -> Result<Config, InvalidConfig> {
        let config: Config =
            serde_yaml_ng::from_str(text).map_err(|e| InvalidConfig::from_yaml(e, text))?;
        config.validate().map_err(|e| e.located(text))?;
        Ok(config)
    }

    pub(super) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address is required"));
        }
        self.validate_listen()?;
        if let Some(m) = self.metrics_listen {
            if self.listen.iter().any(|l| l.addr == m) {
                return Err(invalid(
                    "metrics_listen",
                    format!("{m} is also a proxy listen address"),
                ));
            }
        }
        for (name, value) in [
            ("routing.header", &self.routing.header),
            ("routing.flag_cookie", &self.routing.flag_cookie),
            ("routing.user_cookie", &self.routing.user_cookie),
        ] {
            if value.is_empty() || !value.bytes().all(is_token_byte) {
                return Err(invalid(
                    name,
                    format!("`{value}` is not a valid header/cookie name"),
                ));
            }
        }
        if self.client.drop_underscore_headers {
            let names = [
                Some(&self.routing.header),
                self.routing.user_header.as_ref(),
            ];
            if let Some(name) = names.into_iter().flatten().find(|n| n.contains('_')) {
                return Err(invalid(
                    "routing",
                    format!(
                        "header `{name}` contains `_`, and client.drop_underscore_headers \
                         (on by default) drops such headers before routing reads them; rename \
                         it or set client.drop_underscore_headers: false"
                    ),
                ));
            }
        }
        if let Some(h) = &self.routing.user_header {
            if h.is_empty() || !h.bytes().all(is_token_byte) {
                return Err(invalid(
                    "routing.user_header",
                    format!("`{h}` is not a valid header name"),
                ));
            }
        }
        if !self.health_check.path.starts_with('/') {
            return Err(invalid("health_check.path", "must start with /"));
        }
        if self.health_check.interval.is_zero() || self.health_check.timeout.is_zero() {
            return Err(invalid(
                "health_check",
                "interval and timeout must be above 0",
            ));
        }
        let c = &self.client;
        for (key, d) in [
            ("client.keepalive_timeout", c.keepalive_timeout),
            ("client.header_timeout", c.header_timeout),
            ("client.handshake_timeout", c.handshake_timeout),
            ("client.body_timeout", c.body_timeout),
            ("client.send_timeout", c.send_timeout),
            ("client.tunnel_idle_timeout", c.tunnel_idle_timeout),
            ("client.upstream_queue_timeout", c.upstream_queue_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(invalid(key, "must be at least 100ms"));
            }
        }
        if let Some(rate) = &self.passive_health.error_rate {
            if rate.window < Duration::from_secs(1) {
                return Err(invalid(
                    "passive_health.error_rate.window",
                    "must be at least 1s",
                ));
            }
        }
        if c.max_header_line > c.max_header_bytes {
            return Err(invalid(
                "client.max_header_line",
                format!(
                    "{} is above client.max_header_bytes ({})",
                    c.max_header_line, c.max_header_bytes
                ),
            ));
        }
        if self.discovery.resync_interval < Duration::from_millis(100) {
            return Err(invalid(
                "discovery.resync_interval",
                "must be at least 100ms",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.discovery.reinit_grace)
        {
            return Err(invalid(
                "discovery.reinit_grace",
                "must be between 1s and 1h",
            ));
        }
        self.discovery.settings()?;
        self.rollout
            .validate()
            .map_err(|(key, problem)| invalid(format!("rollout.{key}"), problem))?;
        self.flags.validate()?;
        for (pool, p) in [
            ("production", &self.pools.production),
            ("canary", &self.pools.canary),
        ] {
            p.validate_upstream(pool)?;
            let mut seen = BTreeMap::new();
            for (i, s) in p.servers.iter().enumerate() {
                if let Some(j) = seen.insert(s.addr.as_str(), i) {
                    return Err(invalid(
                        format!("pools.{pool}.servers[{i}]"),
                        format!("`{}` is listed twice (also at [{j}])", s.addr),
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn validate_redis_url(url: &str) -> Result<(), NotRedisUrl> {
    redis::parse_redis_url(url)
        .map(|_| ())
        .ok_or_else(|| NotRedisUrl(redact_url(url)))
}

/// `rollout:`: how the proxy ramps the canary and judges it against production (README,
/// "Progressive delivery"). Every key has a default; a rollout freezes a copy at its start.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// canary_percent at each step, ascending; the last is usually 100.
    pub steps: Vec<Percent>,
    /// The analysis window.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Passing windows that advance a step.
    pub windows_per_step: u32,
    /// Failed windows (cumulative within a rollout) before rollback.
    pub threshold: u32,
    /// Canary requests in a window below this: inconclusive, not a failure.
    pub min_requests: u64,
    /// Consecutive inconclusive windows before the rollout pauses.
    pub max_inconclusive: u32,
    /// Canary 5xx and connect failures in a window that fail it even below `min_requests`.
    pub hard_fail_errors: u64,
    /// Count requests sent to canary by header or cookie in the analysis.
    pub count_forced: bool,
    pub error_rate: RolloutErrorRate,
    pub latency: RolloutLatency,
    /// Also run a Mann-Whitney U test on the two latency histograms.
    pub mann_whitney: bool,
    /// File provider: where the rollout is kept across restarts (default: beside the config
    /// file, `<config>.rollout-state.json`). Read at start. Never serialized: the settings a
    /// rollout freezes are stored in Redis, and releases before this key refuse it there.
    #[serde(skip_serializing)]
    pub state_file: Option<std::path::PathBuf>,
    /// How sure a rule must be before it fails a window: each rule's one-sided test fails it
    /// only at p < 1 - confidence. Not written when default (older readers know no such key).
    #[serde(
        default = "default_confidence",
        skip_serializing_if = "is_default_confidence"
    )]
    pub confidence: f64,
    /// Requests of one client address (IPv6: one /64) counted per window and pool; more are
    /// served but left out of the judgement (`capped`). 0: no cap.
    #[serde(
        default = "default_per_client_requests",
        skip_serializing_if = "is_default_per_client_requests"
    )]
    pub per_client_requests: u64,
    /// Errors, and answers slower than the latency rules' lowest threshold, of one client
    /// counted per window and pool; its further ones are left out. 0: no cap, and the busiest
    /// client is not taken out of the counts (for clients that all share one address; then
    /// one client can fail windows).
    #[serde(
        default = "default_per_client_failures",
        skip_serializing_if = "is_default_per_client_failures"
    )]
    pub per_client_failures: u64,
}

use crate::rollout::settings::{ErrorRateSettings, LatencySettings, RolloutSettings};
pub use crate::rollout::settings::{
    DEFAULT_PER_CLIENT_FAILURES, DEFAULT_PER_CLIENT_REQUESTS, DEFAULT_ROLLOUT_CONFIDENCE,
    MAX_ROLLOUT_COUNT, MAX_ROLLOUT_STEPS,
};

fn default_confidence() -> f64 {
    DEFAULT_ROLLOUT_CONFIDENCE
}
fn is_default_confidence(v: &f64) -> bool {
    *v == DEFAULT_ROLLOUT_CONFIDENCE
}
fn default_per_client_requests() -> u64 {
    DEFAULT_PER_CLIENT_REQUESTS
}
fn is_default_per_client_requests(v: &u64) -> bool {
    *v == DEFAULT_PER_CLIENT_REQUESTS
}
fn default_per_client_failures() -> u64 {
    DEFAULT_PER_CLIENT_FAILURES
}
fn is_default_per_client_failures(v: &u64) -> bool {
    *v == DEFAULT_PER_CLIENT_FAILURES
}

impl RolloutConfig {
    /// Check the values serde cannot, by the rollout's own check
    /// ([`RolloutSettings::validate`]): `Err((key, problem))` with the key under `rollout.`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.settings().validate()
    }

    /// The settings a rollout started now runs with (unchecked: [`Config::validate`] checked
    /// them when the file was read).
    pub fn settings(&self) -> RolloutSettings {
        RolloutSettings::from(self)
    }
}

/// The file's section as the rollout's settings: field by field (`state_file` is the
/// process's, not the rollout's).
impl From<&RolloutConfig> for RolloutSettings {
    fn from(c: &RolloutConfig) -> Self {
        let RolloutConfig {
            steps,
            interval,
            windows_per_step,
            threshold,
            min_requests,
            max_inconclusive,
            hard_fail_errors,
            count_forced,
            error_rate,
            latency,
            mann_whitney,
            state_file: _,
            confidence,
            per_client_requests,
            per_client_failures,
        } = c;
        RolloutSettings {
            steps: steps.clone(),
            interval: *interval,
            windows_per_step: *windows_per_step,
            threshold: *threshold,
            min_requests: *min_requests,
            max_inconclusive: *max_inconclusive,
            hard_fail_errors: *hard_fail_errors,
            count_forced: *count_forced,
            error_rate: ErrorRateSettings {
                max_percent: error_rate.max_percent,
                max_excess_points: error_rate.max_excess_points,
                z: error_rate.z,
            },
            latency: LatencySettings {
                p99_max: latency.p99_max,
                p99_max_ratio: latency.p99_max_ratio,
                floor: latency.floor,
            },
            mann_whitney: *mann_whitney,
            confidence: *confidence,
            per_client_requests: *per_client_requests,
            per_client_failures: *per_client_failures,
        }
    }
}

impl From<RolloutConfig> for RolloutSettings {
    fn from(c: RolloutConfig) -> Self {
        RolloutSettings::from(&c)
    }
}

/// The file's defaults are the rollout's ([`RolloutSettings::default`]).
impl Default for RolloutConfig {
    fn default() -> Self {
        let s = RolloutSettings::default();
        RolloutConfig {
            steps: s.steps,
            interval: s.interval,
            windows_per_step: s.windows_per_step,
            threshold: s.threshold,
            min_requests: s.min_requests,
            max_inconclusive: s.max_inconclusive,
            hard_fail_errors: s.hard_fail_errors,
            count_forced: s.count_forced,
            error_rate: RolloutErrorRate::default(),
            latency: RolloutLatency::default(),
            mann_whitney: s.mann_whitney,
            state_file: None,
            confidence: s.confidence,
            per_client_requests: s.per_client_requests,
            per_client_failures: s.per_client_failures,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutErrorRate {
    /// The canary's 5xx + connect-failure rate above this fails a window, in percent.
    pub max_percent: f64,
    /// Canary rate above production's by more than this many points (and `z`) fails it.
    pub max_excess_points: f64,
    /// One-sided two-proportion z statistic needed for the excess to count.
    pub z: f64,
}

impl Default for RolloutErrorRate {
    fn default() -> Self {
        let ErrorRateSettings {
            max_percent,
            max_excess_points,
            z,
        } = ErrorRateSettings::default();
        RolloutErrorRate {
            max_percent,
            max_excess_points,
            z,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutLatency {
    /// The canary's p99 above this fails a window.
    #[serde(with = "humantime_serde")]
    pub p99_max: Duration,
    /// The canary's p99 above this times max(production p99, floor) fails it.
    pub p99_max_ratio: f64,
    #[serde(with = "humantime_serde")]
    pub floor: Duration,
}

impl Default for RolloutLatency {
    fn default() -> Self {
        let LatencySettings {
            p99_max,
            p99_max_ratio,
            floor,
        } = LatencySettings::default();
        RolloutLatency {
            p99_max,
            p99_max_ratio,
            floor,
        }
    }
}

/// Why a config text was refused; the message names the key (and, from serde, the line).
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// YAML syntax, an unknown key or a bad value: serde's message names the key and the line.
    /// Shown, not a `#[source]`, so a chain printer does not repeat it.
    #[error("{0}")]
    Yaml(serde_yaml_ng::Error),
    /// A value serde accepted that the config as a whole does not (`Config::validate`), with
    /// the line of the key when it is in the text.
    #[error("{key}: {problem}{}", at.map(|p| format!(" at {p}")).unwrap_or_default())]
    Key {
        key: String,
        problem: String,
        at: Option<super::locate::Position>,
    },
    /// serde's message for the document as a whole (a duplicate or unknown top-level key),
    /// which it gives without a line, with the line found.
    #[error("{message} at {at}")]
    YamlAt {
        message: String,
        at: super::locate::Position,
    },
}

impl InvalidConfig {
    /// serde_yaml_ng gives no line for problems of the top-level map (its position is the
    /// document's start): find the key it names.
    fn from_yaml(e: serde_yaml_ng::Error, text: &str) -> InvalidConfig {
        let message = e.to_string();
        if e.location().is_some_and(|l| l.line() > 1 || l.column() > 1) {
            return InvalidConfig::Yaml(e);
        }
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('`'))
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string)
        };
        let at = match (named("duplicate field "), named("unknown field ")) {
            (Some(key), _) => super::locate::locate(text, &key, 2),
            (None, Some(key)) => super::locate::locate(text, &key, 1),
            _ => None,
        };
        match at {
            Some(at) => InvalidConfig::YamlAt { message, at },
            None => InvalidConfig::Yaml(e),
        }
    }

    /// The error with the line of its key in `text`, when it has a key and the key is there.
    pub(super) fn located(self, text: &str) -> InvalidConfig {
        match self {
            InvalidConfig::Key {
                key,
                problem,
                at: None,
            } => InvalidConfig::Key {
                at: super::locate::locate_nearest(text, &key),
                key,
                problem,
            },
            other => other,
        }
    }
}

fn invalid(key: impl Into<String>, problem: impl ToString) -> InvalidConfig {
    InvalidConfig::Key {
        key: key.into(),
        problem: problem.to_string(),
        at: None,
    }
}

/// A URL `redis` cannot connect to; holds the URL with its password hidden.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a redis:// or rediss:// URL")]
pub struct NotRedisUrl(String);

/// The URL with any password replaced, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Config {
    /// The listeners' combinations: one role each, addresses unique, a redirect needs a TLS
    /// listener to send clients to. Certificate contents are checked by the `tls` module.
    fn validate_listen(&self) -> Result<(), InvalidConfig> {
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

/// At most this many feature flags (file or Redis); one bit each per request.
pub const MAX_FLAGS: usize = 64;
/// Longest flag name: `[a-z0-9-]{1,64}`.
pub const MAX_FLAG_NAME: usize = 64;
/// Most user keys in one flag's `allow` or `deny` list.
pub const MAX_FLAG_LIST: usize = 1000;
/// Longest user key in an `allow`/`deny` list, and longest salt.
pub const MAX_FLAG_VALUE: usize = 256;

/// `flags:`: the feature flags of the file (used while Redis has none) and the header names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsConfig {
    /// The header that carries the flags that are on upstream, e.g. `X-Features: a,b`.
    #[serde(default = "default_flags_header")]
    pub header: String,
    /// The tester's header `name=on,other=off`, honoured only from
    /// `routing.header_trusted_networks` (and never when that list is empty).
    #[serde(default = "default_flags_override_header")]
    pub override_header: String,
    /// The flags, by name.
    #[serde(default)]
    pub items: BTreeMap<String, FlagConfig>,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        FlagsConfig {
            header: default_flags_header(),
            override_header: default_flags_override_header(),
            items: BTreeMap::new(),
        }
    }
}

impl FlagsConfig {
    fn validate(&self) -> Result<(), InvalidConfig> {
        for (key, value) in [
            ("flags.header", &self.header),
            ("flags.override_header", &self.override_header),
        ] {
            if value.is_empty() || !value.bytes().all(is_token_byte) {
                return Err(invalid(
                    key,
                    format!("`{value}` is not a valid header name"),
                ));
            }
        }
        if self.header.eq_ignore_ascii_case(&self.override_header) {
            return Err(invalid(
                "flags.override_header",
                "must differ from flags.header",
            ));
        }
        if self.items.len() > MAX_FLAGS {
            return Err(invalid(
                "flags.items",
                format!("{} flags, at most {MAX_FLAGS}", self.items.len()),
            ));
        }
        for (name, flag) in &self.items {
            check_flag_name(name).map_err(|e| invalid(format!("flags.items.{name}"), e))?;
            flag.check()
                .map_err(|(key, e)| invalid(format!("flags.items.{name}.{key}"), e))?;
        }
        Ok(())
    }
}

/// One feature flag, as in the file's `flags.items` and (as JSON) in Redis.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagConfig {
    /// Off: nobody gets it, allow list included.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Share of users (0..=100, decimals ok): `bucket < percent * 100`.
    #[serde(default)]
    pub percent: Percent,
    /// The flag's bucket salt; the flag name when absent. A new salt reshuffles who has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// User keys that always get the flag (unless denied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// User keys that never get the flag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl FlagConfig {
    /// The limits of a flag's values: `(key, problem)` on the first one broken.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(salt) = &self.salt {
            if salt.len() > MAX_FLAG_VALUE {
                return Err(("salt", format!("longer than {MAX_FLAG_VALUE} bytes")));
            }
        }
        for (key, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_FLAG_LIST {
                return Err((
                    key,
                    format!("{} user keys, at most {MAX_FLAG_LIST}", list.len()),
                ));
            }
            if let Some(bad) = list
                .iter()
                .find(|k| k.is_empty() || k.len() > MAX_FLAG_VALUE)
            {
                return Err((
                    key,
                    format!(
                        "user key of {} bytes: must be 1..={MAX_FLAG_VALUE}",
                        bad.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A flag name is 1..=64 bytes of `[a-z0-9-]`.
pub fn check_flag_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_FLAG_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        let shown: String = name.chars().take(MAX_FLAG_NAME + 1).collect();
        return Err(format!(
            "flag name `{}` must be 1..={MAX_FLAG_NAME} characters of a-z, 0-9 and -",
            shown.escape_debug()
        ));
    }
    Ok(())
}

fn default_flags_header() -> String {
    "X-Features".to_string()
}
fn default_flags_override_header() -> String {
    "X-Feature-Override".to_string()
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The largest `upstream.max_tries`; Pingora's own retry bound is set to it at start, so the
/// live `max_tries` alone decides.
pub const MAX_TRIES: usize = 10;

fn default_listen() -> Vec<Listener> {
    vec![Listener::plain(SocketAddr::from(([0, 0, 0, 0], 8080)))]
}
fn default_threads() -> usize {
    2
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_check_kind() -> CheckKind {
    CheckKind::Http
}
fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_host() -> String {
    "localhost".into()
}
fn default_status_range() -> (u16, u16) {
    (200, 399)
}
fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_threshold() -> usize {
    2
}
fn default_max_failures() -> u32 {
    3
}
fn default_cool_off() -> Duration {
    Duration::from_secs(10)
}
fn default_canary_header() -> String {
    "X-Canary".into()
}
fn default_flag_cookie() -> String {
    "canary".into()
}
fn default_user_cookie() -> String {
    "canary_uid".into()
}
fn default_cookie_max_age() -> Duration {
    Duration::from_secs(365 * 24 * 3600)
}
fn default_true() -> bool {
    true
}
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
fn default_max_ejection_percent() -> u32 {
    50
}
fn default_error_window() -> Duration {
    Duration::from_secs(10)
}
fn default_error_min_requests() -> u32 {
    20
}
fn default_error_max_percent() -> Percent {
    Percent::from_basis_points(5000)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_h2_max_concurrent_streams() -> u32 {
    100
}
fn de_h2_streams<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v| int_in(v, 1, 10_000).map(|n| n as u32))
}
fn default_max_upstream_per_connection() -> usize {
    16
}
fn default_max_upstream_connections() -> usize {
    256
}
fn de_budget<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1, 1_000_000).map(|n| n as usize))
}
fn default_upstream_queue_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_log_buffer() -> usize {
    16 * 1024
}
fn de_log_buffer<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1, 1_000_000).map(|n| n as usize))
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_header_line() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_connections() -> usize {
    10_000
}
fn default_redis_url() -> String {
    "redis://127.0.0.1:6379/0".into()
}
fn default_namespace() -> String {
    "canary-lb".into()
}
fn default_resync() -> Duration {
    Duration::from_secs(5)
}

/// Twice the 15 s lease of `--heartbeat` and `--register-redis`.
fn default_reinit_grace() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_and_trusted_proxies_are_validated() {
        let c = Config::parse("threads: 1\n").expect("defaults");
        assert_eq!(
            c.access_log,
            AccessLogConfig::On(AccessLogSettings::default())
        );
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.client.tunnel_idle_timeout, Duration::from_secs(600));
        assert_eq!(
            Config::parse("access_log: off\n").expect("off").access_log,
            AccessLogConfig::Off
        );
        let c = Config::parse(
            "access_log: { path: /tmp/a.log, format: text, query: true, buffer: 8 }\n\
             trusted_proxies: [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
        )
        .expect("valid");
        let s = c.access_log.settings().expect("on");
        assert_eq!(s.path.as_deref(), Some(std::path::Path::new("/tmp/a.log")));
        assert_eq!(
            (s.format, s.query, s.buffer),
            (AccessLogFormat::Text, true, 8)
        );
        assert_eq!(c.trusted_proxies.len(), 2);
        for (yaml, want) in [
            ("access_log: { format: xml }\n", "access_log.format"),
            ("access_log: { buffer: 0 }\n", "access_log.buffer"),
            ("access_log: { pth: /x }\n", "pth"),
            ("access_log: sometimes\n", "access_log"),
            ("trusted_proxies: [\"10.0.0.0/33\"]\n", "trusted_proxies"),
            (
                "client: { tunnel_idle_timeout: 1ms }\n",
                "client.tunnel_idle_timeout",
            ),
        ] {
            let e = Config::parse(yaml).expect_err(yaml).to_string();
            assert!(
                e.contains(want) && (e.contains("line") || want.starts_with("client")),
                "{yaml}: {e}"
            );
        }
    }

    #[test]
    fn client_and_passive_health_sections_are_validated() {
        let c = Config::parse("threads: 1\n").expect("defaults");
        assert_eq!(c.client, ClientConfig::default());
        assert_eq!(c.client.max_header_bytes, 64 * 1024);
        assert_eq!(c.passive_health.max_ejection_percent, 50);
        assert!(c.passive_health.error_rate.is_none());
        let c = Config::parse(
            "passive_health: { max_ejection_percent: 0, \
               error_rate: { window: 30s, min_requests: 5, max_percent: 12.5 } }\n",
        )
        .expect("valid");
        let rate = c.passive_health.error_rate.expect("error_rate set");
        assert_eq!(rate.max_percent.basis_points(), 1250);
        for (yaml, key) in [
            ("client: { max_headers: 1000 }\n", "client.max_headers"),
            (
                "client: { max_header_bytes: 10 }\n",
                "client.max_header_bytes",
            ),
            (
                "client: { header_timeout: 10ms }\n",
                "client.header_timeout",
            ),
            (
                "client: { max_header_line: 65536, max_header_bytes: 16384 }\n",
                "client.max_header_line",
            ),
            ("client: { max_conections: 5 }\n", "max_conections"),
            (
                "passive_health: { max_ejection_percent: 101 }\n",
                "max_ejection_percent",
            ),
            (
                "passive_health: { error_rate: { window: 100ms } }\n",
                "passive_health.error_rate.window",
            ),
            ("routing: { header: X_Canary }\n", "X_Canary"),
            ("routing: { user_header: X_User }\n", "X_User"),
        ] {
            let e = Config::parse(yaml).expect_err(yaml).to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        Config::parse(
            "routing: { header: X_Canary }\nclient: { drop_underscore_headers: false }\n",
        )
        .expect("underscore header allowed when underscores are kept");
    }

    #[test]
    fn rollout_keys_of_this_release_are_not_written_at_their_defaults() {
        // A rollout's settings are stored (Redis, state files) and read by the previous
        // release, which refuses unknown keys: the new keys appear only when set.
        let json = serde_json::to_string(&RolloutConfig::default()).expect("json");
        for key in ["confidence", "per_client_requests", "per_client_failures"] {
            assert!(!json.contains(key), "{key} written at its default: {json}");
        }
        let set = RolloutConfig {
            confidence: 0.99,
            per_client_requests: 50,
            per_client_failures: 2,
            ..RolloutConfig::default()
        };
        let json = serde_json::to_string(&set).expect("json");
        let back: RolloutConfig = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, set);
        let old: RolloutConfig =
            serde_json::from_str(r#"{"steps":[10,100],"interval":"1s"}"#).expect("old json");
        assert_eq!(old.confidence, DEFAULT_ROLLOUT_CONFIDENCE);
        assert_eq!(old.per_client_requests, DEFAULT_PER_CLIENT_REQUESTS);
    }

    /// The rollout's settings built from the file's section store exactly what the section
    /// serialized to before the two types were split (the stored format is unchanged).
    #[test]
    fn rollout_settings_store_the_bytes_the_section_did() {
        use crate::rollout::settings::RolloutSettings;
        let set = RolloutConfig {
            steps: vec![
                Percent::from_basis_points(250),
                Percent::from_basis_points(10_000),
            ],
            interval: Duration::from_millis(1500),
            count_forced: true,
            mann_whitney: true,
            confidence: 0.99,
            per_client_requests: 0,
            per_client_failures: 3,
            state_file: Some("/tmp/x.json".into()),
            latency: RolloutLatency {
                p99_max: Duration::from_secs(2),
                ..RolloutLatency::default()
            },
            ..RolloutConfig::default()
        };
        for c in [RolloutConfig::default(), set] {
            let file = serde_json::to_string(&c).expect("json");
            let settings = RolloutSettings::from(&c);
            assert_eq!(serde_json::to_string(&settings).expect("json"), file);
            let back: RolloutSettings = serde_json::from_str(&file).expect("read back");
            assert_eq!(back, settings);
        }
        assert_eq!(
            RolloutSettings::from(RolloutConfig::default()),
            RolloutSettings::default()
        );
    }

    /// The file's `rollout:` section and a start's keys take and refuse the same values,
    /// with the same words (one check: `RolloutSettings::validate`).
    #[test]
    fn the_file_and_a_start_agree_on_every_limit() {
        use crate::rollout::settings::RolloutSettings;
        for (key, value, yaml_value, ok) in [
            ("interval", "100ms", "100ms", true),
            ("interval", "200ms", "200ms", true),
            ("interval", "99ms", "99ms", false),
            ("interval", "25h", "25h", false),
            ("windows_per_step", "10000", "10000", true),
            ("windows_per_step", "10001", "10001", false),
            ("threshold", "0", "0", false),
            ("max_inconclusive", "10001", "10001", false),
            ("hard_fail_errors", "0", "0", false),
            ("min_requests", "0", "0", true),
            ("steps", "10,5", "[10, 5]", false),
            ("steps", "0,10", "[0, 10]", false),
            ("steps", "50,100", "[50, 100]", true),
        ] {
            let start = RolloutSettings::default().with_keys([(key, value)]);
            let file = Config::parse(&format!("rollout: {{ {key}: {yaml_value} }}\n"));
            assert_eq!(start.is_ok(), ok, "start {key}={value}: {start:?}");
            assert_eq!(file.is_ok(), ok, "file {key}: {yaml_value}");
            if let (Err(s), Err(f)) = (start, file) {
                let f = f.to_string();
                assert!(
                    f.contains(&format!("rollout.{key}: {}", s.problem)),
                    "{key}: the file says `{f}`, a start `{s}`"
                );
            }
        }
    }

    #[test]
    fn rollout_section_is_validated_with_its_key() {
        let c = Config::parse(
            "rollout: { steps: [1, 2.5, 100], interval: 2s, threshold: 2, \
             latency: { p99_max: 300ms } }\n",
        )
        .expect("valid");
        assert_eq!(c.rollout.steps[1].basis_points(), 250);
        assert_eq!(c.rollout.interval, Duration::from_secs(2));
        assert_eq!(c.rollout.windows_per_step, 1, "default kept");
        for (yaml, key) in [
            ("rollout: { steps: [] }\n", "rollout.steps"),
            ("rollout: { steps: [0, 10] }\n", "rollout.steps"),
            ("rollout: { steps: [10, 10] }\n", "rollout.steps"),
            ("rollout: { steps: [50, 10] }\n", "rollout.steps"),
            ("rollout: { steps: [101] }\n", "steps"),
            ("rollout: { interval: 50ms }\n", "rollout.interval"),
            ("rollout: { threshold: 0 }\n", "rollout.threshold"),
            (
                "rollout: { windows_per_step: 0 }\n",
                "rollout.windows_per_step",
            ),
            (
                "rollout: { max_inconclusive: 0 }\n",
                "rollout.max_inconclusive",
            ),
            (
                "rollout: { hard_fail_errors: 0 }\n",
                "rollout.hard_fail_errors",
            ),
            (
                "rollout: { error_rate: { z: 0 } }\n",
                "rollout.error_rate.z",
            ),
            (
                "rollout: { error_rate: { max_percent: -1 } }\n",
                "rollout.error_rate.max_percent",
            ),
            (
                "rollout: { latency: { p99_max_ratio: 0 } }\n",
                "rollout.latency.p99_max_ratio",
            ),
            (
                "rollout: { latency: { p99_max: 0s } }\n",
                "rollout.latency.p99_max",
            ),
            ("rollout: { confidence: 1 }\n", "rollout.confidence"),
            ("rollout: { confidence: 0.2 }\n", "rollout.confidence"),
            (
                "rollout: { per_client_requests: 1000001 }\n",
                "rollout.per_client_requests",
            ),
            (
                "rollout: { per_client_failures: 10001 }\n",
                "rollout.per_client_failures",
            ),
            ("rollout: { stepz: [1] }\n", "stepz"),
        ] {
            let e = Config::parse(yaml).expect_err(yaml).to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
listen: "0.0.0.0:8080"
threads: 2
metrics_listen: "127.0.0.1:9091"
pools:
  production:
    servers: ["127.0.0.1:3001", { addr: "127.0.0.1:3002", weight: 2 }]
  canary:
    servers: ["app.internal:4001"]
health_check: { kind: http, path: /healthz, interval: 2s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2 }
routing:
  canary_percent: 12.5
  salt: "release-1"
  header: X-Canary
  flag_cookie: canary
  user_cookie: canary_uid
"#,
        )
        .expect("valid config");
        assert_eq!(c.pools.production.servers[1].weight.get(), 2);
        assert_eq!(c.routing.canary_percent.basis_points(), 1250);
        assert_eq!(c.pools.canary.servers[0].addr.as_str(), "app.internal:4001");
        assert_eq!(c.health_check.interval, Duration::from_secs(2));
    }

    #[test]
    fn flag_errors_name_the_key() {
        let ok = Config::parse(
            "flags:\n  header: X-F\n  items:\n    new-checkout: { percent: 12.5, allow: [u1] }\n",
        )
        .expect("valid flags");
        assert_eq!(ok.flags.items["new-checkout"].percent.basis_points(), 1250);
        assert!(ok.flags.items["new-checkout"].enabled);
        for (yaml, want) in [
            (
                "flags: { items: { Bad_Name: { percent: 1 } } }\n",
                "flags.items.Bad_Name",
            ),
            ("flags:\n  items:\n    a: { percent: 150 }\n", "line 3"),
            ("flags: { items: { a: { percnt: 5 } } }\n", "percnt"),
            (
                "flags: { items: { a: { allow: [\"\"] } } }\n",
                "flags.items.a.allow",
            ),
            ("flags: { header: \"X Bad\" }\n", "flags.header"),
            (
                "flags: { header: X-A, override_header: x-a }\n",
                "flags.override_header",
            ),
        ] {
            let e = Config::parse(yaml).expect_err(yaml).to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let many: String = (0..=MAX_FLAGS).map(|i| format!("f{i}: {{}}, ")).collect();
        let e = Config::parse(&format!("flags: {{ items: {{ {many} }} }}\n"))
            .expect_err("too many")
            .to_string();
        assert!(e.contains("at most 64"), "{e}");
    }

    #[test]
    fn reinit_grace_is_bounded() {
        assert_eq!(
            Config::parse("threads: 1\n")
                .expect("defaults")
                .discovery
                .reinit_grace,
            Duration::from_secs(30)
        );
        let c = Config::parse("discovery: { reinit_grace: 3s }\n").expect("3s");
        assert_eq!(c.discovery.reinit_grace, Duration::from_secs(3));
        for bad in ["500ms", "2h"] {
            let e = Config::parse(&format!("discovery: {{ reinit_grace: {bad} }}\n"))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("discovery.reinit_grace"), "{e}");
        }
    }

    #[test]
    fn errors_name_key_and_line() {
        let cases = [
            (
                "pools:\n  production:\n    servers: [{ addr: \"127.0.0.1:1\", weight: 0 }]\n",
                "pools.production.servers[0]",
                "line 3",
            ),
            (
                "routing:\n  canary_percent: 150\n",
                "routing.canary_percent",
                "line 2",
            ),
            ("threads: 2\nlisten: nowhere\n", "listen", "line 2"),
            (
                "health_check:\n  interval: soon\n",
                "health_check.interval",
                "line 2",
            ),
            ("routing:\n  canary_pct: 5\n", "canary_pct", "line 2"),
            // Pingora's health-check builder panics on these; refused here instead.
            (
                "health_check:\n  host: \"a\\nb\"\n",
                "health_check.host",
                "line 2",
            ),
            (
                "threads: 1\nhealth_check: { path: \"/a b\" }\n",
                "health_check.path",
                "line 2",
            ),
            (
                "health_check:\n  path: healthz\n",
                "health_check.path",
                "line 2",
            ),
        ];
        for (text, key, line) in cases {
            let e = Config::parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "error `{e}` should name `{key}`");
            assert!(e.contains(line), "error `{e}` should name `{line}`");
        }
    }

    #[test]
    fn listeners_plain_tls_h2c_redirect() {
        let c = Config::parse(
            "listen:\n  - \"127.0.0.1:8080\"\n  - { addr: \"127.0.0.1:8081\", h2c: true }\n  \
             - { addr: \"127.0.0.1:8082\", redirect_to_https: true }\n  \
             - addr: \"127.0.0.1:8443\"\n    tls:\n      cert: /c.pem\n      key: /k.pem\n      \
             sni: [{ cert: /a.pem, key: /ak.pem }]\n",
        )
        .expect("valid");
        assert_eq!(c.listen.len(), 4);
        assert_eq!(
            c.listen[0],
            Listener::plain("127.0.0.1:8080".parse().unwrap())
        );
        assert!(c.listen[1].h2c && c.listen[2].redirect_to_https);
        let tls = c.listen[3].tls.as_ref().expect("tls");
        assert_eq!(tls.pairs().count(), 2);
        assert_eq!(c.https_port(), Some(8443));
        // One map on its own is a list of one; the old forms still parse.
        let one = Config::parse("listen: { addr: \"127.0.0.1:1\", h2c: true }\n").expect("map");
        assert!(one.listen[0].h2c);
        let yaml = serde_yaml_ng::to_string(&c.listen).expect("serialize");
        let back = Config::parse(&format!("listen:\n{yaml}")).expect("round trip");
        assert_eq!(back.listen, c.listen);

        for (yaml, key, line) in [
            (
                "listen:\n  - { addr: nowhere }\n",
                "listen[0].addr",
                "line 2",
            ),
            (
                "listen:\n  - \"127.0.0.1:1\"\n  - { addr: \"127.0.0.1:2\", tsl: {} }\n",
                "tsl",
                "line 3",
            ),
            (
                "listen:\n  - { addr: \"127.0.0.1:2\", tls: { cert: /c } }\n",
                "key",
                "line 2",
            ),
            (
                "listen: [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
                "listen[1].addr",
                "",
            ),
            (
                "listen: [{ addr: \"127.0.0.1:1\", redirect_to_https: true }]\n",
                "listen[0].redirect_to_https",
                "",
            ),
            (
                "listen: [{ addr: \"127.0.0.1:1\", h2c: true, tls: { cert: /c, key: /k } }]\n",
                "listen[0]",
                "",
            ),
            (
                "listen: [{ addr: \"127.0.0.1:1\", tls: { cert: \"\", key: /k } }]\n",
                "listen[0].tls",
                "",
            ),
        ] {
            let e = Config::parse(yaml).expect_err(yaml).to_string();
            assert!(
                e.contains(key) && e.contains(line),
                "{yaml}: `{e}` should name {key} {line}"
            );
        }
    }

    #[test]
    fn bad_server_addresses_are_refused() {
        for bad in [
            "127.0.0.1",
            "host:",
            ":80",
            "a b:80",
            "127.0.0.1:0",
            "h:99999",
        ] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad} should be refused");
        }
        for good in [
            "127.0.0.1:80",
            "[::1]:8080",
            "app-1.internal:3000",
            "localhost:1",
        ] {
            assert!(ServerAddr::parse(good).is_ok(), "{good} should parse");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@10.0.0.1:6379/0"),
            "redis://user:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://127.0.0.1/0"), "redis://127.0.0.1/0");
    }

    #[test]
    fn server_header_is_off_on_or_a_printable_text() {
        let parse = |yaml: &str| Config::parse(yaml).map(|c| c.server_header);
        assert_eq!(parse("threads: 1\n").expect("default"), ServerHeader::Off);
        for (yaml, want) in [
            ("server_header: off\n", None),
            ("server_header: false\n", None),
            ("server_header: \"off\"\n", None),
            ("server_header: on\n", Some("canary-lb")),
            ("server_header: true\n", Some("canary-lb")),
            ("server_header: edge/1.0 (ours)\n", Some("edge/1.0 (ours)")),
        ] {
            assert_eq!(parse(yaml).expect(yaml).text(), want, "{yaml}");
        }
        let long = format!("server_header: {}\n", "a".repeat(MAX_SERVER_HEADER + 1));
        for yaml in [
            "server_header: \"\"\n",
            "server_header: \" edge\"\n",
            "server_header: \"a\\tb\"\n",
            "server_header: \"caf\u{e9}\"\n",
            "server_header: 5\n",
            long.as_str(),
        ] {
            let e = parse(yaml).expect_err(yaml).to_string();
            assert!(
                e.contains("server_header") && e.contains("line"),
                "{yaml}: {e}"
            );
        }
    }
}
