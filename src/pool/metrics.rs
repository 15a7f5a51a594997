//! What the pool layer measures, registered by the pool layer with its own label types:
//! attempts per server by [`CodeClass`] (`canary_lb_upstream_requests_total`), each server's
//! health (`canary_lb_server_up`), servers per [`ServerStateLabel`]
//! (`canary_lb_pool_servers`) and failed TLS connections per
//! [`UpstreamTlsFailure`].
//!
//! [`PoolMetrics::register`] registers the families once; each [`Pool`](super::Pool) takes
//! its own [`PoolSeries`]. A server's attempt counters are resolved on its first attempt and
//! held by its state ([`UpstreamSeries`]), so an attempt neither hashes labels nor looks the
//! server up. The gauges that describe the pool are recomputed from the pool when scraped
//! ([`PoolSeries::export`]), which is also where series of servers that left are removed and
//! a new server's attempt series are created at 0.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec};

use super::failure::UpstreamTlsFailure;
use super::ServerView;
use crate::metrics::{Counters, Gauges, Registry};
use crate::model::PoolKind;

/// The `code_class` label of `canary_lb_upstream_requests_total`: the class of an upstream's
/// answer, or `error` when it never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// No answer: connect failure, reset, timeout.
    Error,
}

impl CodeClass {
    pub const ALL: [CodeClass; 6] = [
        CodeClass::Informational,
        CodeClass::Success,
        CodeClass::Redirection,
        CodeClass::ClientError,
        CodeClass::ServerError,
        CodeClass::Error,
    ];

    /// The class of an upstream answer; `None` (no answer) and statuses outside 100..=599
    /// are `error`.
    pub const fn of(status: Option<u16>) -> CodeClass {
        match status {
            Some(100..=199) => CodeClass::Informational,
            Some(200..=299) => CodeClass::Success,
            Some(300..=399) => CodeClass::Redirection,
            Some(400..=499) => CodeClass::ClientError,
            Some(500..=599) => CodeClass::ServerError,
            _ => CodeClass::Error,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            CodeClass::Informational => "1xx",
            CodeClass::Success => "2xx",
            CodeClass::Redirection => "3xx",
            CodeClass::ClientError => "4xx",
            CodeClass::ServerError => "5xx",
            CodeClass::Error => "error",
        }
    }
}

crate::metrics::label_value!(CodeClass);

/// The `state` label of `canary_lb_pool_servers`. A server is counted once: draining first,
/// then healthy (passes checks and not ejected), else unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerStateLabel {
    Healthy,
    Unhealthy,
    Draining,
}

impl ServerStateLabel {
    pub const ALL: [ServerStateLabel; 3] = [
        ServerStateLabel::Healthy,
        ServerStateLabel::Unhealthy,
        ServerStateLabel::Draining,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ServerStateLabel::Healthy => "healthy",
            ServerStateLabel::Unhealthy => "unhealthy",
            ServerStateLabel::Draining => "draining",
        }
    }
}

crate::metrics::label_value!(ServerStateLabel);

impl ServerStateLabel {
    /// A server is counted once: draining first, then healthy (passes checks and not
    /// ejected), else unhealthy.
    pub fn of(server: &ServerView) -> ServerStateLabel {
        if server.draining {
            ServerStateLabel::Draining
        } else if server.healthy && !server.ejected {
            ServerStateLabel::Healthy
        } else {
            ServerStateLabel::Unhealthy
        }
    }
}

/// The pool layer's metric families, registered once for both pools.
#[derive(Clone)]
pub struct PoolMetrics {
    upstream: IntCounterVec,
    server_up: IntGaugeVec,
    pool_servers: IntGaugeVec,
    tls_failures: IntCounterVec,
}

impl PoolMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<PoolMetrics> {
        Ok(PoolMetrics {
            upstream: registry.counter_vec(
                "canary_lb_upstream_requests_total",
                "Attempts sent to upstream servers, by answer class (error = no answer).",
                &["pool", "server", "code_class"],
            )?,
            server_up: registry.gauge_vec(
                "canary_lb_server_up",
                "1 when the server passes health checks, 0 when not.",
                &["pool", "server"],
            )?,
            pool_servers: registry.gauge_vec(
                "canary_lb_pool_servers",
                "Servers per pool by state (healthy, unhealthy, draining).",
                &["pool", "state"],
            )?,
            tls_failures: registry.counter_vec(
                "canary_lb_upstream_tls_failures_total",
                "Failed TLS connections to app servers (pools.X.tls), by pool and kind \
                 (unknown_ca, bad_certificate, client_cert_refused: never held against the \
                 server's health; handshake: any other).",
                &["pool", "kind"],
            )?,
        })
    }

    /// The series of `pool`: its gauges and TLS failure counters exist (at 0) from now.
    pub fn series(&self, pool: PoolKind) -> PoolSeries {
        PoolSeries {
            pool,
            upstream: self.upstream.clone(),
            server_up: self.server_up.clone(),
            servers: Gauges::of_pool(&self.pool_servers, pool),
            tls_failures: Counters::of_pool(&self.tls_failures, pool),
            seen: Mutex::new(HashSet::new()),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

/// One pool's series, held by its [`Pool`](super::Pool).
pub struct PoolSeries {
    pool: PoolKind,
    upstream: IntCounterVec,
    server_up: IntGaugeVec,
    servers: Gauges<ServerStateLabel>,
    tls_failures: Counters<UpstreamTlsFailure>,
    /// Servers that have series, to remove them when the server leaves.
    seen: Mutex<HashSet<String>>,
    /// Client requests answered from this pool since start, and the 5xx among them: read
    /// in-process (`/status`), without going through the text.
    requests: AtomicU64,
    errors: AtomicU64,
}

impl PoolSeries {
    /// A client request routed to this pool was answered with `code` (0: no answer).
    pub fn answered(&self, code: u16) {
        self.requests.fetch_add(1, Relaxed);
        if code >= 500 {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// Requests answered from this pool since start, and the 5xx among them.
    pub fn counts(&self) -> (u64, u64) {
        (self.requests.load(Relaxed), self.errors.load(Relaxed))
    }

    /// A TLS connection to a server of this pool failed for `kind`.
    pub fn tls_failure(&self, kind: UpstreamTlsFailure) {
        self.tls_failures.inc(kind);
    }

    /// One attempt on the server labelled `server`, whose series are `series`; `status` is
    /// None when it never answered.
    pub fn upstream(&self, server: &str, series: &UpstreamSeries, status: Option<u16>) {
        let handles = series.0.get_or_init(|| self.upstream_counters(server));
        handles[CodeClass::of(status).index()].inc();
    }

    fn upstream_counters(&self, server: &str) -> [IntCounter; CodeClass::ALL.len()] {
        CodeClass::ALL.map(|c| {
            self.upstream
                .with_label_values(&[self.pool.as_str(), server, c.as_str()])
        })
    }

    /// Recompute the gauges from `servers` (every server of the pool, now), give each server
    /// seen for the first time its upstream series at 0, and drop the series of servers that
    /// left.
    pub fn export(&self, servers: &[ServerView]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = [0i64; ServerStateLabel::ALL.len()];
        let mut now = HashSet::with_capacity(servers.len());
        let pool = self.pool.as_str();
        for s in servers {
            counts[ServerStateLabel::of(s).index()] += 1;
            let up = i64::from(s.healthy && !s.ejected);
            self.server_up.with_label_values(&[pool, &s.addr]).set(up);
            if !seen.contains(&s.addr) {
                self.upstream_counters(&s.addr);
            }
            now.insert(s.addr.clone());
        }
        for state in ServerStateLabel::ALL {
            self.servers.set(state, counts[state.index()]);
        }
        for server in seen.difference(&now) {
            let _ = self.server_up.remove_label_values(&[pool, server]);
            for class in CodeClass::ALL {
                let _ = self
                    .upstream
                    .remove_label_values(&[pool, server, class.as_str()]);
            }
        }
        *seen = now;
    }
}

/// One upstream server's `canary_lb_upstream_requests_total` series, one per [`CodeClass`],
/// resolved on the server's first attempt. The server's state owns it.
#[derive(Debug, Default)]
pub struct UpstreamSeries(OnceLock<[IntCounter; CodeClass::ALL.len()]>);

#[cfg(test)]
mod tests {
    use super::*;

    fn view(addr: &str, healthy: bool, draining: bool) -> ServerView {
        ServerView {
            addr: addr.into(),
            name: addr.into(),
            weight: 1,
            healthy,
            draining,
            ejected: false,
            in_rotation: healthy && !draining,
            in_flight: 0,
        }
    }

    #[test]
    fn label_types_own_their_index_and_text() {
        crate::metrics::assert_distinct::<CodeClass>();
        crate::metrics::assert_distinct::<ServerStateLabel>();
        crate::metrics::assert_distinct::<UpstreamTlsFailure>();
        for (status, want) in [
            (None, "error"),
            (Some(99), "error"),
            (Some(100), "1xx"),
            (Some(204), "2xx"),
            (Some(308), "3xx"),
            (Some(404), "4xx"),
            (Some(599), "5xx"),
            (Some(600), "error"),
        ] {
            assert_eq!(CodeClass::of(status).as_str(), want, "{status:?}");
        }
    }

    #[test]
    fn servers_get_their_series_when_seen_and_lose_them_when_gone() {
        let registry = Registry::new();
        let metrics = PoolMetrics::register(&registry).expect("register");
        let series = PoolKind::ALL.map(|p| metrics.series(p));
        let production = &series[0];
        let text = || String::from_utf8(registry.text()).expect("utf-8");
        let servers = [
            view("10.0.0.1:80", true, false),
            view("10.0.0.2:80", false, false),
            view("10.0.0.3:80", true, true),
        ];
        production.export(&servers);
        let t = text();
        for line in [
            "canary_lb_upstream_requests_total{code_class=\"5xx\",pool=\"production\",server=\"10.0.0.1:80\"} 0",
            "canary_lb_server_up{pool=\"production\",server=\"10.0.0.2:80\"} 0",
            "canary_lb_pool_servers{pool=\"production\",state=\"healthy\"} 1",
            "canary_lb_pool_servers{pool=\"production\",state=\"unhealthy\"} 1",
            "canary_lb_pool_servers{pool=\"production\",state=\"draining\"} 1",
            "canary_lb_pool_servers{pool=\"canary\",state=\"healthy\"} 0",
            "canary_lb_upstream_tls_failures_total{kind=\"unknown_ca\",pool=\"canary\"} 0",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        // An attempt counts on the series created at 0.
        let upstream = UpstreamSeries::default();
        production.upstream("10.0.0.1:80", &upstream, Some(502));
        production.upstream("10.0.0.1:80", &upstream, None);
        production.export(&servers[..1]);
        let t = text();
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
        let metrics = PoolMetrics::register(&Registry::new()).expect("register");
        let canary = metrics.series(PoolKind::Canary);
        canary.answered(200);
        canary.answered(502);
        assert_eq!(canary.counts(), (2, 1));
        assert_eq!(metrics.series(PoolKind::Production).counts(), (0, 0));
    }
}
