//! The state one proxy process shares between its request path, its background tasks and its
//! admin endpoint: the pools, the routing policy in force, the metrics and the discovery status.
//!
//! The routing policy is derived, never edited: it is the file's `routing` section with the
//! Redis overrides (`canary_percent`, `salt`) laid over it, rebuilt whole and swapped
//! atomically whenever either side changes.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use log::info;
use tokio::sync::Notify;

use crate::config::{Config, PoolConfig, Provider, RoutingConfig};
use crate::metrics::{ConfigSource, Metrics};
use crate::model::{Percent, PoolKind};
use crate::pool::health;
use crate::pool::{Pool, Pools, WantedServer};
use crate::routing::CanaryPolicy;

/// Values from the Redis `routing` hash that override the file while present.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingOverrides {
    pub canary_percent: Option<Percent>,
    pub salt: Option<String>,
}

/// What `/status` says about the discovery source.
pub struct DiscoveryStatus {
    pub provider: Provider,
    /// Where servers come from, with any password hidden.
    pub source: String,
    pub up: AtomicBool,
    pub last_sync_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub struct Shared {
    pub pools: Pools,
    pub metrics: Metrics,
    pub discovery: DiscoveryStatus,
    /// Requests between `request_filter` and `logging`.
    pub in_flight: AtomicI64,
    /// Wakes the discovery task: the wanted servers changed.
    pub refresh: Notify,
    config: ArcSwap<Config>,
    overrides: Mutex<RoutingOverrides>,
    policy: ArcSwap<CanaryPolicy>,
}

impl Shared {
    pub fn new(config: Config) -> anyhow::Result<Shared> {
        let pool = |kind: PoolKind| -> anyhow::Result<Pool> {
            Ok(Pool::new(
                kind,
                config.pools.get(kind).balance,
                config.passive_health.clone(),
                health::checker(&config.health_check, kind)?,
            ))
        };
        let pools = Pools {
            production: pool(PoolKind::Production)?,
            canary: pool(PoolKind::Canary)?,
        };
        let policy = CanaryPolicy::from_config(&config.routing).map_err(anyhow::Error::msg)?;
        let metrics = Metrics::new()?;
        metrics.set_canary_percent(policy.percent.as_f64());
        let static_provider = config.discovery.provider == Provider::Static;
        let source = match config.discovery.provider {
            Provider::Static => "config file".to_string(),
            Provider::Redis => crate::config::redact_url(&config.discovery.url),
        };
        let shared = Shared {
            pools,
            metrics,
            discovery: DiscoveryStatus {
                provider: config.discovery.provider,
                source,
                up: AtomicBool::new(static_provider),
                last_sync_ms: AtomicU64::new(0),
                last_error: Mutex::new(None),
            },
            in_flight: AtomicI64::new(0),
            refresh: Notify::new(),
            config: ArcSwap::from_pointee(config),
            overrides: Mutex::new(RoutingOverrides::default()),
            policy: ArcSwap::from_pointee(policy),
        };
        // With Redis discovery the file's lists serve until Redis first answers.
        shared.feed_file_servers();
        Ok(shared)
    }

    pub fn policy(&self) -> Guard<Arc<CanaryPolicy>> {
        self.policy.load()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The config in force, for the request path: no reference count taken.
    pub fn config_snapshot(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    pub fn overrides(&self) -> RoutingOverrides {
        self.overrides
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Apply a re-read config file: routing, and servers when they come from the file.
    /// Settings that need a restart are named in the log.
    pub fn apply_file(&self, new: Config) -> Result<(), String> {
        let old = self.config();
        let needs_restart = [
            ("listen", old.listen != new.listen),
            ("threads", old.threads != new.threads),
            (
                "client.header_timeout",
                old.client.header_timeout != new.client.header_timeout,
            ),
            (
                "client.max_header_bytes (raising it)",
                new.client.max_header_bytes > old.client.max_header_bytes,
            ),
            (
                "client.max_connections",
                old.client.max_connections != new.client.max_connections,
            ),
            ("metrics_listen", old.metrics_listen != new.metrics_listen),
            (
                "health_check",
                serde_json::to_value(&old.health_check).ok()
                    != serde_json::to_value(&new.health_check).ok(),
            ),
            (
                "discovery",
                serde_json::to_value(&old.discovery).ok()
                    != serde_json::to_value(&new.discovery).ok(),
            ),
        ];
        for (key, changed) in needs_restart {
            if changed {
                log::warn!("config reload: `{key}` changed; it takes effect at the next restart");
            }
        }
        CanaryPolicy::from_config(&new.routing)?;
        let static_servers = new.discovery.provider == Provider::Static;
        self.config.store(Arc::new(new));
        self.rebuild_policy()?;
        if static_servers {
            self.feed_file_servers();
        }
        self.refresh.notify_one();
        self.metrics.config_change(ConfigSource::File);
        Ok(())
    }

    /// Set the Redis overrides; returns true when they changed.
    pub fn set_overrides(&self, new: RoutingOverrides) -> bool {
        {
            let mut cur = self
                .overrides
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *cur == new {
                return false;
            }
            *cur = new;
        }
        if let Err(e) = self.rebuild_policy() {
            log::error!("routing overrides from redis not applied: {e}");
            return false;
        }
        self.metrics.config_change(ConfigSource::Redis);
        true
    }

    fn rebuild_policy(&self) -> Result<(), String> {
        let config = self.config();
        let overrides = self.overrides();
        let mut routing: RoutingConfig = config.routing.clone();
        if let Some(p) = overrides.canary_percent {
            routing.canary_percent = p;
        }
        if let Some(s) = overrides.salt {
            routing.salt = s;
        }
        let policy = CanaryPolicy::from_config(&routing)?;
        let old = self.policy.load();
        if old.percent != policy.percent || old.salt != policy.salt {
            // The salt itself never goes to the log: with it, anyone can tell who is in canary.
            info!(
                "routing: canary_percent {} -> {}, salt fingerprint {} -> {}",
                old.percent.as_f64(),
                policy.percent.as_f64(),
                crate::routing::salt_fingerprint(&old.salt),
                crate::routing::salt_fingerprint(&policy.salt)
            );
        }
        self.metrics.set_canary_percent(policy.percent.as_f64());
        self.policy.store(Arc::new(policy));
        Ok(())
    }

    /// Make the file's `servers` lists the wanted servers.
    fn feed_file_servers(&self) {
        let config = self.config();
        for kind in PoolKind::ALL {
            self.pools
                .get(kind)
                .set_wanted(wanted_from_file(config.pools.get(kind)));
        }
    }
}

pub fn wanted_from_file(pc: &PoolConfig) -> Vec<WantedServer> {
    pc.servers
        .iter()
        .map(|s| WantedServer {
            addr: s.addr.clone(),
            weight: s.weight,
            draining: false,
        })
        .collect()
}

impl DiscoveryStatus {
    pub fn set_ok(&self) {
        self.up.store(true, Relaxed);
        self.last_sync_ms.store(crate::pool::now_ms(), Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    pub fn set_error(&self, e: String) {
        self.up.store(false, Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(e);
    }
}
