//! The rollout's metrics: phase, weight, failed checks, verdicts, rollbacks and leadership.
//! Every label set exists from the first scrape. Verdicts and rollbacks are counted only by
//! the replica that applied them, so `sum()` over replicas counts each once.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::Registry;

use super::labels::{LabelValue, VerdictLabel};
use crate::model::{PerPool, PoolKind};

pub struct RolloutMetrics {
    /// By `phase`: the phases are the rollout's ([`LabelValue`]), exported by
    /// [`RolloutMetrics::export_phases`].
    phase: IntGaugeVec,
    weight: Gauge,
    failed: IntGauge,
    /// By `verdict` and `reason`: the reasons are the rollout's ([`VerdictLabel`]), exported
    /// by [`RolloutMetrics::export_verdicts`]. A window is judged once an interval, so the
    /// series are looked up when counted, not held.
    verdicts: IntCounterVec,
    rollbacks: IntCounterVec,
    leader: IntGauge,
    capped: PerPool<IntCounter>,
}

impl RolloutMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<RolloutMetrics> {
        let phase_vec = IntGaugeVec::new(
            Opts::new(
                "canary_lb_rollout_phase",
                "1 for the phase of the current (or last) rollout, 0 for the others.",
            ),
            &["phase"],
        )?;
        registry.register(phase_vec.clone())?;
        let weight = Gauge::new(
            "canary_lb_rollout_weight",
            "canary_percent the rollout holds (its step's weight, 0 after a rollback).",
        )?;
        registry.register(weight.clone())?;
        let failed = IntGauge::new(
            "canary_lb_rollout_failed_checks",
            "Failed windows in the current rollout (it rolls back at its threshold).",
        )?;
        registry.register(failed.clone())?;
        let verdicts_vec = IntCounterVec::new(
            Opts::new(
                "canary_lb_rollout_verdicts_total",
                "Judged windows by verdict and reason, counted by the replica that applied them.",
            ),
            &["verdict", "reason"],
        )?;
        registry.register(verdicts_vec.clone())?;
        let rollbacks_vec = IntCounterVec::new(
            Opts::new(
                "canary_lb_rollout_rollbacks_total",
                "Automatic rollbacks by reason, counted by the replica that applied them.",
            ),
            &["reason"],
        )?;
        registry.register(rollbacks_vec.clone())?;
        let leader = IntGauge::new(
            "canary_lb_rollout_leader",
            "1 while this replica holds the rollout leader lease.",
        )?;
        registry.register(leader.clone())?;
        let capped_vec = IntCounterVec::new(
            Opts::new(
                "canary_lb_rollout_capped_requests_total",
                "Requests answered during a rollout but left out of its windows because their \
                 client had reached its per-window cap (per_client_requests or \
                 per_client_failures), by pool.",
            ),
            &["pool"],
        )?;
        registry.register(capped_vec.clone())?;
        Ok(RolloutMetrics {
            phase: phase_vec,
            weight,
            failed,
            verdicts: verdicts_vec,
            rollbacks: rollbacks_vec,
            leader,
            capped: PerPool::from_fn(|k| capped_vec.with_label_values(&[k.as_str()])),
        })
    }

    /// Requests of a taken window left out by the per-client caps.
    pub fn capped(&self, pool: PoolKind, n: u64) {
        self.capped[pool].inc_by(n);
    }

    /// Export the phase series of every value of `P`: 1 for `now`, 0 for the others (the
    /// process calls it at start, so they exist from the first scrape).
    pub fn export_phases<P: LabelValue>(&self, now: P) {
        for &p in P::ALL {
            self.phase
                .with_label_values(&[p.label()])
                .set(i64::from(p == now));
        }
    }

    /// The rollout as it stands: its phase, weight and failed windows.
    pub fn set_state<P: LabelValue>(&self, phase: P, weight: f64, failed: u32) {
        self.export_phases(phase);
        self.weight.set(weight);
        self.failed.set(i64::from(failed));
    }

    /// Export every verdict and rollback series of `R` at 0 (the process that can judge
    /// windows calls it at start, so they exist from the first scrape).
    pub fn export_verdicts<R: VerdictLabel>(&self) {
        for &r in R::ALL {
            self.verdicts.with_label_values(&[r.verdict(), r.label()]);
            if r.fails() {
                self.rollbacks.with_label_values(&[r.label()]);
            }
        }
    }

    pub fn verdict<R: VerdictLabel>(&self, reason: R) {
        self.verdicts
            .with_label_values(&[reason.verdict(), reason.label()])
            .inc();
    }

    /// An automatic rollback; only failing reasons have a series.
    pub fn rollback<R: VerdictLabel>(&self, reason: R) {
        if reason.fails() {
            self.rollbacks.with_label_values(&[reason.label()]).inc();
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;

    #[test]
    fn every_rollout_series_exists_from_the_first_scrape() {
        let m = Metrics::new().expect("metrics");
        let text = String::from_utf8(m.render()).expect("utf-8");
        for line in [
            "canary_lb_rollout_weight 0",
            "canary_lb_rollout_failed_checks 0",
            "canary_lb_rollout_leader 0",
            "canary_lb_rollout_capped_requests_total{pool=\"canary\"} 0",
            "canary_lb_rollout_capped_requests_total{pool=\"production\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
