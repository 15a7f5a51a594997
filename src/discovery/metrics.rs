//! What discovery measures, registered by discovery with its own label type: whether the
//! source answered, its problems by [`DiscoveryErrorKind`], full reads, store
//! re-initialisations and the reconciling flag. The state records into it as the
//! [`Sink`](super::Sink) hands it a provider's reads, failures and [`Event`]s.

use prometheus::{IntCounter, IntGauge};

use super::Event;
use crate::metrics::{Counters, Registry};

/// The `kind` label of `canary_lb_discovery_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscoveryErrorKind {
    /// The source did not answer (Redis down, Sentinel without a master, timeout).
    Unreachable,
    /// Redis answers but its store has no meta marker: it lost its data.
    StoreLost,
    /// Bad entries skipped by the store reader, one kind per `store::Problem::kind`.
    Address,
    Weight,
    Lease,
    Meta,
    CanaryPercent,
    Salt,
    /// A feature flag in Redis that does not parse (skipped; the other flags apply).
    Flag,
    /// The source's data does not parse as a whole (a `file_watch` servers file with bad
    /// YAML or a bad entry): none of it applies, the last known servers keep serving.
    Invalid,
}

impl DiscoveryErrorKind {
    pub const ALL: [DiscoveryErrorKind; 10] = [
        DiscoveryErrorKind::Unreachable,
        DiscoveryErrorKind::StoreLost,
        DiscoveryErrorKind::Address,
        DiscoveryErrorKind::Weight,
        DiscoveryErrorKind::Lease,
        DiscoveryErrorKind::Meta,
        DiscoveryErrorKind::CanaryPercent,
        DiscoveryErrorKind::Salt,
        DiscoveryErrorKind::Flag,
        DiscoveryErrorKind::Invalid,
    ];

    /// The kind whose text is `s` (a `store::Problem::kind`).
    pub fn parse(s: &str) -> Option<DiscoveryErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            DiscoveryErrorKind::Unreachable => "unreachable",
            DiscoveryErrorKind::StoreLost => "store_lost",
            DiscoveryErrorKind::Address => "address",
            DiscoveryErrorKind::Weight => "weight",
            DiscoveryErrorKind::Lease => "lease",
            DiscoveryErrorKind::Meta => "meta",
            DiscoveryErrorKind::CanaryPercent => "canary_percent",
            DiscoveryErrorKind::Salt => "salt",
            DiscoveryErrorKind::Flag => "flag",
            DiscoveryErrorKind::Invalid => "invalid",
        }
    }
}

crate::metrics::label_value!(DiscoveryErrorKind);

/// Discovery's series, every one from the first scrape.
pub struct DiscoveryMetrics {
    up: IntGauge,
    errors: Counters<DiscoveryErrorKind>,
    resyncs: IntCounter,
    store_reinitialised: IntCounter,
    reconciling: IntGauge,
}

impl DiscoveryMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<DiscoveryMetrics> {
        Ok(DiscoveryMetrics {
            up: registry.gauge(
                "canary_lb_discovery_up",
                "1 when the discovery source answered the last sync, 0 when not.",
            )?,
            errors: registry.counters(
                "canary_lb_discovery_errors_total",
                "Discovery problems: unreachable source or bad entries skipped, by kind.",
                "kind",
            )?,
            resyncs: registry.counter(
                "canary_lb_discovery_resyncs_total",
                "Full reads of the discovery source.",
            )?,
            store_reinitialised: registry.counter(
                "canary_lb_discovery_store_reinitialised_total",
                "Times the discovery store was found re-initialised (marker gone, created_ms changed or generation lower).",
            )?,
            reconciling: registry.gauge(
                "canary_lb_discovery_reconciling",
                "1 while servers or routing from before a store re-initialisation are kept, 0 when not.",
            )?,
        })
    }

    /// The source could not be read, for `kind`.
    pub fn failure(&self, kind: DiscoveryErrorKind) {
        self.errors.inc(kind);
    }

    /// `event` at the source. A skipped entry of a kind this module does not list still gets
    /// counted, under its own text.
    pub fn count(&self, event: Event<'_>) {
        match event {
            Event::Resync => self.resyncs.inc(),
            Event::Skipped(kind) => match DiscoveryErrorKind::parse(kind) {
                Some(k) => self.errors.inc(k),
                None => self.errors.inc_text(kind),
            },
            Event::Reinitialised => self.store_reinitialised.inc(),
        }
    }

    /// Whether anything from before a store re-initialisation is kept.
    pub fn set_reconciling(&self, reconciling: bool) {
        self.reconciling.set(i64::from(reconciling));
    }

    /// Whether the source is up, as `/status` says at scrape time (so the two cannot
    /// disagree).
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_at_zero_and_unknown_kinds_still_count() {
        crate::metrics::assert_distinct::<DiscoveryErrorKind>();
        let registry = Registry::new();
        let m = DiscoveryMetrics::register(&registry).expect("register");
        let text = |r: &Registry| String::from_utf8(r.text()).expect("utf-8");
        let t = text(&registry);
        for kind in DiscoveryErrorKind::ALL {
            let line = format!(
                "canary_lb_discovery_errors_total{{kind=\"{}\"}} 0",
                kind.as_str()
            );
            assert!(t.contains(&line), "{line} missing:\n{t}");
        }
        for line in [
            "canary_lb_discovery_store_reinitialised_total 0",
            "canary_lb_discovery_reconciling 0",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        m.count(Event::Skipped("weight"));
        m.count(Event::Skipped("something_new"));
        m.failure(DiscoveryErrorKind::Unreachable);
        let t = text(&registry);
        for line in [
            "canary_lb_discovery_errors_total{kind=\"weight\"} 1",
            "canary_lb_discovery_errors_total{kind=\"something_new\"} 1",
            "canary_lb_discovery_errors_total{kind=\"unreachable\"} 1",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
        for kind in DiscoveryErrorKind::ALL {
            assert_eq!(DiscoveryErrorKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(DiscoveryErrorKind::parse("nope"), None);
    }
}
