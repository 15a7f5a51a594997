//! Label values of the metrics, as typed enums that own their text and their index.
//!
//! Each enum lists its values once: `ALL` in declaration order, `index()` the position in
//! `ALL` (the slot of a pre-resolved counter handle), `as_str()` the text Prometheus sees.
//! Adding a value means adding a variant, its text, and its place in `ALL`; the unit test below
//! fails if `ALL` and `index()` disagree or two values share a text. The pool and the routing
//! reason are words of the whole crate and live in `crate::model` ([`PoolKind`],
//! [`Reason`]).
//!
//! [`PoolKind`]: crate::model::PoolKind
//! [`Reason`]: crate::model::Reason

use http::Method;

/// A label whose values a layer above `metrics` owns and decides (`metrics` may import only
/// `model`): that layer implements this for its own enum, which the metric then takes
/// directly, with no copy here to keep in step (the rollout's `Finding` is the `reason` of the
/// verdict counters). The values' texts must be distinct; [`assert_distinct`] checks it in the
/// owner's tests.
pub trait LabelValue: Copy + PartialEq + 'static {
    /// Every value: each label set is exported at 0 from the first scrape.
    const ALL: &'static [Self];
    /// The text Prometheus sees.
    fn label(self) -> &'static str;
    /// The position of `self` in `ALL`: the slot of its pre-resolved series. Label types
    /// recorded per request override it with `self as usize`.
    fn index(self) -> usize {
        Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// `LabelValue` for an enum with the inherent `ALL` array, `index()` and `as_str()` this
/// module's enums have.
#[macro_export]
macro_rules! label_value {
    ($t:ty) => {
        impl $crate::metrics::LabelValue for $t {
            const ALL: &'static [Self] = &<$t>::ALL;
            fn label(self) -> &'static str {
                self.as_str()
            }
            fn index(self) -> usize {
                <$t>::index(self)
            }
        }
    };
}

/// The `reason` label of `canary_lb_rollout_verdicts_total` and
/// `canary_lb_rollout_rollbacks_total`, with the `verdict` each reason gives.
pub trait VerdictLabel: LabelValue {
    /// `pass`, `fail`, `inconclusive` or `skipped`.
    fn verdict(self) -> &'static str;
    /// Whether it fails a window (and so can roll a rollout back: a `rollbacks_total` series).
    fn fails(self) -> bool {
        self.verdict() == "fail"
    }
}

/// Panics unless every value of `L` has its own non-empty text (for the owner's unit test).
pub fn assert_distinct<L: LabelValue>() {
    let mut seen = std::collections::HashSet::new();
    for (i, v) in L::ALL.iter().enumerate() {
        assert_eq!(v.index(), i, "`{}` is not at its index in ALL", v.label());
        assert!(!v.label().is_empty(), "an empty label text");
        assert!(seen.insert(v.label()), "`{}` twice", v.label());
    }
}

/// The `method` label of `canary_lb_requests_total`; any other method counts as `OTHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodLabel {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl MethodLabel {
    pub const ALL: [MethodLabel; 8] = [
        MethodLabel::Get,
        MethodLabel::Head,
        MethodLabel::Post,
        MethodLabel::Put,
        MethodLabel::Delete,
        MethodLabel::Patch,
        MethodLabel::Options,
        MethodLabel::Other,
    ];

    pub fn from_method(m: &Method) -> MethodLabel {
        match *m {
            Method::GET => MethodLabel::Get,
            Method::HEAD => MethodLabel::Head,
            Method::POST => MethodLabel::Post,
            Method::PUT => MethodLabel::Put,
            Method::DELETE => MethodLabel::Delete,
            Method::PATCH => MethodLabel::Patch,
            Method::OPTIONS => MethodLabel::Options,
            _ => MethodLabel::Other,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Other => "OTHER",
        }
    }
}

/// The `code` label of `canary_lb_refused_requests_total`: the statuses a request refused at
/// the edge (before routing) can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    BadRequest,
    HeaderFieldsTooLarge,
    NotImplemented,
}

impl RefusalCode {
    pub const ALL: [RefusalCode; 3] = [
        RefusalCode::BadRequest,
        RefusalCode::HeaderFieldsTooLarge,
        RefusalCode::NotImplemented,
    ];

    /// The refusal with `status`; any other status counts as 400.
    pub const fn of(status: u16) -> RefusalCode {
        match status {
            431 => RefusalCode::HeaderFieldsTooLarge,
            501 => RefusalCode::NotImplemented,
            _ => RefusalCode::BadRequest,
        }
    }

    pub const fn status(self) -> u16 {
        match self {
            RefusalCode::BadRequest => 400,
            RefusalCode::HeaderFieldsTooLarge => 431,
            RefusalCode::NotImplemented => 501,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadRequest => "400",
            RefusalCode::HeaderFieldsTooLarge => "431",
            RefusalCode::NotImplemented => "501",
        }
    }
}

/// The `kind` label of `canary_lb_client_errors_total`: what a client did that the proxy
/// answered by closing or failing the connection, logged at debug level only (any client can
/// cause these at will, so they must not fill the error log). The first four are counted by
/// Pingora's connection limit (patches/pingora/0006), the rest by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientErrorKind {
    /// A TLS handshake that failed (not TLS at all, no shared cipher or version, ...).
    TlsHandshake,
    /// A TLS handshake, h2c detection or HTTP/2 preface past `client.handshake_timeout`.
    HandshakeTimeout,
    /// An invalid HTTP/2 connection preface.
    H2Handshake,
    /// An idle connection closed to make room at `client.max_connections`.
    IdleShed,
    /// The client closed or reset the connection while a request was read or answered.
    Closed,
    /// The client was too slow: a body piece past `client.body_timeout`, a response write past
    /// `client.send_timeout`.
    Timeout,
    /// Anything else the client got wrong mid-request (an HTTP/2 protocol error, ...).
    Protocol,
}

impl ClientErrorKind {
    pub const ALL: [ClientErrorKind; 7] = [
        ClientErrorKind::TlsHandshake,
        ClientErrorKind::HandshakeTimeout,
        ClientErrorKind::H2Handshake,
        ClientErrorKind::IdleShed,
        ClientErrorKind::Closed,
        ClientErrorKind::Timeout,
        ClientErrorKind::Protocol,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ClientErrorKind::TlsHandshake => "tls_handshake",
            ClientErrorKind::HandshakeTimeout => "handshake_timeout",
            ClientErrorKind::H2Handshake => "h2_handshake",
            ClientErrorKind::IdleShed => "idle_shed",
            ClientErrorKind::Closed => "closed",
            ClientErrorKind::Timeout => "timeout",
            ClientErrorKind::Protocol => "protocol",
        }
    }
}

/// The `source` label of `canary_lb_config_changes_total`: where an applied change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigSource {
    /// The config file, re-read on SIGHUP.
    File,
    /// The routing overrides in Redis.
    Redis,
}

impl ConfigSource {
    pub const ALL: [ConfigSource; 2] = [ConfigSource::File, ConfigSource::Redis];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ConfigSource::File => "file",
            ConfigSource::Redis => "redis",
        }
    }
}

/// The `result` label of `canary_lb_config_reloads_total`: whether a SIGHUP reload was
/// applied or refused (the running configuration kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    Applied,
    Failed,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Applied, ReloadResult::Failed];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Failed => "failed",
        }
    }
}

/// The `phase` label of `canary_lb_rollout_phase` (the words of `rollout::Phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutPhaseLabel {
    Idle,
    Progressing,
    Paused,
    Succeeded,
    RolledBack,
    Aborted,
}

impl RolloutPhaseLabel {
    pub const ALL: [RolloutPhaseLabel; 6] = [
        RolloutPhaseLabel::Idle,
        RolloutPhaseLabel::Progressing,
        RolloutPhaseLabel::Paused,
        RolloutPhaseLabel::Succeeded,
        RolloutPhaseLabel::RolledBack,
        RolloutPhaseLabel::Aborted,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutPhaseLabel::Idle => "idle",
            RolloutPhaseLabel::Progressing => "progressing",
            RolloutPhaseLabel::Paused => "paused",
            RolloutPhaseLabel::Succeeded => "succeeded",
            RolloutPhaseLabel::RolledBack => "rolled_back",
            RolloutPhaseLabel::Aborted => "aborted",
        }
    }
}

/// The `budget` label of `canary_lb_upstream_budget_refused_total`: which HTTP/2 upstream
/// budget had no place for a stream within `client.upstream_queue_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetLabel {
    /// `client.max_upstream_per_connection`: the stream's own connection was full.
    Connection,
    /// `client.max_upstream_connections`: the process-wide budget was full.
    Total,
}

impl BudgetLabel {
    pub const ALL: [BudgetLabel; 2] = [BudgetLabel::Connection, BudgetLabel::Total];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            BudgetLabel::Connection => "connection",
            BudgetLabel::Total => "total",
        }
    }
}

crate::label_value!(MethodLabel);
crate::label_value!(RefusalCode);
crate::label_value!(ClientErrorKind);
crate::label_value!(ConfigSource);
crate::label_value!(ReloadResult);
crate::label_value!(RolloutPhaseLabel);
crate::label_value!(BudgetLabel);

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::model::{PoolKind, Reason};

    /// `ALL[i].index() == i` and the texts are distinct, for one enum.
    fn check<T: Copy + std::fmt::Debug>(
        name: &str,
        all: &[T],
        index: fn(T) -> usize,
        text: fn(T) -> &'static str,
    ) {
        assert!(!all.is_empty(), "{name}: no values");
        let mut texts = HashSet::new();
        for (i, v) in all.iter().enumerate() {
            assert_eq!(index(*v), i, "{name}: {v:?} is at {i} in ALL");
            assert!(!text(*v).is_empty(), "{name}: {v:?} has no text");
            assert!(texts.insert(text(*v)), "{name}: text {:?} twice", text(*v));
        }
    }

    #[test]
    fn every_label_enum_owns_its_index_and_a_distinct_text() {
        check(
            "MethodLabel",
            &MethodLabel::ALL,
            MethodLabel::index,
            MethodLabel::as_str,
        );
        check(
            "ClientErrorKind",
            &ClientErrorKind::ALL,
            ClientErrorKind::index,
            ClientErrorKind::as_str,
        );
        check(
            "RefusalCode",
            &RefusalCode::ALL,
            RefusalCode::index,
            RefusalCode::as_str,
        );
        check(
            "ConfigSource",
            &ConfigSource::ALL,
            ConfigSource::index,
            ConfigSource::as_str,
        );
        check(
            "ReloadResult",
            &ReloadResult::ALL,
            ReloadResult::index,
            ReloadResult::as_str,
        );
        check("Reason", &Reason::ALL, Reason::index, Reason::as_str);
        check(
            "RolloutPhaseLabel",
            &RolloutPhaseLabel::ALL,
            RolloutPhaseLabel::index,
            RolloutPhaseLabel::as_str,
        );
        check(
            "BudgetLabel",
            &BudgetLabel::ALL,
            BudgetLabel::index,
            BudgetLabel::as_str,
        );
        // PoolKind has no index of its own: per-pool values are `PerPool<T>`.
        let pools: HashSet<_> = PoolKind::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(pools.len(), PoolKind::ALL.len());
    }

    #[test]
    fn values_map_to_their_labels() {
        for (m, want) in [
            (Method::GET, "GET"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::TRACE, "OTHER"),
            (Method::CONNECT, "OTHER"),
        ] {
            assert_eq!(MethodLabel::from_method(&m).as_str(), want, "{m}");
        }
        for code in RefusalCode::ALL {
            assert_eq!(RefusalCode::of(code.status()), code);
            assert_eq!(code.as_str(), code.status().to_string());
        }
        assert_eq!(RefusalCode::of(418), RefusalCode::BadRequest);
    }
}
