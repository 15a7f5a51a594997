//! What a metric label is: [`LabelValue`], implemented by each layer for its own enum (the
//! proxy's `MethodLabel`, the pools' `CodeClass`, discovery's `DiscoveryErrorKind`, the
//! rollout's `Finding` and `Phase`), which the layer's metric then takes directly, and the
//! few label enums of the metrics no single layer owns ([`ConfigSource`], [`ReloadResult`]).
//!
//! Such an enum lists its values once: `ALL` in declaration order, `index()` the position in
//! `ALL` (the slot of a pre-resolved series), `as_str()` the text Prometheus sees, and
//! `label_value!` makes it a [`LabelValue`]. Adding a value means adding a variant, its text,
//! and its place in `ALL`; [`assert_distinct`] in the owner's tests fails if `ALL` and
//! `index()` disagree or two values share a text. The pool and the routing reason are words of
//! the whole crate and live in `crate::model` ([`PoolKind`], [`Reason`]).
//!
//! [`PoolKind`]: crate::model::PoolKind
//! [`Reason`]: crate::model::Reason

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

/// `LabelValue` for an enum with an inherent `ALL` array, `index()` (`self as usize`) and
/// `as_str()`: `crate::metrics::label_value!(MyLabel);` beside the enum, in its layer.
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
pub(crate) use label_value;

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

label_value!(ConfigSource);
label_value!(ReloadResult);

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
        // PoolKind has no index of its own: per-pool values are `PerPool<T>`.
        let pools: HashSet<_> = PoolKind::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(pools.len(), PoolKind::ALL.len());
    }
}
