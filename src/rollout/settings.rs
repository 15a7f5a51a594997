//! The settings a rollout runs with, defined once: [`RolloutSettings`], its defaults, its one
//! validation ([`RolloutSettings::validate`]) and the one table of the keys a start may set as
//! text ([`START_KEYS`]).
//!
//! Three readers build it, and all go through this file, so they cannot disagree:
//! - the config file's `rollout:` section (`config::schema::RolloutConfig`, the file format):
//!   converted field by field, then validated here; the config names the key and its line;
//! - `ctl rollout start --interval 2s` (the flags are [`START_KEYS`], `cli` builds them from
//!   the table) and
//! - the admin endpoint's `POST /rollout/start?interval=2s` (the same table, the query read
//!   with `form_urlencoded`): [`RolloutSettings::with_keys`] over the config's settings.
//!
//! [`RolloutState::settings`](super::RolloutState::settings) holds this type, never the
//! config's: what a rollout freezes is stored (Redis, the state file) and shown (`GET
//! /rollout`), and that JSON is a contract of its own (docs/redis-schema.md): older releases
//! read it and refuse keys they do not know inside `settings`, so a key added here is written
//! only when it differs from its default. Pure: no I/O (this module imports only `model`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shadow::ShadowSettings;
use crate::model::Percent;

/// The most steps a rollout may have.
pub const MAX_ROLLOUT_STEPS: usize = 100;
/// The largest `windows_per_step`, `threshold` and `max_inconclusive`.
pub const MAX_ROLLOUT_COUNT: u32 = 10_000;
/// The shortest analysis window: the engine ticks at a quarter of it and the replicas report
/// within a grace of a quarter, so below this a window ends before it is counted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest analysis window.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// [`MIN_INTERVAL`] and [`MAX_INTERVAL`] as errors and help say them.
const MIN_INTERVAL_TEXT: &str = "100ms";
const MAX_INTERVAL_TEXT: &str = "24h";
/// `confidence` by default: one-sided p < 0.001 per rule and window.
pub const DEFAULT_ROLLOUT_CONFIDENCE: f64 = 0.999;
/// `per_client_requests` by default.
pub const DEFAULT_PER_CLIENT_REQUESTS: u64 = 20;
/// `per_client_failures` by default.
pub const DEFAULT_PER_CLIENT_FAILURES: u64 = 1;
/// The largest `per_client_requests`: the client table packs it into 32 bits.
pub const MAX_PER_CLIENT_REQUESTS: u64 = 1_000_000;
/// The largest `per_client_failures`: the client table packs it into 16 bits.
pub const MAX_PER_CLIENT_FAILURES: u64 = 10_000;

/// How the proxy ramps the canary and judges it against production (README, "Progressive
/// delivery"); every field is documented on the `rollout:` key of the same name. The serde
/// form is the stored one (see the module documentation), not the config file's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSettings {
    /// canary_percent at each step, ascending; the last is usually 100.
    pub steps: Vec<Percent>,
    /// The analysis window.
    #[serde(with = "duration_text")]
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
    pub error_rate: ErrorRateSettings,
    pub latency: LatencySettings,
    /// Also run a Mann-Whitney U test on the two latency histograms.
    pub mann_whitney: bool,
    /// How sure a rule must be before it fails a window (p < 1 - confidence). Not written
    /// when default (older readers know no such key).
    #[serde(
        default = "default_confidence",
        skip_serializing_if = "is_default_confidence"
    )]
    pub confidence: f64,
    /// Requests of one client counted per window and pool; 0: no cap.
    #[serde(
        default = "default_per_client_requests",
        skip_serializing_if = "is_default_per_client_requests"
    )]
    pub per_client_requests: u64,
    /// Errors and slow answers of one client counted per window and pool; 0: no cap.
    #[serde(
        default = "default_per_client_failures",
        skip_serializing_if = "is_default_per_client_failures"
    )]
    pub per_client_failures: u64,
    /// The shadow step (`rollout.shadow`, `--shadow P`): `None` when off. Never written inside
    /// the stored settings (older releases refuse keys they do not know there): a start moves
    /// it into the state's own `shadow` field ([`super::shadow::ShadowStage`]).
    #[serde(skip)]
    pub shadow: Option<ShadowSettings>,
}

/// `rollout.error_rate`: the error rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorRateSettings {
    /// The canary's 5xx + connect-failure rate above this fails a window, in percent.
    pub max_percent: f64,
    /// Canary rate above production's by more than this many points (and `z`) fails it.
    pub max_excess_points: f64,
    /// One-sided two-proportion z statistic needed for the excess to count.
    pub z: f64,
}

/// `rollout.latency`: the latency rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencySettings {
    /// The canary's p99 above this fails a window.
    #[serde(with = "duration_text")]
    pub p99_max: Duration,
    /// The canary's p99 above this times max(production p99, floor) fails it.
    pub p99_max_ratio: f64,
    #[serde(with = "duration_text")]
    pub floor: Duration,
}

// Also the config file's defaults (`config/schema/rollout.rs`): one value, one test of it.
pub(crate) fn default_confidence() -> f64 {
    DEFAULT_ROLLOUT_CONFIDENCE
}
pub(crate) fn is_default_confidence(v: &f64) -> bool {
    *v == DEFAULT_ROLLOUT_CONFIDENCE
}
pub(crate) fn default_per_client_requests() -> u64 {
    DEFAULT_PER_CLIENT_REQUESTS
}
pub(crate) fn is_default_per_client_requests(v: &u64) -> bool {
    *v == DEFAULT_PER_CLIENT_REQUESTS
}
pub(crate) fn default_per_client_failures() -> u64 {
    DEFAULT_PER_CLIENT_FAILURES
}
pub(crate) fn is_default_per_client_failures(v: &u64) -> bool {
    *v == DEFAULT_PER_CLIENT_FAILURES
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            steps: [5, 10, 25, 50, 100]
                .into_iter()
                .map(|p| Percent::from_basis_points(p * 100))
                .collect(),
            interval: Duration::from_secs(30),
            windows_per_step: 1,
            threshold: 3,
            min_requests: 50,
            max_inconclusive: 10,
            hard_fail_errors: 10,
            count_forced: false,
            error_rate: ErrorRateSettings::default(),
            latency: LatencySettings::default(),
            mann_whitney: false,
            confidence: DEFAULT_ROLLOUT_CONFIDENCE,
            per_client_requests: DEFAULT_PER_CLIENT_REQUESTS,
            per_client_failures: DEFAULT_PER_CLIENT_FAILURES,
            shadow: None,
        }
    }
}

impl Default for ErrorRateSettings {
    fn default() -> Self {
        ErrorRateSettings {
            max_percent: 1.0,
            max_excess_points: 0.5,
            z: 2.33,
        }
    }
}

impl Default for LatencySettings {
    fn default() -> Self {
        LatencySettings {
            p99_max: Duration::from_millis(500),
            p99_max_ratio: 1.5,
            floor: Duration::from_millis(20),
        }
    }
}

impl RolloutSettings {
    /// The one check of a rollout's settings, whoever gave them: `Err((key, problem))` with
    /// the key as under `rollout:` (`error_rate.z`). The config adds `rollout.` and the line,
    /// `ctl` spells it as its flag, the admin endpoint as its query key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.steps.is_empty() || self.steps.len() > MAX_ROLLOUT_STEPS {
            return Err(("steps", format!("must have 1 to {MAX_ROLLOUT_STEPS} steps")));
        }
        for (i, w) in self.steps.iter().enumerate() {
            if w.basis_points() == 0 {
                return Err((
                    "steps",
                    format!("step {} is 0: each must be above 0", i + 1),
                ));
            }
            if i > 0 && *w <= self.steps[i - 1] {
                return Err((
                    "steps",
                    format!(
                        "must be strictly ascending: {} follows {}",
                        w.as_f64(),
                        self.steps[i - 1].as_f64()
                    ),
                ));
            }
        }
        if self.interval < MIN_INTERVAL {
            return Err(("interval", format!("must be at least {MIN_INTERVAL_TEXT}")));
        }
        if self.interval > MAX_INTERVAL {
            return Err(("interval", format!("must be at most {MAX_INTERVAL_TEXT}")));
        }
        for (key, v) in [
            ("windows_per_step", self.windows_per_step),
            ("threshold", self.threshold),
            ("max_inconclusive", self.max_inconclusive),
        ] {
            if !(1..=MAX_ROLLOUT_COUNT).contains(&v) {
                return Err((key, format!("must be 1..={MAX_ROLLOUT_COUNT}, got {v}")));
            }
        }
        if self.hard_fail_errors == 0 {
            return Err(("hard_fail_errors", "must be at least 1".into()));
        }
        let e = &self.error_rate;
        for (key, v) in [
            ("error_rate.max_percent", e.max_percent),
            ("error_rate.max_excess_points", e.max_excess_points),
            ("error_rate.z", e.z),
            ("latency.p99_max_ratio", self.latency.p99_max_ratio),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err((key, format!("must be a number above 0, got {v}")));
            }
        }
        if e.max_percent > 100.0 {
            return Err(("error_rate.max_percent", "must be at most 100".into()));
        }
        if self.latency.p99_max.is_zero() {
            return Err(("latency.p99_max", "must be above 0".into()));
        }
        if !(0.5..1.0).contains(&self.confidence) {
            return Err((
                "confidence",
                format!("must be at least 0.5 and below 1, got {}", self.confidence),
            ));
        }
        if self.per_client_requests > MAX_PER_CLIENT_REQUESTS {
            return Err((
                "per_client_requests",
                format!("must be at most {MAX_PER_CLIENT_REQUESTS}"),
            ));
        }
        if self.per_client_failures > MAX_PER_CLIENT_FAILURES {
            return Err((
                "per_client_failures",
                format!("must be at most {MAX_PER_CLIENT_FAILURES}"),
            ));
        }
        if let Some(shadow) = &self.shadow {
            shadow.validate()?;
        }
        Ok(())
    }

    /// Set one of [`START_KEYS`] from its text: `steps` `5,10,25%,100`, `interval` `30s`, the
    /// counts as whole numbers. The limits are [`RolloutSettings::validate`]'s: call it once
    /// every key is set ([`RolloutSettings::with_keys`] does).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let Some(k) = START_KEYS.iter().find(|k| k.name == key) else {
            return Err(SettingError {
                key: key.to_string(),
                problem: format!("unknown key; use {}", start_key_names().join(", ")),
                value: None,
            });
        };
        (k.set)(self, value.trim()).map_err(|(value, problem)| SettingError {
            key: k.name.to_string(),
            problem: problem.to_string(),
            value: Some(value),
        })
    }

    /// `self` with `keys` set over it, validated.
    pub fn with_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<RolloutSettings, SettingError> {
        let mut s = self.clone();
        for (key, value) in keys {
            s.set(key, value)?;
        }
        s.validate().map_err(|(key, problem)| SettingError {
            key: key.to_string(),
            problem,
            value: None,
        })?;
        Ok(s)
    }
}

/// A rollout setting refused: its key (as under `rollout:`), the problem, and the text that
/// was refused when it was one value. The admin endpoint shows only the key and the problem (it
/// never echoes what a request sent); `ctl` shows the value too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: String,
    pub problem: String,
    pub value: Option<String>,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: `{v}` {}", self.key, self.problem),
            None => write!(f, "{}: {}", self.key, self.problem),
        }
    }
}

impl std::error::Error for SettingError {}

/// A refused text: the part refused, and why.
type Refused = (String, &'static str);

/// One setting a start may give as text: `ctl rollout start --<name with ->`, `POST
/// /rollout/start?<name>=`. A new start key is one entry here (its field, default and limits
/// are in [`RolloutSettings`]).
pub struct StartKey {
    /// As under `rollout:`, and the admin endpoint's query key.
    pub name: &'static str,
    /// `ctl rollout start --<flag>`: the name with `-` for `_`.
    pub flag: &'static str,
    /// What the value looks like in `--help`.
    pub value: &'static str,
    /// The flag's help (`ctl rollout start --help`).
    pub help: &'static str,
    set: fn(&mut RolloutSettings, &str) -> Result<(), Refused>,
}

fn whole<T: std::str::FromStr>(v: &str) -> Result<T, Refused> {
    v.parse()
        .map_err(|_| (v.to_string(), "is not a whole number"))
}

/// The keys a start may set, in the order `ctl rollout start --help` lists them.
pub const START_KEYS: &[StartKey] = &[
    StartKey {
        name: "steps",
        flag: "steps",
        value: "P,P,..",
        help: "canary_percent of each step, ascending, e.g. 5,10,25,50,100.",
        set: |s, v| {
            s.steps = v
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    Percent::parse(p.trim_end_matches('%'))
                        .map_err(|_| (p.to_string(), "is not a percent 0..=100"))
                })
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    },
    StartKey {
        name: "interval",
        flag: "interval",
        value: "DURATION",
        help: "The analysis window, e.g. 30s (100ms..=24h).",
        set: |s, v| {
            s.interval = parse_duration(v).map_err(|problem| (v.to_string(), problem))?;
            Ok(())
        },
    },
    StartKey {
        name: "windows_per_step",
        flag: "windows-per-step",
        value: "N",
        help: "Passing windows that advance a step (1..=10000).",
        set: |s, v| {
            s.windows_per_step = whole(v)?;
            Ok(())
        },
    },
    StartKey {
        name: "threshold",
        flag: "threshold",
        value: "N",
        help: "Failed windows (cumulative) that roll the canary back (1..=10000).",
        set: |s, v| {
            s.threshold = whole(v)?;
            Ok(())
        },
    },
    StartKey {
        name: "min_requests",
        flag: "min-requests",
        value: "N",
        help: "Canary requests a window needs to be judged; below it the window is \
               inconclusive.",
        set: |s, v| {
            s.min_requests = whole(v)?;
            Ok(())
        },
    },
    StartKey {
        name: "max_inconclusive",
        flag: "max-inconclusive",
        value: "N",
        help: "Inconclusive windows in a row that pause the rollout (1..=10000).",
        set: |s, v| {
            s.max_inconclusive = whole(v)?;
            Ok(())
        },
    },
    StartKey {
        name: "hard_fail_errors",
        flag: "hard-fail-errors",
        value: "N",
        help: "Canary 5xx and connect failures in a window that fail it even below \
               --min-requests.",
        set: |s, v| {
            s.hard_fail_errors = whole(v)?;
            Ok(())
        },
    },
    StartKey {
        name: "shadow",
        flag: "shadow",
        value: "P",
        help: "Start with a shadow step: copy P percent of production's requests to the \
               canary and judge the pairs before any user is routed to it (0: no shadow \
               step; the other shadow settings come from rollout.shadow).",
        set: |s, v| {
            let percent = Percent::parse(v.trim_end_matches('%'))
                .map_err(|_| (v.to_string(), "is not a percent 0..=100"))?;
            s.shadow = if percent.basis_points() == 0 {
                None
            } else {
                Some(ShadowSettings {
                    percent,
                    ..s.shadow.clone().unwrap_or_default()
                })
            };
            Ok(())
        },
    },
];

/// The names of [`START_KEYS`], in order.
pub fn start_key_names() -> Vec<&'static str> {
    START_KEYS.iter().map(|k| k.name).collect()
}

/// A duration as text: a number and its unit (`500ms`, `30s`, `1m`); the problem in words,
/// without the value (the admin endpoint never echoes it).
fn parse_duration(v: &str) -> Result<Duration, &'static str> {
    if v.parse::<f64>().is_ok() {
        return Err("has no unit: write e.g. 30s or 500ms");
    }
    humantime::parse_duration(v)
        .map_err(|_| "is not a duration: write a number and a unit, like 500ms, 10s or 1m")
}

/// Durations as the stored JSON has them: humantime text (`"30s"`, `"1m 30s"`).
pub(crate) mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(text.trim())
            .map_err(|problem| serde::de::Error::custom(format!("`{text}` {problem}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_key_parses_and_unknown_ones_are_refused() {
        let base = RolloutSettings::default();
        let s = base
            .with_keys([
                ("steps", "5, 10,25%,100"),
                ("interval", "1500ms"),
                ("windows_per_step", "2"),
                ("threshold", "4"),
                ("min_requests", "7"),
                ("max_inconclusive", "3"),
                ("hard_fail_errors", "2"),
            ])
            .expect("valid");
        assert_eq!(
            s.steps.iter().map(|p| p.as_f64()).collect::<Vec<_>>(),
            [5.0, 10.0, 25.0, 100.0]
        );
        assert_eq!(s.interval, Duration::from_millis(1500));
        assert_eq!(
            (
                s.windows_per_step,
                s.threshold,
                s.min_requests,
                s.max_inconclusive,
                s.hard_fail_errors
            ),
            (2, 4, 7, 3, 2)
        );
        for key in start_key_names() {
            assert!(base.with_keys([(key, "x")]).is_err(), "{key}: `x` accepted");
        }
        let e = base.with_keys([("bogus", "1")]).expect_err("unknown");
        assert!(e.to_string().contains("unknown key"), "{e}");
    }

    /// The help of a flag states the limits `validate` applies.
    #[test]
    fn the_help_states_the_limits() {
        let help = |name: &str| {
            START_KEYS
                .iter()
                .find(|k| k.name == name)
                .map(|k| k.help)
                .expect("key")
        };
        assert_eq!(parse_duration(MIN_INTERVAL_TEXT), Ok(MIN_INTERVAL));
        assert_eq!(parse_duration(MAX_INTERVAL_TEXT), Ok(MAX_INTERVAL));
        assert!(help("interval").contains(&format!("{MIN_INTERVAL_TEXT}..={MAX_INTERVAL_TEXT}")));
        for name in ["windows_per_step", "threshold", "max_inconclusive"] {
            assert!(
                help(name).contains(&format!("1..={MAX_ROLLOUT_COUNT}")),
                "{name}"
            );
        }
    }

    #[test]
    fn every_flag_is_its_key_with_dashes() {
        for k in START_KEYS {
            assert_eq!(k.flag, k.name.replace('_', "-"));
        }
    }

    /// The stored JSON of the settings: the keys of this release only when set, durations as
    /// text, and a record of an older release read with the defaults.
    #[test]
    fn the_stored_form_is_unchanged() {
        let json = serde_json::to_string(&RolloutSettings::default()).expect("json");
        assert_eq!(
            json,
            r#"{"steps":[5.0,10.0,25.0,50.0,100.0],"interval":"30s","windows_per_step":1,"threshold":3,"min_requests":50,"max_inconclusive":10,"hard_fail_errors":10,"count_forced":false,"error_rate":{"max_percent":1.0,"max_excess_points":0.5,"z":2.33},"latency":{"p99_max":"500ms","p99_max_ratio":1.5,"floor":"20ms"},"mann_whitney":false}"#
        );
        let old: RolloutSettings =
            serde_json::from_str(r#"{"steps":[10,100],"interval":"1s"}"#).expect("old json");
        assert_eq!(old.interval, Duration::from_secs(1));
        assert_eq!(old.confidence, DEFAULT_ROLLOUT_CONFIDENCE);
        assert_eq!(old.per_client_failures, DEFAULT_PER_CLIENT_FAILURES);
        assert!(serde_json::from_str::<RolloutSettings>(r#"{"interval":30}"#).is_err());
    }
}
