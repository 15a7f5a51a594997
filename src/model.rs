//! The words every layer shares: the two pools, a per-pool pair, a server address, a weight,
//! a percentage. Plain values with their validation; no I/O and no other crate module.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Index, IndexMut};

use serde::Serialize;

/// The two pools every proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Production,
    Canary,
}

impl PoolKind {
    pub const ALL: [PoolKind; 2] = [PoolKind::Production, PoolKind::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Production => "production",
            PoolKind::Canary => "canary",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "production" => Ok(PoolKind::Production),
            "canary" => Ok(PoolKind::Canary),
            _ => Err(InvalidValue::Pool(s.to_string())),
        }
    }
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request went to its pool: the `reason` label of the routing metric. Shared by
/// `routing`, which decides, and `metrics`, which counts; `index` is the position in `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Header,
    Cookie,
    Percent,
    Fallback,
}

impl Reason {
    /// Every reason, in declaration order: `ALL[r.index()] == r`.
    pub const ALL: [Reason; 4] = [
        Reason::Header,
        Reason::Cookie,
        Reason::Percent,
        Reason::Fallback,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Header => "header",
            Reason::Cookie => "cookie",
            Reason::Percent => "percent",
            Reason::Fallback => "fallback",
        }
    }
}

/// The current time in Unix milliseconds (0 if the clock is before 1970): the one wall clock
/// of the crate, for timestamps shared with Redis and shown in `/status`. (Durations inside
/// the process use `Instant`.)
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This machine's host name (gethostname(2)), or `proxy` when it has none: the one read of
/// it, for the ids a process writes to Redis (a proxy's report, a rollout replica).
pub fn host_name() -> String {
    let name = gethostname::gethostname()
        .to_string_lossy()
        .trim()
        .to_string();
    if name.is_empty() {
        "proxy".into()
    } else {
        name
    }
}

/// One value per pool, indexed by [`PoolKind`]: replaces `match kind { Production => ..,
/// Canary => .. }` accessors.
/// As a config section, both keys are optional (their default) and no other key is allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerPool<T> {
    #[serde(default)]
    pub production: T,
    #[serde(default)]
    pub canary: T,
}

impl<T> PerPool<T> {
    /// The value of `kind` (the same as `self[kind]`).
    pub fn get(&self, kind: PoolKind) -> &T {
        &self[kind]
    }

    /// Both values, production first.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        [&self.production, &self.canary].into_iter()
    }

    /// Build both values from their pool.
    pub fn from_fn(mut f: impl FnMut(PoolKind) -> T) -> PerPool<T> {
        PerPool {
            production: f(PoolKind::Production),
            canary: f(PoolKind::Canary),
        }
    }

    /// `(kind, value)` in the order of [`PoolKind::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (PoolKind, &T)> {
        PoolKind::ALL.into_iter().map(move |k| (k, &self[k]))
    }

    pub fn map<U>(&self, mut f: impl FnMut(PoolKind, &T) -> U) -> PerPool<U> {
        PerPool::from_fn(|k| f(k, &self[k]))
    }

    /// Like [`PerPool::from_fn`] for a constructor that can fail (production first).
    pub fn try_from_fn<E>(mut f: impl FnMut(PoolKind) -> Result<T, E>) -> Result<PerPool<T>, E> {
        Ok(PerPool {
            production: f(PoolKind::Production)?,
            canary: f(PoolKind::Canary)?,
        })
    }
}

impl<T> Index<PoolKind> for PerPool<T> {
    type Output = T;
    fn index(&self, kind: PoolKind) -> &T {
        match kind {
            PoolKind::Production => &self.production,
            PoolKind::Canary => &self.canary,
        }
    }
}

impl<T> IndexMut<PoolKind> for PerPool<T> {
    fn index_mut(&mut self, kind: PoolKind) -> &mut T {
        match kind {
            PoolKind::Production => &mut self.production,
            PoolKind::Canary => &mut self.canary,
        }
    }
}

/// `host:port` where host is an IP address or a DNS name (resolved at every discovery refresh).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServerAddr(String);

impl ServerAddr {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let s = s.trim();
        let bad = |problem| InvalidValue::Addr {
            addr: s.to_string(),
            problem,
        };
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(bad("has port 0"));
            }
            return Ok(ServerAddr(sa.to_string()));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("must be host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("has an invalid port"))?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if port == 0 || !host_ok {
            return Err(bad("must be ip:port or hostname:port"));
        }
        Ok(ServerAddr(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address as a socket address when it is an IP literal (no DNS needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server weight, 1..=1000. Zero is refused: Pingora's weighted selector divides by the
/// total weight, and Ketama panicked on weight 0 (cloudflare/pingora#1006).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Weight(u32);

impl Weight {
    pub const MAX: u32 = 1000;

    pub fn new(w: i64) -> Result<Self, InvalidValue> {
        if (1..=Self::MAX as i64).contains(&w) {
            Ok(Weight(w as u32))
        } else {
            Err(InvalidValue::Weight(w))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight(1)
    }
}

/// Upper bounds, in seconds, of the request-duration histogram buckets (a `+Inf` bucket
/// follows): shared by `canary_lb_request_duration_seconds` and the rollout's window counts, so
/// the proxy's judgement and a Prometheus `histogram_quantile` read the same buckets.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A canary percentage, 0..=100 with decimals; kept as basis points (1/100 of a percent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Percent(u32);

impl Percent {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| InvalidValue::PercentText(s.to_string()))?;
        Self::from_f64(v)
    }

    pub fn from_f64(v: f64) -> Result<Self, InvalidValue> {
        if !(0.0..=100.0).contains(&v) || v.is_nan() {
            return Err(InvalidValue::Percent(v));
        }
        Ok(Percent((v * 100.0).round() as u32))
    }

    /// From basis points (1/100 of a percent), capped at 100 %.
    pub const fn from_basis_points(bp: u32) -> Percent {
        Percent(if bp > 10_000 { 10_000 } else { bp })
    }

    pub fn basis_points(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

/// A value refused by one of the constructors above; the message names the value, so an
/// operator's typo (`--pool canry`, weight `0`, percent `150`) is found at a glance.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidValue {
    #[error("unknown pool `{0}` (expected production or canary)")]
    Pool(String),
    #[error("server address `{addr}` {problem}")]
    Addr { addr: String, problem: &'static str },
    #[error("weight must be 1..={max}, got {0}", max = Weight::MAX)]
    Weight(i64),
    #[error("canary percent must be a number 0..=100, got `{0}`")]
    PercentText(String),
    #[error("canary percent must be 0..=100, got {0}")]
    Percent(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_pool_indexes_and_maps_by_kind() {
        let mut p = PerPool::from_fn(|k| k.as_str().len());
        assert_eq!(p[PoolKind::Production], 10);
        assert_eq!(p[PoolKind::Canary], 6);
        p[PoolKind::Canary] += 1;
        let doubled = p.map(|_, v| v * 2);
        let seen: Vec<_> = doubled.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(
            seen,
            vec![(PoolKind::Production, 20), (PoolKind::Canary, 14)]
        );
    }

    #[test]
    fn invalid_values_name_the_value() {
        let cases = [
            (PoolKind::parse("canry").map(|_| ()), "unknown pool `canry`"),
            (
                ServerAddr::parse("nowhere").map(|_| ()),
                "`nowhere` must be host:port",
            ),
            (
                ServerAddr::parse("10.0.0.1:0").map(|_| ()),
                "`10.0.0.1:0` has port 0",
            ),
            (Weight::new(0).map(|_| ()), "weight must be 1..=1000, got 0"),
            (Percent::parse("lots").map(|_| ()), "got `lots`"),
            (Percent::from_f64(150.0).map(|_| ()), "0..=100, got 150"),
        ];
        for (result, want) in cases {
            let e = result.expect_err(want).to_string();
            assert!(e.contains(want), "`{e}` should contain `{want}`");
        }
    }
}
