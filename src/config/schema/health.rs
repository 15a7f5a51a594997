//! `health_check:` (active checks) and `passive_health:` (failure detection from real requests).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::de::*;
use crate::model::Percent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_check_kind")]
    pub kind: CheckKind,
    #[serde(default = "default_health_path", deserialize_with = "de_check_path")]
    pub path: String,
    /// Host header sent with HTTP checks.
    #[serde(default = "default_health_host", deserialize_with = "de_check_host")]
    pub host: String,
    /// Accepted status range for HTTP checks, e.g. `200-399` or `200`.
    #[serde(default = "default_status_range", deserialize_with = "de_status_range")]
    pub expect_status: (u16, u16),
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_threshold", deserialize_with = "de_threshold")]
    pub healthy_threshold: usize,
    #[serde(default = "default_threshold", deserialize_with = "de_threshold")]
    pub unhealthy_threshold: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: default_check_kind(),
            path: default_health_path(),
            host: default_health_host(),
            expect_status: default_status_range(),
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            healthy_threshold: default_threshold(),
            unhealthy_threshold: default_threshold(),
        }
    }
}

/// Passive failure detection, from what real requests see.
///
/// By default only *transport* failures count against a server: a connect refused, timed out
/// or unroutable, and a reset or timeout before the first response byte. A 5xx answer does not
/// count (any client can make an app answer 500), unless `error_rate` is set, and then only as
/// a rate over a minimum volume in a window. Errors that are the proxy's own (out of file
/// descriptors or buffers, a client that went away) never count. A server failing
/// `max_failures` times in a row gets no new requests for `cool_off`; passive detection never
/// takes out more than `max_ejection_percent` of a pool (rounded down, as Envoy does: a pool of
/// one server is never passively ejected); past that, only active health checks decide.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    #[serde(
        default = "default_max_failures",
        deserialize_with = "de_threshold_u32"
    )]
    pub max_failures: u32,
    #[serde(default = "default_cool_off", with = "humantime_serde")]
    pub cool_off: Duration,
    #[serde(
        default = "default_max_ejection_percent",
        deserialize_with = "de_ejection_percent"
    )]
    pub max_ejection_percent: u32,
    /// Eject on a high share of 5xx answers; off unless set.
    #[serde(default)]
    pub error_rate: Option<ErrorRateConfig>,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            max_failures: default_max_failures(),
            cool_off: default_cool_off(),
            max_ejection_percent: default_max_ejection_percent(),
            error_rate: None,
        }
    }
}

/// `passive_health.error_rate`: within each `window`, a server that answered at least
/// `min_requests` requests of which more than `max_percent` % were 5xx is ejected.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateConfig {
    #[serde(default = "default_error_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(
        default = "default_error_min_requests",
        deserialize_with = "de_error_min_requests"
    )]
    pub min_requests: u32,
    #[serde(default = "default_error_max_percent")]
    pub max_percent: Percent,
}

fn default_check_kind() -> CheckKind {
    CheckKind::Http
}

fn default_health_path() -> String {
    "/healthz".into()
}

fn default_health_host() -> String {
    "localhost".into()
}

fn default_status_range() -> (u16, u16) {
    (200, 399)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_threshold() -> usize {
    2
}

fn default_max_failures() -> u32 {
    3
}

fn default_cool_off() -> Duration {
    Duration::from_secs(10)
}

fn default_max_ejection_percent() -> u32 {
    50
}

fn default_error_window() -> Duration {
    Duration::from_secs(10)
}

fn default_error_min_requests() -> u32 {
    20
}

fn default_error_max_percent() -> Percent {
    Percent::from_basis_points(5000)
}
