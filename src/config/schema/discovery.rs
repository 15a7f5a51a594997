//! `discovery:`: the provider kind and its flat keys (Redis URL, namespace, Sentinel, `path`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::de::*;

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

/// A URL `redis` cannot connect to; holds the URL with its password hidden.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a redis:// or rediss:// URL")]
pub struct NotRedisUrl(pub(super) String);

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

/// Twice the 15 s lease of `--heartbeat` and `--register-redis`.
fn default_reinit_grace() -> Duration {
    Duration::from_secs(30)
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
