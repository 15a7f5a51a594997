//! The routing policy in force: the file's `routing` section with the overrides a discovery
//! provider may set (`canary_percent`, `salt`) laid over it. Rebuilt whole, never edited, so a
//! request sees one consistent policy.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::schema::RoutingConfig;
use crate::model::Percent;

/// Why a routing section cannot be turned into a policy (config validation refuses such
/// names first, so this is a second line of defence).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
}

/// The routing settings in force; swapped whole when the file or Redis changes them.
#[derive(Debug, Clone)]
pub struct CanaryPolicy {
    pub percent: Percent,
    pub salt: String,
    /// Lower-cased, as Pingora's header map compares names case-insensitively.
    pub header: http::HeaderName,
    pub trusted_networks: Vec<IpNet>,
    pub flag_cookie: String,
    pub user_cookie: String,
    pub user_header: Option<http::HeaderName>,
    pub pool_response_header: bool,
    /// What follows `name=value` in the Set-Cookie of a new user.
    cookie_attributes: String,
}

impl CanaryPolicy {
    pub fn from_config(r: &RoutingConfig) -> Result<CanaryPolicy, PolicyError> {
        CanaryPolicy::layered(r, None, None)
    }

    /// The file's section `r` with the overrides that are set laid over it: an override wins
    /// while present, and the file's value is back as soon as it is removed.
    pub fn layered(
        r: &RoutingConfig,
        canary_percent: Option<Percent>,
        salt: Option<&str>,
    ) -> Result<CanaryPolicy, PolicyError> {
        let header_name = |name: &str| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PolicyError::HeaderName(name.to_string()))
        };
        Ok(CanaryPolicy {
            percent: canary_percent.unwrap_or(r.canary_percent),
            salt: salt.unwrap_or(&r.salt).to_string(),
            header: header_name(&r.header)?,
            trusted_networks: r.header_trusted_networks.clone(),
            flag_cookie: r.flag_cookie.clone(),
            user_cookie: r.user_cookie.clone(),
            user_header: r.user_header.as_deref().map(header_name).transpose()?,
            cookie_attributes: format!(
                "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                r.cookie_max_age.as_secs()
            ),
            pool_response_header: r.pool_response_header,
        })
    }

    /// The Set-Cookie value that gives a new user its sticky id.
    pub fn set_cookie(&self, user_id: &str) -> String {
        let mut c = String::with_capacity(
            self.user_cookie.len() + 1 + user_id.len() + self.cookie_attributes.len(),
        );
        c.push_str(&self.user_cookie);
        c.push('=');
        c.push_str(user_id);
        c.push_str(&self.cookie_attributes);
        c
    }

    /// Whether `client` may force a pool (the routing header or the flag cookie): anyone when
    /// no trusted networks are set, else only a client in one of them.
    pub(super) fn header_trusted(&self, client: Option<IpAddr>) -> bool {
        self.trusted_networks.is_empty()
            || client.is_some_and(|ip| self.trusted_networks.iter().any(|n| n.contains(&ip)))
    }
}

/// What `/status` shows instead of the routing salt: 8 hex digits (32 bits) of
/// `xxh3_64("canary-lb salt fingerprint v1" ++ 0x00 ++ salt)`. Equal fingerprints on two
/// replicas mean they (almost certainly) bucket users alike; that is all it tells, unless the
/// salt is guessable, since a guess can be checked against it: choose random salts. The
/// formula is fixed so that replicas of different versions can be compared.
pub fn salt_fingerprint(salt: &str) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(b"canary-lb salt fingerprint v1\0");
    hasher.update(salt.as_bytes());
    format!("{:08x}", hasher.digest() >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_while_set() {
        let file = RoutingConfig {
            canary_percent: Percent::from_f64(5.0).expect("valid percent"),
            salt: "file-salt".into(),
            ..RoutingConfig::default()
        };
        let p = CanaryPolicy::layered(&file, None, None).expect("valid");
        assert_eq!((p.percent.as_f64(), p.salt.as_str()), (5.0, "file-salt"));
        let pct = Percent::from_f64(40.0).expect("valid percent");
        let p = CanaryPolicy::layered(&file, Some(pct), Some("redis-salt")).expect("valid");
        assert_eq!((p.percent.as_f64(), p.salt.as_str()), (40.0, "redis-salt"));
        let p = CanaryPolicy::layered(&file, None, Some("redis-salt")).expect("valid");
        assert_eq!((p.percent.as_f64(), p.salt.as_str()), (5.0, "redis-salt"));
    }
}
