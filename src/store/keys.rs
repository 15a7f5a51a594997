//! The key names of one namespace: private to the store, so a key rename is one edit here.

use crate::model::PoolKind;

/// The key names of one namespace (see the table in the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Keys {
    namespace: String,
}

impl Keys {
    pub(super) fn new(namespace: &str) -> Keys {
        Keys {
            namespace: namespace.to_string(),
        }
    }

    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(super) fn servers(&self, pool: PoolKind) -> String {
        format!("{}:servers:{pool}", self.namespace)
    }

    pub(super) fn weights(&self, pool: PoolKind) -> String {
        format!("{}:weights:{pool}", self.namespace)
    }

    pub(super) fn draining(&self, pool: PoolKind) -> String {
        format!("{}:draining:{pool}", self.namespace)
    }

    pub(super) fn serving(&self, pool: PoolKind) -> String {
        format!("{}:serving:{pool}", self.namespace)
    }

    pub(super) fn routing(&self) -> String {
        format!("{}:routing", self.namespace)
    }

    /// The feature flags: one hash, field = flag name, value = the flag as JSON.
    pub(super) fn flags(&self) -> String {
        format!("{}:flags", self.namespace)
    }

    /// The store's marker (see the module documentation).
    pub(super) fn meta(&self) -> String {
        format!("{}:meta", self.namespace)
    }

    /// One proxy's in-flight report (see `Store::report_proxy`).
    pub(super) fn proxy(&self, proxy_id: &str) -> String {
        format!("{}:proxy:{proxy_id}", self.namespace)
    }

    /// SCAN pattern matching every proxy's report.
    pub(super) fn proxy_pattern(&self) -> String {
        format!("{}:proxy:*", self.namespace)
    }

    /// The pub/sub channel every writer publishes on after a change.
    pub(super) fn events(&self) -> String {
        format!("{}:events", self.namespace)
    }

    /// The current (or last) rollout's state (see `rollout.rs`).
    pub(super) fn rollout(&self) -> String {
        format!("{}:rollout", self.namespace)
    }

    /// The replicas' summed counts of window `window` of rollout `id`.
    pub(super) fn rollout_window(&self, id: &str, window: u64) -> String {
        format!("{}:rollout:window:{id}:{window}", self.namespace)
    }

    /// The leader lease: the holding replica's id, with a TTL.
    pub(super) fn rollout_leader(&self) -> String {
        format!("{}:rollout:leader", self.namespace)
    }

    /// The fencing epoch: bumped each time the lease is taken.
    pub(super) fn rollout_epoch(&self) -> String {
        format!("{}:rollout:epoch", self.namespace)
    }

    /// The capped stream of verdicts and commands.
    pub(super) fn rollout_history(&self) -> String {
        format!("{}:rollout:history", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_schema() {
        let k = Keys::new("ns");
        assert_eq!(k.servers(PoolKind::Canary), "ns:servers:canary");
        assert_eq!(k.weights(PoolKind::Production), "ns:weights:production");
        assert_eq!(k.draining(PoolKind::Canary), "ns:draining:canary");
        assert_eq!(k.serving(PoolKind::Canary), "ns:serving:canary");
        assert_eq!(k.routing(), "ns:routing");
        assert_eq!(k.flags(), "ns:flags");
        assert_eq!(k.events(), "ns:events");
        assert_eq!(k.meta(), "ns:meta");
        assert_eq!(k.proxy("p1"), "ns:proxy:p1");
        assert_eq!(k.proxy_pattern(), "ns:proxy:*");
        assert_eq!(k.rollout(), "ns:rollout");
        assert_eq!(k.rollout_window("r-1", 7), "ns:rollout:window:r-1:7");
        assert_eq!(k.rollout_leader(), "ns:rollout:leader");
        assert_eq!(k.rollout_epoch(), "ns:rollout:epoch");
        assert_eq!(k.rollout_history(), "ns:rollout:history");
    }
}
