//! The state one proxy process shares between its request path, its background tasks and its
//! admin endpoint: the pools, the settings in force, the metrics and the discovery status.
//!
//! The settings a SIGHUP may change live in one [`Live`] snapshot behind an `ArcSwap`: the
//! request path takes it once per request (`Ctx`), so a request sees one consistent set of
//! settings, and a reload is one swap. Everything else was taken at start (`config/reload.rs`
//! lists which key is which); a reload names those that changed in one log line.
//!
//! The routing policy in the snapshot is derived, never edited: the file's `routing` section
//! with the provider's overrides (`canary_percent`, `salt`) laid over it
//! (`routing::CanaryPolicy::layered`), rebuilt whole whenever either side changes. A running
//! rollout lays its weight and frozen salt over both (`rollout::engine`), the same way: the
//! request path reads routing as data from the snapshot and never asks the rollout.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use http::HeaderName;
use log::info;
use tokio::sync::Notify;

use crate::accesslog::{AccessLog, OpenError};
use crate::config::{
    Balance, ClientConfig, Config, InvalidConfig, PassiveHealthConfig, Provider, ProviderRole,
    ProviderSettings, UpstreamConfig,
};
use crate::discovery::{
    self, DiscoveryMetrics, Event, Failure, ReconcileView, RoutingOverrides, Sink, Snapshot,
};
use crate::drain::InFlight;
use crate::flags::FlagSet;
use crate::metrics::{ConfigSource, Metrics};
use crate::model::{PerPool, Percent, PoolKind};
use crate::pool::{Pool, PoolError, PoolMetrics, Pools, ServerView, WantedServer};
use crate::rollout::engine::{RolloutRoute, RolloutSink};
use crate::rollout::window::WindowRecorder;
use crate::rollout::Coordinator;
use crate::routing::{CanaryPolicy, PolicyError};

/// The settings a SIGHUP applies, as one snapshot.
#[derive(Debug)]
pub struct Live {
    /// The file's `routing` section with the provider's overrides laid over it.
    pub policy: CanaryPolicy,
    /// Timeouts and `max_tries` (`keepalive_pool_size` in here is the file's, not the one in
    /// force: that one needs a restart).
    pub upstream: UpstreamConfig,
    pub fallback_to_canary: bool,
    /// The client limits enforced per request. `header_timeout`, `max_connections` and a
    /// raised `max_header_bytes` are Pingora's and were taken at start.
    pub client: ClientConfig,
    pub passive_health: PassiveHealthConfig,
    /// Read by the pools when they refresh (`Pool::set_balance`).
    pub balance: PerPool<Balance>,
    /// Peers whose forwarding headers are believed (`proxy::headers::client_address`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The feature flags in force: Redis's while it has any, else the file's `flags.items`.
    pub flags: Arc<FlagSet>,
    /// `redis` or `file`: where [`Live::flags`] come from.
    pub flags_source: &'static str,
    /// The header the flags that are on go upstream in (`flags.header`).
    pub flag_header: HeaderName,
    /// [`Live::flag_header`] as it goes out on the wire (the file's spelling), ready for
    /// Pingora's insert: a `HeaderName` would be re-spelled and copied on every request.
    pub flag_header_wire: bytes::Bytes,
    /// The testers' override header (`flags.override_header`).
    pub flag_override_header: HeaderName,
}

impl Live {
    fn new(config: &Config, policy: CanaryPolicy, layers: &Layers) -> Live {
        let (flags, flags_source) = match &layers.flags {
            Some(f) => (f.clone(), "redis"),
            None => (Arc::new(file_flags(config)), "file"),
        };
        let header = |name: &str, default: &'static str| {
            HeaderName::try_from(name).unwrap_or_else(|_| HeaderName::from_static(default))
        };
        let flag_header = header(&config.flags.header, "x-features");
        let flag_header_wire = if flag_header
            .as_str()
            .eq_ignore_ascii_case(&config.flags.header)
        {
            bytes::Bytes::copy_from_slice(config.flags.header.as_bytes())
        } else {
            bytes::Bytes::copy_from_slice(flag_header.as_str().as_bytes())
        };
        Live {
            flags,
            flags_source,
            flag_header,
            flag_header_wire,
            flag_override_header: header(&config.flags.override_header, "x-feature-override"),
            policy,
            upstream: config.upstream.clone(),
            fallback_to_canary: config.fallback_to_canary,
            client: config.client.clone(),
            passive_health: config.passive_health.clone(),
            balance: PerPool::from_fn(|kind| config.pools.get(kind).balance),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }
}

/// The file's `flags.items` (validated with the config, so building cannot fail; if it did,
/// no flag would be on and the error is logged).
fn file_flags(config: &Config) -> FlagSet {
    FlagSet::build(config.flags.items.iter().map(|(n, f)| (n.as_str(), f))).unwrap_or_else(|e| {
        log::error!("flags: the file's flags not applied: {e}");
        FlagSet::default()
    })
}

/// What `/status` says about the discovery source.
pub struct DiscoveryStatus {
    pub provider: Provider,
    /// Where servers come from, with any password hidden.
    pub source: String,
    pub up: AtomicBool,
    pub last_sync_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Re-initialisations of the store seen since start.
    pub reinitialised: AtomicU64,
    /// What is kept from before the last re-initialisation, while anything is.
    pub reconciling: Mutex<Option<ReconcileView>>,
    /// Discovery's series (`discovery::metrics`).
    pub metrics: DiscoveryMetrics,
}

/// Why the process state could not be built at start. (A reload fails only on the routing
/// policy: [`Shared::apply_file`] returns a [`PolicyError`].)
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    AccessLog(#[from] OpenError),
    /// `discovery:` (validated with the config, so only a config built by hand gets here).
    #[error(transparent)]
    Discovery(#[from] InvalidConfig),
}

/// The rollout coordinator this process uses (none: no rollouts, e.g. Redis mode until its
/// store-backed coordinator is plugged in), and this replica's id.
pub struct RolloutHandle {
    pub coordinator: Arc<dyn Coordinator>,
    pub replica: String,
}

/// What the routing policy is built from besides the file: the provider's overrides and a
/// running rollout's weight and salt (which win while it runs).
#[derive(Default)]
struct Layers {
    provider: RoutingOverrides,
    rollout: Option<RolloutRoute>,
    /// The provider's feature flags (Redis's), which replace the file's while present.
    flags: Option<Arc<FlagSet>>,
}

pub struct Shared {
    pub pools: Pools,
    pub metrics: Metrics,
    pub discovery: DiscoveryStatus,
    /// The access log as the process started with it (`access_log` needs a restart); None
    /// when off.
    pub access_log: Option<AccessLog>,
    /// Requests between `request_filter` and the end of `logging`.
    pub in_flight: InFlight,
    /// Wakes the discovery task: the wanted servers changed.
    pub refresh: Notify,
    /// The config the process started with: the restart-only values in force.
    started: Arc<Config>,
    /// The config file as last loaded.
    config: ArcSwap<Config>,
    overrides: Mutex<Layers>,
    live: ArcSwap<Live>,
    /// The rollout's per-window counters, recorded by the request path.
    pub rollout_windows: WindowRecorder,
    rollout: OnceLock<RolloutHandle>,
    /// Every listener is bound (`runtime::listeners`): one of `/readyz`'s conditions.
    pub listeners_bound: AtomicBool,
    /// The first active health-check pass over production is done (until then Pingora counts
    /// every new server healthy): one of `/readyz`'s conditions.
    pub health_checked: AtomicBool,
    /// The SIGHUP reloads seen, for `/status` and `canary-lb reload`.
    pub reloads: ReloadStatus,
    /// The discovery provider's settings, built once at start (`discovery.*` needs a restart).
    provider: ProviderSettings,
}

/// The SIGHUP reloads of this process: how many were tried and how the last one ended.
#[derive(Default)]
pub struct ReloadStatus {
    generation: AtomicU64,
    last: Mutex<Option<Result<(), String>>>,
}

impl ReloadStatus {
    /// One reload ended (`Err`: why it was not applied).
    pub fn record(&self, result: Result<(), String>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(result);
        self.generation.fetch_add(1, Relaxed);
    }

    /// Reloads tried since start, and the last one's result (None before the first).
    pub fn last(&self) -> (u64, Option<Result<(), String>>) {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        (self.generation.load(Relaxed), last.clone())
    }
}

impl Shared {
    pub fn new(config: Config) -> Result<Shared, StartError> {
        let metrics = Metrics::new()?;
        let pool_metrics = PoolMetrics::register(metrics.registry())?;
        let discovery_metrics = DiscoveryMetrics::register(metrics.registry())?;
        let pools: Pools = PerPool::try_from_fn(|kind| -> Result<Pool, PoolError> {
            Pool::new(
                kind,
                &config.pools[kind],
                &config.health_check,
                &pool_metrics,
            )
        })?;
        let policy = CanaryPolicy::from_config(&config.routing)?;
        metrics
            .rollout
            .export_verdicts::<crate::rollout::judge::Finding>();
        metrics.rollout.export_phases(crate::rollout::Phase::Idle);
        metrics.set_canary_percent(policy.percent.as_f64());
        let provider = config.discovery.settings()?;
        let role = config.discovery.provider.role();
        let access_log = match config.access_log.settings() {
            Some(settings) => Some(AccessLog::new(
                settings,
                metrics.access_log_dropped.clone(),
            )?),
            None => None,
        };
        let config = Arc::new(config);
        let shared = Shared {
            pools,
            metrics,
            access_log,
            discovery: DiscoveryStatus {
                metrics: discovery_metrics,
                provider: config.discovery.provider,
                source: discovery::from_settings(&provider).describe(),
                // The file's lists are known from the start; any other source must answer.
                up: AtomicBool::new(role.servers_in_config_file),
                last_sync_ms: AtomicU64::new(0),
                last_error: Mutex::new(None),
                reinitialised: AtomicU64::new(0),
                reconciling: Mutex::new(None),
            },
            in_flight: InFlight::new(),
            refresh: Notify::new(),
            live: ArcSwap::from_pointee(Live::new(&config, policy, &Layers::default())),
            started: config.clone(),
            config: ArcSwap::new(config),
            overrides: Mutex::new(Layers::default()),
            rollout_windows: WindowRecorder::default(),
            rollout: OnceLock::new(),
            listeners_bound: AtomicBool::new(false),
            health_checked: AtomicBool::new(false),
            reloads: ReloadStatus::default(),
            provider,
        };
        // Under any provider the file's lists serve until the provider first answers.
        shared.set_wanted(discovery::file::servers(&shared.started.pools));
        Ok(shared)
    }

    /// The discovery provider this process started with.
    pub fn provider(&self) -> Box<dyn discovery::Provider> {
        discovery::from_settings(&self.provider)
    }

    /// What the process does around its discovery provider.
    pub fn provider_role(&self) -> ProviderRole {
        self.started.discovery.provider.role()
    }

    /// Make `servers` the wanted servers of each pool (applied at each pool's next refresh).
    fn set_wanted(&self, servers: PerPool<Vec<WantedServer>>) {
        let PerPool { production, canary } = servers;
        self.pools.get(PoolKind::Production).set_wanted(production);
        self.pools.get(PoolKind::Canary).set_wanted(canary);
    }

    /// The settings in force; the request path takes this once per request.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The routing policy in force (for the admin endpoint; requests use [`Shared::live`]).
    pub fn policy(&self) -> PolicyRef {
        PolicyRef(self.live.load())
    }

    /// The config file as last loaded (the admin endpoint reads its token and head deadline
    /// here, per connection). Restart-only keys in it may not be in force: see
    /// [`Shared::started`].
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The config the process started with (listen, threads, grace period...).
    pub fn started(&self) -> &Config {
        &self.started
    }

    pub fn overrides(&self) -> RoutingOverrides {
        self.layers().provider.clone()
    }

    fn layers(&self) -> std::sync::MutexGuard<'_, Layers> {
        self.overrides
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Use `handle` for rollouts (once, at start).
    pub fn set_rollout(&self, handle: RolloutHandle) {
        let _ = self.rollout.set(handle);
    }

    pub fn rollout(&self) -> Option<&RolloutHandle> {
        self.rollout.get()
    }

    /// The routing salt without a rollout's: what a rollout starting now freezes.
    pub fn base_salt(&self) -> String {
        let layers = self.layers();
        layers
            .provider
            .salt
            .clone()
            .unwrap_or_else(|| self.config().routing.salt.clone())
    }

    /// The canary_percent that holds once no rollout overrides it (file mode: the weight a
    /// rollout ended at, kept until a restart).
    pub fn set_percent_override(&self, percent: Percent) {
        let mut new = self.overrides();
        new.canary_percent = Some(percent);
        self.replace_provider_layer(new);
    }

    /// One answered request, for the rollout's window counts (`forced`: the routing header or
    /// flag cookie chose the pool; `client`: the address by the trusted-proxy rule, which the
    /// per-client caps count by). Its latency is the upstream's: from handing the request to
    /// the server to its response head (`upstream`), not the whole exchange, so a client that
    /// reads slowly does not make a server look slow; the proxy's own answers (no server,
    /// connect failure) have none and take the time since `start`. A few atomic adds while a
    /// rollout runs; one load if not.
    #[inline]
    pub fn record_rollout(
        &self,
        pool: PoolKind,
        status: u16,
        forced: bool,
        (start, upstream): (Instant, Option<Duration>),
        client: Option<IpAddr>,
    ) {
        if self.rollout_windows.is_active() {
            let took = upstream.unwrap_or_else(|| start.elapsed());
            self.rollout_windows
                .record(pool, status, forced, took.as_secs_f64(), client);
        }
    }

    /// Apply a re-read config file: every live key, and the servers when they come from the
    /// file. Restart-only keys that changed are named in one log line.
    pub fn apply_file(&self, new: Config) -> Result<(), PolicyError> {
        let restart = self.started.restart_needed(&new);
        if !restart.is_empty() {
            log::warn!("config reload: restart needed for: {}", restart.join(", "));
        }
        // Under the overrides' lock, so a provider's update cannot swap in a stale snapshot.
        let overrides = self.layers();
        let policy = self.layered_policy(&new, &overrides)?;
        let live = Live::new(&new, policy, &overrides);
        for kind in PoolKind::ALL {
            self.pools.get(kind).set_balance(live.balance[kind]);
        }
        if self.provider_role().servers_in_config_file {
            self.set_wanted(discovery::file::servers(&new.pools));
        }
        self.config.store(Arc::new(new));
        self.swap_live(live);
        drop(overrides);
        self.refresh.notify_one();
        self.metrics.config_change(ConfigSource::File);
        Ok(())
    }

    fn layered_policy(
        &self,
        config: &Config,
        layers: &Layers,
    ) -> Result<CanaryPolicy, PolicyError> {
        let (percent, salt) = match &layers.rollout {
            Some(r) => (Some(r.weight), Some(r.salt.as_str())),
            None => (
                layers.provider.canary_percent,
                layers.provider.salt.as_deref(),
            ),
        };
        CanaryPolicy::layered(&config.routing, percent, salt)
    }

    /// Swap in `live`, logging a change of the routing percentage or salt.
    fn swap_live(&self, live: Live) {
        let old = self.live.load();
        let (old_p, new_p) = (&old.policy, &live.policy);
        if old_p.percent != new_p.percent || old_p.salt != new_p.salt {
            // The salt itself never goes to the log: with it, anyone can tell who is in canary.
            info!(
                "routing: canary_percent {} -> {}, salt fingerprint {} -> {}",
                old_p.percent.as_f64(),
                new_p.percent.as_f64(),
                crate::routing::salt_fingerprint(&old_p.salt),
                crate::routing::salt_fingerprint(&new_p.salt)
            );
        }
        self.metrics.set_canary_percent(new_p.percent.as_f64());
        self.live.store(Arc::new(live));
    }

    /// Where the routing percent and salt in force come from: `file`, `redis`, or `rollout`
    /// (a running rollout, or with the file provider the weight a finished one left).
    pub fn routing_sources(&self) -> (&'static str, &'static str) {
        let layers = self.layers();
        let over = self.provider_role().overrides_from;
        if layers.rollout.is_some() {
            return ("rollout", "rollout");
        }
        let from = |set: bool| if set { over } else { "file" };
        (
            from(layers.provider.canary_percent.is_some()),
            from(layers.provider.salt.is_some()),
        )
    }

    /// Set the provider's routing overrides; returns true when they changed.
    pub fn set_overrides(&self, new: RoutingOverrides) -> bool {
        let changed = self.replace_provider_layer(new);
        if changed {
            self.metrics.config_change(ConfigSource::Redis);
        }
        changed
    }

    fn replace_provider_layer(&self, new: RoutingOverrides) -> bool {
        let mut cur = self.layers();
        if cur.provider == new {
            return false;
        }
        let config = self.config();
        let candidate = Layers {
            provider: new,
            rollout: cur.rollout.clone(),
            flags: cur.flags.clone(),
        };
        let policy = match self.layered_policy(&config, &candidate) {
            Ok(p) => p,
            Err(e) => {
                log::error!("routing overrides not applied: {e}");
                return false;
            }
        };
        let live = Live::new(&config, policy, &candidate);
        *cur = candidate;
        // Under the lock, so two writers cannot swap in each other's stale snapshot.
        self.swap_live(live);
        true
    }

    /// Set the provider's feature flags (`None`: the file's apply); returns true when they
    /// changed.
    pub fn set_flags(&self, flags: Option<FlagSet>) -> bool {
        let mut cur = self.layers();
        if cur.flags.as_deref() == flags.as_ref() {
            return false;
        }
        let config = self.config();
        let candidate = Layers {
            provider: cur.provider.clone(),
            rollout: cur.rollout.clone(),
            flags: flags.map(Arc::new),
        };
        let policy = match self.layered_policy(&config, &candidate) {
            Ok(p) => p,
            Err(e) => {
                log::error!("flags not applied: {e}");
                return false;
            }
        };
        let live = Live::new(&config, policy, &candidate);
        info!(
            "flags: {} flags from {} ({} enabled)",
            live.flags.len(),
            live.flags_source,
            live.flags.iter().filter(|f| f.enabled()).count()
        );
        *cur = candidate;
        self.swap_live(live);
        self.metrics.config_change(ConfigSource::Redis);
        true
    }
}

impl RolloutSink for Shared {
    fn set_route(&self, route: Option<RolloutRoute>) {
        let mut cur = self.layers();
        if cur.rollout == route {
            return;
        }
        let config = self.config();
        let candidate = Layers {
            provider: cur.provider.clone(),
            rollout: route,
            flags: cur.flags.clone(),
        };
        match self.layered_policy(&config, &candidate) {
            Ok(policy) => {
                let live = Live::new(&config, policy, &candidate);
                *cur = candidate;
                self.swap_live(live);
            }
            Err(e) => log::error!("rollout routing not applied: {e}"),
        }
    }

    fn recorder(&self) -> &WindowRecorder {
        &self.rollout_windows
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The routing policy of one [`Live`] snapshot.
pub struct PolicyRef(Guard<Arc<Live>>);

impl std::ops::Deref for PolicyRef {
    type Target = CanaryPolicy;

    fn deref(&self) -> &CanaryPolicy {
        &self.0.policy
    }
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
    /// Part of what is served is kept from before a re-initialisation (`None`: nothing is).
    fn set_reconciling(&self, view: Option<ReconcileView>) {
        self.discovery.metrics.set_reconciling(view.is_some());
        *self
            .discovery
            .reconciling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = view;
    }
}

impl DiscoveryStatus {
    /// The source was read. While servers or routing from before a re-initialisation are
    /// kept, the proxy does not serve the store as it is: discovery stays down, saying why.
    pub fn set_ok(&self) {
        let reconciling = self
            .reconciling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|v| v.message.clone());
        self.up.store(reconciling.is_none(), Relaxed);
        self.last_sync_ms.store(crate::model::now_ms(), Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reconciling;
    }

    pub fn set_error(&self, e: String) {
        self.up.store(false, Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(e);
    }
}
