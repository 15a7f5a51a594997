//! How the discovery provider reaches the process: `Shared` as discovery's [`Sink`] (one
//! snapshot applied in one step, a few counters), and the [`DiscoveryStatus`] `/status` and
//! `/readyz` read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::{Change, Shared};
use crate::config::{Provider, ProviderRole};
use crate::discovery::{
    DiscoveryMetrics, Event, Failure, ReconcileView, RoutingOverrides, Sink, Snapshot,
};
use crate::metrics::ConfigSource;
use crate::model::PoolKind;
use crate::pool::ServerView;

/// What `/status` says about the discovery source.
pub struct DiscoveryStatus {
    provider: Provider,
    /// Where servers come from, with any password hidden.
    source: String,
    up: AtomicBool,
    last_sync_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Re-initialisations of the store seen since start.
    reinitialised: AtomicU64,
    /// What is kept from before the last re-initialisation, while anything is.
    reconciling: Mutex<Option<ReconcileView>>,
    /// Discovery's series (`discovery::metrics`).
    metrics: DiscoveryMetrics,
}

/// One reading of [`DiscoveryStatus`], for `/status`.
pub struct DiscoveryReport {
    pub provider: Provider,
    pub source: String,
    pub up: bool,
    /// 0 before the source first answered.
    pub last_sync_ms: u64,
    pub last_error: Option<String>,
    pub reinitialised: u64,
    pub reconciling: Option<ReconcileView>,
}

impl DiscoveryStatus {
    /// `source` as `describe()` names it; discovery starts up only when the servers are the
    /// config file's (any other source must answer first).
    pub(super) fn new(
        provider: Provider,
        source: String,
        metrics: DiscoveryMetrics,
    ) -> DiscoveryStatus {
        DiscoveryStatus {
            metrics,
            provider,
            source,
            up: AtomicBool::new(provider.role().servers_in_config_file),
            last_sync_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            reinitialised: AtomicU64::new(0),
            reconciling: Mutex::new(None),
        }
    }

    /// Discovery's series, for the admin endpoint's scrape.
    pub fn metrics(&self) -> &DiscoveryMetrics {
        &self.metrics
    }

    /// Discovery is up: the source answered last time and nothing is kept from before a
    /// re-initialisation.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// The servers are known: they are the config file's, or the source answered once.
    pub fn servers_known(&self) -> bool {
        self.role().servers_in_config_file || self.last_sync_ms.load(Relaxed) != 0
    }

    fn role(&self) -> ProviderRole {
        self.provider.role()
    }

    pub fn report(&self) -> DiscoveryReport {
        DiscoveryReport {
            provider: self.provider,
            source: self.source.clone(),
            up: self.up.load(Relaxed),
            last_sync_ms: self.last_sync_ms.load(Relaxed),
            last_error: lock(&self.last_error).clone(),
            reinitialised: self.reinitialised.load(Relaxed),
            reconciling: lock(&self.reconciling).clone(),
        }
    }

    /// The source was read. While servers or routing from before a re-initialisation are
    /// kept, the proxy does not serve the store as it is: discovery stays down, saying why.
    fn set_ok(&self) {
        let reconciling = lock(&self.reconciling).as_ref().map(|v| v.message.clone());
        self.up.store(reconciling.is_none(), Relaxed);
        self.last_sync_ms.store(crate::model::now_ms(), Relaxed);
        *lock(&self.last_error) = reconciling;
    }

    fn set_error(&self, e: String) {
        self.up.store(false, Relaxed);
        *lock(&self.last_error) = Some(e);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Providers reach the process only through this.
impl Sink for Shared {
    fn apply(&self, update: Result<Snapshot, Failure>) {
        match update {
            Ok(read) => {
                if let Some(servers) = read.servers {
                    self.set_wanted(servers);
                }
                if let Some(overrides) = read.overrides {
                    self.set_overrides(overrides);
                }
                self.set_flags(read.flags);
                self.set_reconciling(read.reconciling);
                self.refresh.notify_one();
                self.discovery.set_ok();
            }
            Err(failure) => {
                self.set_reconciling(failure.reconciling);
                self.discovery.metrics.failure(failure.kind);
                self.discovery.set_error(failure.error);
            }
        }
    }

    fn count(&self, event: Event<'_>) {
        if event == Event::Reinitialised {
            self.discovery.reinitialised.fetch_add(1, Relaxed);
        }
        self.discovery.metrics.count(event);
    }

    fn view(&self, pool: PoolKind) -> Vec<ServerView> {
        self.pools.get(pool).view()
    }

    fn routing_in_force(&self) -> RoutingOverrides {
        let layers = self.layers();
        match &layers.rollout {
            Some(r) => RoutingOverrides {
                canary_percent: Some(r.weight),
                salt: Some(r.salt.clone()),
            },
            None => layers.provider.clone(),
        }
    }
}

impl Shared {
    /// Set the provider's routing overrides; returns true when they changed.
    pub(super) fn set_overrides(&self, new: RoutingOverrides) -> bool {
        match self.relayer(Change::Provider(new)) {
            Ok(applied) => {
                if applied.is_some() {
                    self.metrics.config_change(ConfigSource::Redis);
                }
                applied.is_some()
            }
            Err(e) => {
                log::error!("routing overrides not applied: {e}");
                false
            }
        }
    }

    /// Set the provider's feature flags (`None`: the file's apply); returns true when they
    /// changed.
    pub(super) fn set_flags(&self, flags: Option<crate::flags::FlagSet>) -> bool {
        match self.relayer(Change::Flags(flags.map(std::sync::Arc::new))) {
            Ok(None) => false,
            Ok(Some(live)) => {
                log::info!(
                    "flags: {} flags from {} ({} enabled)",
                    live.flags.len(),
                    live.flags_source,
                    live.flags.iter().filter(|f| f.enabled()).count()
                );
                self.metrics.config_change(ConfigSource::Redis);
                true
            }
            Err(e) => {
                log::error!("flags not applied: {e}");
                false
            }
        }
    }

    /// Part of what is served is kept from before a re-initialisation (`None`: nothing is).
    fn set_reconciling(&self, view: Option<ReconcileView>) {
        self.discovery.metrics.set_reconciling(view.is_some());
        *lock(&self.discovery.reconciling) = view;
    }
}
