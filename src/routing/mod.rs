//! The routing decision: which pool serves a request.
//!
//! [`decide`] is a pure function of the [`CanaryPolicy`] and a few facts read off the request,
//! so it is tested with a table and benchmarked on its own. Precedence, highest first:
//! 1. the routing header (`X-Canary`): `1|true|always` -> canary, `0|false|never` -> production,
//!    honoured only from trusted client networks when that list is set;
//! 2. the flag cookie (`canary`): `always` -> canary, `never` -> production;
//! 3. the sticky percentage on the user key (user cookie, else user header, else a new random id).
//!
//! The bucket of a user is `xxh3_64(salt ++ 0x00 ++ key) mod 10000` (XXH3, 64 bit, seed 0, as
//! specified by the xxHash project, so every platform and replica computes the same value).
//! A user is in canary when `bucket < canary_percent * 100`, so raising the percentage only ever
//! adds users to canary, and changing the salt reshuffles who is in.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::RoutingConfig;
use crate::model::{Percent, PoolKind};

pub use crate::model::Reason;

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
    pub fn from_config(r: &RoutingConfig) -> Result<CanaryPolicy, String> {
        let header_name = |name: &str| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))
        };
        Ok(CanaryPolicy {
            percent: r.canary_percent,
            salt: r.salt.clone(),
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

    fn header_trusted(&self, client: Option<IpAddr>) -> bool {
        self.trusted_networks.is_empty()
            || client.is_some_and(|ip| self.trusted_networks.iter().any(|n| n.contains(&ip)))
    }
}

/// What [`decide`] needs to know about a request.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Value of the routing header, if present.
    pub header: Option<&'a [u8]>,
    /// Every `Cookie` header value of the request.
    pub cookies: &'a [&'a [u8]],
    /// Value of the user header, if configured and present.
    pub user_header: Option<&'a [u8]>,
    pub client_ip: Option<IpAddr>,
}

/// Which user key the percentage used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKey<'a> {
    /// No key was needed (header or cookie decided).
    None,
    /// The request carried it.
    Known(&'a [u8]),
    /// The request had none; the proxy must set the user cookie to this id.
    New(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub pool: PoolKind,
    pub reason: Reason,
    pub user: UserKey<'a>,
}

/// Decide the pool for a request. `new_id` makes a fresh user id; it is called only when the
/// request carries no user key and the percentage has to decide.
pub fn decide<'a>(
    policy: &CanaryPolicy,
    facts: &RequestFacts<'a>,
    new_id: impl FnOnce() -> String,
) -> Decision<'a> {
    if let Some(value) = facts.header {
        if policy.header_trusted(facts.client_ip) {
            if let Some(pool) = header_pool(value) {
                return Decision {
                    pool,
                    reason: Reason::Header,
                    user: UserKey::None,
                };
            }
        }
    }
    let flag = cookie_value(facts.cookies, policy.flag_cookie.as_bytes());
    match flag {
        Some(b"always") => {
            return Decision {
                pool: PoolKind::Canary,
                reason: Reason::Cookie,
                user: UserKey::None,
            }
        }
        Some(b"never") => {
            return Decision {
                pool: PoolKind::Production,
                reason: Reason::Cookie,
                user: UserKey::None,
            }
        }
        _ => {}
    }
    let known = cookie_value(facts.cookies, policy.user_cookie.as_bytes())
        .filter(|v| !v.is_empty())
        .or(facts.user_header.filter(|v| !v.is_empty()));
    let (pool, user) = match known {
        Some(key) => (percent_pool(policy, key), UserKey::Known(key)),
        None => {
            let id = new_id();
            (percent_pool(policy, id.as_bytes()), UserKey::New(id))
        }
    };
    Decision {
        pool,
        reason: Reason::Percent,
        user,
    }
}

fn header_pool(value: &[u8]) -> Option<PoolKind> {
    let v = value.trim_ascii();
    let is = |word: &str| v.eq_ignore_ascii_case(word.as_bytes());
    if is("1") || is("true") || is("always") {
        Some(PoolKind::Canary)
    } else if is("0") || is("false") || is("never") {
        Some(PoolKind::Production)
    } else {
        None
    }
}

fn percent_pool(policy: &CanaryPolicy, key: &[u8]) -> PoolKind {
    if bucket(&policy.salt, key) < policy.percent.basis_points() {
        PoolKind::Canary
    } else {
        PoolKind::Production
    }
}

/// The user's bucket in 0..10000 (see the module doc for the exact definition).
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(salt.as_bytes());
    hasher.update(&[0]);
    hasher.update(key);
    (hasher.digest() % 10_000) as u32
}

/// The value of cookie `name` in any of the `Cookie` headers (first match wins).
pub fn cookie_value<'a>(headers: &[&'a [u8]], name: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find_map(|h| {
        h.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| {
                let v = pair[eq + 1..].trim_ascii();
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            })
        })
    })
}

/// A user id safe to put in a cookie: 32 hex digits.
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

pub fn new_user_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn salt_fingerprint_is_fixed_short_and_not_the_salt() {
        // Known answers: replicas of different versions must agree.
        assert_eq!(salt_fingerprint("it-salt"), "fb94bd98");
        assert_eq!(salt_fingerprint("release-1"), "edca03e7");
        assert_eq!(salt_fingerprint(""), "0058f90d");
        let f = salt_fingerprint("release-1");
        assert_eq!(f.len(), 8);
        assert!(f.bytes().all(|b| b.is_ascii_hexdigit()), "{f}");
        assert_ne!(f, salt_fingerprint("release-2"));
        assert_ne!(salt_fingerprint(""), salt_fingerprint("release-1"));
    }

    use super::*;

    fn policy(percent: f64) -> CanaryPolicy {
        let mut cfg = RoutingConfig {
            canary_percent: Percent::from_f64(percent).expect("valid percent"),
            salt: "release-1".into(),
            ..RoutingConfig::default()
        };
        cfg.user_header = Some("X-User-Id".into());
        CanaryPolicy::from_config(&cfg).expect("valid policy")
    }

    fn run<'a>(p: &CanaryPolicy, facts: RequestFacts<'a>) -> Decision<'a> {
        decide(p, &facts, || "fresh".to_string())
    }

    #[test]
    fn decision_table() {
        use PoolKind::{Canary as C, Production as P};
        use Reason::*;
        let c_always: &[&[u8]] = &[b"a=1; canary=always"];
        let c_never: &[&[u8]] = &[b"canary=never"];
        let c_other: &[&[u8]] = &[b"canary=maybe"];
        // (percent, header, cookies, user header, expected pool, reason)
        type Case<'a> = (
            f64,
            Option<&'a [u8]>,
            &'a [&'a [u8]],
            Option<&'a [u8]>,
            PoolKind,
            Reason,
        );
        let cases: &[Case] = &[
            (0.0, Some(b"1"), &[], None, C, Header),
            (0.0, Some(b"true"), &[], None, C, Header),
            (0.0, Some(b"Always"), &[], None, C, Header),
            (100.0, Some(b"0"), &[], None, P, Header),
            (100.0, Some(b"false"), &[], None, P, Header),
            (100.0, Some(b"never"), &[], None, P, Header),
            (0.0, Some(b"yes"), &[], None, P, Percent),
            (100.0, Some(b"2"), &[], None, C, Percent),
            (0.0, Some(b"1"), c_never, None, C, Header),
            (100.0, Some(b"0"), c_always, None, P, Header),
            (0.0, None, c_always, None, C, Cookie),
            (100.0, None, c_never, None, P, Cookie),
            (0.0, Some(b"junk"), c_always, None, C, Cookie),
            (0.0, None, c_other, Some(b"u1"), P, Percent),
            (100.0, None, c_other, Some(b"u1"), C, Percent),
        ];
        for (i, (pct, header, cookies, user, pool, reason)) in cases.iter().enumerate() {
            let p = policy(*pct);
            let d = run(
                &p,
                RequestFacts {
                    header: *header,
                    cookies,
                    user_header: *user,
                    client_ip: None,
                },
            );
            assert_eq!((d.pool, d.reason), (*pool, *reason), "case {i}");
        }
    }

    #[test]
    fn user_key_comes_from_cookie_then_header_then_new_id() {
        let p = policy(50.0);
        let cookies: &[&[u8]] = &[b"canary_uid=abc"];
        let d = run(
            &p,
            RequestFacts {
                cookies,
                user_header: Some(b"hdr"),
                ..Default::default()
            },
        );
        assert_eq!(d.user, UserKey::Known(b"abc"));
        let d = run(
            &p,
            RequestFacts {
                user_header: Some(b"hdr"),
                ..Default::default()
            },
        );
        assert_eq!(d.user, UserKey::Known(b"hdr"));
        let d = run(&p, RequestFacts::default());
        assert_eq!(d.user, UserKey::New("fresh".into()));
    }

    #[test]
    fn header_only_from_trusted_networks_when_set() {
        let mut p = policy(0.0);
        p.trusted_networks = vec!["10.0.0.0/8".parse().expect("cidr")];
        let facts = |ip: &str| RequestFacts {
            header: Some(b"1"),
            user_header: Some(b"u"),
            client_ip: Some(ip.parse().expect("ip")),
            ..Default::default()
        };
        assert_eq!(run(&p, facts("10.1.2.3")).pool, PoolKind::Canary);
        assert_eq!(run(&p, facts("192.0.2.1")).pool, PoolKind::Production);
    }

    #[test]
    fn bucket_is_fixed_and_spread() {
        // Pinned values: a change here breaks stickiness across replicas and releases.
        assert_eq!(
            bucket("release-1", b"user-42"),
            bucket("release-1", b"user-42")
        );
        assert_ne!(
            bucket("release-1", b"user-42"),
            bucket("release-2", b"user-42")
        );
        let n = 100_000;
        let canary = (0..n)
            .filter(|i| bucket("s", format!("u{i}").as_bytes()) < 2000)
            .count();
        let share = canary as f64 / n as f64;
        assert!((0.19..0.21).contains(&share), "share {share}");
    }

    #[test]
    fn raising_percent_only_adds_users() {
        let (lo, hi) = (policy(10.0), policy(20.0));
        for i in 0..5000 {
            let key = format!("u{i}");
            let facts = RequestFacts {
                user_header: Some(key.as_bytes()),
                ..Default::default()
            };
            if run(&lo, facts).pool == PoolKind::Canary {
                assert_eq!(run(&hi, facts).pool, PoolKind::Canary, "{key}");
            }
        }
    }

    #[test]
    fn new_user_cookie() {
        assert_eq!(
            policy(1.0).set_cookie("abc"),
            "canary_uid=abc; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn cookie_parsing() {
        let h: &[&[u8]] = &[b"a=1; canary_uid=\"xyz\" ;b=2", b"canary=always"];
        assert_eq!(cookie_value(h, b"canary_uid"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(h, b"canary"), Some(&b"always"[..]));
        assert_eq!(cookie_value(h, b"b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(h, b"missing"), None);
        assert_eq!(cookie_value(&[b"canary_uidx=1"], b"canary_uid"), None);
    }
}
