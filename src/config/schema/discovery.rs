//! `discovery:`: the provider kind and its flat keys (Redis URL or cluster seeds, namespace,
//! Sentinel, `path`).

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
    /// One Redis URL, or (with `cluster: true`) a list of a Redis Cluster's seed nodes.
    #[serde(default = "default_redis_url")]
    pub url: RedisUrls,
    /// `url` names a Redis Cluster (or a managed Redis in cluster mode): its seed nodes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
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
            cluster: false,
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

fn default_redis_url() -> RedisUrls {
    RedisUrls::one("redis://127.0.0.1:6379/0")
}

/// `discovery.url`: one URL (`url: "redis://h:6379/0"`, as always) or a list of a cluster's
/// seed nodes (`url: ["redis://h1:7000", "redis://h2:7000"]`). Which shape was written is kept,
/// so a list without `cluster: true` can be refused by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrls {
    urls: Vec<String>,
    listed: bool,
}

impl RedisUrls {
    /// One URL, written as a string.
    pub fn one(url: impl Into<String>) -> RedisUrls {
        RedisUrls {
            urls: vec![url.into()],
            listed: false,
        }
    }

    /// Several URLs, written as a list.
    pub fn list(urls: Vec<String>) -> RedisUrls {
        RedisUrls { urls, listed: true }
    }

    /// `a,b,c` (the environment's and `ctl --redis`'s shape): a list when there is a comma.
    pub fn from_comma_separated(text: &str) -> RedisUrls {
        if !text.contains(',') {
            return RedisUrls::one(text.trim());
        }
        RedisUrls::list(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    pub fn as_slice(&self) -> &[String] {
        &self.urls
    }

    /// Written as a list (a cluster's seeds), whatever its length.
    pub fn is_list(&self) -> bool {
        self.listed
    }
}

impl Serialize for RedisUrls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.urls.as_slice() {
            [one] if !self.listed => s.serialize_str(one),
            all => all.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RedisUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UrlsVisitor;
        impl<'de> serde::de::Visitor<'de> for UrlsVisitor {
            type Value = RedisUrls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Redis URL, or a list of a Redis Cluster's seed node URLs")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RedisUrls, E> {
                Ok(RedisUrls::one(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RedisUrls, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    urls.push(url);
                }
                Ok(RedisUrls::list(urls))
            }
        }
        d.deserialize_any(UrlsVisitor)
    }
}

fn default_namespace() -> String {
    "canary-lb".into()
}

fn default_resync() -> Duration {
    Duration::from_secs(5)
}
