//! The shadow step (README, "Progressive delivery"): before any user is routed to the canary,
//! the proxy copies a share of production's requests to it, throws the canary's answers away,
//! and judges the canary on *pairs*: the production answer and the canary answer to the same
//! request. This file holds the words: the settings ([`ShadowSettings`], `rollout.shadow` and
//! `ctl rollout start --shadow P`), the stage a rollout is in ([`ShadowStage`]) and one pair
//! ([`Pair`]). Pure: no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Percent;

/// The most methods `shadow.methods` may list.
pub const MAX_SHADOW_METHODS: usize = 16;
/// The largest `shadow.max_in_flight`.
pub const MAX_SHADOW_IN_FLIGHT: u32 = 10_000;
/// The longest `shadow.timeout`.
pub const MAX_SHADOW_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request body a listed method's copy may carry (`shadow.max_body`).
pub const MAX_SHADOW_BODY: u64 = 1024 * 1024;

/// What a pair compares (`shadow.compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// The status class (2xx, 3xx, 4xx, 5xx, or no answer) of the two answers.
    Status,
    /// The canary's latency minus production's, for the same request.
    Latency,
    /// The two bodies' hashes, for endpoints that answer deterministically.
    BodyHash,
}

impl Compare {
    pub const fn as_str(self) -> &'static str {
        match self {
            Compare::Status => "status",
            Compare::Latency => "latency",
            Compare::BodyHash => "body_hash",
        }
    }
}

/// `rollout.shadow`: step 0 of a rollout, copies of production's requests to the canary.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowSettings {
    /// Share of production requests copied to the canary (above 0).
    pub percent: Percent,
    /// Passing shadow windows before step 1 routes real users.
    pub windows: u32,
    /// Only requests with these methods are copied (upper case). A method whose requests
    /// carry a body is copied only when listed here, with a body of at most `max_body`.
    pub methods: Vec<String>,
    /// Copies in flight at once, per proxy; a copy beyond it is dropped (counted), never queued.
    pub max_in_flight: u32,
    /// A copy's whole budget: connect, send, and the canary's answer head.
    #[serde(with = "super::settings::duration_text")]
    pub timeout: Duration,
    /// What each pair compares.
    pub compare: Vec<Compare>,
    /// Forward `Cookie` and `Authorization` to the canary (default false: the canary must not
    /// act as the user unless told to).
    pub forward_credentials: bool,
    /// The header every copy carries, value `1`, so app servers can skip side effects.
    pub header: String,
    /// Pairs whose status class differs, in percent of the pairs, tolerated before the
    /// mismatch rule may fail a window.
    pub max_mismatch_percent: f64,
    /// A pair is "slower" when the canary took longer than production by more than both
    /// `max_slowdown` and `max_slowdown_percent` of production's time.
    #[serde(with = "super::settings::duration_text")]
    pub max_slowdown: Duration,
    pub max_slowdown_percent: f64,
    /// The largest request body a copy carries (bytes); a larger one is not copied.
    pub max_body: u64,
}

impl Default for ShadowSettings {
    fn default() -> Self {
        ShadowSettings {
            percent: Percent::from_basis_points(10 * 100),
            windows: 5,
            methods: vec!["GET".into(), "HEAD".into()],
            max_in_flight: 64,
            timeout: Duration::from_secs(2),
            compare: vec![Compare::Status, Compare::Latency],
            forward_credentials: false,
            header: "x-canary-shadow".into(),
            max_mismatch_percent: 1.0,
            max_slowdown: Duration::from_millis(25),
            max_slowdown_percent: 20.0,
            max_body: 64 * 1024,
        }
    }
}

impl ShadowSettings {
    /// The one check, whoever gave the settings: `Err((key, problem))` with the key as under
    /// `rollout.shadow:`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.percent.basis_points() == 0 {
            return Err((
                "shadow.percent",
                "must be above 0 (leave shadow out to turn it off)".into(),
            ));
        }
        if !(1..=super::settings::MAX_ROLLOUT_COUNT).contains(&self.windows) {
            return Err((
                "shadow.windows",
                format!(
                    "must be 1..={}, got {}",
                    super::settings::MAX_ROLLOUT_COUNT,
                    self.windows
                ),
            ));
        }
        if self.methods.is_empty() || self.methods.len() > MAX_SHADOW_METHODS {
            return Err((
                "shadow.methods",
                format!("must list 1 to {MAX_SHADOW_METHODS} methods"),
            ));
        }
        for m in &self.methods {
            let token = !m.is_empty()
                && m.len() <= 32
                && m.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            if !token {
                return Err((
                    "shadow.methods",
                    format!("`{m}` is not a method in upper case (e.g. GET)"),
                ));
            }
        }
        if !(1..=MAX_SHADOW_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err((
                "shadow.max_in_flight",
                format!("must be 1..={MAX_SHADOW_IN_FLIGHT}"),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_SHADOW_TIMEOUT {
            return Err(("shadow.timeout", "must be above 0 and at most 60s".into()));
        }
        if self.compare.is_empty() {
            return Err((
                "shadow.compare",
                "must list at least one of status, latency, body_hash".into(),
            ));
        }
        let header_ok = !self.header.is_empty()
            && self.header.len() <= 64
            && self
                .header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !header_ok {
            return Err((
                "shadow.header",
                "must be a header name in lower case: a-z, 0-9 and -, at most 64".into(),
            ));
        }
        for (key, v) in [
            ("shadow.max_mismatch_percent", self.max_mismatch_percent),
            ("shadow.max_slowdown_percent", self.max_slowdown_percent),
        ] {
            if !(v.is_finite() && (0.0..100.0).contains(&v)) {
                return Err((key, format!("must be a number 0..100, got {v}")));
            }
        }
        if self.max_body > MAX_SHADOW_BODY {
            return Err((
                "shadow.max_body",
                format!("must be at most {MAX_SHADOW_BODY} bytes"),
            ));
        }
        Ok(())
    }

    /// Whether requests of `method` may be copied.
    pub fn copies(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    pub fn compares(&self, what: Compare) -> bool {
        self.compare.contains(&what)
    }
}

/// Where a rollout stands with its shadow step; stored in the rollout state beside (not
/// inside) `settings`, so releases before it read the state (they see a step at weight 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowStage {
    pub settings: ShadowSettings,
    /// Passed: the rollout went on to its first step (or it never got past the shadow step
    /// and ended there, with `phase` saying how).
    #[serde(default)]
    pub done: bool,
}

/// One answer of a pair: its status (`None`: no answer, i.e. refused, reset or timed out) and
/// how long the head took to come back, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub status: Option<u16>,
    pub seconds: f64,
}

/// Production's answer to a user's request and the canary's answer to its copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub production: Answer,
    pub canary: Answer,
    /// With `compare: [.., body_hash]`: whether the two bodies hashed the same (`None` when
    /// not compared, e.g. a body too large to hash or no answer).
    pub body_match: Option<bool>,
}

/// The status class of an answer: 1..=5 for 1xx..5xx, 0 for no answer.
pub fn status_class(status: Option<u16>) -> u8 {
    match status {
        Some(s @ 100..=599) => (s / 100) as u8,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert_eq!(ShadowSettings::default().validate(), Ok(()));
        let bad = |f: fn(&mut ShadowSettings)| {
            let mut s = ShadowSettings::default();
            f(&mut s);
            s.validate().expect_err("refused").0
        };
        assert_eq!(
            bad(|s| s.percent = Percent::from_basis_points(0)),
            "shadow.percent"
        );
        assert_eq!(bad(|s| s.windows = 0), "shadow.windows");
        assert_eq!(bad(|s| s.methods = vec!["get".into()]), "shadow.methods");
        assert_eq!(bad(|s| s.methods.clear()), "shadow.methods");
        assert_eq!(bad(|s| s.max_in_flight = 0), "shadow.max_in_flight");
        assert_eq!(bad(|s| s.timeout = Duration::ZERO), "shadow.timeout");
        assert_eq!(bad(|s| s.compare.clear()), "shadow.compare");
        assert_eq!(bad(|s| s.header = "X Shadow".into()), "shadow.header");
        assert_eq!(
            bad(|s| s.max_mismatch_percent = f64::NAN),
            "shadow.max_mismatch_percent"
        );
        assert_eq!(bad(|s| s.max_body = u64::MAX), "shadow.max_body");
    }

    #[test]
    fn only_listed_methods_are_copied() {
        let s = ShadowSettings::default();
        assert!(s.copies("GET") && s.copies("HEAD"));
        assert!(!s.copies("POST") && !s.copies("get"));
    }

    /// The stored state keeps the shadow stage beside the settings: the settings' JSON (which
    /// older releases read with `deny_unknown_fields`) has no new key, and a state written
    /// before the shadow step reads back without one.
    #[test]
    fn the_stage_is_stored_beside_the_settings() {
        use super::super::{RolloutSettings, RolloutState};
        let settings = RolloutSettings {
            shadow: Some(ShadowSettings::default()),
            ..RolloutSettings::default()
        };
        let state =
            RolloutState::start("r-1".into(), settings, "s".into(), 1, None).expect("start");
        let json: serde_json::Value = serde_json::to_value(&state).expect("json");
        assert!(json["settings"].get("shadow").is_none(), "{json}");
        assert_eq!(json["shadow"]["settings"]["percent"], 10.0);
        assert_eq!(json["shadow"]["done"], false);
        let old_settings: RolloutSettings =
            serde_json::from_value(json["settings"].clone()).expect("an older reader's type");
        assert_eq!(old_settings, RolloutSettings::default());
        let back: RolloutState = serde_json::from_value(json.clone()).expect("read back");
        assert_eq!(back, state);
        let mut without = json;
        without.as_object_mut().expect("object").remove("shadow");
        let plain: RolloutState = serde_json::from_value(without).expect("an older state");
        assert!(plain.shadow.is_none() && plain.in_shadow().is_none());
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(Some(200)), 2);
        assert_eq!(status_class(Some(503)), 5);
        assert_eq!(status_class(None), 0);
        assert_eq!(status_class(Some(999)), 0);
    }
}
