//! A re-created store never shrinks a pool at once.
//!
//! A Redis that lost its data and was written again by the first heartbeat holds one server:
//! followed as it is, it would empty pools of servers that are alive but have not registered
//! again yet, and put the canary percent and salt back to the config file's, moving users
//! between pools. So when the store a proxy follows is *re-initialised* (its marker is gone, its
//! `created_ms` changed, or its `generation` went backwards) the proxy reconciles instead:
//!
//! - **Servers**: each pool serves the union of its last known servers and what the new store
//!   holds. A new registration is added at once, and the new store's weight and draining win for
//!   a server in both. Kept servers are still health-checked, so one that died leaves rotation
//!   as usual. This lasts for the grace, counted from the first read of the re-created store:
//!   `discovery.reinit_grace`, or longer when a kept server's lease had longer to run (its
//!   heartbeat, alive, re-registers within a third of that). It ends early once every kept
//!   server is in the store again (the union is then the store). Then the pools follow the
//!   store as it is: a server registered once by hand that nobody registered again leaves.
//! - **Routing**: each of `canary_percent` and `salt` that was in force from the store, or from
//!   a running rollout (whose state went with the store), is kept until the new store has that
//!   field again; then the store's value applies.
//!
//! While anything is kept, discovery is reported down with the reason (`/status`,
//! `canary_lb_discovery_up` 0, `canary_lb_discovery_reconciling` 1). A store that is lost
//! (no marker) keeps everything, as before; its grace starts when the marker comes back.
//!
//! Pure: the follower (`redis.rs`) feeds it the markers, the store's servers and the clock, so
//! every case is a unit test.

use std::time::Duration;

use crate::model::{PerPool, PoolKind};
use crate::pool::WantedServer;
use crate::store::Marker;

use super::RoutingOverrides;

/// Why the store counts as re-initialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The marker is gone: Redis lost its data (the store is not followed until it is back).
    Lost,
    /// `created_ms` changed: the store was wiped and written again between two reads.
    Recreated { from: Option<u64>, to: Option<u64> },
    /// `generation` went backwards: an older copy (a lagging replica promoted, an old RDB).
    Rewound { from: u64, to: u64 },
}

impl Cause {
    /// How `next` (None: no marker) differs from `prev`, the marker of the store followed so
    /// far; `None` when it is the same store. A `created_ms` appearing where there was none is
    /// a hand-made marker completed by the next `ctl` write, not a new store.
    pub fn detect(prev: &Marker, next: Option<&Marker>) -> Option<Cause> {
        let Some(next) = next else {
            return Some(Cause::Lost);
        };
        if prev.created_ms.is_some() && prev.created_ms != next.created_ms {
            return Some(Cause::Recreated {
                from: prev.created_ms,
                to: next.created_ms,
            });
        }
        if next.generation < prev.generation {
            return Some(Cause::Rewound {
                from: prev.generation,
                to: next.generation,
            });
        }
        None
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: &Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        match self {
            Cause::Lost => write!(f, "the store lost its meta marker"),
            Cause::Recreated { from, to } => write!(
                f,
                "the store was re-created (meta created_ms {} -> {})",
                ms(from),
                ms(to)
            ),
            Cause::Rewound { from, to } => write!(
                f,
                "the store went back to an older copy (meta generation {from} -> {to})"
            ),
        }
    }
}

/// What `/status` shows while a proxy reconciles (`discovery.reconciling`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReconcileView {
    /// Why, and what is kept, in one line (also `discovery.last_error`).
    pub message: String,
    pub since_unix_ms: u64,
    /// When the kept servers go (None: the store is still lost, the grace has not started, or
    /// the servers are already back).
    pub servers_kept_until_unix_ms: Option<u64>,
    /// Kept servers the new store does not hold, per pool.
    pub kept_servers: PerPool<Vec<String>>,
    /// The routing fields kept until written again: `canary_percent`, `salt`.
    pub kept_routing: Vec<&'static str>,
}

/// One reconciliation, from the re-initialisation until the store is followed as it is.
#[derive(Debug, Clone)]
pub struct Reconcile {
    cause: Cause,
    since_ms: u64,
    /// The servers each pool had when the re-initialisation was seen.
    kept: PerPool<Vec<WantedServer>>,
    /// The routing fields still kept (`Some`), until the store has them again.
    routing: RoutingOverrides,
    /// The grace, once the re-created store is read.
    grace: Duration,
    /// End of the grace, set at the first read of the re-created store.
    until_ms: Option<u64>,
    /// The kept servers are gone or all back: the pools follow the store.
    servers_done: bool,
    /// Kept servers the store did not hold at the last read.
    missing: PerPool<Vec<String>>,
}

impl Reconcile {
    /// Start reconciling at `now_ms`: keep `servers` (the pools' last known) and the fields of
    /// `routing` that are set, for at least `grace` and at least `lease_left` (the longest
    /// lease a kept server had left).
    pub fn start(
        cause: Cause,
        now_ms: u64,
        servers: PerPool<Vec<WantedServer>>,
        routing: RoutingOverrides,
        grace: Duration,
        lease_left: Duration,
    ) -> Reconcile {
        let nothing_kept = servers.values().all(|v| v.is_empty());
        Reconcile {
            cause,
            since_ms: now_ms,
            kept: servers,
            routing,
            grace: grace.max(lease_left),
            until_ms: None,
            servers_done: nothing_kept,
            missing: PerPool::default(),
        }
    }

    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// Lay what is kept over a read of the re-created store (`servers`, `routing`: its own
    /// values, `None` for a field it does not have) at `now_ms`. Returns what to serve.
    pub fn apply(
        &mut self,
        now_ms: u64,
        mut servers: PerPool<Vec<WantedServer>>,
        routing: RoutingOverrides,
    ) -> (PerPool<Vec<WantedServer>>, RoutingOverrides) {
        let until = *self
            .until_ms
            .get_or_insert(now_ms.saturating_add(self.grace.as_millis() as u64));
        self.missing = PerPool::from_fn(|pool| {
            self.kept[pool]
                .iter()
                .filter(|k| !servers[pool].iter().any(|s| s.addr == k.addr))
                .map(|k| k.addr.to_string())
                .collect()
        });
        if self.missing.values().all(|m| m.is_empty()) || now_ms >= until {
            self.servers_done = true;
        }
        if !self.servers_done {
            for pool in PoolKind::ALL {
                let extra: Vec<WantedServer> = self.kept[pool]
                    .iter()
                    .filter(|k| !servers[pool].iter().any(|s| s.addr == k.addr))
                    .cloned()
                    .collect();
                servers[pool].extend(extra);
                // In address order, as the store's own list, so an unchanged union is unchanged.
                servers[pool].sort_by(|a, b| a.addr.cmp(&b.addr));
            }
        } else {
            self.missing = PerPool::default();
        }
        // A field the store has again is the store's from now on.
        if routing.canary_percent.is_some() {
            self.routing.canary_percent = None;
        }
        if routing.salt.is_some() {
            self.routing.salt = None;
        }
        let serve = RoutingOverrides {
            canary_percent: routing.canary_percent.or(self.routing.canary_percent),
            salt: routing.salt.or_else(|| self.routing.salt.clone()),
        };
        (servers, serve)
    }

    /// Nothing is kept any more: the store is followed as it is.
    pub fn is_done(&self) -> bool {
        self.servers_done && self.routing == RoutingOverrides::default()
    }

    /// When the kept servers go, if that is still ahead: the follower re-reads then.
    pub fn wake_at_ms(&self) -> Option<u64> {
        if self.servers_done {
            None
        } else {
            self.until_ms
        }
    }

    /// The routing fields kept.
    fn kept_routing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.routing.canary_percent.is_some() {
            out.push("canary_percent");
        }
        if self.routing.salt.is_some() {
            out.push("salt");
        }
        out
    }

    pub fn view(&self, now_ms: u64) -> ReconcileView {
        let kept_routing = self.kept_routing();
        let mut parts = Vec::new();
        match (self.servers_done, self.until_ms) {
            (true, _) => {}
            (false, None) => {
                let n: usize = self.kept.values().map(Vec::len).sum();
                parts.push(format!("its {n} last known server(s)"));
            }
            (false, Some(until)) => {
                let n: usize = self.missing.values().map(Vec::len).sum();
                parts.push(format!(
                    "{n} last known server(s) the store does not hold, for {:.0} s more",
                    until.saturating_sub(now_ms) as f64 / 1000.0
                ));
            }
        }
        if !kept_routing.is_empty() {
            parts.push(format!(
                "its routing {} until written again",
                kept_routing.join(" and ")
            ));
        }
        let keeping = if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join(", and ")
        };
        ReconcileView {
            message: format!(
                "redis store re-initialised ({}): this proxy keeps {keeping} \
                 (docs/redis-schema.md, \"A re-created store\")",
                self.cause
            ),
            since_unix_ms: self.since_ms,
            servers_kept_until_unix_ms: if self.servers_done {
                None
            } else {
                self.until_ms
            },
            kept_servers: self.missing.clone(),
            kept_routing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Percent, ServerAddr, Weight};

    fn marker(generation: u64, created: Option<u64>) -> Marker {
        Marker {
            generation,
            updated_ms: None,
            created_ms: created,
        }
    }

    #[test]
    fn detection_table() {
        let prev = marker(10, Some(100));
        let cases: &[(Option<Marker>, Option<Cause>)] = &[
            (None, Some(Cause::Lost)),
            (Some(marker(11, Some(100))), None),
            (Some(marker(10, Some(100))), None),
            (
                Some(marker(1, Some(200))),
                Some(Cause::Recreated {
                    from: Some(100),
                    to: Some(200),
                }),
            ),
            // A new store whose generation already passed the old one's.
            (
                Some(marker(50, Some(200))),
                Some(Cause::Recreated {
                    from: Some(100),
                    to: Some(200),
                }),
            ),
            // A hand-written marker on a wiped store.
            (
                Some(marker(1, None)),
                Some(Cause::Recreated {
                    from: Some(100),
                    to: None,
                }),
            ),
            (
                Some(marker(7, Some(100))),
                Some(Cause::Rewound { from: 10, to: 7 }),
            ),
        ];
        for (next, want) in cases {
            assert_eq!(&Cause::detect(&prev, next.as_ref()), want, "{next:?}");
        }
        // A hand-made marker completed by a later `ctl` write is the same store.
        assert_eq!(
            Cause::detect(&marker(3, None), Some(&marker(4, Some(500)))),
            None
        );
        assert_eq!(
            Cause::detect(&marker(3, None), Some(&marker(1, None))),
            Some(Cause::Rewound { from: 3, to: 1 })
        );
    }

    fn server(addr: &str, weight: i64) -> WantedServer {
        WantedServer {
            addr: ServerAddr::parse(addr).expect("addr"),
            weight: Weight::new(weight).expect("weight"),
            draining: false,
        }
    }

    fn addrs(v: &[WantedServer]) -> Vec<String> {
        let mut out: Vec<String> = v.iter().map(|s| s.addr.to_string()).collect();
        out.sort();
        out
    }

    fn pools(production: &[&str], canary: &[&str]) -> PerPool<Vec<WantedServer>> {
        PerPool {
            production: production.iter().map(|a| server(a, 1)).collect(),
            canary: canary.iter().map(|a| server(a, 1)).collect(),
        }
    }

    fn percent(p: &str) -> Percent {
        Percent::parse(p).expect("percent")
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn the_union_is_served_for_the_grace_then_the_store() {
        let kept = pools(&["10.0.0.1:80", "10.0.0.2:80"], &["10.0.0.9:80"]);
        let routing = RoutingOverrides {
            canary_percent: Some(percent("30")),
            salt: Some("s1".into()),
        };
        let mut r = Reconcile::start(
            Cause::Recreated {
                from: Some(1),
                to: Some(2),
            },
            1_000,
            kept,
            routing,
            GRACE,
            Duration::ZERO,
        );
        // The first heartbeat re-created the store with one production server, re-weighted.
        let mut store = pools(&["10.0.0.2:80"], &[]);
        store.production[0].weight = Weight::new(5).expect("weight");
        let (serve, route) = r.apply(2_000, store.clone(), RoutingOverrides::default());
        assert_eq!(addrs(&serve.production), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(addrs(&serve.canary), ["10.0.0.9:80"]);
        let reweighted = serve
            .production
            .iter()
            .find(|s| s.addr.as_str() == "10.0.0.2:80")
            .expect("kept");
        assert_eq!(reweighted.weight.get(), 5, "the store's entry wins");
        assert_eq!(route.canary_percent, Some(percent("30")));
        assert_eq!(route.salt.as_deref(), Some("s1"));
        assert!(!r.is_done());
        assert_eq!(
            r.wake_at_ms(),
            Some(32_000),
            "the grace runs from the first read"
        );
        let view = r.view(2_000);
        assert_eq!(view.kept_servers.production, ["10.0.0.1:80"]);
        assert_eq!(view.kept_servers.canary, ["10.0.0.9:80"]);
        assert_eq!(view.kept_routing, ["canary_percent", "salt"]);
        assert!(
            view.message.contains("created_ms 1 -> 2"),
            "{}",
            view.message
        );

        // A new registration is served at once.
        let store = pools(&["10.0.0.2:80", "10.0.0.3:80"], &[]);
        let (serve, _) = r.apply(10_000, store.clone(), RoutingOverrides::default());
        assert_eq!(
            addrs(&serve.production),
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        );
        assert_eq!(addrs(&serve.canary), ["10.0.0.9:80"]);

        // The grace is over: the store as it is; routing stays until written.
        let (serve, route) = r.apply(32_000, store, RoutingOverrides::default());
        assert_eq!(addrs(&serve.production), ["10.0.0.2:80", "10.0.0.3:80"]);
        assert!(serve.canary.is_empty());
        assert_eq!(route.canary_percent, Some(percent("30")));
        assert!(!r.is_done());
        assert_eq!(r.wake_at_ms(), None);
        assert_eq!(r.view(32_000).servers_kept_until_unix_ms, None);

        // Each field is the store's once written again.
        let (_, route) = r.apply(
            33_000,
            pools(&["10.0.0.2:80"], &[]),
            RoutingOverrides {
                canary_percent: Some(percent("10")),
                salt: None,
            },
        );
        assert_eq!(route.canary_percent, Some(percent("10")));
        assert_eq!(route.salt.as_deref(), Some("s1"));
        assert!(!r.is_done());
        let (_, route) = r.apply(
            34_000,
            pools(&["10.0.0.2:80"], &[]),
            RoutingOverrides {
                canary_percent: None,
                salt: Some("s2".into()),
            },
        );
        // canary_percent was written again and then deleted: the store's (none) from now on.
        assert_eq!(route.canary_percent, None);
        assert_eq!(route.salt.as_deref(), Some("s2"));
        assert!(r.is_done());
    }

    #[test]
    fn it_ends_early_when_every_kept_server_is_back() {
        let mut r = Reconcile::start(
            Cause::Lost,
            0,
            pools(&["10.0.0.1:80"], &["10.0.0.9:80"]),
            RoutingOverrides::default(),
            GRACE,
            Duration::ZERO,
        );
        let (serve, _) = r.apply(1_000, pools(&["10.0.0.1:80"], &[]), Default::default());
        assert_eq!(addrs(&serve.canary), ["10.0.0.9:80"]);
        assert!(!r.is_done());
        let store = pools(&["10.0.0.1:80"], &["10.0.0.9:80", "10.0.0.8:80"]);
        let (serve, _) = r.apply(2_000, store.clone(), Default::default());
        assert_eq!(serve, store);
        assert!(r.is_done());
    }

    #[test]
    fn a_longer_lease_lengthens_the_grace() {
        let mut r = Reconcile::start(
            Cause::Rewound { from: 9, to: 3 },
            0,
            pools(&["10.0.0.1:80"], &[]),
            RoutingOverrides::default(),
            Duration::from_secs(3),
            Duration::from_secs(15),
        );
        r.apply(1_000, pools(&[], &[]), Default::default());
        assert_eq!(r.wake_at_ms(), Some(16_000));
        let (serve, _) = r.apply(15_999, pools(&[], &[]), Default::default());
        assert_eq!(addrs(&serve.production), ["10.0.0.1:80"]);
        let (serve, _) = r.apply(16_000, pools(&[], &[]), Default::default());
        assert!(serve.production.is_empty());
        assert!(r.is_done());
    }

    #[test]
    fn nothing_kept_is_done_at_the_first_read() {
        let mut r = Reconcile::start(
            Cause::Lost,
            0,
            PerPool::default(),
            RoutingOverrides::default(),
            GRACE,
            Duration::ZERO,
        );
        let store = pools(&["10.0.0.1:80"], &[]);
        let (serve, route) = r.apply(1_000, store.clone(), Default::default());
        assert_eq!(serve, store);
        assert_eq!(route, RoutingOverrides::default());
        assert!(r.is_done());
    }
}
