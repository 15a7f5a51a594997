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

mod discovery_sink;
mod live;
mod rollout_sink;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use log::info;
use tokio::sync::Notify;

use crate::accesslog::{AccessLog, OpenError};
use crate::config::{Config, InvalidConfig, ProviderRole, ProviderSettings};
use crate::discovery::{self, DiscoveryMetrics, RoutingOverrides};
use crate::drain::InFlight;
use crate::flags::FlagSet;
use crate::metrics::{ConfigSource, Metrics};
use crate::model::{PerPool, Percent, PoolKind};
use crate::pool::{Pool, PoolError, PoolMetrics, Pools, WantedServer};
use crate::rollout::engine::RolloutRoute;
use crate::rollout::shadow::Pair;
use crate::rollout::window::WindowRecorder;
use crate::rollout::Coordinator;
use crate::routing::{CanaryPolicy, PolicyError};

pub use discovery_sink::{DiscoveryReport, DiscoveryStatus};
pub use live::{ClientSettings, HeadLimits, Live, ShadowRun, UpstreamSettings};

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
#[derive(Default, Clone)]
struct Layers {
    provider: RoutingOverrides,
    rollout: Option<RolloutRoute>,
    /// The provider's feature flags (Redis's), which replace the file's while present.
    flags: Option<Arc<FlagSet>>,
}

/// One input of the [`Live`] snapshot that changed: the config file, or one layer over it.
/// A new layer is a variant here and a field of [`Layers`]; [`Shared::relayer`] rebuilds the
/// snapshot the same way for all.
enum Change {
    /// A re-read config file (SIGHUP).
    File(Box<Config>),
    /// The provider's routing overrides.
    Provider(RoutingOverrides),
    /// The provider's feature flags (`None`: the file's apply).
    Flags(Option<Arc<FlagSet>>),
    /// A running rollout's weight and salt (`None`: no rollout routes).
    Rollout(Option<RolloutRoute>),
}

/// The process's shared state, behind methods: the request path, the background tasks and
/// the admin endpoint each ask for what they use, and the settings in force change only
/// through [`Shared::relayer`].
pub struct Shared {
    pools: Pools,
    metrics: Metrics,
    discovery: DiscoveryStatus,
    /// The access log as the process started with it (`access_log` needs a restart); None
    /// when off.
    access_log: Option<AccessLog>,
    /// Requests between `request_filter` and the end of `logging`.
    in_flight: InFlight,
    /// Wakes the discovery task: the wanted servers changed.
    refresh: Notify,
    /// The config the process started with: the restart-only values in force.
    started: Arc<Config>,
    /// The config file as last loaded.
    config: ArcSwap<Config>,
    /// Held while a snapshot is rebuilt, so two writers cannot swap in each other's stale one.
    layers: Mutex<Layers>,
    live: ArcSwap<Live>,
    /// The rollout's per-window counters, recorded by the request path.
    rollout_windows: WindowRecorder,
    rollout: OnceLock<RolloutHandle>,
    /// Every listener is bound (`runtime::listeners`): one of `/readyz`'s conditions.
    listeners_bound: AtomicBool,
    /// The first active health-check pass over production is done (until then Pingora counts
    /// every new server healthy): one of `/readyz`'s conditions.
    health_checked: AtomicBool,
    /// The SIGHUP reloads seen, for `/status` and `canary-lb reload`.
    reloads: ReloadStatus,
    /// The discovery provider's settings, built once at start (`discovery.*` needs a restart).
    provider: ProviderSettings,
}

/// The SIGHUP reloads of this process: how many were tried and how the last one ended.
#[derive(Default)]
struct ReloadStatus {
    generation: AtomicU64,
    last: Mutex<Option<Result<(), String>>>,
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
            discovery: DiscoveryStatus::new(
                config.discovery.provider,
                discovery::from_settings(&provider).describe(),
                discovery_metrics,
            ),
            in_flight: InFlight::new(),
            refresh: Notify::new(),
            live: ArcSwap::from_pointee(Live::new(&config, policy, &Layers::default())),
            started: config.clone(),
            config: ArcSwap::new(config),
            layers: Mutex::new(Layers::default()),
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

    /// The two pools: their servers, selection and health.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The access log, when on (`access_log` needs a restart).
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The requests between `request_filter` and the end of `logging` (SIGTERM's drain).
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// The discovery source's state, for `/status` and `/readyz`.
    pub fn discovery_status(&self) -> &DiscoveryStatus {
        &self.discovery
    }

    /// Resolves when the wanted servers changed (a provider's snapshot, a reloaded file):
    /// the pools should refresh now.
    pub async fn wanted_changed(&self) {
        self.refresh.notified().await
    }

    /// Every listener is bound (`runtime::listeners`).
    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Relaxed);
    }

    pub fn listeners_bound(&self) -> bool {
        self.listeners_bound.load(Relaxed)
    }

    /// The first active health-check pass over production is done.
    pub fn set_health_checked(&self) {
        self.health_checked.store(true, Relaxed);
    }

    pub fn health_checked(&self) -> bool {
        self.health_checked.load(Relaxed)
    }

    /// One SIGHUP reload ended (`Err`: why it was not applied).
    pub fn record_reload(&self, result: Result<(), String>) {
        let mut last = self.reloads.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(result);
        self.reloads.generation.fetch_add(1, Relaxed);
    }

    /// Reloads tried since start, and the last one's result (None before the first).
    pub fn last_reload(&self) -> (u64, Option<Result<(), String>>) {
        let last = self.reloads.last.lock().unwrap_or_else(|p| p.into_inner());
        (self.reloads.generation.load(Relaxed), last.clone())
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

    fn layers(&self) -> std::sync::MutexGuard<'_, Layers> {
        self.layers
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
        let mut new = self.layers().provider.clone();
        new.canary_percent = Some(percent);
        if let Err(e) = self.relayer(Change::Provider(new)) {
            log::error!("routing overrides not applied: {e}");
        }
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

    /// One pair of the shadow step: production's answer to a user's request and the canary's
    /// to its copy, for the rollout's window counts (`client` as in [`Shared::record_rollout`]).
    pub fn record_shadow_pair(&self, pair: &Pair, client: Option<IpAddr>) {
        self.rollout_windows.record_pair(pair, client);
    }

    /// Apply a re-read config file: every live key, and the servers when they come from the
    /// file. Restart-only keys that changed are named in one log line.
    pub fn apply_file(&self, new: Config) -> Result<(), PolicyError> {
        let restart = self.started.restart_needed(&new);
        if !restart.is_empty() {
            log::warn!("config reload: restart needed for: {}", restart.join(", "));
        }
        self.relayer(Change::File(Box::new(new)))?;
        self.refresh.notify_one();
        self.metrics.config_change(ConfigSource::File);
        Ok(())
    }

    /// The one way the settings in force change: `change` replaces one input (the file or
    /// a layer), the routing policy is layered again and a new [`Live`] swapped in, all under
    /// the layers' lock so a concurrent change cannot swap in a stale snapshot. Returns the
    /// snapshot swapped in, or None when the layer was already so (a re-read file always
    /// applies). A policy the layers make invalid leaves everything as it was.
    fn relayer(&self, change: Change) -> Result<Option<Arc<Live>>, PolicyError> {
        let mut layers = self.layers();
        let mut candidate = layers.clone();
        let file = match change {
            Change::File(config) => Some(config),
            Change::Provider(p) if p == layers.provider => return Ok(None),
            Change::Provider(p) => {
                candidate.provider = p;
                None
            }
            Change::Flags(f) if f.as_deref() == layers.flags.as_deref() => return Ok(None),
            Change::Flags(f) => {
                candidate.flags = f;
                None
            }
            Change::Rollout(r) if r == layers.rollout => return Ok(None),
            Change::Rollout(r) => {
                candidate.rollout = r;
                None
            }
        };
        let file_changed = file.is_some();
        let config = match file {
            Some(new) => Arc::from(new),
            None => self.config(),
        };
        let policy = layered_policy(&config, &candidate)?;
        let live = Arc::new(Live::new(&config, policy, &candidate));
        if file_changed {
            for kind in PoolKind::ALL {
                self.pools.get(kind).set_balance(live.balance[kind]);
            }
            if self.provider_role().servers_in_config_file {
                self.set_wanted(discovery::file::servers(&config.pools));
            }
            self.config.store(config);
        }
        *layers = candidate;
        self.swap_live(live.clone());
        Ok(Some(live))
    }

    /// Swap in `live`, logging a change of the routing percentage or salt.
    fn swap_live(&self, live: Arc<Live>) {
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
        self.live.store(live);
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
}

/// The file's `routing` section with the layers over it: a running rollout's weight and salt
/// while it runs, else the provider's overrides.
fn layered_policy(config: &Config, layers: &Layers) -> Result<CanaryPolicy, PolicyError> {
    let (percent, salt) = match &layers.rollout {
        Some(r) => (Some(r.weight), Some(r.salt.as_str())),
        None => (
            layers.provider.canary_percent,
            layers.provider.salt.as_deref(),
        ),
    };
    CanaryPolicy::layered(&config.routing, percent, salt)
}

/// The routing policy of one [`Live`] snapshot.
pub struct PolicyRef(Guard<Arc<Live>>);

impl std::ops::Deref for PolicyRef {
    type Target = CanaryPolicy;

    fn deref(&self) -> &CanaryPolicy {
        &self.0.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::engine::RolloutSink;

    fn shared(yaml: &str) -> Shared {
        Shared::new(Config::parse(yaml).expect("config")).expect("shared")
    }

    fn percent(p: f64) -> Percent {
        Percent::from_f64(p).expect("percent")
    }

    #[test]
    fn each_change_replaces_its_own_input_and_keeps_the_others() {
        let s = shared("routing: { canary_percent: 10, salt: file-salt }\n");
        let provider = RoutingOverrides {
            canary_percent: Some(percent(20.0)),
            salt: None,
        };
        assert!(s.set_overrides(provider.clone()));
        assert!(!s.set_overrides(provider), "unchanged: nothing swapped");
        assert_eq!(s.policy().percent, percent(20.0));
        assert_eq!(s.policy().salt, "file-salt");

        // A running rollout wins over the provider's overrides.
        s.set_route(Some(RolloutRoute {
            weight: percent(50.0),
            salt: "rollout-salt".into(),
            shadow: None,
        }));
        assert_eq!(s.policy().percent, percent(50.0));
        assert_eq!(s.routing_sources(), ("rollout", "rollout"));

        // A re-read file keeps both layers over it.
        let file = Config::parse("routing: { canary_percent: 5, salt: new-salt }\n");
        s.apply_file(file.expect("config")).expect("applied");
        assert_eq!(s.policy().percent, percent(50.0));
        assert_eq!(s.policy().salt, "rollout-salt");
        assert_eq!(s.config().routing.salt, "new-salt");

        // The rollout ends: the provider's percent over the new file's salt.
        s.set_route(None);
        assert_eq!(s.policy().percent, percent(20.0));
        assert_eq!(s.policy().salt, "new-salt");
        assert_eq!(s.base_salt(), "new-salt");
    }

    #[test]
    fn flags_from_the_provider_replace_the_files_until_withdrawn() {
        let s = shared("flags: { items: { beta: { enabled: true } } }\n");
        assert_eq!(s.live().flags_source, "file");
        assert!(s.set_flags(Some(FlagSet::default())));
        assert!(!s.set_flags(Some(FlagSet::default())), "unchanged");
        assert_eq!(s.live().flags_source, "redis");
        assert!(s.live().flags.is_empty());
        assert!(s.set_flags(None));
        assert_eq!(s.live().flags_source, "file");
        assert_eq!(s.live().flags.len(), 1);
    }
}
