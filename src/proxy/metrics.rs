//! What the proxy measures, registered by the proxy with its own label types: client
//! requests by pool, status and [`MethodLabel`] with their duration, routing decisions,
//! retries, requests refused at the edge ([`RefusalCode`]), what clients got wrong
//! ([`ClientErrorKind`]), the client connections of its listeners, and the HTTP/2 upstream
//! budgets ([`BudgetLabel`]).
//!
//! Registered once at start ([`ProxyMetrics::register`]) and shared by every proxy service.
//! Request-path handles whose labels are known up front (per pool, per reason, per kind) are
//! resolved at registration; `canary_lb_requests_total`'s are resolved on first use into a
//! table indexed by code and method, so a request neither hashes labels nor takes the
//! vector's lock. The answers canary-lb gives by itself ([`PRESET_REQUEST_CODES`]) exist at 0
//! from the first scrape for every pool and method.

use std::sync::{Arc, OnceLock};

use http::Method;
use pingora_core::services::listening::{ClientError, ConnectionLimit};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::metrics::{Counters, Registry};
use crate::model::{PerPool, PoolKind, Reason};

/// Status codes 0 (no response) ..= 999, times methods: the request counter cache size.
const CODES: usize = 1000;

/// Request series that exist from the first scrape, for every pool and method: the answers
/// canary-lb gives by itself when an upstream fails (502), none is left (503) or one is too
/// slow (504). A 5xx alert's `rate()` then sees the first of them; other codes appear when
/// they first happen (a series per status code ever seen would be 1,000 per pool and method).
pub const PRESET_REQUEST_CODES: [u16; 3] = [502, 503, 504];

/// The `method` label of `canary_lb_requests_total`; any other method counts as `OTHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodLabel {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl MethodLabel {
    pub const ALL: [MethodLabel; 8] = [
        MethodLabel::Get,
        MethodLabel::Head,
        MethodLabel::Post,
        MethodLabel::Put,
        MethodLabel::Delete,
        MethodLabel::Patch,
        MethodLabel::Options,
        MethodLabel::Other,
    ];

    pub fn from_method(m: &Method) -> MethodLabel {
        match *m {
            Method::GET => MethodLabel::Get,
            Method::HEAD => MethodLabel::Head,
            Method::POST => MethodLabel::Post,
            Method::PUT => MethodLabel::Put,
            Method::DELETE => MethodLabel::Delete,
            Method::PATCH => MethodLabel::Patch,
            Method::OPTIONS => MethodLabel::Options,
            _ => MethodLabel::Other,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Other => "OTHER",
        }
    }
}

/// The `outcome` label of `canary_lb_shadow_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowOutcome {
    Answered,
    Failed,
    Timeout,
    Dropped,
    NoServer,
    TooLarge,
}

impl ShadowOutcome {
    pub const ALL: [ShadowOutcome; 6] = [
        ShadowOutcome::Answered,
        ShadowOutcome::Failed,
        ShadowOutcome::Timeout,
        ShadowOutcome::Dropped,
        ShadowOutcome::NoServer,
        ShadowOutcome::TooLarge,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ShadowOutcome::Answered => "answered",
            ShadowOutcome::Failed => "failed",
            ShadowOutcome::Timeout => "timeout",
            ShadowOutcome::Dropped => "dropped",
            ShadowOutcome::NoServer => "no_server",
            ShadowOutcome::TooLarge => "too_large",
        }
    }
}

/// The `code` label of `canary_lb_refused_requests_total`: the statuses a request refused at
/// the edge (before routing) can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    BadRequest,
    HeaderFieldsTooLarge,
    NotImplemented,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 3] = [
        RefusalCode::BadRequest,
        RefusalCode::HeaderFieldsTooLarge,
        RefusalCode::NotImplemented,
    ];

    /// The refusal with `status`; any other status counts as 400.
    pub const fn of(status: u16) -> RefusalCode {
        match status {
            431 => RefusalCode::HeaderFieldsTooLarge,
            501 => RefusalCode::NotImplemented,
            _ => RefusalCode::BadRequest,
        }
    }

    pub const fn status(self) -> u16 {
        match self {
            RefusalCode::BadRequest => 400,
            RefusalCode::HeaderFieldsTooLarge => 431,
            RefusalCode::NotImplemented => 501,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadRequest => "400",
            RefusalCode::HeaderFieldsTooLarge => "431",
            RefusalCode::NotImplemented => "501",
        }
    }
}

/// The `kind` label of `canary_lb_client_errors_total`: what a client did that the proxy
/// answered by closing or failing the connection, logged at debug level only (any client can
/// cause these at will, so they must not fill the error log). The first four are counted by
/// Pingora's connection limit (patches/pingora/0006), the rest by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientErrorKind {
    /// A TLS handshake that failed (not TLS at all, no shared cipher or version, ...).
    TlsHandshake,
    /// A TLS handshake, h2c detection or HTTP/2 preface past `client.handshake_timeout`.
    HandshakeTimeout,
    /// An invalid HTTP/2 connection preface.
    H2Handshake,
    /// An idle connection closed to make room at `client.max_connections`.
    IdleShed,
    /// The client closed or reset the connection while a request was read or answered.
    Closed,
    /// The client was too slow: a body piece past `client.body_timeout`, a response write past
    /// `client.send_timeout`.
    Timeout,
    /// Anything else the client got wrong mid-request (an HTTP/2 protocol error, ...).
    Protocol,
}

impl ClientErrorKind {
    pub const ALL: [ClientErrorKind; 7] = [
        ClientErrorKind::TlsHandshake,
        ClientErrorKind::HandshakeTimeout,
        ClientErrorKind::H2Handshake,
        ClientErrorKind::IdleShed,
        ClientErrorKind::Closed,
        ClientErrorKind::Timeout,
        ClientErrorKind::Protocol,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ClientErrorKind::TlsHandshake => "tls_handshake",
            ClientErrorKind::HandshakeTimeout => "handshake_timeout",
            ClientErrorKind::H2Handshake => "h2_handshake",
            ClientErrorKind::IdleShed => "idle_shed",
            ClientErrorKind::Closed => "closed",
            ClientErrorKind::Timeout => "timeout",
            ClientErrorKind::Protocol => "protocol",
        }
    }
}

/// The `budget` label of `canary_lb_upstream_budget_refused_total`: which HTTP/2 upstream
/// budget had no place for a stream within `client.upstream_queue_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetLabel {
    /// `client.max_upstream_per_connection`: the stream's own connection was full.
    Connection,
    /// `client.max_upstream_connections`: the process-wide budget was full.
    Total,
}

impl BudgetLabel {
    pub const ALL: [BudgetLabel; 2] = [BudgetLabel::Connection, BudgetLabel::Total];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            BudgetLabel::Connection => "connection",
            BudgetLabel::Total => "total",
        }
    }
}

crate::metrics::label_value!(MethodLabel);
crate::metrics::label_value!(RefusalCode);
crate::metrics::label_value!(ClientErrorKind);
crate::metrics::label_value!(BudgetLabel);
crate::metrics::label_value!(ShadowOutcome);

/// The proxy's series.
pub struct ProxyMetrics {
    requests: IntCounterVec,
    /// `requests` handles per pool, indexed by `code * MethodLabel::ALL.len() + method`,
    /// filled on first use.
    request_handles: PerPool<Box<[OnceLock<IntCounter>]>>,
    duration: PerPool<Histogram>,
    decisions: PerPool<[IntCounter; Reason::ALL.len()]>,
    retries: PerPool<IntCounter>,
    /// Requests refused at the edge, by the status they got.
    refused: Counters<RefusalCode>,
    /// HTTP/2 streams answered 503 because an upstream budget had no place, by budget.
    budget_refused: Counters<BudgetLabel>,
    /// Upstream requests of HTTP/2 streams in flight (holding a place in the budgets).
    pub h2_upstream_in_flight: IntGauge,
    /// The shadow step's copies to the canary, by how they ended.
    shadow: Counters<ShadowOutcome>,
    /// The client connections and errors, partly counted by Pingora and read at scrape.
    clients: Arc<Clients>,
}

/// What the listeners' connection limits count, read at scrape time, and the client errors
/// (the proxy counts the request-level kinds itself).
struct Clients {
    /// The proxy listeners' connection limit.
    proxy_limit: OnceLock<Arc<ConnectionLimit>>,
    /// The admin port's connection limit (its client errors count too).
    admin_limit: OnceLock<Arc<ConnectionLimit>>,
    connections: IntGauge,
    connections_max: IntGauge,
    connections_refused: IntCounter,
    /// What clients did wrong, by kind: counted here, logged at debug only.
    errors: Counters<ClientErrorKind>,
}

impl ProxyMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<ProxyMetrics> {
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
        let clients = Arc::new(Clients {
            proxy_limit: OnceLock::new(),
            admin_limit: OnceLock::new(),
            connections: r.gauge(
                "canary_lb_client_connections",
                "Open client connections on the proxy listeners.",
            )?,
            connections_max: r.gauge(
                "canary_lb_client_connections_max",
                "client.max_connections: open client connections allowed.",
            )?,
            connections_refused: r.counter(
                "canary_lb_client_connections_refused_total",
                "Client connections closed at once because max_connections were open.",
            )?,
            errors: r.counters(
                "canary_lb_client_errors_total",
                "Connections and requests a client failed (bad or late handshake, idle connection shed at the limit, closed or too slow mid-request), by kind; logged at debug level only.",
                "kind",
            )?,
        });
        let at_scrape = clients.clone();
        r.on_scrape(move || at_scrape.sync());
        let metrics = ProxyMetrics {
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
            refused: r.counters(
                "canary_lb_refused_requests_total",
                "Requests refused at the edge before routing (bad framing, oversized head), by status.",
                "code",
            )?,
            budget_refused: r.counters(
                "canary_lb_upstream_budget_refused_total",
                "HTTP/2 streams answered 503 because an upstream budget had no place in time, by \
                 budget (connection: client.max_upstream_per_connection, total: \
                 client.max_upstream_connections).",
                "budget",
            )?,
            shadow: r.counters(
                "canary_lb_shadow_requests_total",
                "The shadow step's copies of production requests to the canary, by outcome \
                 (answered; failed: no answer; timeout: over shadow.timeout; dropped: \
                 shadow.max_in_flight copies were out; no_server: no canary server; too_large: \
                 a body over shadow.max_body or not received whole).",
                "outcome",
            )?,
            h2_upstream_in_flight: r.gauge(
                "canary_lb_h2_upstream_in_flight",
                "Upstream requests of HTTP/2 streams in flight (places taken in the budgets).",
            )?,
            clients,
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

    /// A client request finished with status `code` (0: no response was written).
    pub fn record_request(&self, pool: PoolKind, code: u16, method: MethodLabel, seconds: f64) {
        let code = usize::from(code).min(CODES - 1);
        self.request_counter(pool, code, method).inc();
        self.duration[pool].observe(seconds);
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

    pub fn record_decision(&self, pool: PoolKind, reason: Reason) {
        self.decisions[pool][reason.index()].inc();
    }

    /// One shadow copy, by how it ended.
    pub fn shadow(&self, outcome: ShadowOutcome) {
        self.shadow.inc(outcome);
    }

    pub fn record_retry(&self, pool: PoolKind) {
        self.retries[pool].inc();
    }

    /// A request refused at the edge.
    pub fn record_refusal(&self, code: RefusalCode) {
        self.refused.inc(code);
    }

    /// An HTTP/2 stream refused (503) because `budget` had no place in time.
    pub fn record_budget_refusal(&self, budget: BudgetLabel) {
        self.budget_refused.inc(budget);
    }

    /// A request a client failed mid-way (closed, too slow, protocol error).
    pub fn record_client_error(&self, kind: ClientErrorKind) {
        self.clients.errors.inc(kind);
    }

    /// Report the proxy listeners' connection limit from now on.
    pub fn watch_connection_limit(&self, limit: Arc<ConnectionLimit>) {
        let _ = self.clients.proxy_limit.set(limit);
    }

    /// Count the admin port's client errors (its connection limit's) from now on.
    pub fn watch_admin_connection_limit(&self, limit: Arc<ConnectionLimit>) {
        let _ = self.clients.admin_limit.set(limit);
    }
}

impl Clients {
    /// Bring the connection gauges and the connection-level client errors Pingora counts up
    /// to date.
    fn sync(&self) {
        if let Some(limit) = self.proxy_limit.get() {
            self.connections.set(limit.active() as i64);
            self.connections_max.set(limit.max() as i64);
            catch_up(&self.connections_refused, limit.refused());
        }
        let pairs = [
            (ClientError::TlsHandshake, ClientErrorKind::TlsHandshake),
            (
                ClientError::HandshakeTimeout,
                ClientErrorKind::HandshakeTimeout,
            ),
            (ClientError::H2Handshake, ClientErrorKind::H2Handshake),
            (ClientError::IdleShed, ClientErrorKind::IdleShed),
        ];
        let limits = [&self.proxy_limit, &self.admin_limit];
        for (theirs, ours) in pairs {
            let total: u64 = limits
                .iter()
                .filter_map(|l| l.get())
                .map(|l| l.client_errors(theirs))
                .sum();
            if let Some(counter) = self.errors.get(ours) {
                catch_up(counter, total);
            }
        }
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
    fn label_types_own_their_index_and_text() {
        crate::metrics::assert_distinct::<MethodLabel>();
        crate::metrics::assert_distinct::<RefusalCode>();
        crate::metrics::assert_distinct::<ClientErrorKind>();
        crate::metrics::assert_distinct::<BudgetLabel>();
        for (m, want) in [
            (Method::GET, "GET"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::TRACE, "OTHER"),
            (Method::CONNECT, "OTHER"),
        ] {
            assert_eq!(MethodLabel::from_method(&m).as_str(), want, "{m}");
        }
        for code in RefusalCode::ALL {
            assert_eq!(RefusalCode::of(code.status()), code);
            assert_eq!(code.as_str(), code.status().to_string());
        }
        assert_eq!(RefusalCode::of(418), RefusalCode::BadRequest);
    }

    #[test]
    fn code_labels() {
        let mut b = [0u8; 3];
        assert_eq!(code_str(&mut b, 200), "200");
        assert_eq!(code_str(&mut b, 503), "503");
    }

    #[test]
    fn every_known_series_is_at_zero_before_any_request() {
        let registry = Registry::new();
        let m = ProxyMetrics::register(&registry).expect("register");
        let text = || String::from_utf8(registry.text()).expect("utf-8");
        let t = text();
        let mut want = vec![
            "canary_lb_requests_total{code=\"503\",method=\"POST\",pool=\"canary\"} 0".to_string(),
            "canary_lb_retries_total{pool=\"production\"} 0".to_string(),
            "canary_lb_upstream_budget_refused_total{budget=\"total\"} 0".to_string(),
        ];
        for kind in ClientErrorKind::ALL {
            want.push(format!(
                "canary_lb_client_errors_total{{kind=\"{}\"}} 0",
                kind.as_str()
            ));
        }
        for code in RefusalCode::ALL {
            want.push(format!(
                "canary_lb_refused_requests_total{{code=\"{}\"}} 0",
                code.as_str()
            ));
        }
        for line in &want {
            assert!(t.contains(line.as_str()), "{line} missing:\n{t}");
        }
        m.record_request(PoolKind::Canary, 200, MethodLabel::Get, 0.01);
        m.record_client_error(ClientErrorKind::Closed);
        let t = text();
        for line in [
            "canary_lb_requests_total{code=\"200\",method=\"GET\",pool=\"canary\"} 1",
            "canary_lb_request_duration_seconds_count{pool=\"canary\"} 1",
            "canary_lb_client_errors_total{kind=\"closed\"} 1",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
    }
}
