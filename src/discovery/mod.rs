//! Where the servers of each pool come from: the discovery providers.
//!
//! A [`Provider`] learns the wanted servers of each pool (and, if its source has them, routing
//! overrides and feature flags) and hands them to a [`Sink`]; it never sees the pools, the proxy or the metrics
//! registry. The process state implements the sink (`state::Shared`), so a provider's whole
//! view of the process is the few methods below. Two providers exist:
//! - `file.rs` ([`file::FileServers`]): the `servers` lists of the config file, re-fed on
//!   SIGHUP;
//! - `redis.rs` ([`redis::RedisDiscovery`]): follows the shared Redis store; `reinit.rs`
//!   ([`reinit::Reconcile`]) is what it keeps when that store is re-initialised (wiped and
//!   written again), so a re-created store never shrinks a pool at once.
//!
//! [`from_config`] is the one place that maps `discovery.provider` to a provider.
//!
//! Adding a third provider (Consul, DNS SRV, Kubernetes endpoints):
//! 1. one new file here, say `consul.rs`, with a type that implements [`Provider`]: `describe`
//!    says where servers come from (without secrets), and `run` loops until `shutdown` changes,
//!    calling [`Sink::set_wanted`] for each pool with what the source says, then
//!    [`Sink::synced`] (or [`Sink::failed`] and [`Sink::count_error`] when the source fails:
//!    the pools then keep their last servers, so never hand over an empty list for a failed
//!    read);
//! 2. one new variant of `config::Provider` (with its settings in `DiscoveryConfig`, validated
//!    in `config/schema.rs`) and one arm in [`from_config`].
//!
//! Nothing else changes: the pools, health checks, passive ejection and routing work on what
//! the sink was given.

pub mod file;
pub mod redis;
pub mod reinit;

pub use redis::DiscoveryError;
pub use reinit::ReconcileView;

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;

use crate::config::{Config, Provider as ProviderKind};
use crate::flags::FlagSet;
use crate::metrics::DiscoveryErrorKind;
use crate::model::{Percent, PoolKind};
use crate::pool::{ServerView, WantedServer};

/// Values a provider may set over the file's `routing` section while present (the Redis
/// `routing` hash). `routing::CanaryPolicy::layered` lays them over the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingOverrides {
    pub canary_percent: Option<Percent>,
    pub salt: Option<String>,
}

/// What a provider may do to the process: the narrow side of the pools and the state.
pub trait Sink: Send + Sync {
    /// Make `servers` the wanted servers of `pool` (applied at the pool's next refresh).
    fn set_wanted(&self, pool: PoolKind, servers: Vec<WantedServer>);
    /// The routing overrides in force.
    fn overrides(&self) -> RoutingOverrides;
    /// Replace the routing overrides; returns true when they changed and were applied.
    fn set_overrides(&self, overrides: RoutingOverrides) -> bool;
    /// Make `flags` the feature flags in force; `None`: the source has none, the config
    /// file's apply. Returns true when they changed.
    fn set_flags(&self, flags: Option<FlagSet>) -> bool;
    /// A full read of the source succeeded: discovery is up, the pools refresh now.
    fn synced(&self);
    /// The source failed; the pools keep their servers and discovery is reported down.
    fn failed(&self, error: String);
    /// Whether the last read succeeded (so an outage is logged once, not every retry).
    fn is_up(&self) -> bool;
    /// Count a discovery error of `kind` (`canary_lb_discovery_errors_total`).
    fn count_error(&self, kind: DiscoveryErrorKind);
    /// Count bad data the source skipped, by the store's problem kind (the same metric; a
    /// kind the metrics do not know gets its own label value).
    fn count_problem(&self, kind: &str);
    /// Count a full read of the source (`canary_lb_discovery_resyncs_total`).
    fn count_resync(&self);
    /// The servers of `pool` as the proxy sees them, for providers that report back.
    fn view(&self, pool: PoolKind) -> Vec<ServerView>;
    /// Count a re-initialisation of the source's store
    /// (`canary_lb_discovery_store_reinitialised_total`).
    fn count_reinitialised(&self);
    /// The routing that a re-initialised store must not take away: the provider's overrides,
    /// or a running rollout's weight and salt while one is in force (its state went with the
    /// store).
    fn routing_in_force(&self) -> RoutingOverrides;
    /// Part of what is served is kept from before a re-initialisation (`None`: nothing is).
    /// While set, [`Sink::synced`] reports discovery down with the view's message, and
    /// `canary_lb_discovery_reconciling` is 1.
    fn set_reconciling(&self, view: Option<ReconcileView>);
}

/// A source of servers. `run` is started once, inside Pingora's background service (never
/// before `run_forever`), and returns when `shutdown` changes or it has nothing left to do.
#[async_trait]
pub trait Provider: Send {
    /// Where servers come from, for `/status`, logs and `canary-lb check`; no secrets.
    fn describe(&self) -> String;
    /// Feed `sink` until shutdown.
    async fn run(self: Box<Self>, sink: Arc<dyn Sink>, shutdown: ShutdownWatch);
}

/// The provider `config` asks for.
pub fn from_config(config: &Config) -> Box<dyn Provider> {
    match config.discovery.provider {
        ProviderKind::Static => Box::new(file::FileServers),
        ProviderKind::Redis => Box::new(redis::RedisDiscovery::new(&config.discovery)),
    }
}
