//! Every metric canary-lb exports, in one place, and the in-process counters that later
//! features (automatic canary analysis) read without going through the text endpoint.
//!
//! This module uses nothing of the crate but `model`: the pools hand it plain values
//! ([`ServerSample`] at scrape time), and each server's state holds the [`UpstreamSeries`]
//! handles this module fills, so metrics never reads pool, routing or config types. Label
//! values are the typed enums of [`labels`], which own their text and their index.
//!
//! Series exist from the first scrape: every label set known at start (pools, routing
//! reasons, discovery error kinds, config-change sources, refusal codes, pool server states,
//! and the proxy's own 5xx answers per pool and method, [`PRESET_REQUEST_CODES`]) is created
//! at 0 in [`Metrics::new`], and a server's upstream series at 0 when a scrape first sees it.
//! A series that appears at 1 has no earlier sample, so `increase()` in an alert rule would
//! miss that first event.
//!
//! Request-path handles whose labels are known up front (per pool, per reason) are resolved
//! once here, so a request does not hash label values for them. Gauges that describe the
//! pools (`server_up`, `pool_servers`) are recomputed from the live pool state when scraped,
//! which is also where series of servers that left a pool are removed.
//!
//! Beside the proxy's own families the registry holds what an operator looks for first on any
//! service: `canary_lb_build_info{version,commit}` (always 1; the commit is the one `build.rs`
//! read from git, or `unknown`), the prometheus crate's `process_*` collector (CPU, memory,
//! open descriptors, start time; Linux only) and the outcome of SIGHUP reloads
//! ([`Metrics::record_config_reload`]).

pub mod labels;
pub mod rollout;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use pingora_core::services::listening::ConnectionLimit;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use labels::{assert_distinct, LabelValue, VerdictLabel};
pub use labels::{
    BudgetLabel, ClientErrorKind, CodeClass, ConfigSource, DiscoveryErrorKind, MethodLabel,
    RefusalCode, ReloadResult, RolloutPhaseLabel, ServerStateLabel, UpstreamTlsFailure,
};
pub use rollout::RolloutMetrics;

use crate::model::{PerPool, PoolKind, Reason};

/// Status codes 0 (no response) ..= 999, times methods: the request counter cache size.
const CODES: usize = 1000;

/// Request series that exist from the first scrape, for every pool and method: the answers
/// canary-lb gives by itself when an upstream fails (502), none is left (503) or one is too
/// slow (504). A 5xx alert's `rate()` then sees the first of them; other codes appear when
/// they first happen (a series per status code ever seen would be 1,000 per pool and method).
pub const PRESET_REQUEST_CODES: [u16; 3] = [502, 503, 504];

/// The version `canary_lb_build_info` reports: the crate's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit `canary_lb_build_info` reports: `CANARY_LB_COMMIT` at build time (`build.rs`
/// sets it from git, or takes it from the environment), `unknown` without either.
pub const COMMIT: &str = match option_env!("CANARY_LB_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Request and 5xx counts of one pool since start, readable in-process.
#[derive(Debug, Default)]
pub struct PoolCounts {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// What the metrics need to know about one server of a pool at scrape time; the pools hand
/// these over as plain values, so metrics never reads pool types.
#[derive(Debug, Clone, Copy)]
pub struct ServerSample<'a> {
    pub pool: PoolKind,
    /// The `server` label: the resolved `ip:port`.
    pub server: &'a str,
    /// Passes active health checks.
    pub healthy: bool,
    /// Taken out by passive health and cooling off.
    pub ejected: bool,
    pub draining: bool,
}

/// One upstream server's `canary_lb_upstream_requests_total` series, one per [`CodeClass`],
/// resolved on the server's first attempt. The server's state owns it, so an attempt neither
/// hashes labels nor looks the server up.
#[derive(Debug, Default)]
pub struct UpstreamSeries(OnceLock<[IntCounter; CodeClass::ALL.len()]>);

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `requests` handles per pool, indexed by `code * MethodLabel::ALL.len() + method`,
    /// filled on first use: the request path then neither hashes labels nor takes the
    /// vector's lock.
    request_handles: PerPool<Box<[OnceLock<IntCounter>]>>,
    duration: PerPool<Histogram>,
    upstream: IntCounterVec,
    server_up: IntGaugeVec,
    pool_servers: PerPool<[IntGauge; ServerStateLabel::ALL.len()]>,
    decisions: PerPool<[IntCounter; Reason::ALL.len()]>,
    retries: PerPool<IntCounter>,
    canary_percent: Gauge,
    discovery_up: IntGauge,
    discovery_errors: IntCounterVec,
    discovery_error_handles: [IntCounter; DiscoveryErrorKind::ALL.len()],
    pub discovery_resyncs: IntCounter,
    /// Re-initialisations of the discovery store seen (wiped, re-created, older copy).
    pub discovery_store_reinitialised: IntCounter,
    /// 1 while the proxy keeps servers or routing from before a re-initialisation.
    pub discovery_reconciling: IntGauge,
    config_changes: [IntCounter; ConfigSource::ALL.len()],
    /// Requests refused at the edge, by the status they got.
    refused: [IntCounter; RefusalCode::ALL.len()],
    /// The proxy listener's connection limit, read at scrape time.
    connection_limit: OnceLock<Arc<ConnectionLimit>>,
    client_connections: IntGauge,
    client_connections_max: IntGauge,
    client_connections_refused: IntCounter,
    /// The admin port's connection limit, read at scrape time for its client errors.
    admin_connection_limit: OnceLock<Arc<ConnectionLimit>>,
    /// What clients did wrong, by kind: counted here, logged at debug only.
    client_errors: [IntCounter; ClientErrorKind::ALL.len()],
    /// Failed TLS connections to app servers, per pool and kind (`pools.X.tls`).
    upstream_tls_failures: PerPool<[IntCounter; UpstreamTlsFailure::ALL.len()]>,
    /// HTTP/2 streams answered 503 because an upstream budget had no place, by budget.
    budget_refused: [IntCounter; BudgetLabel::ALL.len()],
    /// Upstream requests of HTTP/2 streams in flight (holding a place in the budgets).
    pub h2_upstream_in_flight: IntGauge,
    /// Access log lines dropped because the writer could not keep up.
    pub access_log_dropped: IntCounter,
    counts: PerPool<PoolCounts>,
    /// (pool, server) pairs that have series, to remove them when the server leaves.
    seen_servers: Mutex<HashSet<(PoolKind, String)>>,
    pub rollout: RolloutMetrics,
    /// Stored values refused because a newer release wrote them, by kind (`store::codec`).
    store_newer_schema: IntCounterVec,
    /// SIGHUP reloads by [`ReloadResult`].
    config_reloads: [IntCounter; ReloadResult::ALL.len()],
    /// 1 when the last reload (or the start) applied the file, 0 after a refused one.
    config_last_reload_success: IntGauge,
    /// Unix time of the last reload attempt, or of the start.
    config_last_reload_timestamp: Gauge,
}

/// `metric`, registered in `registry` (which keeps a clone; the handle shares its value).
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let requests = counter_vec(
            "canary_lb_requests_total",
            "Client requests answered, by pool, status code and method.",
            &["pool", "code", "method"],
        )?;
        // 0.5 ms .. 10 s
        let buckets = crate::model::LATENCY_BUCKETS_S.to_vec();
        let duration_vec = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "canary_lb_request_duration_seconds",
                    "Time from request start to the end of the response, by pool.",
                )
                .buckets(buckets),
                &["pool"],
            )?,
        )?;
        let upstream = counter_vec(
            "canary_lb_upstream_requests_total",
            "Attempts sent to upstream servers, by answer class (error = no answer).",
            &["pool", "server", "code_class"],
        )?;
        let server_up = gauge_vec(
            "canary_lb_server_up",
            "1 when the server passes health checks, 0 when not.",
            &["pool", "server"],
        )?;
        let pool_servers_vec = gauge_vec(
            "canary_lb_pool_servers",
            "Servers per pool by state (healthy, unhealthy, draining).",
            &["pool", "state"],
        )?;
        let decisions_vec = counter_vec(
            "canary_lb_routing_decisions_total",
            "Routing decisions by chosen pool and reason.",
            &["pool", "reason"],
        )?;
        let retries_vec = counter_vec(
            "canary_lb_retries_total",
            "Requests retried on another server, by pool.",
            &["pool"],
        )?;
        let canary_percent = registered(
            &registry,
            Gauge::new(
                "canary_lb_canary_percent",
                "Share of users routed to canary by percentage, in percent.",
            )?,
        )?;
        let discovery_up = registered(
            &registry,
            IntGauge::new(
                "canary_lb_discovery_up",
                "1 when the discovery source answered the last sync, 0 when not.",
            )?,
        )?;
        let discovery_errors = counter_vec(
            "canary_lb_discovery_errors_total",
            "Discovery problems: unreachable source or bad entries skipped, by kind.",
            &["kind"],
        )?;
        let discovery_resyncs = registered(
            &registry,
            IntCounter::new(
                "canary_lb_discovery_resyncs_total",
                "Full reads of the discovery source.",
            )?,
        )?;
        let discovery_store_reinitialised = registered(&registry, IntCounter::new(
            "canary_lb_discovery_store_reinitialised_total",
            "Times the discovery store was found re-initialised (marker gone, created_ms changed or generation lower).",
        )?)?;
        let discovery_reconciling = registered(&registry, IntGauge::new(
            "canary_lb_discovery_reconciling",
            "1 while servers or routing from before a store re-initialisation are kept, 0 when not.",
        )?)?;
        let config_changes_vec = counter_vec(
            "canary_lb_config_changes_total",
            "Applied configuration changes by source (file, redis).",
            &["source"],
        )?;

        let refused_vec = counter_vec(
            "canary_lb_refused_requests_total",
            "Requests refused at the edge before routing (bad framing, oversized head), by status.",
            &["code"],
        )?;
        let refused = RefusalCode::ALL.map(|c| refused_vec.with_label_values(&[c.as_str()]));
        let client_connections = registered(
            &registry,
            IntGauge::new(
                "canary_lb_client_connections",
                "Open client connections on the proxy listeners.",
            )?,
        )?;
        let client_connections_max = registered(
            &registry,
            IntGauge::new(
                "canary_lb_client_connections_max",
                "client.max_connections: open client connections allowed.",
            )?,
        )?;
        let client_connections_refused = registered(
            &registry,
            IntCounter::new(
                "canary_lb_client_connections_refused_total",
                "Client connections closed at once because max_connections were open.",
            )?,
        )?;
        let client_errors_vec = counter_vec(
            "canary_lb_client_errors_total",
            "Connections and requests a client failed (bad or late handshake, idle connection shed at the limit, closed or too slow mid-request), by kind; logged at debug level only.",
            &["kind"],
        )?;
        let client_errors =
            ClientErrorKind::ALL.map(|k| client_errors_vec.with_label_values(&[k.as_str()]));
        let upstream_tls_failures_vec = counter_vec(
            "canary_lb_upstream_tls_failures_total",
            "Failed TLS connections to app servers (pools.X.tls), by pool and kind \
             (unknown_ca, bad_certificate, client_cert_refused: never held against the \
             server's health; handshake: any other).",
            &["pool", "kind"],
        )?;
        let upstream_tls_failures = PerPool::from_fn(|pool| {
            UpstreamTlsFailure::ALL
                .map(|k| upstream_tls_failures_vec.with_label_values(&[pool.as_str(), k.as_str()]))
        });
        let budget_refused_vec = counter_vec(
            "canary_lb_upstream_budget_refused_total",
            "HTTP/2 streams answered 503 because an upstream budget had no place in time, by \
             budget (connection: client.max_upstream_per_connection, total: \
             client.max_upstream_connections).",
            &["budget"],
        )?;
        let budget_refused =
            BudgetLabel::ALL.map(|b| budget_refused_vec.with_label_values(&[b.as_str()]));
        let h2_upstream_in_flight = registered(
            &registry,
            IntGauge::new(
                "canary_lb_h2_upstream_in_flight",
                "Upstream requests of HTTP/2 streams in flight (places taken in the budgets).",
            )?,
        )?;
        let access_log_dropped = registered(&registry, IntCounter::new(
            "canary_lb_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up (never delaying a request).",
        )?)?;
        let store_newer_schema = counter_vec(
            "canary_lb_store_newer_schema_total",
            "Stored values (Redis, the rollout state file) not read because a newer release \
             wrote them with a newer schema major, by kind; upgrade this process.",
            &["kind"],
        )?;

        let build_info = gauge_vec(
            "canary_lb_build_info",
            "Always 1; the labels say which build is running.",
            &["version", "commit"],
        )?;
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        // CPU, memory, descriptors, start time of this process (reads /proc at scrape time).
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let config_reloads_vec = counter_vec(
            "canary_lb_config_reloads_total",
            "SIGHUP reloads of the config file, by result (applied, failed: the running configuration kept).",
            &["result"],
        )?;
        let config_reloads =
            ReloadResult::ALL.map(|r| config_reloads_vec.with_label_values(&[r.as_str()]));
        let config_last_reload_success = registered(&registry, IntGauge::new(
            "canary_lb_config_last_reload_success",
            "1 when the last SIGHUP reload (or the start) applied the config file, 0 when it was refused.",
        )?)?;
        // The start loaded the file, or there would be no process to scrape.
        config_last_reload_success.set(1);
        let config_last_reload_timestamp = registered(
            &registry,
            Gauge::new(
                "canary_lb_config_last_reload_timestamp_seconds",
                "Unix time of the last SIGHUP reload attempt (or of the start).",
            )?,
        )?;
        config_last_reload_timestamp.set(unix_now());

        // Every label set known at start gets its series now, so each exists (at 0) from the
        // first scrape and `increase()` sees its first event.
        let decisions = PerPool::from_fn(|p| {
            Reason::ALL.map(|r| decisions_vec.with_label_values(&[p.as_str(), r.as_str()]))
        });
        let retries = PerPool::from_fn(|p| retries_vec.with_label_values(&[p.as_str()]));
        let duration = PerPool::from_fn(|p| duration_vec.with_label_values(&[p.as_str()]));
        let pool_servers = PerPool::from_fn(|p| {
            ServerStateLabel::ALL
                .map(|s| pool_servers_vec.with_label_values(&[p.as_str(), s.as_str()]))
        });
        let discovery_error_handles =
            DiscoveryErrorKind::ALL.map(|k| discovery_errors.with_label_values(&[k.as_str()]));
        let config_changes =
            ConfigSource::ALL.map(|s| config_changes_vec.with_label_values(&[s.as_str()]));
        let rollout = RolloutMetrics::new(&registry)?;
        let metrics = Metrics {
            rollout,
            registry,
            requests,
            request_handles: PerPool::from_fn(|_| {
                (0..CODES * MethodLabel::ALL.len())
                    .map(|_| OnceLock::new())
                    .collect()
            }),
            duration,
            upstream,
            server_up,
            pool_servers,
            decisions,
            retries,
            canary_percent,
            discovery_up,
            discovery_errors,
            discovery_error_handles,
            discovery_resyncs,
            discovery_store_reinitialised,
            discovery_reconciling,
            config_changes,
            refused,
            connection_limit: OnceLock::new(),
            client_connections,
            client_connections_max,
            client_connections_refused,
            admin_connection_limit: OnceLock::new(),
            client_errors,
            upstream_tls_failures,
            budget_refused,
            h2_upstream_in_flight,
            access_log_dropped,
            counts: Default::default(),
            seen_servers: Mutex::new(HashSet::new()),
            store_newer_schema,
            config_reloads,
            config_last_reload_success,
            config_last_reload_timestamp,
        };
        for pool in PoolKind::ALL {
            for code in PRESET_REQUEST_CODES {
                for method in MethodLabel::ALL {
                    metrics.request_counter(pool, usize::from(code), method);
                }
            }
        }
        Ok(metrics)
    }

    pub fn record_decision(&self, pool: PoolKind, reason: Reason) {
        self.decisions[pool][reason.index()].inc();
    }

    /// A request refused at the edge.
    pub fn record_refusal(&self, code: RefusalCode) {
        self.refused[code.index()].inc();
    }

    /// An HTTP/2 stream refused (503) because `budget` had no place in time.
    pub fn record_budget_refusal(&self, budget: BudgetLabel) {
        self.budget_refused[budget.index()].inc();
    }

    pub fn record_retry(&self, pool: PoolKind) {
        self.retries[pool].inc();
    }

    /// One attempt on the upstream server labelled `server`, whose series are `series`;
    /// `status` is None when it never answered.
    pub fn record_upstream(
        &self,
        pool: PoolKind,
        server: &str,
        series: &UpstreamSeries,
        status: Option<u16>,
    ) {
        let handles = series
            .0
            .get_or_init(|| self.upstream_counters(pool, server));
        handles[CodeClass::of(status).index()].inc();
    }

    fn upstream_counters(
        &self,
        pool: PoolKind,
        server: &str,
    ) -> [IntCounter; CodeClass::ALL.len()] {
        CodeClass::ALL.map(|c| {
            self.upstream
                .with_label_values(&[pool.as_str(), server, c.as_str()])
        })
    }

    /// A client request finished with status `code` (0: no response was written).
    pub fn record_request(&self, pool: PoolKind, code: u16, method: MethodLabel, seconds: f64) {
        let code = usize::from(code).min(CODES - 1);
        self.request_counter(pool, code, method).inc();
        self.duration[pool].observe(seconds);
        let c = &self.counts[pool];
        c.requests.fetch_add(1, Relaxed);
        if code >= 500 {
            c.errors.fetch_add(1, Relaxed);
        }
    }

    /// The `requests` series of (pool, code, method), created on first use; `code < CODES`.
    fn request_counter(&self, pool: PoolKind, code: usize, method: MethodLabel) -> &IntCounter {
        self.request_handles[pool][code * MethodLabel::ALL.len() + method.index()].get_or_init(
            || {
                let mut buf = [0u8; 3];
                self.requests.with_label_values(&[
                    pool.as_str(),
                    code_str(&mut buf, code as u16),
                    method.as_str(),
                ])
            },
        )
    }

    pub fn pool_counts(&self, pool: PoolKind) -> (u64, u64) {
        let c = &self.counts[pool];
        (c.requests.load(Relaxed), c.errors.load(Relaxed))
    }

    pub fn set_canary_percent(&self, percent: f64) {
        self.canary_percent.set(percent);
    }

    pub fn discovery_error(&self, kind: DiscoveryErrorKind) {
        self.discovery_error_handles[kind.index()].inc();
    }

    /// A bad store entry skipped, by its `store::Problem::kind`. A kind this module does not
    /// list still gets counted, under its own text.
    pub fn discovery_problem(&self, kind: &str) {
        match DiscoveryErrorKind::parse(kind) {
            Some(k) => self.discovery_error(k),
            None => self.discovery_errors.with_label_values(&[kind]).inc(),
        }
    }

    /// Create the `canary_lb_store_newer_schema_total` series of `kinds` at 0 (the store owns
    /// the list of kinds; this module depends on nothing but `model`).
    pub fn preset_store_newer_schema(&self, kinds: &[&str]) {
        for kind in kinds {
            self.store_newer_schema.with_label_values(&[kind]);
        }
    }

    /// A stored value of `kind` refused: a newer release wrote it.
    pub fn store_newer_schema(&self, kind: &str) {
        self.store_newer_schema.with_label_values(&[kind]).inc();
    }

    /// A SIGHUP reload ended: applied, or refused with the running configuration kept.
    pub fn record_config_reload(&self, result: ReloadResult) {
        self.config_reloads[result.index()].inc();
        self.config_last_reload_success
            .set(i64::from(result == ReloadResult::Applied));
        self.config_last_reload_timestamp.set(unix_now());
    }

    /// The last SIGHUP reload (or the start, which counts as applied): whether it applied the
    /// file, and its Unix time; for `/status` and the `reload` command.
    pub fn last_config_reload(&self) -> (bool, f64) {
        (
            self.config_last_reload_success.get() == 1,
            self.config_last_reload_timestamp.get(),
        )
    }

    pub fn config_change(&self, source: ConfigSource) {
        self.config_changes[source.index()].inc();
    }

    /// Recompute the pool gauges from `servers` (every server of every pool, now), give each
    /// server seen for the first time its upstream series at 0, and drop the series of servers
    /// that left.
    pub fn sync_pools(&self, servers: &[ServerSample<'_>]) {
        let mut seen = self
            .seen_servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut counts = PerPool::<[i64; ServerStateLabel::ALL.len()]>::default();
        let mut now = HashSet::with_capacity(servers.len());
        for s in servers {
            let state = if s.draining {
                ServerStateLabel::Draining
            } else if s.healthy && !s.ejected {
                ServerStateLabel::Healthy
            } else {
                ServerStateLabel::Unhealthy
            };
            counts[s.pool][state.index()] += 1;
            let up = i64::from(s.healthy && !s.ejected);
            self.server_up
                .with_label_values(&[s.pool.as_str(), s.server])
                .set(up);
            let key = (s.pool, s.server.to_string());
            if !seen.contains(&key) {
                self.upstream_counters(s.pool, s.server);
            }
            now.insert(key);
        }
        for (pool, gauges) in self.pool_servers.iter() {
            for state in ServerStateLabel::ALL {
                gauges[state.index()].set(counts[pool][state.index()]);
            }
        }
        for (pool, server) in seen.difference(&now) {
            let _ = self.server_up.remove_label_values(&[pool.as_str(), server]);
            for class in CodeClass::ALL {
                let _ = self
                    .upstream
                    .remove_label_values(&[pool.as_str(), server, class.as_str()]);
            }
        }
        *seen = now;
    }

    /// Report the proxy listener's connection limit from now on.
    pub fn watch_connection_limit(&self, limit: Arc<ConnectionLimit>) {
        let _ = self.connection_limit.set(limit);
    }

    /// Count the admin port's client errors (its connection limit's) from now on.
    pub fn watch_admin_connection_limit(&self, limit: Arc<ConnectionLimit>) {
        let _ = self.admin_connection_limit.set(limit);
    }

    /// A TLS connection to a server of `pool` failed for `kind`.
    pub fn record_upstream_tls_failure(&self, pool: PoolKind, kind: UpstreamTlsFailure) {
        self.upstream_tls_failures[pool][kind.index()].inc();
    }

    /// A request a client failed mid-way (closed, too slow, protocol error).
    pub fn record_client_error(&self, kind: ClientErrorKind) {
        self.client_errors[kind.index()].inc();
    }

    /// Bring the connection-level client errors Pingora counts up to date.
    fn sync_client_errors(&self) {
        use pingora_core::services::listening::ClientError;
        let pairs = [
            (ClientError::TlsHandshake, ClientErrorKind::TlsHandshake),
            (
                ClientError::HandshakeTimeout,
                ClientErrorKind::HandshakeTimeout,
            ),
            (ClientError::H2Handshake, ClientErrorKind::H2Handshake),
            (ClientError::IdleShed, ClientErrorKind::IdleShed),
        ];
        let limits = [&self.connection_limit, &self.admin_connection_limit];
        for (theirs, ours) in pairs {
            let total: u64 = limits
                .iter()
                .filter_map(|l| l.get())
                .map(|l| l.client_errors(theirs))
                .sum();
            catch_up(&self.client_errors[ours.index()], total);
        }
    }

    /// The Prometheus text exposition of every metric, with the pool gauges recomputed from
    /// `servers`. `discovery_up` is the discovery state at scrape time, so the gauge cannot
    /// disagree with `/status`.
    pub fn render(&self, servers: &[ServerSample<'_>], discovery_up: bool) -> Vec<u8> {
        self.sync_pools(servers);
        if let Some(limit) = self.connection_limit.get() {
            self.client_connections.set(limit.active() as i64);
            self.client_connections_max.set(limit.max() as i64);
            catch_up(&self.client_connections_refused, limit.refused());
        }
        self.sync_client_errors();
        self.discovery_up.set(i64::from(discovery_up));
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A status code as text without allocating (codes are 100..=999 by construction in Pingora).
fn code_str(buf: &mut [u8; 3], code: u16) -> &str {
    let code = code.min(999);
    buf[0] = b'0' + (code / 100) as u8;
    buf[1] = b'0' + (code / 10 % 10) as u8;
    buf[2] = b'0' + (code % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

/// Bring `counter` up to `total`, a count kept elsewhere (Pingora's connection limit) and read
/// at scrape time.
fn catch_up(counter: &IntCounter, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_is_counted_by_result_and_the_last_one_is_kept() {
        let m = Metrics::new().expect("metrics");
        let (ok, at_start) = m.last_config_reload();
        assert!(ok, "the start loaded the file");
        assert!(at_start > 0.0);
        m.record_config_reload(ReloadResult::Failed);
        assert!(!m.last_config_reload().0);
        m.record_config_reload(ReloadResult::Applied);
        m.record_config_reload(ReloadResult::Applied);
        assert!(m.last_config_reload().0);
        let text = text(&m, &[]);
        for line in [
            "canary_lb_config_reloads_total{result=\"applied\"} 2",
            "canary_lb_config_reloads_total{result=\"failed\"} 1",
            "canary_lb_config_last_reload_success 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        let build = format!("canary_lb_build_info{{commit=\"{COMMIT}\",version=\"{VERSION}\"}} 1");
        assert!(text.lines().any(|l| l == build), "{build} missing:\n{text}");
    }

    #[test]
    fn code_labels() {
        let mut b = [0u8; 3];
        assert_eq!(code_str(&mut b, 200), "200");
        assert_eq!(code_str(&mut b, 503), "503");
    }

    fn text(m: &Metrics, servers: &[ServerSample<'_>]) -> String {
        String::from_utf8(m.render(servers, true)).expect("utf-8")
    }

    #[test]
    fn known_label_sets_are_exported_at_zero_before_any_event() {
        let m = Metrics::new().expect("metrics");
        let t = text(&m, &[]);
        for kind in DiscoveryErrorKind::ALL {
            let line = format!(
                "canary_lb_discovery_errors_total{{kind=\"{}\"}} 0",
                kind.as_str()
            );
            assert!(t.contains(&line), "{line} missing:\n{t}");
        }
        for source in ConfigSource::ALL {
            let line = format!(
                "canary_lb_config_changes_total{{source=\"{}\"}} 0",
                source.as_str()
            );
            assert!(t.contains(&line), "{line} missing:\n{t}");
        }
        let preset = "canary_lb_requests_total{code=\"503\",method=\"POST\",pool=\"canary\"} 0";
        for line in [
            "canary_lb_discovery_store_reinitialised_total 0",
            "canary_lb_discovery_reconciling 0",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        assert!(t.contains(preset), "{preset} missing:\n{t}");
        m.discovery_problem("weight");
        m.discovery_problem("something_new");
        m.config_change(ConfigSource::Redis);
        let t = text(&m, &[]);
        for line in [
            "canary_lb_discovery_errors_total{kind=\"weight\"} 1",
            "canary_lb_discovery_errors_total{kind=\"something_new\"} 1",
            "canary_lb_config_changes_total{source=\"redis\"} 1",
            "canary_lb_config_changes_total{source=\"file\"} 0",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
    }

    #[test]
    fn servers_get_their_series_when_seen_and_lose_them_when_gone() {
        let m = Metrics::new().expect("metrics");
        let sample = |server, healthy, draining| ServerSample {
            pool: PoolKind::Production,
            server,
            healthy,
            ejected: false,
            draining,
        };
        let servers = [
            sample("10.0.0.1:80", true, false),
            sample("10.0.0.2:80", false, false),
            sample("10.0.0.3:80", true, true),
        ];
        let t = text(&m, &servers);
        for line in [
            "canary_lb_upstream_requests_total{code_class=\"5xx\",pool=\"production\",server=\"10.0.0.1:80\"} 0",
            "canary_lb_server_up{pool=\"production\",server=\"10.0.0.2:80\"} 0",
            "canary_lb_pool_servers{pool=\"production\",state=\"healthy\"} 1",
            "canary_lb_pool_servers{pool=\"production\",state=\"unhealthy\"} 1",
            "canary_lb_pool_servers{pool=\"production\",state=\"draining\"} 1",
            "canary_lb_pool_servers{pool=\"canary\",state=\"healthy\"} 0",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        // An attempt counts on the series created at 0.
        let series = UpstreamSeries::default();
        m.record_upstream(PoolKind::Production, "10.0.0.1:80", &series, Some(502));
        m.record_upstream(PoolKind::Production, "10.0.0.1:80", &series, None);
        let t = text(&m, &servers[..1]);
        for line in [
            "canary_lb_upstream_requests_total{code_class=\"5xx\",pool=\"production\",server=\"10.0.0.1:80\"} 1",
            "canary_lb_upstream_requests_total{code_class=\"error\",pool=\"production\",server=\"10.0.0.1:80\"} 1",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        assert!(
            !t.contains("10.0.0.2:80") && !t.contains("10.0.0.3:80"),
            "{t}"
        );
    }

    #[test]
    fn in_process_counts_follow_requests() {
        let m = Metrics::new().expect("metrics");
        m.record_request(PoolKind::Canary, 200, MethodLabel::Get, 0.01);
        m.record_request(PoolKind::Canary, 502, MethodLabel::Get, 0.01);
        m.record_request(PoolKind::Production, 200, MethodLabel::Post, 0.01);
        assert_eq!(m.pool_counts(PoolKind::Canary), (2, 1));
        assert_eq!(m.pool_counts(PoolKind::Production), (1, 0));
    }
}
