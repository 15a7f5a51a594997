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

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{info, warn};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, LoadBalancer};

use crate::config::{Balance, PassiveHealthConfig, PoolKind, ServerAddr, Weight};

/// A server the provider wants in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedServer {
    pub addr: ServerAddr,
    pub weight: Weight,
    pub draining: bool,
}

/// State of one server address that outlives membership rebuilds.
#[derive(Debug)]
pub struct ServerState {
    pub addr: SocketAddr,
    /// `host:port` as configured (differs from `addr` for DNS names).
    pub name: String,
    /// `addr` as text: the `server` label of metrics.
    pub label: String,
    draining: AtomicBool,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Requests currently on this server (through this proxy).
    in_flight: AtomicI64,
    /// This server's `canary_lb_upstream_requests_total` series, one per code class.
    pub(crate) upstream_counters:
        OnceLock<[prometheus::IntCounter; crate::metrics::CODE_CLASSES.len()]>,
}

impl ServerState {
    fn new(addr: SocketAddr, name: &str) -> Self {
        ServerState {
            addr,
            name: name.to_string(),
            label: addr.to_string(),
            draining: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            upstream_counters: OnceLock::new(),
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Taken out by passive detection and still cooling off.
    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.load(Relaxed) > now_ms()
    }

    /// A connect failure or a 5xx answer. Returns true when this one ejected the server.
    pub fn record_failure(&self, passive: &PassiveHealthConfig) -> bool {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n >= passive.max_failures {
            self.failures.store(0, Relaxed);
            let until = now_ms() + passive.cool_off.as_millis() as u64;
            self.ejected_until_ms.store(until, Relaxed);
            return true;
        }
        false
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    pub fn begin_request(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn end_request(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub fn record_success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            state.draining.store(w.draining, Relaxed);
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

/// One pool: its load balancer, its feed and the per-server state.
pub struct Pool {
    pub kind: PoolKind,
    feed: Arc<Feed>,
    lb: Selector,
    passive: PassiveHealthConfig,
    /// Pingora asks that updates of one backend view never overlap.
    update_lock: tokio::sync::Mutex<()>,
}

impl Pool {
    pub fn new(
        kind: PoolKind,
        balance: Balance,
        passive: PassiveHealthConfig,
        health_check: Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync>,
    ) -> Pool {
        let feed = Arc::new(Feed::default());
        let backends = || {
            let mut b = pingora_load_balancing::Backends::new(Box::new(FeedDiscovery {
                pool: kind,
                feed: feed.clone(),
            }));
            b.set_health_check(health_check);
            b
        };
        let lb = match balance {
            Balance::RoundRobin => Selector::RoundRobin(LoadBalancer::from_backends(backends())),
            Balance::ConsistentHash => {
                Selector::Consistent(LoadBalancer::from_backends(backends()))
            }
        };
        Pool {
            kind,
            feed,
            lb,
            passive,
            update_lock: tokio::sync::Mutex::new(()),
        }
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
        let result = match &self.lb {
            Selector::RoundRobin(lb) => lb.update().await,
            Selector::Consistent(lb) => lb.update().await,
        };
        if let Err(e) = result {
            warn!("pool {}: discovery update failed: {e}", self.kind);
        }
    }

    /// One active health-check pass over every server, all in parallel.
    pub async fn health_check(&self) {
        self.backends().run_health_check(true).await
    }

    fn backends(&self) -> &pingora_load_balancing::Backends {
        match &self.lb {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Consistent(lb) => lb.backends(),
        }
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
        let backend = match &self.lb {
            Selector::RoundRobin(lb) => lb.select_with(key, 256, accept),
            Selector::Consistent(lb) => lb.select_with(key, 256, accept),
        }?;
        let state = backend.ext.get::<Arc<ServerState>>()?.clone();
        Some((state.addr, state))
    }

    pub fn record_failure(&self, state: &ServerState) {
        if state.record_failure(&self.passive) {
            warn!(
                "pool {}: {} failed {} times in a row, out of rotation for {:?}",
                self.kind, state.label, self.passive.max_failures, self.passive.cool_off
            );
        }
    }

    /// Every server currently in the pool with its health, for `/status` and metrics.
    pub fn view(&self) -> Vec<ServerView> {
        let backends = self.backends();
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

/// Both pools.
pub struct Pools {
    pub production: Pool,
    pub canary: Pool,
}

impl Pools {
    pub fn get(&self, kind: PoolKind) -> &Pool {
        match kind {
            PoolKind::Production => &self.production,
            PoolKind::Canary => &self.canary,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        [&self.production, &self.canary].into_iter()
    }
}
