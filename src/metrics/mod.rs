//! The metrics registry of the process ([`Registry`]), the label trait the layers' own types
//! implement ([`LabelValue`]), and the metrics no single layer below `state` owns: the
//! proxy's requests, decisions and refusals, client connections and errors, config reloads
//! and changes, the build; plus the in-process counters that later features (automatic
//! canary analysis) read without going through the text endpoint.
//!
//! A layer measures itself: the pools register theirs (`pool::metrics`), discovery its own
//! (`discovery::metrics`), each labelled by that layer's types, through [`Metrics::registry`].
//! This module uses nothing of the crate but `model`.
//!
//! Series exist from the first scrape: every label set known at start (pools, routing
//! reasons, config-change sources, refusal codes, client error kinds, and the proxy's own 5xx
//! answers per pool and method, [`PRESET_REQUEST_CODES`]) is created at 0 when registered. A
//! series that appears at 1 has no earlier sample, so `increase()` in an alert rule would miss
//! that first event.
//!
//! Request-path handles whose labels are known up front (per pool, per reason) are resolved
//! once here, so a request does not hash label values for them.
//!
//! Beside the proxy's own families the registry holds what an operator looks for first on any
//! service: `canary_lb_build_info{version,commit}` (always 1; the commit is the one `build.rs`
//! read from git, or `unknown`), the prometheus crate's `process_*` collector (CPU, memory,
//! open descriptors, start time; Linux only) and the outcome of SIGHUP reloads
//! ([`Metrics::record_config_reload`]).

pub mod labels;
pub mod registry;
pub mod rollout;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use pingora_core::services::listening::ConnectionLimit;

use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge};

pub use labels::{assert_distinct, LabelValue, VerdictLabel};
pub use labels::{
    BudgetLabel, ClientErrorKind, ConfigSource, MethodLabel, RefusalCode, ReloadResult,
    RolloutPhaseLabel,
};
pub use registry::{Counters, Family, Gauges, Registry};
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

/// The metrics no single layer below `state` owns: the proxy's requests and refusals, the
/// client connections, the config reloads, the build; and the [`Registry`] the layers register
/// their own with (pool, discovery).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `requests` handles per pool, indexed by `code * MethodLabel::ALL.len() + method`,
    /// filled on first use: the request path then neither hashes labels nor takes the
    /// vector's lock.
    request_handles: PerPool<Box<[OnceLock<IntCounter>]>>,
    duration: PerPool<Histogram>,
    decisions: PerPool<[IntCounter; Reason::ALL.len()]>,
    retries: PerPool<IntCounter>,
    canary_percent: Gauge,
    config_changes: Counters<ConfigSource>,
    /// Requests refused at the edge, by the status they got.
    refused: Counters<RefusalCode>,
    /// The proxy listener's connection limit, read at scrape time.
    connection_limit: OnceLock<Arc<ConnectionLimit>>,
    client_connections: IntGauge,
    client_connections_max: IntGauge,
    client_connections_refused: IntCounter,
    /// The admin port's connection limit, read at scrape time for its client errors.
    admin_connection_limit: OnceLock<Arc<ConnectionLimit>>,
    /// What clients did wrong, by kind: counted here, logged at debug only.
    client_errors: Counters<ClientErrorKind>,
    /// HTTP/2 streams answered 503 because an upstream budget had no place, by budget.
    budget_refused: Counters<BudgetLabel>,
    /// Upstream requests of HTTP/2 streams in flight (holding a place in the budgets).
    pub h2_upstream_in_flight: IntGauge,
    /// Access log lines dropped because the writer could not keep up.
    pub access_log_dropped: IntCounter,
    counts: PerPool<PoolCounts>,
    pub rollout: RolloutMetrics,
    /// Stored values refused because a newer release wrote them, by kind (`store::codec`).
    store_newer_schema: IntCounterVec,
    /// SIGHUP reloads by [`ReloadResult`].
    config_reloads: Counters<ReloadResult>,
    /// 1 when the last reload (or the start) applied the file, 0 after a refused one.
    config_last_reload_success: IntGauge,
    /// Unix time of the last reload attempt, or of the start.
    config_last_reload_timestamp: Gauge,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        let requests = r.counter_vec(
            "canary_lb_requests_total",
            "Client requests answered, by pool, status code and method.",
            &["pool", "code", "method"],
        )?;
        let decisions_vec = r.counter_vec(
            "canary_lb_routing_decisions_total",
            "Routing decisions by chosen pool and reason.",
            &["pool", "reason"],
        )?;
        let build_info = r.gauge_vec(
            "canary_lb_build_info",
            "Always 1; the labels say which build is running.",
            &["version", "commit"],
        )?;
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        // CPU, memory, descriptors, start time of this process (reads /proc at scrape time).
        #[cfg(target_os = "linux")]
        r.register_collector(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let metrics = Metrics {
            requests,
            request_handles: PerPool::from_fn(|_| {
                (0..CODES * MethodLabel::ALL.len())
                    .map(|_| OnceLock::new())
                    .collect()
            }),
            // 0.5 ms .. 10 s
            duration: r.pool_histogram(
                "canary_lb_request_duration_seconds",
                "Time from request start to the end of the response, by pool.",
                &crate::model::LATENCY_BUCKETS_S,
            )?,
            decisions: PerPool::from_fn(|p| {
                Reason::ALL.map(|r| decisions_vec.with_label_values(&[p.as_str(), r.as_str()]))
            }),
            retries: r.pool_counter(
                "canary_lb_retries_total",
                "Requests retried on another server, by pool.",
            )?,
            canary_percent: r.float_gauge(
                "canary_lb_canary_percent",
                "Share of users routed to canary by percentage, in percent.",
            )?,
            config_changes: r.counters(
                "canary_lb_config_changes_total",
                "Applied configuration changes by source (file, redis).",
                "source",
            )?,
            refused: r.counters(
                "canary_lb_refused_requests_total",
                "Requests refused at the edge before routing (bad framing, oversized head), by status.",
                "code",
            )?,
            connection_limit: OnceLock::new(),
            client_connections: r.gauge(
                "canary_lb_client_connections",
                "Open client connections on the proxy listeners.",
            )?,
            client_connections_max: r.gauge(
                "canary_lb_client_connections_max",
                "client.max_connections: open client connections allowed.",
            )?,
            client_connections_refused: r.counter(
                "canary_lb_client_connections_refused_total",
                "Client connections closed at once because max_connections were open.",
            )?,
            admin_connection_limit: OnceLock::new(),
            client_errors: r.counters(
                "canary_lb_client_errors_total",
                "Connections and requests a client failed (bad or late handshake, idle connection shed at the limit, closed or too slow mid-request), by kind; logged at debug level only.",
                "kind",
            )?,
            budget_refused: r.counters(
                "canary_lb_upstream_budget_refused_total",
                "HTTP/2 streams answered 503 because an upstream budget had no place in time, by \
                 budget (connection: client.max_upstream_per_connection, total: \
                 client.max_upstream_connections).",
                "budget",
            )?,
            h2_upstream_in_flight: r.gauge(
                "canary_lb_h2_upstream_in_flight",
                "Upstream requests of HTTP/2 streams in flight (places taken in the budgets).",
            )?,
            access_log_dropped: r.counter(
                "canary_lb_access_log_dropped_total",
                "Access log lines dropped because the writer could not keep up (never delaying a request).",
            )?,
            counts: Default::default(),
            rollout: RolloutMetrics::new(r)?,
            store_newer_schema: r.counter_vec(
                "canary_lb_store_newer_schema_total",
                "Stored values (Redis, the rollout state file) not read because a newer release \
                 wrote them with a newer schema major, by kind; upgrade this process.",
                &["kind"],
            )?,
            config_reloads: r.counters(
                "canary_lb_config_reloads_total",
                "SIGHUP reloads of the config file, by result (applied, failed: the running configuration kept).",
                "result",
            )?,
            config_last_reload_success: r.gauge(
                "canary_lb_config_last_reload_success",
                "1 when the last SIGHUP reload (or the start) applied the config file, 0 when it was refused.",
            )?,
            config_last_reload_timestamp: r.float_gauge(
                "canary_lb_config_last_reload_timestamp_seconds",
                "Unix time of the last SIGHUP reload attempt (or of the start).",
            )?,
            registry,
        };
        // The start loaded the file, or there would be no process to scrape.
        metrics.config_last_reload_success.set(1);
        metrics.config_last_reload_timestamp.set(unix_now());
        for pool in PoolKind::ALL {
            for code in PRESET_REQUEST_CODES {
                for method in MethodLabel::ALL {
                    metrics.request_counter(pool, usize::from(code), method);
                }
            }
        }
        Ok(metrics)
    }

    /// The registry the layers register their own metrics with (`pool::PoolMetrics`,
    /// `discovery::DiscoveryMetrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn record_decision(&self, pool: PoolKind, reason: Reason) {
        self.decisions[pool][reason.index()].inc();
    }

    /// A request refused at the edge.
    pub fn record_refusal(&self, code: RefusalCode) {
        self.refused.inc(code);
    }

    /// An HTTP/2 stream refused (503) because `budget` had no place in time.
    pub fn record_budget_refusal(&self, budget: BudgetLabel) {
        self.budget_refused.inc(budget);
    }

    pub fn record_retry(&self, pool: PoolKind) {
        self.retries[pool].inc();
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
        self.config_reloads.inc(result);
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
        self.config_changes.inc(source);
    }

    /// Report the proxy listener's connection limit from now on.
    pub fn watch_connection_limit(&self, limit: Arc<ConnectionLimit>) {
        let _ = self.connection_limit.set(limit);
    }

    /// Count the admin port's client errors (its connection limit's) from now on.
    pub fn watch_admin_connection_limit(&self, limit: Arc<ConnectionLimit>) {
        let _ = self.admin_connection_limit.set(limit);
    }

    /// A request a client failed mid-way (closed, too slow, protocol error).
    pub fn record_client_error(&self, kind: ClientErrorKind) {
        self.client_errors.inc(kind);
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
            if let Some(counter) = self.client_errors.get(ours) {
                catch_up(counter, total);
            }
        }
    }

    /// The Prometheus text exposition of every metric, with the values read at scrape time
    /// (Pingora's connection counts) brought up to date. The layers bring their own up to date
    /// first (`pool::Pool::export_metrics`, `discovery::DiscoveryMetrics::set_up`).
    pub fn render(&self) -> Vec<u8> {
        if let Some(limit) = self.connection_limit.get() {
            self.client_connections.set(limit.active() as i64);
            self.client_connections_max.set(limit.max() as i64);
            catch_up(&self.client_connections_refused, limit.refused());
        }
        self.sync_client_errors();
        self.registry.text()
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
        let text = text(&m);
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

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render()).expect("utf-8")
    }

    #[test]
    fn known_label_sets_are_exported_at_zero_before_any_event() {
        let m = Metrics::new().expect("metrics");
        let t = text(&m);
        for source in ConfigSource::ALL {
            let line = format!(
                "canary_lb_config_changes_total{{source=\"{}\"}} 0",
                source.as_str()
            );
            assert!(t.contains(&line), "{line} missing:\n{t}");
        }
        let preset = "canary_lb_requests_total{code=\"503\",method=\"POST\",pool=\"canary\"} 0";
        assert!(t.contains(preset), "{preset} missing:\n{t}");
        m.config_change(ConfigSource::Redis);
        let t = text(&m);
        for line in [
            "canary_lb_config_changes_total{source=\"redis\"} 1",
            "canary_lb_config_changes_total{source=\"file\"} 0",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
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
