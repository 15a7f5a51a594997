//! Every metric canary-lb exports, in one place, and the in-process counters that later
//! features (automatic canary analysis) read without going through the text endpoint.
//!
//! Request-path handles whose labels are known up front (per pool, per reason) are resolved
//! once here, so a request does not hash label values for them. Gauges that describe the
//! pools (`server_up`, `pool_servers`) are recomputed from the live pool state when scraped,
//! which is also where series of servers that left a pool are removed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use pingora_core::services::listening::ConnectionLimit;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::PoolKind;
use crate::pool::{Pools, ServerState};
use crate::routing::Reason;

/// The `method` label values; anything else is counted as `OTHER`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
/// Status codes 0 (no response) ..= 999, times methods: the request counter cache size.
const CODES: usize = 1000;

/// Upstream answer classes, the `code_class` label.
pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The statuses a request refused at the edge can get: the `code` label of
/// `canary_lb_refused_requests_total`.
pub const REFUSAL_CODES: [u16; 3] = [400, 431, 501];

/// Request and 5xx counts of one pool since start, readable in-process.
#[derive(Debug, Default)]
pub struct PoolCounts {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `requests` handles per pool, indexed by `code * METHODS.len() + method`, filled on
    /// first use: the request path then neither hashes labels nor takes the vector's lock.
    request_handles: [Box<[OnceLock<IntCounter>]>; 2],
    duration: [Histogram; 2],
    upstream: IntCounterVec,
    server_up: IntGaugeVec,
    pool_servers: IntGaugeVec,
    decisions: [[IntCounter; 4]; 2],
    retries: [IntCounter; 2],
    canary_percent: Gauge,
    discovery_up: IntGauge,
    discovery_errors: IntCounterVec,
    pub discovery_resyncs: IntCounter,
    config_changes: IntCounterVec,
    /// Requests refused at the edge, by the status they got (`REFUSAL_CODES` order).
    refused: [IntCounter; 3],
    /// The proxy listener's connection limit, read at scrape time.
    connection_limit: OnceLock<Arc<ConnectionLimit>>,
    client_connections: IntGauge,
    client_connections_max: IntGauge,
    client_connections_refused: IntCounter,
    counts: [PoolCounts; 2],
    /// (pool, server) pairs that have series, to remove them when the server leaves.
    seen_servers: Mutex<HashSet<(PoolKind, String)>>,
}

fn idx(pool: PoolKind) -> usize {
    match pool {
        PoolKind::Production => 0,
        PoolKind::Canary => 1,
    }
}

fn reason_idx(reason: Reason) -> usize {
    match reason {
        Reason::Header => 0,
        Reason::Cookie => 1,
        Reason::Percent => 2,
        Reason::Fallback => 3,
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let requests = counter_vec(
            "canary_lb_requests_total",
            "Client requests answered, by pool, status code and method.",
            &["pool", "code", "method"],
        )?;
        // 0.5 ms .. 10 s
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "canary_lb_request_duration_seconds",
                "Time from request start to the end of the response, by pool.",
            )
            .buckets(buckets),
            &["pool"],
        )?;
        registry.register(Box::new(duration_vec.clone()))?;
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
        let pool_servers = gauge_vec(
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
        let canary_percent = Gauge::new(
            "canary_lb_canary_percent",
            "Share of users routed to canary by percentage, in percent.",
        )?;
        registry.register(Box::new(canary_percent.clone()))?;
        let discovery_up = IntGauge::new(
            "canary_lb_discovery_up",
            "1 when the discovery source answered the last sync, 0 when not.",
        )?;
        registry.register(Box::new(discovery_up.clone()))?;
        let discovery_errors = counter_vec(
            "canary_lb_discovery_errors_total",
            "Discovery problems: unreachable source or bad entries skipped, by kind.",
            &["kind"],
        )?;
        let discovery_resyncs = IntCounter::new(
            "canary_lb_discovery_resyncs_total",
            "Full reads of the discovery source.",
        )?;
        registry.register(Box::new(discovery_resyncs.clone()))?;
        let config_changes = counter_vec(
            "canary_lb_config_changes_total",
            "Applied configuration changes by source (file, redis).",
            &["source"],
        )?;

        let refused_vec = counter_vec(
            "canary_lb_refused_requests_total",
            "Requests refused at the edge before routing (bad framing, oversized head), by status.",
            &["code"],
        )?;
        let refused = REFUSAL_CODES.map(|c| refused_vec.with_label_values(&[&c.to_string()]));
        let client_connections = IntGauge::new(
            "canary_lb_client_connections",
            "Open client connections on the proxy listeners.",
        )?;
        registry.register(Box::new(client_connections.clone()))?;
        let client_connections_max = IntGauge::new(
            "canary_lb_client_connections_max",
            "client.max_connections: open client connections allowed.",
        )?;
        registry.register(Box::new(client_connections_max.clone()))?;
        let client_connections_refused = IntCounter::new(
            "canary_lb_client_connections_refused_total",
            "Client connections closed at once because max_connections were open.",
        )?;
        registry.register(Box::new(client_connections_refused.clone()))?;

        // Handles per pool, in `idx` order (PoolKind::ALL).
        let decisions = PoolKind::ALL.map(|p| {
            Reason::ALL.map(|r| decisions_vec.with_label_values(&[p.as_str(), r.as_str()]))
        });
        let retries = PoolKind::ALL.map(|p| retries_vec.with_label_values(&[p.as_str()]));
        let duration = PoolKind::ALL.map(|p| duration_vec.with_label_values(&[p.as_str()]));
        for state in ["healthy", "unhealthy", "draining"] {
            for p in PoolKind::ALL {
                pool_servers.with_label_values(&[p.as_str(), state]).set(0);
            }
        }
        Ok(Metrics {
            registry,
            requests,
            request_handles: [(); 2].map(|_| {
                (0..CODES * METHODS.len())
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
            discovery_resyncs,
            config_changes,
            refused,
            connection_limit: OnceLock::new(),
            client_connections,
            client_connections_max,
            client_connections_refused,
            counts: Default::default(),
            seen_servers: Mutex::new(HashSet::new()),
        })
    }

    pub fn record_decision(&self, pool: PoolKind, reason: Reason) {
        self.decisions[idx(pool)][reason_idx(reason)].inc();
    }

    /// A request refused at the edge with `code` (one of [`REFUSAL_CODES`]; others count as 400).
    pub fn record_refusal(&self, code: u16) {
        let i = REFUSAL_CODES.iter().position(|c| *c == code).unwrap_or(0);
        self.refused[i].inc();
    }

    pub fn record_retry(&self, pool: PoolKind) {
        self.retries[idx(pool)].inc();
    }

    /// One attempt on an upstream server; `status` is None when it never answered.
    pub fn record_upstream(&self, pool: PoolKind, server: &ServerState, status: Option<u16>) {
        let class = match status {
            Some(s @ 100..=599) => (s / 100 - 1) as usize,
            _ => CODE_CLASSES.len() - 1,
        };
        let handles = server.upstream_counters.get_or_init(|| {
            CODE_CLASSES.map(|c| {
                self.upstream
                    .with_label_values(&[pool.as_str(), &server.label, c])
            })
        });
        handles[class].inc();
    }

    /// A client request finished; `method` indexes [`METHODS`].
    pub fn record_request(&self, pool: PoolKind, code: u16, method: usize, seconds: f64) {
        let (code, method) = (
            usize::from(code).min(CODES - 1),
            method.min(METHODS.len() - 1),
        );
        self.request_handles[idx(pool)][code * METHODS.len() + method]
            .get_or_init(|| {
                let mut buf = [0u8; 3];
                self.requests.with_label_values(&[
                    pool.as_str(),
                    code_str(&mut buf, code as u16),
                    METHODS[method],
                ])
            })
            .inc();
        self.duration[idx(pool)].observe(seconds);
        let c = &self.counts[idx(pool)];
        c.requests.fetch_add(1, Relaxed);
        if code >= 500 {
            c.errors.fetch_add(1, Relaxed);
        }
    }

    pub fn pool_counts(&self, pool: PoolKind) -> (u64, u64) {
        let c = &self.counts[idx(pool)];
        (c.requests.load(Relaxed), c.errors.load(Relaxed))
    }

    pub fn set_canary_percent(&self, percent: f64) {
        self.canary_percent.set(percent);
    }

    pub fn discovery_error(&self, kind: &str) {
        self.discovery_errors.with_label_values(&[kind]).inc();
    }

    pub fn config_change(&self, source: &str) {
        self.config_changes.with_label_values(&[source]).inc();
    }

    /// Recompute pool gauges from the live pools and drop series of servers that left.
    pub fn sync_pools(&self, pools: &Pools) {
        let mut now = HashSet::new();
        for pool in pools.iter() {
            let p = pool.kind.as_str();
            let (mut healthy, mut unhealthy, mut draining) = (0, 0, 0);
            for s in pool.view() {
                if s.draining {
                    draining += 1;
                } else if s.healthy && !s.ejected {
                    healthy += 1;
                } else {
                    unhealthy += 1;
                }
                let up = i64::from(s.healthy && !s.ejected);
                self.server_up.with_label_values(&[p, &s.addr]).set(up);
                now.insert((pool.kind, s.addr));
            }
            self.pool_servers
                .with_label_values(&[p, "healthy"])
                .set(healthy);
            self.pool_servers
                .with_label_values(&[p, "unhealthy"])
                .set(unhealthy);
            self.pool_servers
                .with_label_values(&[p, "draining"])
                .set(draining);
        }
        let mut seen = self
            .seen_servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (pool, server) in seen.difference(&now) {
            let _ = self.server_up.remove_label_values(&[pool.as_str(), server]);
            for class in CODE_CLASSES {
                let _ = self
                    .upstream
                    .remove_label_values(&[pool.as_str(), server, class]);
            }
        }
        *seen = now;
    }

    /// The Prometheus text exposition of every metric.
    /// `discovery_up` is the discovery state at scrape time, so the gauge cannot disagree
    /// with `/status`.
    /// Report the proxy listener's connection limit from now on.
    pub fn watch_connection_limit(&self, limit: Arc<ConnectionLimit>) {
        let _ = self.connection_limit.set(limit);
    }

    pub fn render(&self, pools: &Pools, discovery_up: bool) -> Vec<u8> {
        self.sync_pools(pools);
        if let Some(limit) = self.connection_limit.get() {
            self.client_connections.set(limit.active() as i64);
            self.client_connections_max.set(limit.max() as i64);
            let refused = limit.refused();
            let counted = self.client_connections_refused.get();
            if refused > counted {
                self.client_connections_refused.inc_by(refused - counted);
            }
        }
        self.discovery_up.set(i64::from(discovery_up));
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// A status code as text without allocating (codes are 100..=999 by construction in Pingora).
fn code_str(buf: &mut [u8; 3], code: u16) -> &str {
    let code = code.min(999);
    buf[0] = b'0' + (code / 100) as u8;
    buf[1] = b'0' + (code / 10 % 10) as u8;
    buf[2] = b'0' + (code % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels() {
        let mut b = [0u8; 3];
        assert_eq!(code_str(&mut b, 200), "200");
        assert_eq!(code_str(&mut b, 503), "503");
    }

    #[test]
    fn in_process_counts_follow_requests() {
        let m = Metrics::new().expect("metrics");
        m.record_request(PoolKind::Canary, 200, 0, 0.01);
        m.record_request(PoolKind::Canary, 502, 0, 0.01);
        m.record_request(PoolKind::Production, 200, 2, 0.01);
        assert_eq!(m.pool_counts(PoolKind::Canary), (2, 1));
        assert_eq!(m.pool_counts(PoolKind::Production), (1, 0));
    }
}
