//! One server's state that outlives membership rebuilds: draining, passive failure counting and
//! ejection (on a monotonic clock), the error-rate window, requests in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::metrics::UpstreamSeries;
use super::passive::ErrorRate;

/// State of one server address that outlives membership rebuilds.
#[derive(Debug)]
pub struct ServerState {
    pub addr: SocketAddr,
    /// `host:port` as configured (differs from `addr` for DNS names).
    pub name: String,
    /// `addr` as text: the `server` label of metrics.
    pub label: String,
    draining: AtomicBool,
    /// Transport failures in a row (passive detection).
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// The `passive_health.error_rate` window: its start, answers and 5xx answers in it.
    window_start_ms: AtomicU64,
    window_answers: AtomicU32,
    window_errors: AtomicU32,
    /// When an ejection of this server was last refused by `max_ejection_percent` (log limit;
    /// 0: never).
    refusal_logged_ms: AtomicU64,
    /// Requests currently on this server (through this proxy).
    in_flight: AtomicI64,
    /// This server's `canary_lb_upstream_requests_total` series.
    pub upstream_series: UpstreamSeries,
}

impl ServerState {
    pub(super) fn new(addr: SocketAddr, name: &str) -> Self {
        ServerState {
            addr,
            name: name.to_string(),
            label: addr.to_string(),
            draining: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            window_start_ms: AtomicU64::new(0),
            window_answers: AtomicU32::new(0),
            window_errors: AtomicU32::new(0),
            refusal_logged_ms: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            upstream_series: UpstreamSeries::default(),
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub(super) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Relaxed);
    }

    /// Taken out by passive detection and still cooling off.
    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.load(Relaxed) > mono_ms()
    }

    /// One more transport failure; returns how many there have been in a row.
    pub(super) fn record_transport_failure(&self) -> u32 {
        self.failures.fetch_add(1, Relaxed) + 1
    }

    /// The server answered with `status`. Returns the window's (answers, 5xx answers) when
    /// `rate` is set and the window's 5xx share is above it.
    pub(super) fn record_answer(
        &self,
        status: u16,
        rate: Option<&ErrorRate>,
    ) -> Option<(u32, u32)> {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        let rate = rate?;
        let now = mono_ms();
        let start = self.window_start_ms.load(Relaxed);
        if now.saturating_sub(start) >= rate.window_ms {
            // A new window. Two requests racing here may each reset it: a lost count or two.
            self.window_start_ms.store(now, Relaxed);
            self.window_answers.store(0, Relaxed);
            self.window_errors.store(0, Relaxed);
        }
        let answers = self.window_answers.fetch_add(1, Relaxed) + 1;
        let errors = if status >= 500 {
            self.window_errors.fetch_add(1, Relaxed) + 1
        } else {
            self.window_errors.load(Relaxed)
        };
        let over = answers >= rate.min_requests
            && u64::from(errors) * 10_000 > u64::from(answers) * u64::from(rate.max_basis_points);
        if over {
            self.window_start_ms.store(now, Relaxed);
            self.window_answers.store(0, Relaxed);
            self.window_errors.store(0, Relaxed);
            return Some((answers, errors));
        }
        None
    }

    /// Whether a refused ejection of this server should be logged now: at most once per
    /// `cool_off`, so a failing server does not fill the log.
    pub(super) fn refusal_log_due(&self, cool_off: Duration) -> bool {
        let now = mono_ms().max(1);
        let last = self.refusal_logged_ms.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < cool_off.as_millis() as u64 {
            return false;
        }
        self.refusal_logged_ms.store(now, Relaxed);
        true
    }

    pub(super) fn eject(&self, cool_off: Duration) {
        self.failures.store(0, Relaxed);
        let until = mono_ms() + cool_off.as_millis() as u64;
        self.ejected_until_ms.store(until, Relaxed);
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
}

/// Milliseconds on a monotonic clock (since its first use in this process): ejections and
/// windows must not jump with the wall clock (NTP steps, a VM resumed).
fn mono_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
