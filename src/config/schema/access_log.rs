//! `access_log:`: off, or where and how the one line per request is written.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::super::de::*;

/// `access_log: off`, or its settings (every key has a default: JSON lines on stdout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AccessLogConfig {
    #[serde(serialize_with = "ser_off")]
    Off,
    On(AccessLogSettings),
}

pub(super) fn ser_off<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("off")
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig::On(AccessLogSettings::default())
    }
}

impl AccessLogConfig {
    pub fn settings(&self) -> Option<&AccessLogSettings> {
        match self {
            AccessLogConfig::Off => None,
            AccessLogConfig::On(s) => Some(s),
        }
    }
}

impl<'de> Deserialize<'de> for AccessLogConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum, so errors keep the key's path and line.
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AccessLogConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`off` or { path, format, query, buffer, shadow }")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AccessLogConfig, E> {
                // YAML 1.1 readers turn a bare `off` into false.
                match v {
                    false => Ok(AccessLogConfig::Off),
                    true => Ok(AccessLogConfig::default()),
                }
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AccessLogConfig, E> {
                match v {
                    "off" => Ok(AccessLogConfig::Off),
                    "on" => Ok(AccessLogConfig::default()),
                    other => Err(E::custom(format!(
                        "expected `off` or a map of settings, got `{other}`"
                    ))),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AccessLogConfig, A::Error> {
                AccessLogSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AccessLogConfig::On)
            }
        }
        d.deserialize_any(V)
    }
}

/// `access_log: { path, format, query, buffer, shadow }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSettings {
    /// A file the lines are appended to (reopened on SIGUSR1); absent: stdout.
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Log the query string with the path (off: it may carry tokens).
    #[serde(default)]
    pub query: bool,
    /// Lines queued for the writer; when it cannot keep up, further lines are dropped and
    /// counted (`canary_lb_access_log_dropped_total`), never delaying a request.
    #[serde(default = "default_log_buffer", deserialize_with = "de_log_buffer")]
    pub buffer: usize,
    /// Log the shadow step's copies to the canary too, marked `"shadow": true` (`shadow=1` in
    /// text); false leaves them out.
    #[serde(default = "default_true")]
    pub shadow: bool,
}

fn default_true() -> bool {
    true
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            path: None,
            format: AccessLogFormat::default(),
            query: false,
            buffer: default_log_buffer(),
            shadow: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// nginx's `combined` with canary-lb's fields appended.
    Text,
}

fn default_log_buffer() -> usize {
    16 * 1024
}

fn de_log_buffer<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, |v| int_in(v, 1, 1_000_000).map(|n| n as usize))
}
