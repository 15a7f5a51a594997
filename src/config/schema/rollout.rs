//! `rollout:`: the file's format of the rollout settings, turned into `RolloutSettings`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::de::*;
use crate::model::Percent;
use crate::rollout::settings::{
    default_confidence, default_per_client_failures, default_per_client_requests,
    is_default_confidence, is_default_per_client_failures, is_default_per_client_requests,
};
use crate::rollout::settings::{ErrorRateSettings, LatencySettings, RolloutSettings};
use crate::rollout::shadow::ShadowSettings;

/// `rollout:`: how the proxy ramps the canary and judges it against production (README,
/// "Progressive delivery"). Every key has a default; a rollout freezes a copy at its start.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// canary_percent at each step, ascending; the last is usually 100.
    pub steps: Vec<Percent>,
    /// The analysis window.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Passing windows that advance a step.
    pub windows_per_step: u32,
    /// Failed windows (cumulative within a rollout) before rollback.
    pub threshold: u32,
    /// Canary requests in a window below this: inconclusive, not a failure.
    pub min_requests: u64,
    /// Consecutive inconclusive windows before the rollout pauses.
    pub max_inconclusive: u32,
    /// Canary 5xx and connect failures in a window that fail it even below `min_requests`.
    pub hard_fail_errors: u64,
    /// Count requests sent to canary by header or cookie in the analysis.
    pub count_forced: bool,
    pub error_rate: RolloutErrorRate,
    pub latency: RolloutLatency,
    /// Also run a Mann-Whitney U test on the two latency histograms.
    pub mann_whitney: bool,
    /// File provider: where the rollout is kept across restarts (default: beside the config
    /// file, `<config>.rollout-state.json`). Read at start. Never serialized: the settings a
    /// rollout freezes are stored in Redis, and releases before this key refuse it there.
    #[serde(skip_serializing)]
    pub state_file: Option<std::path::PathBuf>,
    /// How sure a rule must be before it fails a window: each rule's one-sided test fails it
    /// only at p < 1 - confidence. Not written when default (older readers know no such key).
    #[serde(
        default = "default_confidence",
        skip_serializing_if = "is_default_confidence"
    )]
    pub confidence: f64,
    /// Requests of one client address (IPv6: one /64) counted per window and pool; more are
    /// served but left out of the judgement (`capped`). 0: no cap.
    #[serde(
        default = "default_per_client_requests",
        skip_serializing_if = "is_default_per_client_requests"
    )]
    pub per_client_requests: u64,
    /// Errors, and answers slower than the latency rules' lowest threshold, of one client
    /// counted per window and pool; its further ones are left out. 0: no cap, and the busiest
    /// client is not taken out of the counts (for clients that all share one address; then
    /// one client can fail windows).
    #[serde(
        default = "default_per_client_failures",
        skip_serializing_if = "is_default_per_client_failures"
    )]
    pub per_client_failures: u64,
    /// The shadow step: step 0, copies of production's requests judged in pairs before any
    /// user reaches the canary (`rollout.shadow`, README "Progressive delivery"). Off when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSettings>,
}

impl RolloutConfig {
    /// Check the values serde cannot, by the rollout's own check
    /// ([`RolloutSettings::validate`]): `Err((key, problem))` with the key under `rollout.`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.settings().validate()
    }

    /// The settings a rollout started now runs with (unchecked: [`Config::validate`] checked
    /// them when the file was read).
    pub fn settings(&self) -> RolloutSettings {
        RolloutSettings::from(self)
    }
}

/// The file's section as the rollout's settings: field by field (`state_file` is the
/// process's, not the rollout's).
impl From<&RolloutConfig> for RolloutSettings {
    fn from(c: &RolloutConfig) -> Self {
        let RolloutConfig {
            steps,
            interval,
            windows_per_step,
            threshold,
            min_requests,
            max_inconclusive,
            hard_fail_errors,
            count_forced,
            error_rate,
            latency,
            mann_whitney,
            state_file: _,
            confidence,
            per_client_requests,
            per_client_failures,
            shadow,
        } = c;
        RolloutSettings {
            steps: steps.clone(),
            interval: *interval,
            windows_per_step: *windows_per_step,
            threshold: *threshold,
            min_requests: *min_requests,
            max_inconclusive: *max_inconclusive,
            hard_fail_errors: *hard_fail_errors,
            count_forced: *count_forced,
            error_rate: ErrorRateSettings {
                max_percent: error_rate.max_percent,
                max_excess_points: error_rate.max_excess_points,
                z: error_rate.z,
            },
            latency: LatencySettings {
                p99_max: latency.p99_max,
                p99_max_ratio: latency.p99_max_ratio,
                floor: latency.floor,
            },
            mann_whitney: *mann_whitney,
            confidence: *confidence,
            per_client_requests: *per_client_requests,
            per_client_failures: *per_client_failures,
            shadow: shadow.clone(),
        }
    }
}

impl From<RolloutConfig> for RolloutSettings {
    fn from(c: RolloutConfig) -> Self {
        RolloutSettings::from(&c)
    }
}

/// The file's defaults are the rollout's ([`RolloutSettings::default`]).
impl Default for RolloutConfig {
    fn default() -> Self {
        let s = RolloutSettings::default();
        RolloutConfig {
            steps: s.steps,
            interval: s.interval,
            windows_per_step: s.windows_per_step,
            threshold: s.threshold,
            min_requests: s.min_requests,
            max_inconclusive: s.max_inconclusive,
            hard_fail_errors: s.hard_fail_errors,
            count_forced: s.count_forced,
            error_rate: RolloutErrorRate::default(),
            latency: RolloutLatency::default(),
            mann_whitney: s.mann_whitney,
            state_file: None,
            confidence: s.confidence,
            per_client_requests: s.per_client_requests,
            per_client_failures: s.per_client_failures,
            shadow: s.shadow,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutErrorRate {
    /// The canary's 5xx + connect-failure rate above this fails a window, in percent.
    pub max_percent: f64,
    /// Canary rate above production's by more than this many points (and `z`) fails it.
    pub max_excess_points: f64,
    /// One-sided two-proportion z statistic needed for the excess to count.
    pub z: f64,
}

impl Default for RolloutErrorRate {
    fn default() -> Self {
        let ErrorRateSettings {
            max_percent,
            max_excess_points,
            z,
        } = ErrorRateSettings::default();
        RolloutErrorRate {
            max_percent,
            max_excess_points,
            z,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutLatency {
    /// The canary's p99 above this fails a window.
    #[serde(with = "humantime_serde")]
    pub p99_max: Duration,
    /// The canary's p99 above this times max(production p99, floor) fails it.
    pub p99_max_ratio: f64,
    #[serde(with = "humantime_serde")]
    pub floor: Duration,
}

impl Default for RolloutLatency {
    fn default() -> Self {
        let LatencySettings {
            p99_max,
            p99_max_ratio,
            floor,
        } = LatencySettings::default();
        RolloutLatency {
            p99_max,
            p99_max_ratio,
            floor,
        }
    }
}
