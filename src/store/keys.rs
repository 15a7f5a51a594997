//! The key names of one namespace: private to the store, so a key rename is one edit here.
//!
//! Two layouts (see `layout.rs` for which one a store is in):
//! - **tagged** (what a new store gets): every name starts with `{ns}`, the namespace as a Redis
//!   Cluster hash tag, so all keys of a namespace hash to one slot and every Lua script and
//!   MULTI/EXEC of the store stays in that slot on Cluster;
//! - **legacy** (what releases before it wrote): the same names with a bare `ns` prefix.

use crate::model::PoolKind;

/// How a store's key names start: `{ns}:…` or `ns:…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// `ns:…`: written by the releases before the tagged layout (read and written as such).
    Legacy,
    /// `{ns}:…`: one Redis Cluster slot per namespace.
    Tagged,
}

/// The key names of one namespace in one layout (see the table in the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Keys {
    namespace: String,
    layout: Layout,
    /// `{ns}` or `ns`: what every name starts with.
    prefix: String,
}

/// The field of a proxy's `proxy:<id>` report saying which layout its release follows.
pub(super) const LAYOUT_FIELD: &str = "_layout";
/// [`LAYOUT_FIELD`]'s value from a release that follows the tagged layout.
pub(super) const LAYOUT_TAGGED: &str = "tagged";

impl Keys {
    /// The names of `namespace` in the tagged layout (a new store's).
    pub(super) fn new(namespace: &str) -> Keys {
        Keys::in_layout(namespace, Layout::Tagged)
    }

    pub(super) fn in_layout(namespace: &str, layout: Layout) -> Keys {
        let prefix = match layout {
            Layout::Legacy => namespace.to_string(),
            Layout::Tagged => format!("{{{namespace}}}"),
        };
        Keys {
            namespace: namespace.to_string(),
            layout,
            prefix,
        }
    }

    /// The same namespace's names in `layout`.
    pub(super) fn with_layout(&self, layout: Layout) -> Keys {
        Keys::in_layout(&self.namespace, layout)
    }

    pub(super) fn layout(&self) -> Layout {
        self.layout
    }

    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(super) fn servers(&self, pool: PoolKind) -> String {
        format!("{}:servers:{pool}", self.prefix)
    }

    pub(super) fn weights(&self, pool: PoolKind) -> String {
        format!("{}:weights:{pool}", self.prefix)
    }

    pub(super) fn draining(&self, pool: PoolKind) -> String {
        format!("{}:draining:{pool}", self.prefix)
    }

    pub(super) fn serving(&self, pool: PoolKind) -> String {
        format!("{}:serving:{pool}", self.prefix)
    }

    pub(super) fn routing(&self) -> String {
        format!("{}:routing", self.prefix)
    }

    /// The feature flags: one hash, field = flag name, value = the flag as JSON.
    pub(super) fn flags(&self) -> String {
        format!("{}:flags", self.prefix)
    }

    /// The store's marker (see the module documentation).
    pub(super) fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    /// One proxy's in-flight report (see `Store::report_proxy`).
    pub(super) fn proxy(&self, proxy_id: &str) -> String {
        format!("{}:proxy:{proxy_id}", self.prefix)
    }

    /// SCAN pattern matching every proxy's report.
    pub(super) fn proxy_pattern(&self) -> String {
        format!("{}:proxy:*", glob_escape(&self.prefix))
    }

    /// The proxy id of a key [`Keys::proxy_pattern`] matched.
    pub(super) fn proxy_id<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(":proxy:")
    }

    /// The pub/sub channel every writer publishes on after a change.
    pub(super) fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The current (or last) rollout's state (see `rollout.rs`).
    pub(super) fn rollout(&self) -> String {
        format!("{}:rollout", self.prefix)
    }

    /// The replicas' summed counts of window `window` of rollout `id`.
    pub(super) fn rollout_window(&self, id: &str, window: u64) -> String {
        format!("{}:rollout:window:{id}:{window}", self.prefix)
    }

    /// SCAN pattern matching every rollout window's key.
    pub(super) fn rollout_window_pattern(&self) -> String {
        format!("{}:rollout:window:*", glob_escape(&self.prefix))
    }

    /// The leader lease: the holding replica's id, with a TTL.
    pub(super) fn rollout_leader(&self) -> String {
        format!("{}:rollout:leader", self.prefix)
    }

    /// The fencing epoch: bumped each time the lease is taken.
    pub(super) fn rollout_epoch(&self) -> String {
        format!("{}:rollout:epoch", self.prefix)
    }

    /// The capped stream of verdicts and commands.
    pub(super) fn rollout_history(&self) -> String {
        format!("{}:rollout:history", self.prefix)
    }

    /// Every key of the namespace with a fixed name (the marker first), in this layout: what
    /// `ctl migrate-keys` renames, besides the keys found by the two SCAN patterns.
    pub(super) fn fixed(&self) -> Vec<String> {
        let mut keys = vec![self.meta(), self.routing(), self.flags()];
        for pool in PoolKind::ALL {
            keys.extend([
                self.servers(pool),
                self.weights(pool),
                self.draining(pool),
                self.serving(pool),
            ]);
        }
        keys.extend([
            self.rollout(),
            self.rollout_leader(),
            self.rollout_epoch(),
            self.rollout_history(),
        ]);
        keys
    }

    /// `key` (a name of this layout) in `other`'s layout.
    pub(super) fn rename_to(&self, key: &str, other: &Keys) -> Option<String> {
        let rest = key.strip_prefix(&self.prefix)?;
        Some(format!("{}{rest}", other.prefix))
    }
}

/// `s` as a literal in a SCAN MATCH glob (`{`, `}` are literal there, but `*?[]\` are not).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster's slot of `key`: CRC16-XMODEM of its hash tag (or the whole key) mod 16384.
    fn cluster_slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let hashed = match bytes.iter().position(|&b| b == b'{') {
            Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
                Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
                _ => bytes,
            },
            None => bytes,
        };
        let mut crc: u16 = 0;
        for &b in hashed {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    fn every_key(k: &Keys) -> Vec<String> {
        let mut all = k.fixed();
        all.extend([
            k.proxy("p1"),
            k.rollout_window("r-1", 7),
            k.rollout_window("other", 0),
        ]);
        all
    }

    #[test]
    fn slot_computation_matches_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        // CRC16-XMODEM("123456789") = 0x31C3, the check value of the specification.
        assert_eq!(cluster_slot("123456789"), 0x31C3);
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(
            cluster_slot("{user1000}.following"),
            cluster_slot("user1000")
        );
        // An empty tag hashes the whole key.
        assert_ne!(cluster_slot("foo{}{bar}"), cluster_slot("bar"));
    }

    #[test]
    fn tagged_keys_follow_the_schema() {
        let k = Keys::new("ns");
        assert_eq!(k.layout(), Layout::Tagged);
        assert_eq!(k.servers(PoolKind::Canary), "{ns}:servers:canary");
        assert_eq!(k.weights(PoolKind::Production), "{ns}:weights:production");
        assert_eq!(k.draining(PoolKind::Canary), "{ns}:draining:canary");
        assert_eq!(k.serving(PoolKind::Canary), "{ns}:serving:canary");
        assert_eq!(k.routing(), "{ns}:routing");
        assert_eq!(k.flags(), "{ns}:flags");
        assert_eq!(k.events(), "{ns}:events");
        assert_eq!(k.meta(), "{ns}:meta");
        assert_eq!(k.proxy("p1"), "{ns}:proxy:p1");
        assert_eq!(k.proxy_pattern(), "{ns}:proxy:*");
        assert_eq!(k.proxy_id("{ns}:proxy:host-1"), Some("host-1"));
        assert_eq!(k.proxy_id("ns:proxy:host-1"), None);
        assert_eq!(k.rollout(), "{ns}:rollout");
        assert_eq!(k.rollout_window("r-1", 7), "{ns}:rollout:window:r-1:7");
        assert_eq!(k.rollout_window_pattern(), "{ns}:rollout:window:*");
        assert_eq!(k.rollout_leader(), "{ns}:rollout:leader");
        assert_eq!(k.rollout_epoch(), "{ns}:rollout:epoch");
        assert_eq!(k.rollout_history(), "{ns}:rollout:history");
    }

    #[test]
    fn legacy_keys_are_the_previous_names() {
        let k = Keys::in_layout("ns", Layout::Legacy);
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
        assert_eq!(k.proxy_id("ns:proxy:host-1"), Some("host-1"));
        assert_eq!(k.rollout(), "ns:rollout");
        assert_eq!(k.rollout_window("r-1", 7), "ns:rollout:window:r-1:7");
        assert_eq!(k.rollout_window_pattern(), "ns:rollout:window:*");
        assert_eq!(k.rollout_leader(), "ns:rollout:leader");
        assert_eq!(k.rollout_epoch(), "ns:rollout:epoch");
        assert_eq!(k.rollout_history(), "ns:rollout:history");
        let tagged = k.with_layout(Layout::Tagged);
        assert_eq!(
            k.rename_to("ns:rollout:window:r-1:7", &tagged).as_deref(),
            Some("{ns}:rollout:window:r-1:7")
        );
        // The legacy names of a namespace are a prefix of the tagged ones of no other.
        assert_eq!(tagged.rename_to("ns:meta", &k), None);
    }

    #[test]
    fn every_tagged_key_of_a_namespace_is_in_one_cluster_slot() {
        for ns in ["canary-lb", "ns", "team.a/prod", "a*b"] {
            let k = Keys::new(ns);
            let slot = cluster_slot(&k.meta());
            assert_eq!(slot, cluster_slot(ns), "{ns}");
            for key in every_key(&k) {
                assert_eq!(cluster_slot(&key), slot, "{key}");
            }
            assert_eq!(cluster_slot(&k.events()), slot);
        }
        // Which is exactly what the legacy layout did not do.
        let legacy = Keys::in_layout("canary-lb", Layout::Legacy);
        let slots: std::collections::BTreeSet<u16> =
            every_key(&legacy).iter().map(|k| cluster_slot(k)).collect();
        assert!(slots.len() > 1);
    }

    #[test]
    fn fixed_keys_list_every_named_key_once() {
        let k = Keys::new("ns");
        let fixed = k.fixed();
        assert_eq!(fixed[0], k.meta(), "the marker first");
        let unique: std::collections::BTreeSet<&String> = fixed.iter().collect();
        assert_eq!(unique.len(), fixed.len());
        assert_eq!(fixed.len(), 3 + 4 * PoolKind::ALL.len() + 4);
        let escaped = Keys::new("a*b");
        assert_eq!(escaped.proxy_pattern(), "{a\\*b}:proxy:*");
    }
}
