//! The `discovery:` section as the program uses it: each provider's own settings, and what the
//! process does around each provider.
//!
//! The file keeps one flat map (`discovery: { provider: redis, url: …, namespace: … }`, parsed
//! by [`DiscoveryConfig`] as it always was); the program never reads that map's fields by
//! hand. [`DiscoveryConfig::settings`] builds (and validates) a [`ProviderSettings`]: one
//! variant per provider, holding only that provider's keys, so the Redis URL exists only under
//! Redis. [`Provider::role`] says what the rest of the process does around a provider (whether
//! the config file's `servers` lists are its data, where a rollout is coordinated, what
//! `/status` calls its routing overrides). These two matches are the only places in `config`
//! that look at `discovery.provider`; `discovery::from_settings` is the only one outside it.

use std::path::PathBuf;
use std::time::Duration;

use super::schema::{validate_redis_url, DiscoveryConfig, InvalidConfig, Provider, SentinelConfig};

/// One provider's settings, built once from `discovery:` ([`DiscoveryConfig::settings`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderSettings {
    /// The pools' `servers` lists of the config file; nothing of its own.
    Static,
    Redis(RedisSettings),
    FileWatch(FileWatchSettings),
}

/// `provider: redis`: the shared store.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// One URL, or a cluster's seed nodes (`cluster`).
    pub urls: Vec<String>,
    /// `discovery.cluster`: the URLs are seed nodes of a Redis Cluster.
    pub cluster: bool,
    pub namespace: String,
    /// The full resync period.
    pub resync_interval: Duration,
    pub sentinel: Option<SentinelConfig>,
    pub reinit_grace: Duration,
}

/// `provider: file_watch`: a servers file read again whenever it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct FileWatchSettings {
    /// The file (relative paths were resolved against the config file's directory by
    /// `Config::load`).
    pub path: PathBuf,
    /// How often the file is looked at.
    pub poll_interval: Duration,
}

impl FileWatchSettings {
    /// Four looks a second: a change is served within about a second, and reading a small
    /// file four times a second costs nothing measurable.
    pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
}

/// Where the rollout of a proxy is coordinated (README, "Progressive delivery").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordination {
    /// In this process, kept in the rollout state file: one box.
    InProcess,
    /// In the shared Redis store, among every replica.
    SharedStore,
}

/// What the process does around a provider, so no other module matches the provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderRole {
    /// The config file's `servers` lists are this provider's data: discovery is up from the
    /// start, a SIGHUP applies them, and `check` warns about them. Otherwise they serve only
    /// until the provider first answers, and changing them needs a restart.
    pub servers_in_config_file: bool,
    /// What `/status` names as the source of routing overrides set outside the file
    /// (`redis`: the store's `routing` hash; `rollout`: the weight a finished in-process
    /// rollout left).
    pub overrides_from: &'static str,
    pub coordination: Coordination,
}

impl ProviderRole {
    /// The config file's lists are the provider's data (`static`).
    pub const CONFIG_FILE: ProviderRole = ProviderRole {
        servers_in_config_file: true,
        overrides_from: "rollout",
        coordination: Coordination::InProcess,
    };
    /// A store every replica shares, which also holds routing overrides and flags (`redis`).
    pub const SHARED_STORE: ProviderRole = ProviderRole {
        servers_in_config_file: false,
        overrides_from: "redis",
        coordination: Coordination::SharedStore,
    };
    /// A source of servers only, for one box (`file_watch`; a DNS SRV or Consul provider
    /// would be one too).
    pub const OWN_SOURCE: ProviderRole = ProviderRole {
        servers_in_config_file: false,
        overrides_from: "rollout",
        coordination: Coordination::InProcess,
    };
}

impl Provider {
    /// What the process does around this provider: the one match on the kind.
    pub fn role(self) -> ProviderRole {
        match self {
            Provider::Static => ProviderRole::CONFIG_FILE,
            Provider::Redis => ProviderRole::SHARED_STORE,
            Provider::FileWatch => ProviderRole::OWN_SOURCE,
        }
    }
}

impl DiscoveryConfig {
    /// The configured provider's own settings, validated; the error names the key (its line
    /// is added by `Config::parse`).
    pub fn settings(&self) -> Result<ProviderSettings, InvalidConfig> {
        if self.provider != Provider::Redis && self.cluster {
            return Err(invalid(
                "discovery.cluster",
                "is read only by `provider: redis`",
            ));
        }
        if self.provider != Provider::FileWatch && self.path.is_some() {
            return Err(invalid(
                "discovery.path",
                "is read only by `provider: file_watch`",
            ));
        }
        Ok(match self.provider {
            Provider::Static => ProviderSettings::Static,
            Provider::Redis => {
                self.validate_urls()?;
                if let Some(sentinel) = &self.sentinel {
                    if sentinel.master_name.is_empty() || sentinel.nodes.is_empty() {
                        return Err(invalid(
                            "discovery.sentinel",
                            "needs master_name and at least one node",
                        ));
                    }
                    for (i, node) in sentinel.nodes.iter().enumerate() {
                        validate_redis_url(node)
                            .map_err(|e| invalid(format!("discovery.sentinel.nodes[{i}]"), e))?;
                    }
                }
                ProviderSettings::Redis(RedisSettings {
                    urls: self.url.as_slice().to_vec(),
                    cluster: self.cluster,
                    namespace: self.namespace.clone(),
                    resync_interval: self.resync_interval,
                    sentinel: self.sentinel.clone(),
                    reinit_grace: self.reinit_grace,
                })
            }
            Provider::FileWatch => match &self.path {
                Some(path) if !path.as_os_str().is_empty() => {
                    ProviderSettings::FileWatch(FileWatchSettings {
                        path: path.clone(),
                        poll_interval: FileWatchSettings::POLL_INTERVAL,
                    })
                }
                _ => {
                    return Err(invalid(
                        "discovery.provider",
                        "`file_watch` needs `discovery.path`: the servers file to watch",
                    ))
                }
            },
        })
    }
}

impl DiscoveryConfig {
    /// `discovery.url` and `discovery.cluster` together: one URL, or a cluster's seeds.
    fn validate_urls(&self) -> Result<(), InvalidConfig> {
        let urls = self.url.as_slice();
        if self.url.is_list() {
            if urls.is_empty() {
                return Err(invalid("discovery.url", "needs at least one seed node URL"));
            }
            if !self.cluster {
                return Err(invalid(
                    "discovery.url",
                    "a list of URLs is the seed nodes of a Redis Cluster: set \
                     `discovery.cluster: true`, or give one URL",
                ));
            }
            for (i, url) in urls.iter().enumerate() {
                validate_redis_url(url).map_err(|e| invalid(format!("discovery.url[{i}]"), e))?;
            }
        } else {
            for url in urls {
                validate_redis_url(url).map_err(|e| invalid("discovery.url", e))?;
            }
        }
        if self.cluster {
            if self.sentinel.is_some() {
                return Err(invalid(
                    "discovery.cluster",
                    "cannot be combined with `discovery.sentinel`: a Redis Cluster fails over \
                     by itself; give its seed nodes in `discovery.url`",
                ));
            }
            // redis-rs applies the first seed's TLS and credentials to every node.
            let first = urls.first().map(|u| seed_identity(u));
            if let Some(i) = urls.iter().position(|u| Some(seed_identity(u)) != first) {
                return Err(invalid(
                    format!("discovery.url[{i}]"),
                    "the seeds of a cluster must agree on the scheme (redis:// or rediss://), \
                     the user and the password",
                ));
            }
            if let Some(url) = urls.iter().find(|u| url_database(u) != 0) {
                return Err(invalid(
                    "discovery.url",
                    format!(
                        "`{}` names a database other than 0: a Redis Cluster has only database 0",
                        super::schema::redact_url(url)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What every seed of a cluster must share: TLS or not, user, password.
fn seed_identity(url: &str) -> (bool, Option<String>, Option<String>) {
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(info) => (
            matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }),
            info.redis_settings().username().map(str::to_string),
            info.redis_settings().password().map(str::to_string),
        ),
        Err(_) => (false, None, None),
    }
}

/// The database a URL names (0 when it does not parse: that is reported elsewhere).
fn url_database(url: &str) -> i64 {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|info| info.redis_settings().db())
        .unwrap_or(0)
}

fn invalid(key: impl Into<String>, problem: impl ToString) -> InvalidConfig {
    InvalidConfig::Key {
        key: key.into(),
        problem: problem.to_string(),
        at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn each_provider_gets_its_own_settings() {
        let c = Config::parse("discovery: { provider: redis, url: \"redis://h:1/2\" }\n")
            .expect("redis");
        match c.discovery.settings().expect("valid") {
            ProviderSettings::Redis(r) => {
                assert_eq!(r.urls, vec!["redis://h:1/2".to_string()]);
                assert!(!r.cluster);
            }
            other => panic!("{other:?}"),
        }
        let c = Config::parse("discovery: { provider: file_watch, path: servers.yaml }\n")
            .expect("file_watch");
        assert_eq!(
            c.discovery.settings().expect("valid"),
            ProviderSettings::FileWatch(FileWatchSettings {
                path: PathBuf::from("servers.yaml"),
                poll_interval: FileWatchSettings::POLL_INTERVAL,
            })
        );
        assert!(!c.discovery.provider.role().servers_in_config_file);
        assert!(Provider::Static.role().servers_in_config_file);
    }

    #[test]
    fn cluster_takes_a_list_of_seeds() {
        let c = Config::parse(
            "discovery:\n  provider: redis\n  cluster: true\n  url: [\"rediss://u:p@a:7000\", \"rediss://u:p@b:7001\"]\n",
        )
        .expect("cluster");
        match c.discovery.settings().expect("valid") {
            ProviderSettings::Redis(r) => {
                assert_eq!(r.urls, vec!["rediss://u:p@a:7000", "rediss://u:p@b:7001"]);
                assert!(r.cluster);
            }
            other => panic!("{other:?}"),
        }
        // One URL with cluster is a cluster of one seed.
        let c =
            Config::parse("discovery: { provider: redis, cluster: true, url: \"redis://a:1\" }\n")
                .expect("one seed");
        assert!(matches!(c.discovery.settings(), Ok(ProviderSettings::Redis(r)) if r.cluster));
    }

    #[test]
    fn cluster_mistakes_name_key_and_line() {
        let cases = [
            (
                "threads: 1\ndiscovery:\n  provider: redis\n  url: [\"redis://a:1\", \"redis://b:2\"]\n",
                "discovery.url",
                "line 4",
            ),
            (
                "threads: 1\ndiscovery:\n  provider: redis\n  cluster: true\n  sentinel: { master_name: m, nodes: [\"redis://s:26379\"] }\n",
                "discovery.cluster",
                "line 4",
            ),
            (
                "threads: 1\ndiscovery:\n  provider: redis\n  cluster: true\n  url: [\"redis://a:1\", \"http://b\"]\n",
                "discovery.url[1]",
                "line 5",
            ),
            (
                "threads: 1\ndiscovery:\n  provider: redis\n  cluster: true\n  url: \"redis://a:1/3\"\n",
                "database other than 0",
                "line 5",
            ),
            (
                "threads: 1\ndiscovery:\n  provider: redis\n  cluster: true\n  url: [\"redis://u:a@h:1\", \"redis://u:b@h:2\"]\n",
                "discovery.url[1]",
                "line 5",
            ),
            (
                "threads: 1\ndiscovery:\n  cluster: true\n",
                "discovery.cluster",
                "line 3",
            ),
        ];
        for (text, key, line) in cases {
            let e = Config::parse(text).expect_err(text).to_string();
            assert!(e.contains(key) && e.contains(line), "{text}: {e}");
        }
    }

    #[test]
    fn file_watch_without_path_or_path_elsewhere_names_key_and_line() {
        let e = Config::parse("threads: 1\ndiscovery: { provider: file_watch }\n")
            .expect_err("no path")
            .to_string();
        assert!(
            e.contains("discovery.provider") && e.contains("line 2"),
            "{e}"
        );
        let e = Config::parse("threads: 1\ndiscovery:\n  provider: redis\n  path: s.yaml\n")
            .expect_err("path under redis")
            .to_string();
        assert!(e.contains("discovery.path") && e.contains("line 4"), "{e}");
    }
}
