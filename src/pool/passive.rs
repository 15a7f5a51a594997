//! Passive ejection's settings as the request path reads them: built once per reload from the
//! file's `passive_health` section (with the other live settings, `state::Live`), so a request
//! holds no serde type and compares plain numbers.

use std::time::Duration;

use crate::config::{ErrorRateConfig, PassiveHealthConfig};

/// `passive_health`: when a server is taken out of rotation, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Transport failures in a row that eject a server.
    pub max_failures: u32,
    pub cool_off: Duration,
    /// Most of a pool (percent, rounded down) passive ejection may take out at once.
    pub max_ejection_percent: u32,
    /// Ejection on a high share of 5xx answers; None: off.
    pub error_rate: Option<ErrorRate>,
}

/// `passive_health.error_rate`: within each window, a server that answered at least
/// `min_requests` requests of which more than `max_basis_points` / 100 % were 5xx is ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRate {
    pub window_ms: u64,
    pub min_requests: u32,
    pub max_basis_points: u32,
}

impl From<&PassiveHealthConfig> for PassiveHealth {
    fn from(c: &PassiveHealthConfig) -> PassiveHealth {
        PassiveHealth {
            max_failures: c.max_failures,
            cool_off: c.cool_off,
            max_ejection_percent: c.max_ejection_percent,
            error_rate: c.error_rate.as_ref().map(ErrorRate::from),
        }
    }
}

impl From<&ErrorRateConfig> for ErrorRate {
    fn from(c: &ErrorRateConfig) -> ErrorRate {
        ErrorRate {
            window_ms: u64::try_from(c.window.as_millis()).unwrap_or(u64::MAX),
            min_requests: c.min_requests,
            max_basis_points: c.max_percent.basis_points(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_rate_is_built_as_the_numbers_a_request_compares() {
        let config: PassiveHealthConfig = serde_yaml_ng::from_str(
            "max_failures: 4\ncool_off: 15s\nerror_rate: { window: 2s, min_requests: 7, max_percent: 12.5 }\n",
        )
        .expect("passive_health");
        let p = PassiveHealth::from(&config);
        assert_eq!((p.max_failures, p.cool_off), (4, Duration::from_secs(15)));
        assert_eq!(p.max_ejection_percent, config.max_ejection_percent);
        assert_eq!(
            p.error_rate,
            Some(ErrorRate {
                window_ms: 2_000,
                min_requests: 7,
                max_basis_points: 1_250,
            })
        );
        let off = PassiveHealth::from(&PassiveHealthConfig::default());
        assert_eq!(off.error_rate, None);
    }
}
