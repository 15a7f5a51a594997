//! The routing decision: which pool serves a request.
//!
//! [`decide`] is a pure function of the [`CanaryPolicy`], a few facts read off the request and
//! which pools have a usable server, so it is tested with a table and benchmarked on its own.
//! It is the one place that decides the pool, the fallback to the other pool and the
//! consistent-hashing key. Precedence, highest first:
//! 1. the routing header (`X-Canary`): `1|true|always` -> canary, `0|false|never` -> production,
//!    honoured only from trusted client networks when that list is set;
//! 2. the flag cookie (`canary`): `always` -> canary, `never` -> production; gated like the
//!    header: when the trusted networks are set, only from them (a cookie is as easy to forge);
//! 3. the sticky percentage on the user key (user cookie, else user header, else a new random id).
//!
//! The bucket of a user is `xxh3_64(salt ++ 0x00 ++ key) mod 10000` (XXH3, 64 bit, seed 0, as
//! specified by the xxHash project, so every platform and replica computes the same value).
//! A user is in canary when `bucket < canary_percent * 100`, so raising the percentage only ever
//! adds users to canary, and changing the salt reshuffles who is in.
//!
//! When the chosen pool has no usable server, canary falls back to production, and production
//! to canary only with `fallback_to_canary` (reason `fallback`). The policy itself (the file's
//! section with the provider's overrides laid over it) is built in `policy.rs`.

mod policy;

use std::net::IpAddr;

use crate::model::PoolKind;
pub use policy::{salt_fingerprint, CanaryPolicy, PolicyError};

pub use crate::model::Reason;

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

/// The user key of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKey<'a> {
    /// The request carries none and the header or the flag cookie decided: none is made.
    None,
    /// The request carried it (the user cookie, else the user header; empty values skipped).
    Known(&'a [u8]),
    /// The request had none and the percentage decided: the proxy must set the user cookie to
    /// this id.
    New(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The pool that serves the request (or that answers 503 when `has_server` is false).
    pub pool: PoolKind,
    pub reason: Reason,
    pub user: UserKey<'a>,
    /// Whether `pool` had a usable server for this request; false means 503.
    pub has_server: bool,
}

impl Decision<'_> {
    /// The consistent-hashing key: the user, also when a header or cookie chose the pool;
    /// empty when the request names no user.
    pub fn hash_key(&self) -> &[u8] {
        match &self.user {
            UserKey::Known(k) => k,
            UserKey::New(id) => id.as_bytes(),
            UserKey::None => b"",
        }
    }
}

/// Decide the pool for a request.
///
/// `new_id` makes a fresh user id; it is called only when the request carries no user key and
/// the percentage has to decide. `usable(pool, hash_key)` says whether `pool` has a server in
/// rotation for the key (the proxy picks the server while answering). It is asked about the
/// preferred pool first, and about the other only when the preferred one has none and the
/// fallback rule allows it: canary falls back to production always, production to canary only
/// with `fallback_to_canary`. A request served by the other pool has the reason `Fallback`;
/// with neither usable, the preferred pool and its reason stay (and the answer is 503).
pub fn decide<'a>(
    policy: &CanaryPolicy,
    facts: &RequestFacts<'a>,
    fallback_to_canary: bool,
    new_id: impl FnOnce() -> String,
    mut usable: impl FnMut(PoolKind, &[u8]) -> bool,
) -> Decision<'a> {
    let mut d = prefer(policy, facts, new_id);
    let key = d.hash_key();
    if usable(d.pool, key) {
        d.has_server = true;
        return d;
    }
    let other = match d.pool {
        PoolKind::Canary => Some(PoolKind::Production),
        PoolKind::Production if fallback_to_canary => Some(PoolKind::Canary),
        PoolKind::Production => None,
    };
    if let Some(other) = other {
        if usable(other, key) {
            (d.pool, d.reason, d.has_server) = (other, Reason::Fallback, true);
        }
    }
    d
}

/// The preferred pool, before looking at which pools have servers.
fn prefer<'a>(
    policy: &CanaryPolicy,
    facts: &RequestFacts<'a>,
    new_id: impl FnOnce() -> String,
) -> Decision<'a> {
    let known = || {
        cookie_value(facts.cookies, policy.user_cookie.as_bytes())
            .filter(|v| !v.is_empty())
            .or(facts.user_header.filter(|v| !v.is_empty()))
    };
    let chosen = |pool, reason| Decision {
        pool,
        reason,
        user: known().map_or(UserKey::None, UserKey::Known),
        has_server: false,
    };
    if let Some(value) = facts.header {
        if policy.header_trusted(facts.client_ip) {
            if let Some(pool) = header_pool(value) {
                return chosen(pool, Reason::Header);
            }
        }
    }
    let flag = if policy.header_trusted(facts.client_ip) {
        cookie_value(facts.cookies, policy.flag_cookie.as_bytes())
    } else {
        None
    };
    match flag {
        Some(b"always") => return chosen(PoolKind::Canary, Reason::Cookie),
        Some(b"never") => return chosen(PoolKind::Production, Reason::Cookie),
        _ => {}
    }
    let (pool, user) = match known() {
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
        has_server: false,
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

/// A user id safe to put in a cookie: the 32 hex digits of a UUID v4, random so that ids say
/// nothing about how many users came before. Encoded straight into its one allocation
/// (`to_string` went through `core::fmt`).
pub fn new_user_id() -> String {
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    uuid::Uuid::new_v4()
        .simple()
        .encode_lower(&mut buf)
        .to_owned()
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
    use crate::config::schema::RoutingConfig;
    use crate::model::Percent;

    fn policy(percent: f64) -> CanaryPolicy {
        let mut cfg = RoutingConfig {
            canary_percent: Percent::from_f64(percent).expect("valid percent"),
            salt: "release-1".into(),
            ..RoutingConfig::default()
        };
        cfg.user_header = Some("X-User-Id".into());
        CanaryPolicy::from_config(&cfg).expect("valid policy")
    }

    /// `decide` with both pools usable and no fallback to canary.
    fn run<'a>(p: &CanaryPolicy, facts: RequestFacts<'a>) -> Decision<'a> {
        decide(p, &facts, false, || "fresh".to_string(), |_, _| true)
    }

    #[test]
    fn decision_table() {
        use PoolKind::{Canary as C, Production as P};
        use Reason::*;
        let c_always: &[&[u8]] = &[b"a=1; canary=always"];
        let c_never: &[&[u8]] = &[b"canary=never"];
        let c_other: &[&[u8]] = &[b"canary=maybe"];
        // Which pools have a usable server: (production, canary).
        const BOTH: (bool, bool) = (true, true);
        const NO_PROD: (bool, bool) = (false, true);
        const NO_CANARY: (bool, bool) = (true, false);
        const NONE: (bool, bool) = (false, false);
        // (percent, header, cookies, user header, usable pools, fallback_to_canary,
        //  expected pool, reason, has_server)
        type Case<'a> = (
            f64,
            Option<&'a [u8]>,
            &'a [&'a [u8]],
            Option<&'a [u8]>,
            (bool, bool),
            bool,
            PoolKind,
            Reason,
            bool,
        );
        let cases: &[Case] = &[
            (0.0, Some(b"1"), &[], None, BOTH, false, C, Header, true),
            (0.0, Some(b"true"), &[], None, BOTH, false, C, Header, true),
            (
                0.0,
                Some(b"Always"),
                &[],
                None,
                BOTH,
                false,
                C,
                Header,
                true,
            ),
            (100.0, Some(b"0"), &[], None, BOTH, false, P, Header, true),
            (
                100.0,
                Some(b"false"),
                &[],
                None,
                BOTH,
                false,
                P,
                Header,
                true,
            ),
            (
                100.0,
                Some(b"never"),
                &[],
                None,
                BOTH,
                false,
                P,
                Header,
                true,
            ),
            (0.0, Some(b"yes"), &[], None, BOTH, false, P, Percent, true),
            (100.0, Some(b"2"), &[], None, BOTH, false, C, Percent, true),
            (0.0, Some(b"1"), c_never, None, BOTH, false, C, Header, true),
            (
                100.0,
                Some(b"0"),
                c_always,
                None,
                BOTH,
                false,
                P,
                Header,
                true,
            ),
            (0.0, None, c_always, None, BOTH, false, C, Cookie, true),
            (100.0, None, c_never, None, BOTH, false, P, Cookie, true),
            (
                0.0,
                Some(b"junk"),
                c_always,
                None,
                BOTH,
                false,
                C,
                Cookie,
                true,
            ),
            (
                0.0,
                None,
                c_other,
                Some(b"u1"),
                BOTH,
                false,
                P,
                Percent,
                true,
            ),
            (
                100.0,
                None,
                c_other,
                Some(b"u1"),
                BOTH,
                false,
                C,
                Percent,
                true,
            ),
            // Canary without a server falls back to production, with or without the setting.
            (
                100.0,
                None,
                &[],
                Some(b"u1"),
                NO_CANARY,
                false,
                P,
                Fallback,
                true,
            ),
            (
                0.0,
                Some(b"1"),
                &[],
                None,
                NO_CANARY,
                true,
                P,
                Fallback,
                true,
            ),
            (
                0.0, None, c_always, None, NO_CANARY, false, P, Fallback, true,
            ),
            // Production without a server: 503 unless fallback_to_canary.
            (
                0.0,
                None,
                &[],
                Some(b"u1"),
                NO_PROD,
                false,
                P,
                Percent,
                false,
            ),
            (
                0.0,
                None,
                &[],
                Some(b"u1"),
                NO_PROD,
                true,
                C,
                Fallback,
                true,
            ),
            (
                100.0,
                Some(b"0"),
                &[],
                None,
                NO_PROD,
                true,
                C,
                Fallback,
                true,
            ),
            (0.0, None, c_never, None, NO_PROD, false, P, Cookie, false),
            // Neither pool: the preferred pool and its reason stay, without a server.
            (100.0, None, &[], Some(b"u1"), NONE, true, C, Percent, false),
            (0.0, Some(b"0"), &[], None, NONE, true, P, Header, false),
        ];
        for (i, case) in cases.iter().enumerate() {
            let &(pct, header, cookies, user, (prod, canary), fallback, pool, reason, served) =
                case;
            let p = policy(pct);
            let facts = RequestFacts {
                header,
                cookies,
                user_header: user,
                client_ip: None,
            };
            let mut asked = Vec::new();
            let d = decide(
                &p,
                &facts,
                fallback,
                || "fresh".to_string(),
                |pool, _| {
                    asked.push(pool);
                    match pool {
                        PoolKind::Production => prod,
                        PoolKind::Canary => canary,
                    }
                },
            );
            assert_eq!(
                (d.pool, d.reason, d.has_server),
                (pool, reason, served),
                "case {i}"
            );
            assert!(asked.len() <= 2, "case {i}: asked {asked:?}");
            if served {
                assert_eq!(asked.last(), Some(&d.pool), "case {i}: asked {asked:?}");
            }
        }
    }

    #[test]
    fn hash_key_is_the_user_whoever_decided() {
        let p = policy(50.0);
        let uid: &[&[u8]] = &[b"canary_uid=abc"];
        let uid_empty: &[&[u8]] = &[b"canary_uid="];
        let flag_and_uid: &[&[u8]] = &[b"canary=always; canary_uid=abc"];
        let flag_and_empty: &[&[u8]] = &[b"canary=always; canary_uid=\"\""];
        // (header, cookies, user header, expected key, expected user)
        type Case<'a> = (
            Option<&'a [u8]>,
            &'a [&'a [u8]],
            Option<&'a [u8]>,
            &'a [u8],
            UserKey<'a>,
        );
        let cases: &[Case] = &[
            (None, uid, Some(b"hdr"), b"abc", UserKey::Known(b"abc")),
            (
                None,
                uid_empty,
                Some(b"hdr"),
                b"hdr",
                UserKey::Known(b"hdr"),
            ),
            (
                None,
                uid_empty,
                Some(b""),
                b"fresh",
                UserKey::New("fresh".into()),
            ),
            (None, &[], None, b"fresh", UserKey::New("fresh".into())),
            (Some(b"1"), uid, None, b"abc", UserKey::Known(b"abc")),
            (
                Some(b"1"),
                uid_empty,
                Some(b"hdr"),
                b"hdr",
                UserKey::Known(b"hdr"),
            ),
            (Some(b"1"), uid_empty, Some(b""), b"", UserKey::None),
            (Some(b"0"), &[], None, b"", UserKey::None),
            (None, flag_and_uid, None, b"abc", UserKey::Known(b"abc")),
            (
                None,
                flag_and_empty,
                Some(b"hdr"),
                b"hdr",
                UserKey::Known(b"hdr"),
            ),
            (None, flag_and_empty, None, b"", UserKey::None),
        ];
        for (i, (header, cookies, user, key, want)) in cases.iter().enumerate() {
            let facts = RequestFacts {
                header: *header,
                cookies,
                user_header: *user,
                client_ip: None,
            };
            let mut seen = Vec::new();
            let d = decide(
                &p,
                &facts,
                false,
                || "fresh".to_string(),
                |_, k| {
                    seen.push(k.to_vec());
                    false
                },
            );
            assert_eq!(d.hash_key(), *key, "case {i}");
            assert_eq!(&d.user, want, "case {i}");
            // The pools were asked with the same key.
            assert!(seen.iter().all(|k| k == key), "case {i}: {seen:?}");
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
    fn flag_cookie_gated_like_the_header() {
        let cookies: &[&[u8]] = &[b"canary=always"];
        let facts = |ip: Option<&str>| RequestFacts {
            cookies,
            user_header: Some(b"u"),
            client_ip: ip.map(|ip| ip.parse().expect("ip")),
            ..Default::default()
        };
        // No list: the cookie forces for anyone, as before.
        let open = policy(0.0);
        for ip in [Some("192.0.2.1"), None] {
            let d = run(&open, facts(ip));
            assert_eq!((d.pool, d.reason), (PoolKind::Canary, Reason::Cookie));
        }
        // A list: only from it; anyone else falls to the percentage (0 %: production).
        let mut p = policy(0.0);
        p.trusted_networks = vec!["10.0.0.0/8".parse().expect("cidr")];
        let d = run(&p, facts(Some("10.1.2.3")));
        assert_eq!((d.pool, d.reason), (PoolKind::Canary, Reason::Cookie));
        for ip in [Some("192.0.2.1"), None] {
            let d = run(&p, facts(ip));
            assert_eq!((d.pool, d.reason), (PoolKind::Production, Reason::Percent));
        }
        let mut p = policy(100.0);
        p.trusted_networks = vec!["10.0.0.0/8".parse().expect("cidr")];
        let never: &[&[u8]] = &[b"canary=never"];
        let d = run(
            &p,
            RequestFacts {
                cookies: never,
                ..facts(Some("192.0.2.1"))
            },
        );
        assert_eq!((d.pool, d.reason), (PoolKind::Canary, Reason::Percent));
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
