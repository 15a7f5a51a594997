//! `routing:` (canary header and cookies) and `flags:` (the file's feature flags).

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::super::de::*;
use super::default_true;
use super::error::invalid;
use super::InvalidConfig;
use crate::model::Percent;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub canary_percent: Percent,
    #[serde(default)]
    pub salt: String,
    #[serde(default = "default_canary_header")]
    pub header: String,
    /// Client networks whose routing header is honoured; empty means everyone.
    #[serde(default)]
    pub header_trusted_networks: Vec<IpNet>,
    #[serde(default = "default_flag_cookie")]
    pub flag_cookie: String,
    #[serde(default = "default_user_cookie")]
    pub user_cookie: String,
    /// A request header that identifies the user when the user cookie is absent, e.g. X-User-Id.
    #[serde(default)]
    pub user_header: Option<String>,
    /// Max-Age of the user cookie the proxy sets for new users.
    #[serde(default = "default_cookie_max_age", with = "humantime_serde")]
    pub cookie_max_age: Duration,
    /// Add `X-Canary-Pool: production|canary` to every response.
    #[serde(default = "default_true")]
    pub pool_response_header: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            canary_percent: Percent::default(),
            salt: String::new(),
            header: default_canary_header(),
            header_trusted_networks: Vec::new(),
            flag_cookie: default_flag_cookie(),
            user_cookie: default_user_cookie(),
            user_header: None,
            cookie_max_age: default_cookie_max_age(),
            pool_response_header: true,
        }
    }
}

/// At most this many feature flags (file or Redis); one bit each per request.
pub const MAX_FLAGS: usize = 64;
/// Longest flag name: `[a-z0-9-]{1,64}`.
pub const MAX_FLAG_NAME: usize = 64;
/// Most user keys in one flag's `allow` or `deny` list.
pub const MAX_FLAG_LIST: usize = 1000;
/// Longest user key in an `allow`/`deny` list, and longest salt.
pub const MAX_FLAG_VALUE: usize = 256;

/// `flags:`: the feature flags of the file (used while Redis has none) and the header names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsConfig {
    /// The header that carries the flags that are on upstream, e.g. `X-Features: a,b`.
    #[serde(default = "default_flags_header")]
    pub header: String,
    /// The tester's header `name=on,other=off`, honoured only from
    /// `routing.header_trusted_networks` (and never when that list is empty).
    #[serde(default = "default_flags_override_header")]
    pub override_header: String,
    /// The flags, by name.
    #[serde(default)]
    pub items: BTreeMap<String, FlagConfig>,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        FlagsConfig {
            header: default_flags_header(),
            override_header: default_flags_override_header(),
            items: BTreeMap::new(),
        }
    }
}

impl FlagsConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidConfig> {
        for (key, value) in [
            ("flags.header", &self.header),
            ("flags.override_header", &self.override_header),
        ] {
            if value.is_empty() || !value.bytes().all(is_token_byte) {
                return Err(invalid(
                    key,
                    format!("`{value}` is not a valid header name"),
                ));
            }
        }
        if self.header.eq_ignore_ascii_case(&self.override_header) {
            return Err(invalid(
                "flags.override_header",
                "must differ from flags.header",
            ));
        }
        if self.items.len() > MAX_FLAGS {
            return Err(invalid(
                "flags.items",
                format!("{} flags, at most {MAX_FLAGS}", self.items.len()),
            ));
        }
        for (name, flag) in &self.items {
            check_flag_name(name).map_err(|e| invalid(format!("flags.items.{name}"), e))?;
            flag.check()
                .map_err(|(key, e)| invalid(format!("flags.items.{name}.{key}"), e))?;
        }
        Ok(())
    }
}

/// One feature flag, as in the file's `flags.items` and (as JSON) in Redis.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagConfig {
    /// Off: nobody gets it, allow list included.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Share of users (0..=100, decimals ok): `bucket < percent * 100`.
    #[serde(default)]
    pub percent: Percent,
    /// The flag's bucket salt; the flag name when absent. A new salt reshuffles who has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// User keys that always get the flag (unless denied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// User keys that never get the flag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl FlagConfig {
    /// The limits of a flag's values: `(key, problem)` on the first one broken.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(salt) = &self.salt {
            if salt.len() > MAX_FLAG_VALUE {
                return Err(("salt", format!("longer than {MAX_FLAG_VALUE} bytes")));
            }
        }
        for (key, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_FLAG_LIST {
                return Err((
                    key,
                    format!("{} user keys, at most {MAX_FLAG_LIST}", list.len()),
                ));
            }
            if let Some(bad) = list
                .iter()
                .find(|k| k.is_empty() || k.len() > MAX_FLAG_VALUE)
            {
                return Err((
                    key,
                    format!(
                        "user key of {} bytes: must be 1..={MAX_FLAG_VALUE}",
                        bad.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A flag name is 1..=64 bytes of `[a-z0-9-]`.
pub fn check_flag_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_FLAG_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        let shown: String = name.chars().take(MAX_FLAG_NAME + 1).collect();
        return Err(format!(
            "flag name `{}` must be 1..={MAX_FLAG_NAME} characters of a-z, 0-9 and -",
            shown.escape_debug()
        ));
    }
    Ok(())
}

fn default_flags_header() -> String {
    "X-Features".to_string()
}
fn default_flags_override_header() -> String {
    "X-Feature-Override".to_string()
}

pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn default_canary_header() -> String {
    "X-Canary".into()
}

fn default_flag_cookie() -> String {
    "canary".into()
}

fn default_user_cookie() -> String {
    "canary_uid".into()
}

fn default_cookie_max_age() -> Duration {
    Duration::from_secs(365 * 24 * 3600)
}
