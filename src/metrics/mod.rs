//! The metrics registry of the process ([`Registry`]), the label trait the layers' own types
//! implement ([`LabelValue`]), and the metrics no single layer owns: the build, the config
//! reloads and changes, the canary share in force, the access log's dropped lines, stored
//! values a newer release wrote, and the rollout's ([`rollout`]).
//!
//! A layer measures itself: the proxy (`proxy::metrics`), the pools (`pool::metrics`) and
//! discovery (`discovery::metrics`) register theirs through [`Metrics::registry`], each
//! labelled by that layer's own types, and keep their handles. This module uses nothing of
//! the crate but `model`.
//!
//! Series exist from the first scrape: every label set known at start is created at 0 when
//! registered ([`Registry::counters`]). A series that appears at 1 has no earlier sample, so
//! `increase()` in an alert rule would miss that first event.
//!
//! Beside the families of the layers the registry holds what an operator looks for first on
//! any service: `canary_lb_build_info{version,commit}` (always 1; the commit is the one
//! `build.rs` read from git, or `unknown`), the prometheus crate's `process_*` collector (CPU,
//! memory, open descriptors, start time; Linux only) and the outcome of SIGHUP reloads
//! ([`Metrics::record_config_reload`]).

pub mod labels;
pub mod registry;
pub mod rollout;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge};

pub(crate) use labels::label_value;
pub use labels::{assert_distinct, LabelValue, VerdictLabel};
pub use labels::{ConfigSource, ReloadResult};
pub use registry::{Counters, Family, Gauges, Registry};
pub use rollout::RolloutMetrics;

/// The version `canary_lb_build_info` reports: the crate's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit `canary_lb_build_info` reports: `CANARY_LB_COMMIT` at build time (`build.rs`
/// sets it from git, or takes it from the environment), `unknown` without either.
pub const COMMIT: &str = match option_env!("CANARY_LB_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The process-wide metrics and the [`Registry`] the layers register their own with.
pub struct Metrics {
    registry: Registry,
    canary_percent: Gauge,
    config_changes: Counters<ConfigSource>,
    /// Access log lines dropped because the writer could not keep up.
    pub access_log_dropped: IntCounter,
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
            canary_percent: r.float_gauge(
                "canary_lb_canary_percent",
                "Share of users routed to canary by percentage, in percent.",
            )?,
            config_changes: r.counters(
                "canary_lb_config_changes_total",
                "Applied configuration changes by source (file, redis).",
                "source",
            )?,
            access_log_dropped: r.counter(
                "canary_lb_access_log_dropped_total",
                "Access log lines dropped because the writer could not keep up (never delaying a request).",
            )?,
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
        Ok(metrics)
    }

    /// The registry the layers register their own metrics with (`proxy::ProxyMetrics`,
    /// `pool::PoolMetrics`, `discovery::DiscoveryMetrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
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

    /// The Prometheus text exposition of every metric of every layer. The layers bring the
    /// values they read from elsewhere up to date first (`pool::Pool::export_metrics`,
    /// `discovery::DiscoveryMetrics::set_up`, or a [`Registry::on_scrape`] hook).
    pub fn render(&self) -> Vec<u8> {
        self.registry.text()
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
        m.config_change(ConfigSource::Redis);
        let t = text(&m);
        for line in [
            "canary_lb_config_changes_total{source=\"redis\"} 1",
            "canary_lb_config_changes_total{source=\"file\"} 0",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
    }
}
