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
    pub url: String,
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
        if self.provider != Provider::FileWatch && self.path.is_some() {
            return Err(invalid(
                "discovery.path",
                "is read only by `provider: file_watch`",
            ));
        }
        Ok(match self.provider {
            Provider::Static => ProviderSettings::Static,
            Provider::Redis => {
                validate_redis_url(&self.url).map_err(|e| invalid("discovery.url", e))?;
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
                    url: self.url.clone(),
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
            ProviderSettings::Redis(r) => assert_eq!(r.url, "redis://h:1/2"),
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
