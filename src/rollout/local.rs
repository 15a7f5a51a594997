//! [`LocalCoordinator`]: the rollout kept in-process, for one box (the file provider, the
//! demo). There is no lease to win: this process always leads, with epoch 1. History is a
//! bounded ring in memory and window reports a bounded map, so neither grows with time; both
//! are lost on restart, as is the rollout itself (the file's `routing.canary_percent` then
//! applies again).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{CoordError, Coordinator, HistoryEntry, RolloutState, WindowCounts};
use crate::model::{PerPool, Percent};

/// History entries kept.
pub const HISTORY: usize = 200;
/// Windows whose reports are kept (older ones are dropped first).
const WINDOWS: usize = 64;

/// Sets the routing `canary_percent` that holds after a rollout stops overriding it (the
/// process's percent override).
pub type SetPercent = Box<dyn Fn(Percent) + Send + Sync>;

#[derive(Default)]
struct Inner {
    state: Option<RolloutState>,
    history: VecDeque<HistoryEntry>,
    /// (rollout id, window) -> counts summed and reports.
    windows: BTreeMap<(String, u64), (WindowCounts, u32)>,
}

pub struct LocalCoordinator {
    replica: String,
    set_percent: SetPercent,
    inner: Mutex<Inner>,
}

impl LocalCoordinator {
    pub fn new(replica: String, set_percent: SetPercent) -> LocalCoordinator {
        LocalCoordinator {
            replica,
            set_percent,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replace the state if it is still `expected` (id and version), record `entry`, and set
    /// the routing percent.
    fn write(
        &self,
        expected: Option<&RolloutState>,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> bool {
        let mut inner = self.inner();
        let same = match (&inner.state, expected) {
            (None, None) => true,
            (Some(cur), Some(exp)) => cur.id == exp.id && cur.version == exp.version,
            _ => false,
        };
        if !same {
            return false;
        }
        if inner.state.as_ref().is_some_and(|s| s.id != next.id) {
            inner.windows.clear();
        }
        inner.state = Some(next.clone());
        inner.history.push_back(entry.clone());
        while inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        // Under the lock, so two writers set the percent in the order of their states.
        (self.set_percent)(next.weight);
        true
    }
}

#[async_trait]
impl Coordinator for LocalCoordinator {
    async fn state(&self) -> Result<Option<RolloutState>, CoordError> {
        Ok(self.inner().state.clone())
    }

    async fn report(&self, id: &str, window: u64, counts: &WindowCounts) -> Result<(), CoordError> {
        let mut inner = self.inner();
        let slot = inner
            .windows
            .entry((id.to_string(), window))
            .or_insert_with(|| (PerPool::default(), 0));
        for (kind, c) in counts.iter() {
            slot.0[kind].add(c);
        }
        slot.1 += 1;
        while inner.windows.len() > WINDOWS {
            inner.windows.pop_first();
        }
        Ok(())
    }

    async fn collect(&self, id: &str, window: u64) -> Result<(WindowCounts, u32), CoordError> {
        Ok(self
            .inner()
            .windows
            .get(&(id.to_string(), window))
            .cloned()
            .unwrap_or_default())
    }

    async fn lead(&self, _replica: &str, _ttl: Duration) -> Result<Option<u64>, CoordError> {
        Ok(Some(1))
    }

    async fn apply(
        &self,
        _epoch: u64,
        expected: &RolloutState,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError> {
        // Judged transitions also check the window: the state must still wait for it.
        if self
            .inner()
            .state
            .as_ref()
            .is_some_and(|s| s.next_window != expected.next_window)
        {
            return Ok(false);
        }
        Ok(self.write(Some(expected), next, entry))
    }

    async fn command(
        &self,
        expected: Option<&RolloutState>,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError> {
        Ok(self.write(expected, next, entry))
    }

    async fn history(&self, n: usize) -> Result<Vec<HistoryEntry>, CoordError> {
        let inner = self.inner();
        let skip = inner.history.len().saturating_sub(n);
        Ok(inner.history.iter().skip(skip).cloned().collect())
    }

    async fn leader(&self) -> Result<Option<String>, CoordError> {
        Ok(Some(self.replica.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::RolloutConfig;
    use crate::model::PoolKind;
    use crate::rollout::Command;
    use std::sync::Arc;

    #[tokio::test]
    async fn compare_and_set_history_and_percent() {
        let percent = Arc::new(Mutex::new(None));
        let p = percent.clone();
        let c = LocalCoordinator::new(
            "me".into(),
            Box::new(move |w| *p.lock().expect("lock") = Some(w)),
        );
        assert_eq!(c.state().await.expect("state"), None);
        let s = RolloutState::start("r-1".into(), RolloutConfig::default(), "s".into(), 0, None)
            .expect("start");
        let (aborted, entry) = s.command(Command::Abort, 5).expect("abort");
        // Expected state absent but one given: refused.
        assert!(!c.command(Some(&s), &s, &entry).await.expect("cmd"));
        assert!(c.command(None, &s, &entry).await.expect("cmd"));
        assert_eq!(
            *percent.lock().expect("lock"),
            Some(Percent::from_basis_points(500))
        );
        // A stale writer (expects nothing stored) is refused.
        assert!(!c.command(None, &aborted, &entry).await.expect("cmd"));
        assert!(c.apply(1, &s, &aborted, &entry).await.expect("apply"));
        assert_eq!(*percent.lock().expect("lock"), Some(Percent::default()));
        assert!(
            !c.apply(1, &s, &aborted, &entry).await.expect("apply"),
            "version moved on"
        );
        assert_eq!(c.history(10).await.expect("history").len(), 2);
        assert_eq!(c.history(1).await.expect("history")[0], entry);
        assert_eq!(c.leader().await.expect("leader").as_deref(), Some("me"));

        let mut w = WindowCounts::default();
        w[PoolKind::Canary].requests = 3;
        c.report("r-1", 4, &w).await.expect("report");
        c.report("r-1", 4, &w).await.expect("report");
        let (sum, n) = c.collect("r-1", 4).await.expect("collect");
        assert_eq!((sum[PoolKind::Canary].requests, n), (6, 2));
        assert_eq!(c.collect("r-1", 5).await.expect("collect").1, 0);
        for i in 0..200 {
            c.report("r-1", 100 + i, &w).await.expect("report");
        }
        assert!(c.inner().windows.len() <= WINDOWS);
    }
}
