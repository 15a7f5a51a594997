//! The one parser of a rollout's settings given as text: `ctl rollout start --min-requests 50`
//! and the admin endpoint's `POST /rollout/start?min_requests=50` both go through
//! [`RolloutConfig::set`] and then [`RolloutConfig::validate`], which also checks the file's
//! `rollout:` section. So the three agree on every key, form and limit; each only names the
//! key its own way (`--min-requests`, `min_requests`, `rollout.min_requests`).

use std::fmt;

use super::de::humantime_serde;
use super::schema::RolloutConfig;
use crate::model::Percent;

/// The keys a start may set, as in `rollout:` (`ctl` spells them `--windows-per-step`).
pub const ROLLOUT_START_KEYS: [&str; 7] = [
    "steps",
    "interval",
    "windows_per_step",
    "threshold",
    "min_requests",
    "max_inconclusive",
    "hard_fail_errors",
];

/// A rollout setting refused: its key (as in `rollout:`), the problem, and the text that was
/// refused when it was one value. The admin endpoint shows only the key and the problem (it
/// never echoes what a request sent); `ctl` shows the value too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSettingError {
    pub key: String,
    pub problem: String,
    pub value: Option<String>,
}

impl fmt::Display for RolloutSettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: `{v}` {}", self.key, self.problem),
            None => write!(f, "{}: {}", self.key, self.problem),
        }
    }
}

impl std::error::Error for RolloutSettingError {}

fn refuse(key: &str, value: &str, problem: &str) -> RolloutSettingError {
    RolloutSettingError {
        key: key.to_string(),
        problem: problem.to_string(),
        value: Some(value.to_string()),
    }
}

impl RolloutConfig {
    /// Set one of [`ROLLOUT_START_KEYS`] from its text: `steps` `5,10,25%,100`, `interval`
    /// `30s`, the counts as whole numbers. The limits are [`RolloutConfig::validate`]'s: call
    /// it once every key is set ([`RolloutConfig::with_keys`] does).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), RolloutSettingError> {
        let v = value.trim();
        match key {
            "steps" => {
                self.steps = v
                    .split(',')
                    .map(|p| {
                        let p = p.trim();
                        Percent::parse(p.trim_end_matches('%'))
                            .map_err(|_| refuse(key, p, "is not a percent 0..=100"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "interval" => {
                // The duration parser's words, without the value (see `RolloutSettingError`).
                self.interval = humantime_serde::parse(v).map_err(|_| {
                    let problem = if v.parse::<f64>().is_ok() {
                        "has no unit: write e.g. 30s or 500ms"
                    } else {
                        "is not a duration: write a number and a unit, like 500ms, 10s or 1m"
                    };
                    refuse(key, v, problem)
                })?;
            }
            "windows_per_step" | "threshold" | "max_inconclusive" => {
                let n: u32 = v
                    .parse()
                    .map_err(|_| refuse(key, v, "is not a whole number"))?;
                match key {
                    "windows_per_step" => self.windows_per_step = n,
                    "threshold" => self.threshold = n,
                    _ => self.max_inconclusive = n,
                }
            }
            "min_requests" | "hard_fail_errors" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| refuse(key, v, "is not a whole number"))?;
                match key {
                    "min_requests" => self.min_requests = n,
                    _ => self.hard_fail_errors = n,
                }
            }
            _ => {
                return Err(RolloutSettingError {
                    key: key.to_string(),
                    problem: format!("unknown key; use {}", ROLLOUT_START_KEYS.join(", ")),
                    value: None,
                })
            }
        }
        Ok(())
    }

    /// `self` with `keys` set over it, validated as the file's `rollout:` section is.
    pub fn with_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<RolloutConfig, RolloutSettingError> {
        let mut s = self.clone();
        for (key, value) in keys {
            s.set(key, value)?;
        }
        s.validate().map_err(|(key, problem)| RolloutSettingError {
            key: key.to_string(),
            problem,
            value: None,
        })?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn every_start_key_parses_and_unknown_ones_are_refused() {
        let base = RolloutConfig::default();
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
        for key in ROLLOUT_START_KEYS {
            assert!(base.with_keys([(key, "x")]).is_err(), "{key}: `x` accepted");
        }
        let e = base.with_keys([("bogus", "1")]).expect_err("unknown");
        assert!(e.to_string().contains("unknown key"), "{e}");
    }

    /// The file's `rollout:` section and a start's keys take and refuse the same values,
    /// with the same words.
    #[test]
    fn the_file_and_a_start_agree_on_every_limit() {
        for (key, value, yaml_value, ok) in [
            ("interval", "100ms", "100ms", true),
            ("interval", "200ms", "200ms", true),
            ("interval", "99ms", "99ms", false),
            ("interval", "25h", "25h", false),
            ("windows_per_step", "10000", "10000", true),
            ("windows_per_step", "10001", "10001", false),
            ("threshold", "0", "0", false),
            ("max_inconclusive", "10001", "10001", false),
            ("hard_fail_errors", "0", "0", false),
            ("min_requests", "0", "0", true),
            ("steps", "10,5", "[10, 5]", false),
            ("steps", "0,10", "[0, 10]", false),
            ("steps", "50,100", "[50, 100]", true),
        ] {
            let start = RolloutConfig::default().with_keys([(key, value)]);
            let file = Config::parse(&format!("rollout: {{ {key}: {yaml_value} }}\n"));
            assert_eq!(start.is_ok(), ok, "start {key}={value}: {start:?}");
            assert_eq!(file.is_ok(), ok, "file {key}: {yaml_value}");
            if let (Err(s), Err(f)) = (start, file) {
                let f = f.to_string();
                assert!(
                    f.contains(&format!("rollout.{key}: {}", s.problem)),
                    "{key}: the file says `{f}`, a start `{s}`"
                );
            }
        }
    }
}
