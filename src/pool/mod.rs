//! The servers of each pool, as the proxy sees them right now.
//!
//! A [`Pool`] wraps one Pingora `LoadBalancer`. Its membership comes from a *feed*: the list of
//! wanted servers, written by whichever provider is configured (the config file's `servers`, or
//! the Redis store) and read by Pingora through our [`ServiceDiscovery`] implementation. Writers
//! only swap the feed and call [`Pool::refresh`]; requests never wait on discovery I/O, because
//! Pingora swaps its selector behind an `ArcSwap`.
//!
//! Per-server state that must survive membership rebuilds (draining, passive-failure counters)
//! lives in one [`ServerState`] per address, shared through `Backend::ext`, so selection reads
//! it without any lookup or lock.

pub mod failure;
pub mod health;
pub mod metrics;
mod passive;
mod server;
pub mod upstream;

pub use metrics::{CodeClass, PoolMetrics, PoolSeries, ServerStateLabel, UpstreamSeries};
pub use passive::{ErrorRate, PassiveHealth};
pub use server::ServerState;
pub use upstream::{PeerTimeouts, Upstream, UpstreamError};

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{info, warn};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, LoadBalancer};

use crate::config::{Balance, HealthCheckConfig, PoolConfig};
use crate::model::{PerPool, PoolKind, ServerAddr, Weight};

/// A server the provider wants in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedServer {
    pub addr: ServerAddr,
    pub weight: Weight,
    pub draining: bool,
}

/// The wanted servers of one pool plus the state registry, shared by the pool and its discovery.
#[derive(Default)]
struct Feed {
    wanted: ArcSwap<Vec<WantedServer>>,
    states: Mutex<HashMap<SocketAddr, Arc<ServerState>>>,
    /// Last good resolution of each DNS name, used when a lookup fails.
    resolved: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

struct FeedDiscovery {
    pool: PoolKind,
    feed: Arc<Feed>,
}

#[async_trait]
impl ServiceDiscovery for FeedDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let wanted = self.feed.wanted.load_full();
        let mut resolved = Vec::with_capacity(wanted.len());
        for w in wanted.iter() {
            for addr in self.resolve(&w.addr).await {
                resolved.push((addr, w));
            }
        }
        let mut states = self
            .feed
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut backends = BTreeSet::new();
        let mut keep = HashMap::with_capacity(resolved.len());
        for (addr, w) in resolved {
            let state = states
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| Arc::new(ServerState::new(addr, w.addr.as_str())));
            state.set_draining(w.draining);
            let mut backend = Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: w.weight.get() as usize,
                ext: Default::default(),
            };
            backend.ext.insert(state.clone());
            backends.insert(backend);
            keep.insert(addr, state);
        }
        *states = keep;
        Ok((backends, HashMap::new()))
    }
}

impl FeedDiscovery {
    async fn resolve(&self, addr: &ServerAddr) -> Vec<SocketAddr> {
        if let Some(sa) = addr.socket_addr() {
            return vec![sa];
        }
        let name = addr.as_str();
        let lookup = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(name));
        let fresh: Option<Vec<SocketAddr>> = match lookup.await {
            Ok(Ok(iter)) => Some(iter.collect()),
            Ok(Err(e)) => {
                warn!("pool {}: cannot resolve {name}: {e}", self.pool);
                None
            }
            Err(_) => {
                warn!("pool {}: resolving {name} timed out", self.pool);
                None
            }
        };
        let mut cache = self
            .feed
            .resolved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match fresh {
            Some(list) if !list.is_empty() => {
                cache.insert(name.to_string(), list.clone());
                list
            }
            _ => cache.get(name).cloned().unwrap_or_default(),
        }
    }
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

impl Selector {
    fn balance(&self) -> Balance {
        match self {
            Selector::RoundRobin(_) => Balance::RoundRobin,
            Selector::Consistent(_) => Balance::ConsistentHash,
        }
    }

    fn backends(&self) -> &pingora_load_balancing::Backends {
        match self {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Consistent(lb) => lb.backends(),
        }
    }

    async fn update(&self) -> pingora_error::Result<()> {
        match self {
            Selector::RoundRobin(lb) => lb.update().await,
            Selector::Consistent(lb) => lb.update().await,
        }
    }
}

/// What `/status` and the metrics report about one server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerView {
    pub addr: String,
    pub name: String,
    pub weight: usize,
    pub healthy: bool,
    pub draining: bool,
    pub ejected: bool,
    pub in_rotation: bool,
    pub in_flight: i64,
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The `health_check` section makes no valid probe request (e.g. a `host` that is not a
    /// valid header value); Pingora's error says which part.
    #[error(transparent)]
    HealthCheck(#[from] pingora_error::BError),
    /// A `pools.X.tls` file cannot be used; the error names the key.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// One pool: its load balancer, its feed and the per-server state.
///
/// The selector is rebuilt when `balance` changes (a SIGHUP): [`Pool::set_balance`] records the
/// wanted one and the next [`Pool::refresh`] builds, fills and health-checks a new selector
/// before swapping it in. Per-server state (ejections, in-flight counts) lives in the feed and
/// carries over. Passive-health settings are not kept here: each record call gets the ones in
/// force for its request.
pub struct Pool {
    pub kind: PoolKind,
    feed: Arc<Feed>,
    lb: ArcSwap<Selector>,
    /// The balance the next refresh must give the selector.
    balance: Mutex<Balance>,
    /// Health checks as configured at start (changing them needs a restart).
    health_check: HealthCheckConfig,
    /// How requests and health checks connect to the servers (`tls`, `protocol`; restart).
    upstream: Arc<Upstream>,
    /// Pingora asks that updates of one backend view never overlap.
    update_lock: tokio::sync::Mutex<()>,
    /// This pool's series (`metrics.rs`).
    metrics: PoolSeries,
}

impl Pool {
    /// The pool `kind` as `config` describes it (its `tls` files are read here), checked by
    /// `health_check`, measured in `metrics`.
    pub fn new(
        kind: PoolKind,
        config: &PoolConfig,
        health_check: &HealthCheckConfig,
        metrics: &PoolMetrics,
    ) -> Result<Pool, PoolError> {
        let feed = Arc::new(Feed::default());
        let upstream = Arc::new(Upstream::load(kind, config)?);
        let balance = config.balance;
        let lb = build_selector(kind, &feed, balance, health_check, &upstream)?;
        Ok(Pool {
            kind,
            feed,
            lb: ArcSwap::from_pointee(lb),
            balance: Mutex::new(balance),
            health_check: health_check.clone(),
            upstream,
            update_lock: tokio::sync::Mutex::new(()),
            metrics: metrics.series(kind),
        })
    }

    /// The peer a request to `server` connects with: the pool's TLS and protocol, `timeouts`,
    /// and `group_key` (the caller's connection-reuse slot).
    pub fn peer(
        &self,
        server: &ServerState,
        timeouts: &PeerTimeouts,
        group_key: u64,
    ) -> Box<pingora_core::upstreams::peer::HttpPeer> {
        self.upstream
            .peer(server.addr, &server.name, timeouts, group_key)
    }

    /// Use `balance` from the next [`Pool::refresh`] on.
    pub fn set_balance(&self, balance: Balance) {
        *self
            .balance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = balance;
    }

    /// Replace the wanted servers; takes effect at the next [`Pool::refresh`].
    pub fn set_wanted(&self, servers: Vec<WantedServer>) {
        if **self.feed.wanted.load() != servers {
            info!(
                "pool {}: {} server(s) wanted: {}",
                self.kind,
                servers.len(),
                servers
                    .iter()
                    .map(|s| if s.draining {
                        format!("{} (draining)", s.addr)
                    } else {
                        s.addr.to_string()
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.feed.wanted.store(Arc::new(servers));
        }
    }

    /// Run discovery (resolve names, rebuild the selector if membership changed).
    pub async fn refresh(&self) {
        let _guard = self.update_lock.lock().await;
        let balance = *self
            .balance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.lb.load().balance() != balance {
            match build_selector(
                self.kind,
                &self.feed,
                balance,
                &self.health_check,
                &self.upstream,
            ) {
                Ok(lb) => {
                    if let Err(e) = lb.update().await {
                        warn!("pool {}: discovery update failed: {e}", self.kind);
                    }
                    // New backends start healthy: probe them once before they take requests.
                    lb.backends().run_health_check(true).await;
                    self.lb.store(Arc::new(lb));
                    info!("pool {}: balance is now {balance:?}", self.kind);
                    return;
                }
                Err(e) => warn!(
                    "pool {}: cannot switch to {balance:?}, keeping the current selector: {e}",
                    self.kind
                ),
            }
        }
        if let Err(e) = self.lb.load().update().await {
            warn!("pool {}: discovery update failed: {e}", self.kind);
        }
    }

    /// One active health-check pass over every server, all in parallel.
    pub async fn health_check(&self) {
        self.lb.load().backends().run_health_check(true).await
    }

    /// Pick a server in rotation (healthy, not draining, not ejected) that is not in `skip`.
    pub fn select(
        &self,
        key: &[u8],
        skip: &[SocketAddr],
    ) -> Option<(SocketAddr, Arc<ServerState>)> {
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.ext
                    .get::<Arc<ServerState>>()
                    .is_some_and(|s| !s.draining() && !s.ejected() && !skip.contains(&s.addr))
        };
        let backend = match &**self.lb.load() {
            Selector::RoundRobin(lb) => lb.select_with(key, 256, accept),
            Selector::Consistent(lb) => lb.select_with(key, 256, accept),
        }?;
        let state = backend.ext.get::<Arc<ServerState>>()?.clone();
        Some((state.addr, state))
    }

    /// A transport failure of `state` seen by a request: connect refused, timed out or
    /// unroutable, or a reset or timeout before any response byte. Never call this for an
    /// error that is the proxy's own or the client's.
    pub fn record_transport_failure(&self, state: &ServerState, passive: &PassiveHealth) {
        let n = state.record_transport_failure();
        if n >= passive.max_failures {
            self.try_eject(state, &format!("{n} transport failures in a row"), passive);
        }
    }

    /// `state` answered with `status`: ends a run of transport failures, and feeds the
    /// optional 5xx-rate detection.
    pub fn record_answer(&self, state: &ServerState, status: u16, passive: &PassiveHealth) {
        if let Some((answers, errors)) = state.record_answer(status, passive.error_rate.as_ref()) {
            self.try_eject(
                state,
                &format!("{errors} of {answers} answers were 5xx"),
                passive,
            );
        }
    }

    /// Eject `state` for `cool_off` unless that would take out more than
    /// `max_ejection_percent` of the pool (rounded down).
    fn try_eject(&self, state: &ServerState, why: &str, passive: &PassiveHealth) {
        // The state registry's lock also serialises ejection decisions, so two requests
        // failing at once cannot both pass the cap.
        let states = self
            .feed
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let total = states.len();
        let allowed = total * passive.max_ejection_percent as usize / 100;
        let others_ejected = states
            .values()
            .filter(|s| s.addr != state.addr && s.ejected())
            .count();
        if others_ejected + 1 > allowed {
            if state.refusal_log_due(passive.cool_off) {
                warn!(
                    "pool {}: {} looks unhealthy ({why}) but stays in rotation: ejecting it \
                     would take out more than {}% of the pool ({others_ejected} of {total} \
                     already out); active health checks decide",
                    self.kind, state.label, passive.max_ejection_percent
                );
            }
            return;
        }
        state.eject(passive.cool_off);
        warn!(
            "pool {}: {} out of rotation for {:?}: {why}",
            self.kind, state.label, passive.cool_off
        );
    }

    /// This pool's series, for the proxy to record attempts and TLS failures in.
    pub fn metrics(&self) -> &PoolSeries {
        &self.metrics
    }

    /// Bring this pool's gauges and per-server series up to date (at scrape time).
    pub fn export_metrics(&self) {
        self.metrics.export(&self.view());
    }

    /// Every server currently in the pool with its health, for `/status` and metrics.
    pub fn view(&self) -> Vec<ServerView> {
        let lb = self.lb.load();
        let backends = lb.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let s = b.ext.get::<Arc<ServerState>>()?;
                let healthy = backends.ready(b);
                let (draining, ejected) = (s.draining(), s.ejected());
                Some(ServerView {
                    addr: s.label.clone(),
                    name: s.name.clone(),
                    weight: b.weight,
                    healthy,
                    draining,
                    ejected,
                    in_rotation: healthy && !draining && !ejected,
                    in_flight: s.in_flight(),
                })
            })
            .collect()
    }
}

/// A selector of `balance` over the servers of `feed`, with its own health checker.
fn build_selector(
    kind: PoolKind,
    feed: &Arc<Feed>,
    balance: Balance,
    health_check: &HealthCheckConfig,
    upstream: &Arc<Upstream>,
) -> Result<Selector, PoolError> {
    let mut backends = pingora_load_balancing::Backends::new(Box::new(FeedDiscovery {
        pool: kind,
        feed: feed.clone(),
    }));
    backends.set_health_check(health::checker_for(health_check, kind, upstream.clone())?);
    Ok(match balance {
        Balance::RoundRobin => Selector::RoundRobin(LoadBalancer::from_backends(backends)),
        Balance::ConsistentHash => Selector::Consistent(LoadBalancer::from_backends(backends)),
    })
}

/// Both pools.
pub type Pools = PerPool<Pool>;
