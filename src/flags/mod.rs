//! Feature flags: which flags are on for one request, decided at the edge.
//!
//! [`FlagSet::evaluate`] is a pure function of the flag set and the request's user key (the
//! same key the canary routing uses), so every replica gives a user the same flags. Per flag,
//! highest first:
//! 1. `enabled: false`: off for everyone;
//! 2. the user key is in `deny`: off;
//! 3. the user key is in `allow`: on;
//! 4. `xxh3_64(salt ++ 0x00 ++ key) mod 10000 < percent * 100`: on (the routing bucket rule,
//!    with the flag's own salt, which is the flag name unless set). Raising the percentage only
//!    adds users; flags with different salts pick independent populations.
//!
//! A request without a user key (the routing header or flag cookie chose the pool and the
//! client sent no user key) gets only the enabled flags at 100 %.
//!
//! The result is a bit set (at most [`MAX_FLAGS`] flags, kept sorted by name), so evaluating
//! allocates nothing; the header value is written once per request from it.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::config::schema::{check_flag_name, FlagConfig, MAX_FLAGS};

/// Longest `X-Feature-Override` value read; longer values are ignored whole.
pub const MAX_OVERRIDE_BYTES: usize = 1024;
/// Most `name=on|off` entries read from one override header; the rest are ignored.
pub const MAX_OVERRIDE_ENTRIES: usize = MAX_FLAGS;

/// One flag, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    name: Box<str>,
    enabled: bool,
    /// `percent * 100`, 0..=10000.
    basis_points: u32,
    salt: Box<str>,
    /// `salt ++ 0x00`: what the key is appended to before hashing.
    prefix: Box<[u8]>,
    /// Sorted, deduplicated.
    allow: Box<[Box<[u8]>]>,
    deny: Box<[Box<[u8]>]>,
}

impl Flag {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn percent(&self) -> f64 {
        f64::from(self.basis_points) / 100.0
    }

    /// The bucket salt (never logged or shown: with it, anyone can tell who has the flag).
    pub fn salt(&self) -> &str {
        &self.salt
    }

    pub fn allow_len(&self) -> usize {
        self.allow.len()
    }

    pub fn deny_len(&self) -> usize {
        self.deny.len()
    }

    #[inline]
    fn is_on(&self, key: Option<&mut Keyed>) -> bool {
        if !self.enabled {
            return false;
        }
        let Some(key) = key else {
            return self.basis_points >= 10_000;
        };
        if contains(&self.deny, key.key) {
            return false;
        }
        if contains(&self.allow, key.key) {
            return true;
        }
        match self.basis_points {
            0 => false,
            10_000.. => true,
            b => key.bucket(&self.prefix) < b,
        }
    }
}

fn contains(list: &[Box<[u8]>], key: &[u8]) -> bool {
    !list.is_empty() && list.binary_search_by(|e| (**e).cmp(key)).is_ok()
}

/// Why a flag could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlagError {
    #[error("{0}")]
    Name(String),
    #[error("flag `{name}`: {key}: {problem}")]
    Value {
        name: String,
        key: &'static str,
        problem: String,
    },
    #[error("more than {MAX_FLAGS} flags")]
    TooMany,
}

/// The flags in force, sorted by name; bit `i` of a [`FlagBits`] is flag `i`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagSet {
    flags: Vec<Flag>,
}

/// The flags on for one request: bit `i` is the `i`-th flag of its [`FlagSet`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagBits(pub u64);

impl FlagBits {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FlagSet {
    /// Build a set from validated configs (the file's `flags.items`, or Redis's).
    pub fn build<'a>(
        items: impl IntoIterator<Item = (&'a str, &'a FlagConfig)>,
    ) -> Result<FlagSet, FlagError> {
        let mut sorted: BTreeMap<&str, &FlagConfig> = BTreeMap::new();
        for (name, cfg) in items {
            sorted.insert(name, cfg);
        }
        if sorted.len() > MAX_FLAGS {
            return Err(FlagError::TooMany);
        }
        let flags = sorted
            .into_iter()
            .map(|(name, cfg)| Flag::new(name, cfg))
            .collect::<Result<_, _>>()?;
        Ok(FlagSet { flags })
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flag> {
        self.flags.iter()
    }

    /// The flags on for `key` (see the module documentation for the rule).
    #[inline]
    pub fn evaluate(&self, key: Option<&[u8]>) -> FlagBits {
        let mut keyed = key.map(Keyed::new);
        let mut bits = 0u64;
        for (i, flag) in self.flags.iter().enumerate() {
            if flag.is_on(keyed.as_mut()) {
                bits |= 1 << i;
            }
        }
        FlagBits(bits)
    }

    /// Apply a tester's `name=on,other=off` header to `bits`. Values longer than
    /// [`MAX_OVERRIDE_BYTES`] are ignored whole; at most [`MAX_OVERRIDE_ENTRIES`] entries are
    /// read; unknown names and malformed entries are ignored.
    pub fn apply_override(&self, mut bits: FlagBits, value: &[u8]) -> FlagBits {
        if value.len() > MAX_OVERRIDE_BYTES {
            return bits;
        }
        for entry in value
            .split(|&b| b == b',')
            .take(MAX_OVERRIDE_ENTRIES)
            .map(<[u8]>::trim_ascii)
        {
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (name, state) = (entry[..eq].trim_ascii(), entry[eq + 1..].trim_ascii());
            let on = if state.eq_ignore_ascii_case(b"on") {
                true
            } else if state.eq_ignore_ascii_case(b"off") {
                false
            } else {
                continue;
            };
            if let Ok(i) = self.flags.binary_search_by(|f| f.name.as_bytes().cmp(name)) {
                if on {
                    bits.0 |= 1 << i;
                } else {
                    bits.0 &= !(1 << i);
                }
            }
        }
        bits
    }

    /// `a,b`: the names of the flags in `bits`, in name order (empty when none), written in
    /// one allocation of the exact size (it becomes the header value without a copy).
    pub fn header_value(&self, bits: FlagBits) -> String {
        let on = || {
            self.flags
                .iter()
                .enumerate()
                .filter(move |(i, _)| bits.0 & (1 << i) != 0)
                .map(|(_, f)| &*f.name)
        };
        let len = on().map(|n| n.len() + 1).sum::<usize>().saturating_sub(1);
        let mut out = String::with_capacity(len);
        for name in on() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(name);
        }
        out
    }
}

impl Flag {
    fn new(name: &str, cfg: &FlagConfig) -> Result<Flag, FlagError> {
        check_flag_name(name).map_err(FlagError::Name)?;
        cfg.check().map_err(|(key, problem)| FlagError::Value {
            name: name.to_string(),
            key,
            problem,
        })?;
        let salt = cfg.salt.as_deref().unwrap_or(name);
        let mut prefix = Vec::with_capacity(salt.len() + 1);
        prefix.extend_from_slice(salt.as_bytes());
        prefix.push(0);
        let list = |l: &[String]| -> Box<[Box<[u8]>]> {
            let mut v: Vec<Box<[u8]>> = l.iter().map(|k| k.as_bytes().into()).collect();
            v.sort();
            v.dedup();
            v.into_boxed_slice()
        };
        Ok(Flag {
            name: name.into(),
            enabled: cfg.enabled,
            basis_points: cfg.percent.basis_points(),
            salt: salt.into(),
            prefix: prefix.into_boxed_slice(),
            allow: list(&cfg.allow),
            deny: list(&cfg.deny),
        })
    }
}

/// The bucket of `key` for `salt`, in 0..10000: `xxh3_64(salt ++ 0x00 ++ key) mod 10000`.
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let mut prefix = Vec::with_capacity(salt.len() + 1);
    prefix.extend_from_slice(salt.as_bytes());
    prefix.push(0);
    bucket_with_prefix(&prefix, key)
}

/// The bucket of `key` with `prefix = salt ++ 0x00`.
fn bucket_with_prefix(prefix: &[u8], key: &[u8]) -> u32 {
    Keyed::new(key).bucket(prefix)
}

/// One request's user key, copied once to the end of a stack buffer: each flag's
/// `salt ++ 0x00` is then written just in front of it and the whole hashed in one shot (the
/// common case), instead of building the input again per flag. Longer inputs are streamed.
struct Keyed<'k> {
    key: &'k [u8],
    buf: [u8; KEYED_STACK],
}

const KEYED_STACK: usize = 256;

impl<'k> Keyed<'k> {
    #[inline]
    fn new(key: &'k [u8]) -> Keyed<'k> {
        let mut buf = [0u8; KEYED_STACK];
        if key.len() <= KEYED_STACK {
            buf[KEYED_STACK - key.len()..].copy_from_slice(key);
        }
        Keyed { key, buf }
    }

    #[inline]
    fn bucket(&mut self, prefix: &[u8]) -> u32 {
        let n = prefix.len() + self.key.len();
        let hash = if n <= KEYED_STACK {
            let start = KEYED_STACK - n;
            self.buf[start..start + prefix.len()].copy_from_slice(prefix);
            xxh3_64(&self.buf[start..])
        } else {
            let mut h = Xxh3::new();
            h.update(prefix);
            h.update(self.key);
            h.digest()
        };
        (hash % 10_000) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Percent;

    fn flag(percent: f64) -> FlagConfig {
        FlagConfig {
            enabled: true,
            percent: Percent::from_f64(percent).expect("percent"),
            salt: None,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    #[test]
    fn bucket_rule_is_the_documented_hash() {
        // The streamed hash of the documented byte string, for short and long keys alike.
        for key in [&b"u1"[..], &[b'k'; 500][..], b""] {
            let mut whole = b"new-checkout\0".to_vec();
            whole.extend_from_slice(key);
            let want = (xxh3_64(&whole) % 10_000) as u32;
            assert_eq!(bucket("new-checkout", key), want);
        }
    }

    #[test]
    fn one_request_reuses_its_key_buffer_for_every_flag() {
        // Salts of different lengths in a row (long, short, long) and keys on both sides of the
        // stack buffer's size: each flag's bit is the documented rule applied on its own.
        let salts = [
            "a-much-longer-salt-than-the-others",
            "s",
            "",
            "mid-salt",
            &"z".repeat(200),
        ];
        let cfgs: Vec<(String, FlagConfig)> = salts
            .iter()
            .enumerate()
            .map(|(i, salt)| {
                let mut c = flag(50.0);
                c.salt = Some(salt.to_string());
                (format!("f{i}"), c)
            })
            .collect();
        let set = FlagSet::build(cfgs.iter().map(|(n, c)| (n.as_str(), c))).expect("set");
        for len in [0, 1, 31, 32, 54, 55, 56, 57, 200, 255, 256, 257, 600] {
            for seed in 0..20u8 {
                let key: Vec<u8> = (0..len).map(|j| b'a' + ((j as u8) ^ seed) % 26).collect();
                let bits = set.evaluate(Some(&key));
                for (i, salt) in salts.iter().enumerate() {
                    let want = bucket(salt, &key) < 5_000;
                    assert_eq!(bits.0 & (1 << i) != 0, want, "key len {len}, salt {salt:?}");
                }
            }
        }
    }

    #[test]
    fn raising_the_percentage_only_adds_users() {
        let at = |p: f64| FlagSet::build([("f", &flag(p))]).expect("set");
        let (low, high) = (at(30.0), at(50.0));
        let mut on30 = 0;
        for i in 0..10_000 {
            let key = format!("user-{i}");
            let a = low.evaluate(Some(key.as_bytes()));
            let b = high.evaluate(Some(key.as_bytes()));
            if !a.is_empty() {
                on30 += 1;
                assert!(!b.is_empty(), "{key} lost the flag going 30 -> 50");
            }
        }
        assert!((2_850..=3_150).contains(&on30), "{on30}");
    }

    #[test]
    fn deny_beats_allow_beats_percent_and_disabled_beats_all() {
        let mut cfg = flag(0.0);
        cfg.allow = vec!["a".into(), "both".into()];
        cfg.deny = vec!["both".into(), "d".into()];
        let set = FlagSet::build([("f", &cfg)]).expect("set");
        assert_eq!(set.evaluate(Some(b"a")), FlagBits(1));
        assert_eq!(set.evaluate(Some(b"both")), FlagBits(0));
        assert_eq!(set.evaluate(Some(b"other")), FlagBits(0));
        cfg.percent = Percent::from_basis_points(10_000);
        let set = FlagSet::build([("f", &cfg)]).expect("set");
        assert_eq!(set.evaluate(Some(b"other")), FlagBits(1));
        assert_eq!(set.evaluate(Some(b"d")), FlagBits(0));
        cfg.enabled = false;
        let set = FlagSet::build([("f", &cfg)]).expect("set");
        assert_eq!(set.evaluate(Some(b"a")), FlagBits(0));
        assert_eq!(set.evaluate(Some(b"other")), FlagBits(0));
    }

    #[test]
    fn no_user_key_gets_only_full_flags() {
        let mut allowed = flag(99.99);
        allowed.allow = vec!["a".into()];
        let full = flag(100.0);
        let set = FlagSet::build([("a-full", &full), ("b-partial", &allowed)]).expect("set");
        assert_eq!(set.evaluate(None), FlagBits(0b01));
        assert_eq!(set.header_value(set.evaluate(None)), "a-full");
    }

    #[test]
    fn names_are_validated() {
        let cfg = flag(1.0);
        for bad in ["", "Dark", "a_b", "a b", "é", &"a".repeat(65)] {
            assert!(FlagSet::build([(bad, &cfg)]).is_err(), "{bad:?}");
        }
        for good in ["a", "new-checkout", "0-9", &"a".repeat(64)] {
            assert!(FlagSet::build([(good, &cfg)]).is_ok(), "{good:?}");
        }
        let names: Vec<String> = (0..=MAX_FLAGS).map(|i| format!("f{i}")).collect();
        let too_many = names.iter().map(|n| (n.as_str(), &cfg));
        assert_eq!(FlagSet::build(too_many), Err(FlagError::TooMany));
        let mut long_list = flag(1.0);
        long_list.allow = vec!["k".into(); crate::config::schema::MAX_FLAG_LIST + 1];
        assert!(FlagSet::build([("f", &long_list)]).is_err());
    }

    #[test]
    fn override_forces_known_flags_within_bounds() {
        let set = FlagSet::build([("a", &flag(0.0)), ("b", &flag(100.0))]).expect("set");
        let bits = set.evaluate(Some(b"u"));
        assert_eq!(bits, FlagBits(0b10));
        assert_eq!(
            set.apply_override(bits, b"a=on, b=OFF,zzz=on,junk,c=maybe"),
            FlagBits(0b01)
        );
        assert_eq!(set.apply_override(bits, b""), bits);
        let long = format!("a=on,{}", "x".repeat(MAX_OVERRIDE_BYTES));
        assert_eq!(set.apply_override(bits, long.as_bytes()), bits);
        // Entries past the count limit are not read.
        let many = format!("{}a=on", "q=on,".repeat(MAX_OVERRIDE_ENTRIES));
        assert_eq!(set.apply_override(bits, many.as_bytes()), bits);
        assert_eq!(set.header_value(FlagBits(0b11)), "a,b");
        assert_eq!(set.header_value(FlagBits(0)), "");
    }

    #[test]
    fn salts_make_flags_independent() {
        let set = FlagSet::build([("a", &flag(50.0)), ("b", &flag(50.0))]).expect("set");
        let both = (0..10_000)
            .filter(|i| set.evaluate(Some(format!("u{i}").as_bytes())) == FlagBits(0b11))
            .count();
        // 25 % expected; binomial sd ~0.43 %, so 2.5 points is > 5 sd.
        assert!((2_250..=2_750).contains(&both), "{both}");
    }
}
