//! The configuration file's format: serde structs, their defaults and their validation.
//!
//! Validation happens while deserializing (newtypes such as [`Weight`] and [`Percent`] refuse
//! bad values themselves), so every error carries the key path and the line that `serde_yaml_ng`
//! reports, e.g. `pools.production.servers[1].weight: weight must be 1..=1000, got 0 at line 6
//! column 44`. Unknown keys are refused for the same reason: a typo must not silently fall back
//! to a default. Nothing here reads a file or the environment (`config/mod.rs` does).
//!
//! `mod.rs` holds [`Config`], the whole file, with its cross-section checks; each group of
//! top-level keys has a file of its own (`listen.rs`, `pools.rs`, `health.rs`, `routing.rs`,
//! `client.rs`, `discovery.rs`, `rollout.rs`, `access_log.rs`), `error.rs` the error type. Every
//! type keeps its `config::schema::` path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::de::*;
use super::AuthTokenFile;
use error::invalid;
use routing::is_token_byte;

mod access_log;
mod client;
mod discovery;
mod error;
mod health;
mod listen;
mod pools;
mod rollout;
mod routing;
#[cfg(test)]
mod tests;

pub use crate::rollout::settings::{
    DEFAULT_PER_CLIENT_FAILURES, DEFAULT_PER_CLIENT_REQUESTS, DEFAULT_ROLLOUT_CONFIDENCE,
    MAX_ROLLOUT_COUNT, MAX_ROLLOUT_STEPS,
};
pub use access_log::{AccessLogConfig, AccessLogFormat, AccessLogSettings};
pub use client::ClientConfig;
pub use discovery::{
    redact_url, DiscoveryConfig, NotRedisUrl, Provider, RedisUrls, SentinelConfig,
};
pub use error::InvalidConfig;
pub use health::{CheckKind, ErrorRateConfig, HealthCheckConfig, PassiveHealthConfig};
pub use listen::{CertPair, Listener, ServerHeader, TlsListenerConfig, MAX_SERVER_HEADER};
pub use pools::{
    Balance, PoolConfig, Pools, ServerSpec, UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig,
    MAX_TRIES,
};
pub use rollout::{RolloutConfig, RolloutErrorRate, RolloutLatency};
pub use routing::{
    check_flag_name, FlagConfig, FlagsConfig, RoutingConfig, MAX_FLAGS, MAX_FLAG_LIST,
    MAX_FLAG_NAME, MAX_FLAG_VALUE,
};

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

fn default_listen() -> Vec<Listener> {
    vec![Listener::plain(SocketAddr::from(([0, 0, 0, 0], 8080)))]
}

fn default_threads() -> usize {
    2
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_true() -> bool {
    true
}
