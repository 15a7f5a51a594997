//! Where the servers of each pool come from: the discovery providers.
//!
//! A [`Provider`] reads its source and hands each full read to a [`Sink`] as one [`Snapshot`]
//! (the wanted servers of each pool and, if its source has them, routing overrides and feature
//! flags), or a [`Failure`] when the source fails; it never sees the pools, the proxy or the
//! metrics registry. The process state implements the sink (`state::Shared`) and applies a
//! snapshot in one step, so a provider's whole view of the process is the four methods of
//! [`Sink`]. A provider that retries waits with the one [`Backoff`]. Three providers exist:
//! - `file.rs` ([`file::FileServers`]): the `servers` lists of the config file, applied again
//!   on SIGHUP;
//! - `redis.rs` ([`redis::RedisDiscovery`]): follows the shared Redis store; `reinit.rs`
//!   ([`reinit::Reconcile`]) is what it keeps when that store is re-initialised (wiped and
//!   written again), so a re-created store never shrinks a pool at once;
//! - `file_watch.rs` ([`file_watch::FileWatch`]): a servers file beside the config, followed
//!   as it changes (polled, no SIGHUP).
//!
//! [`from_settings`] is the one place that turns the configured provider into a running one.
//! What the rest of the process does around a provider (whether the config file's lists are
//! its data, where rollouts are coordinated) is `config::Provider::role`, so nothing else
//! matches on the kind.
//!
//! Adding a provider (DNS SRV, Consul, Kubernetes endpoints), as `file_watch` was added:
//! 1. one new file here, say `consul.rs`, with a type that implements [`Provider`]: `describe`
//!    says where servers come from (without secrets), and `run` loops until `shutdown` changes,
//!    handing each read of the source to [`Sink::apply`] as `Ok(Snapshot)`, or `Err(Failure)`
//!    when the source fails (the pools then keep their last servers: never hand over an empty
//!    list for a failed read), and retrying with a [`Backoff`];
//! 2. one `pub mod` line and one arm in [`from_settings`];
//! 3. in `config/discovery.rs`, its settings (a variant of `ProviderSettings`, built and
//!    validated in `DiscoveryConfig::settings`) and its role (`Provider::role`: usually
//!    `ProviderRole::OWN_SOURCE`); its name is a variant of `config::Provider` and any key of
//!    its own a field of `DiscoveryConfig` (`config/schema/discovery.rs`), so the flat
//!    `discovery: { provider: …, … }` map keeps one shape.
//!
//! Nothing else changes: the pools, health checks, passive ejection, routing, `/status` and the
//! metrics work on what the sink was given.

pub mod file;
pub mod file_watch;
pub mod metrics;
pub mod redis;
pub mod reinit;

pub use metrics::{DiscoveryErrorKind, DiscoveryMetrics};
pub use redis::DiscoveryError;
pub use reinit::ReconcileView;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;

use crate::config::{Config, ProviderSettings};
use crate::flags::FlagSet;
use crate::model::{PerPool, Percent, PoolKind};
use crate::pool::{ServerView, WantedServer};

/// Values a provider may set over the file's `routing` section while present (the Redis
/// `routing` hash). `routing::CanaryPolicy::layered` lays them over the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingOverrides {
    pub canary_percent: Option<Percent>,
    pub salt: Option<String>,
}

/// One full read of a source, handed over whole: the state applies it in one step.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The wanted servers of each pool (applied at each pool's next refresh); `None`: the
    /// source has no servers of its own, the config file's lists stay (the static provider).
    pub servers: Option<PerPool<Vec<WantedServer>>>,
    /// The routing overrides the source sets; `None`: it has none of its own, whatever is in
    /// force stays (the file provider's, where a finished rollout leaves its weight).
    pub overrides: Option<RoutingOverrides>,
    /// The source's feature flags; `None`: it has none, the config file's apply.
    pub flags: Option<FlagSet>,
    /// Part of what is served is kept from before a re-initialisation of the source's store
    /// (`reinit.rs`): discovery is then reported down with the view's message, and
    /// `canary_lb_discovery_reconciling` is 1.
    pub reconciling: Option<ReconcileView>,
}

/// The source could not be read: the pools keep their servers, discovery is reported down and
/// the error counted.
#[derive(Debug, Clone)]
pub struct Failure {
    /// For `/status` and the logs: where, and what went wrong.
    pub error: String,
    /// Its `canary_lb_discovery_errors_total` label.
    pub kind: DiscoveryErrorKind,
    /// What is kept from before a re-initialisation, while anything is.
    pub reconciling: Option<ReconcileView>,
}

/// What happened at a source besides a read or a failure, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A full read (`canary_lb_discovery_resyncs_total`).
    Resync,
    /// Bad data the source skipped, by its kind (`canary_lb_discovery_errors_total`; a kind
    /// the metrics do not know gets its own label value).
    Skipped(&'a str),
    /// The source's store was re-initialised (`canary_lb_discovery_store_reinitialised_total`).
    Reinitialised,
}

/// What a provider may do to the process: hand in what it read, count what it saw, and read
/// back what the proxy serves (for providers that report to, or reconcile with, their source).
pub trait Sink: Send + Sync {
    /// Apply one read of the source (`Ok`: discovery is up and the pools refresh now) or its
    /// failure (`Err`).
    fn apply(&self, update: Result<Snapshot, Failure>);
    /// Count `event`.
    fn count(&self, event: Event<'_>);
    /// The servers of `pool` as the proxy sees them.
    fn view(&self, pool: PoolKind) -> Vec<ServerView>;
    /// The routing that a re-initialised store must not take away: the provider's overrides,
    /// or a running rollout's weight and salt while one is in force (its state went with the
    /// store).
    fn routing_in_force(&self) -> RoutingOverrides;
}

/// The wait between retries of a failed source: doubling from 100 ms to 5 s, back to 100 ms
/// once the source answers. Every provider that retries uses this one.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The source answered: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The wait before the next try (each one twice the last, up to the cap).
    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    /// Wait before the next try; false when `shutdown` came first (stop retrying).
    pub async fn wait(&mut self, shutdown: &mut ShutdownWatch) -> bool {
        let wait = self.next_wait();
        tokio::select! {
            _ = shutdown.changed() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

/// A source of servers. `run` is started once, inside Pingora's background service (never
/// before `run_forever`), and returns when `shutdown` changes or it has nothing left to do.
#[async_trait]
pub trait Provider: Send {
    /// Where servers come from, for `/status`, logs and `canary-lb check`; no secrets.
    fn describe(&self) -> String;
    /// What `canary-lb check` can tell of the source at once, without a network round trip
    /// (a file that does not parse); `Err` is shown as a warning naming `discovery.*`.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    /// Feed `sink` until shutdown.
    async fn run(self: Box<Self>, sink: Arc<dyn Sink>, shutdown: ShutdownWatch);
}

/// The provider `settings` name: the one place a provider is chosen.
pub fn from_settings(settings: &ProviderSettings) -> Box<dyn Provider> {
    match settings {
        ProviderSettings::Static => Box::new(file::FileServers),
        ProviderSettings::Redis(redis) => Box::new(redis::RedisDiscovery::new(redis)),
        ProviderSettings::FileWatch(watch) => Box::new(file_watch::FileWatch::new(watch)),
    }
}

/// The provider `config` asks for. Its settings were validated with the config; a config
/// built by hand with bad ones gets the static provider, which reads nothing, and the error
/// logged.
pub fn from_config(config: &Config) -> Box<dyn Provider> {
    match config.discovery.settings() {
        Ok(settings) => from_settings(&settings),
        Err(e) => {
            log::error!("discovery: {e}; serving the config file's servers");
            Box::new(file::FileServers)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_starts_over_once_reset() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..9).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }
}
