//! Redis discovery: follows the shared store (schema in `store/`) and feeds the pools through
//! the discovery [`Sink`].
//!
//! One task per proxy. It subscribes to the store's events *before* reading, so no change can slip
//! between the read and the subscription; it then re-reads the whole store (one pipelined round
//! trip) on every event, every `resync_interval`, and when the next lease runs out. A missed
//! message, a write made with plain `redis-cli` without PUBLISH, or an expired lease therefore
//! never leaves the proxy stale for longer than `resync_interval`.
//!
//! When Redis is lost, the pools keep their last known servers (and keep being health-checked);
//! the task reconnects with a capped backoff, resubscribes and resyncs. Bad entries are logged
//! once, counted, and skipped by `Store::read_snapshot`; the rest keeps serving.
//!
//! When Redis answers but its data is lost (restarted without persistence, failed over to an
//! empty replica, `FLUSHALL`), the snapshot has no marker. That store is not followed:
//! an empty answer would take every pool down at once. The pools and routing overrides stay as
//! they are (the file's servers, for a proxy that never had a marked store), discovery is
//! reported down with the reason, and the store is followed again as soon as a write (any
//! `ctl` command, a heartbeat) puts the marker back.
//!
//! A store that comes back, or that was wiped and written again between two reads (its
//! `created_ms` changed) or went back to an older copy (its `generation` went down), holds only
//! what was written since: it is *re-initialised*. It is then not followed at once: for a grace
//! the pools serve its servers plus their last known ones, and the routing in force stays until
//! the store has it again (`reinit.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;

use super::reinit::{Cause, Reconcile, ReconcileView};
use super::DiscoveryErrorKind;
use super::{Backoff, Event, Failure, Provider, RoutingOverrides, Sink, Snapshot as Read};
use crate::config::{redact_url, RedisSettings};
use crate::flags::FlagSet;
use crate::model::{host_name, PerPool, PoolKind};
use crate::pool::WantedServer;
use crate::store::{self, Connection, Endpoint, EndpointError, Marker, Snapshot, Store};
use crate::store::{StoreError, StoredFlags};

const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often this proxy reports the servers it has in rotation (`Store::report_serving`).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The Redis provider: follows the store named by `discovery.url` (its Sentinels, or the
/// Redis Cluster whose seeds it lists).
pub struct RedisDiscovery {
    config: RedisSettings,
}

impl RedisDiscovery {
    pub fn new(config: &RedisSettings) -> RedisDiscovery {
        RedisDiscovery {
            config: config.clone(),
        }
    }
}

#[async_trait]
impl Provider for RedisDiscovery {
    fn describe(&self) -> String {
        describe(&self.config)
    }

    async fn run(self: Box<Self>, sink: Arc<dyn Sink>, shutdown: ShutdownWatch) {
        run(sink, self.config, shutdown).await
    }
}

async fn run(sink: Arc<dyn Sink>, discovery: RedisSettings, mut shutdown: ShutdownWatch) {
    let redacted = describe(&discovery);
    let mut endpoint = match Endpoint::open(
        &discovery.urls,
        discovery.cluster,
        discovery.sentinel.as_ref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            let e = format!("redis {redacted}: {e}");
            log::error!("{e}; discovery stays on the config file's servers");
            sink.apply(Err(Failure {
                error: e,
                kind: DiscoveryErrorKind::Unreachable,
                reconciling: None,
            }));
            return;
        }
    };
    let mut follower = Follower {
        sink: sink.clone(),
        source: redacted.clone(),
        store: Store::new(&discovery.namespace),
        resync: discovery.resync_interval,
        problems: HashSet::new(),
        proxy_id: proxy_id(),
        marker: None,
        store_lost: false,
        reinit_grace: discovery.reinit_grace,
        reconcile: None,
        serving: PerPool::default(),
        last_lease_expiry_ms: None,
        overrides: RoutingOverrides::default(),
        flags: None,
        connected: false,
    };
    let mut backoff = Backoff::new();
    let mut first = true;
    loop {
        let outcome = follower.follow(&mut endpoint, &mut shutdown).await;
        let Err(e) = outcome else { return };
        let e = format!("redis {redacted}: {e}");
        // Log the outage once, not every retry.
        let was_connected = std::mem::take(&mut follower.connected);
        if was_connected {
            backoff.reset();
        }
        if first || was_connected {
            warn!("{e}; serving the last known servers and retrying");
        } else {
            log::debug!("{e}");
        }
        first = false;
        sink.apply(Err(Failure {
            error: e,
            kind: DiscoveryErrorKind::Unreachable,
            reconciling: follower.reconcile_view(store::now_ms()),
        }));
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}

/// The URL (or a cluster's seeds, `cluster:` in front) with passwords hidden, for logs.
fn describe(d: &RedisSettings) -> String {
    let urls = d.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
    if d.cluster {
        format!("cluster:{}", urls.join(","))
    } else {
        urls.join(",")
    }
}

struct Follower {
    sink: Arc<dyn Sink>,
    /// The store's URL without its password, for logs.
    source: String,
    store: Store,
    resync: Duration,
    /// Problems already logged, so each is logged once while it lasts.
    problems: HashSet<String>,
    /// This proxy's name in its in-flight report (`Store::report_proxy`).
    proxy_id: String,
    /// The marker of the last store followed.
    marker: Option<Marker>,
    /// The last snapshot had no marker (logged once per transition).
    store_lost: bool,
    /// `discovery.reinit_grace`: how long at least a re-initialisation keeps the last servers.
    reinit_grace: Duration,
    /// What is kept from before the store was re-initialised, while anything is.
    reconcile: Option<Reconcile>,
    /// The servers last handed to the pools: what a re-initialisation keeps.
    serving: PerPool<Vec<WantedServer>>,
    /// The latest lease expiry among the store's servers at the last read followed.
    last_lease_expiry_ms: Option<u64>,
    /// The routing overrides last handed to the sink (a bad stored value keeps its field).
    overrides: RoutingOverrides,
    /// The feature flags last handed to the sink.
    flags: Option<FlagSet>,
    /// Connected and read the store since the last failure (the outage is then logged, and
    /// the back-off starts again from its shortest wait).
    connected: bool,
}

/// `hostname-pid`: unique per running proxy, readable in `redis-cli KEYS`.
fn proxy_id() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

impl Follower {
    /// Follow the store until shutdown (Ok) or until Redis fails (Err).
    ///
    /// On a cluster the subscription is on one node (a `PUBLISH` reaches every node's
    /// subscribers), the next seed or known node at each reconnect; the reads and reports go
    /// through the cluster connection, which follows the namespace's slot wherever it moves.
    async fn follow(
        &mut self,
        endpoint: &mut Endpoint,
        shutdown: &mut ShutdownWatch,
    ) -> Result<(), DiscoveryError> {
        let mut pubsub = endpoint.subscriber(IO_TIMEOUT).await?;
        timed(self.store.subscribe_events(&mut pubsub)).await?;
        let mut conn = endpoint.connect(IO_TIMEOUT).await?;
        let mut next_expiry = self.sync(&mut conn).await?;
        info!("redis discovery: following {}", self.source);
        self.connected = true;

        let mut messages = pubsub.on_message();
        let mut resync = tokio::time::interval(self.resync);
        resync.reset();
        let mut report = tokio::time::interval(REPORT_EVERY);
        loop {
            let until_expiry = next_expiry
                .map(|at| Duration::from_millis(at.saturating_sub(store::now_ms()) + 1))
                .unwrap_or(Duration::MAX);
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                msg = messages.next() => {
                    if msg.is_none() {
                        return Err(DiscoveryError::SubscriptionClosed);
                    }
                    next_expiry = self.sync(&mut conn).await?;
                }
                _ = resync.tick() => next_expiry = self.sync(&mut conn).await?,
                _ = tokio::time::sleep(until_expiry) => next_expiry = self.sync(&mut conn).await?,
                _ = report.tick() => self.report(&mut conn).await?,
            }
        }
    }

    /// Read the whole store and apply it. Returns when to read again at the latest: the
    /// earliest lease expiry still ahead, or the end of a re-initialisation's grace.
    async fn sync(&mut self, conn: &mut Connection) -> Result<Option<u64>, DiscoveryError> {
        let now = store::now_ms();
        let snap = timed(self.store.read_snapshot(conn, now)).await?;
        self.sink.count(Event::Resync);
        self.check_reinitialised(snap.marker.as_ref(), now);
        let Some(marker) = snap.marker.clone() else {
            self.keep_through_lost_store(now);
            return Ok(None);
        };
        self.note_marker(marker);
        let flags = timed(self.store.read_flags(conn)).await?;
        let next_expiry = snap.next_lease_expiry_ms();
        let grace_end = self.apply(snap, flags, now);
        Ok(match (next_expiry, grace_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Start reconciling when the store followed so far was re-initialised (`reinit.rs`). A
    /// proxy that never followed a store has nothing to keep; a lost store was counted when
    /// its marker went, not again when it comes back.
    fn check_reinitialised(&mut self, next: Option<&Marker>, now_ms: u64) {
        let Some(prev) = &self.marker else { return };
        if self.store_lost {
            return;
        }
        let Some(cause) = Cause::detect(prev, next) else {
            return;
        };
        let lease_left = Duration::from_millis(
            self.last_lease_expiry_ms
                .map_or(0, |at| at.saturating_sub(now_ms)),
        );
        let grace = self.reinit_grace.max(lease_left);
        warn!(
            "redis discovery: {cause}: keeping the last known servers beside the store's for \
             {grace:?} once it is written again (or until they are all back), and the routing in \
             force until the store has it again"
        );
        self.sink.count(Event::Reinitialised);
        self.reconcile = Some(Reconcile::start(
            cause,
            now_ms,
            self.serving.clone(),
            self.sink.routing_in_force(),
            self.reinit_grace,
            lease_left,
        ));
    }

    /// The store has no marker: keep pools and overrides, report discovery down.
    fn keep_through_lost_store(&mut self, now_ms: u64) {
        let e = format!(
            "redis store has no meta marker (`{}` is missing: Redis lost its data, or nothing \
             was ever written to it): keeping the last known servers and routing",
            self.store.marker_key()
        );
        if !self.store_lost {
            warn!(
                "redis discovery: {e}; the store is followed again once a `canary-lb ctl` write \
                 or a heartbeat re-creates the marker"
            );
        }
        self.store_lost = true;
        self.sink.apply(Err(Failure {
            error: e,
            kind: DiscoveryErrorKind::StoreLost,
            reconciling: self.reconcile_view(now_ms),
        }));
    }

    /// What `/status` shows of a reconciliation in progress.
    fn reconcile_view(&self, now_ms: u64) -> Option<ReconcileView> {
        self.reconcile.as_ref().map(|r| r.view(now_ms))
    }

    /// Log a marker coming back.
    fn note_marker(&mut self, marker: Marker) {
        if self.store_lost {
            info!(
                "redis discovery: the store's meta marker is back (generation {}): following \
                 the store again{}",
                marker.generation,
                if self.reconcile.is_some() {
                    ", with the last known servers beside it for the grace"
                } else {
                    ""
                }
            );
            self.store_lost = false;
        }
        self.marker = Some(marker);
    }

    /// Apply a read of a marked store (with what a re-initialisation keeps laid over it).
    /// Returns the end of a re-initialisation's grace, if it is still ahead.
    fn apply(&mut self, snap: Snapshot, flags: StoredFlags, now_ms: u64) -> Option<u64> {
        let sink = self.sink.clone();
        let mut now_seen = HashSet::new();
        for p in snap.problems.iter().chain(&flags.problems) {
            let text = format!("{}: {}", p.key, p.detail);
            if !self.problems.contains(&text) {
                warn!("redis discovery: skipped bad data at {text}");
                sink.count(Event::Skipped(p.kind));
            }
            now_seen.insert(text);
        }
        self.problems = now_seen;

        let stored = PerPool::from_fn(|kind| {
            snap.pool(kind)
                .iter()
                .map(|s| WantedServer {
                    addr: s.addr.clone(),
                    weight: s.weight,
                    draining: s.draining,
                })
                .collect()
        });
        let stored_routing = RoutingOverrides {
            canary_percent: snap.canary_percent,
            salt: snap.salt.clone(),
        };
        self.last_lease_expiry_ms = snap
            .servers
            .values()
            .flatten()
            .filter_map(|s| s.lease_expiry_ms)
            .max();
        let (servers, mut overrides) = match &mut self.reconcile {
            Some(r) => r.apply(now_ms, stored, stored_routing),
            None => (stored, stored_routing),
        };
        self.serving = servers.clone();
        // A bad value keeps the previous one in force rather than falling back to the file.
        let bad = |kind: &str| snap.problems.iter().any(|p| p.kind == kind);
        if bad("canary_percent") {
            overrides.canary_percent = self.overrides.canary_percent;
        }
        if bad("salt") {
            overrides.salt = self.overrides.salt.clone();
        }
        self.overrides = overrides.clone();
        // Redis's flags replace the file's while `ns:flags` has any field; bad ones are
        // skipped (off), the others apply.
        let flags = if !flags.present {
            None
        } else {
            match FlagSet::build(flags.flags.iter().map(|(n, f)| (n.as_str(), f))) {
                Ok(set) => Some(set),
                // Not reached: each flag was validated as it was read. Keep what is in force
                // (the last set handed over).
                Err(e) => {
                    warn!("redis discovery: flags not applied: {e}");
                    sink.count(Event::Skipped("flag"));
                    self.flags.clone()
                }
            }
        };
        self.flags = flags.clone();
        let grace_end = self.reconcile.as_ref().and_then(Reconcile::wake_at_ms);
        if let Some(r) = self.reconcile.take_if(|r| r.is_done()) {
            info!(
                "redis discovery: reconciled after {}: the store holds every kept server or \
                 their grace is over, and has its routing again; following it as it is",
                r.cause()
            );
        }
        sink.apply(Ok(Read {
            servers: Some(servers),
            overrides: Some(overrides),
            flags,
            reconciling: self.reconcile_view(now_ms),
        }));
        grace_end
    }

    /// Tell the store which servers this proxy has in rotation and what it has in flight.
    async fn report(&self, conn: &mut Connection) -> Result<(), DiscoveryError> {
        let mut in_flight = Vec::new();
        for kind in PoolKind::ALL {
            let view = self.sink.view(kind);
            in_flight.extend(view.iter().map(|s| (kind, s.name.clone(), s.in_flight)));
            let serving: Vec<String> = view
                .into_iter()
                .filter(|s| s.in_rotation)
                .map(|s| s.name)
                .collect();
            timed(
                self.store
                    .report_serving(conn, kind, &serving, store::now_ms()),
            )
            .await?;
        }
        timed(self.store.report_proxy(conn, &self.proxy_id, &in_flight)).await
    }
}

/// Why following the store stopped; the task logs it, reports it through the sink and
/// reconnects. Each message is the text of its cause alone (the task adds `redis <url>: `).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("subscription closed")]
    SubscriptionClosed,
    /// Connecting failed (the Sentinels' answer included).
    #[error(transparent)]
    Connect(#[from] EndpointError),
}

/// Await a Redis call with the I/O timeout, turning both failures into a [`DiscoveryError`].
async fn timed<T, E: Into<DiscoveryError>>(
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(DiscoveryError::Timeout(IO_TIMEOUT)),
    }
}
