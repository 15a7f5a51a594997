//! [`LocalCoordinator`]: the rollout kept in-process, for one box (the file provider, the
//! demo). There is no lease to win: this process always leads, with epoch 1. History is a
//! bounded ring in memory and window reports a bounded map, so neither grows with time.
//!
//! A restart must not silently reset a rollout: the file's `routing.canary_percent` would
//! apply again and move users out of canary. So with a [`Persist`] (the state file,
//! `rollout.state_file`, written by `store`) every write is also saved (the state and the
//! last [`SAVED_HISTORY`] history entries), before the write is acknowledged, and at start
//! [`LocalCoordinator::restore`] takes the saved rollout back ([`resume`]):
//! - an active rollout goes on with the same id, weight, salt, step and counts; the windows
//!   that ended while no process ran are skipped, never judged (unknown counts are neither a
//!   pass nor a failure), and judging starts again with the first window that begins after
//!   the restart. If more windows passed than `max_inconclusive` (the rollout would have
//!   paused itself for lack of evidence by then), it is resumed *paused*: users stay where
//!   they are, and an operator resumes or aborts it. Ending it instead would move canary users
//!   to production (abort) or ramp on without evidence; holding is the choice that moves
//!   nobody. The routing salt is the rollout's frozen one, so a salt changed in the config
//!   meanwhile moves nobody either (it applies once the rollout ends);
//! - an ended rollout's weight (100 after success, 0 after a rollback or abort) stays the
//!   routing `canary_percent`, as it did before the restart.
//!
//! Window reports are not saved: a window cut by the restart is skipped like the others.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{CoordError, Coordinator, HistoryEntry, Phase, Resumed, RolloutState, WindowCounts};
use crate::model::{PerPool, Percent};

/// History entries kept.
pub const HISTORY: usize = 200;
/// History entries saved with the state (the newest).
pub const SAVED_HISTORY: usize = 50;

/// What the state file holds: the rollout and its latest history, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub state: RolloutState,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// Where a [`LocalCoordinator`] keeps its rollout across restarts.
pub trait Persist: Send + Sync {
    /// What was saved last; `Ok(None)` when nothing was.
    fn load(&self) -> Result<Option<Saved>, String>;
    /// Replace what is saved, atomically and durably (all or nothing once it returns).
    fn save(&self, saved: &Saved) -> Result<(), String>;
    /// Where, for log lines.
    fn describe(&self) -> String;
}

/// What [`LocalCoordinator::restore`] found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The rollout as this process now has it (its weight already applied).
    pub state: RolloutState,
    /// `Some` when an active rollout was taken over (its `resumed_from_file`).
    pub resumed: Option<Resumed>,
}

/// How a process that finds `state` in its state file at `now_ms` goes on with it: `None`
/// when the rollout had ended (nothing changes but the weight in force), else the state that
/// takes it over and the history entry that says so (see the module documentation).
pub fn resume(state: &RolloutState, now_ms: u64) -> Option<(RolloutState, HistoryEntry)> {
    if !state.phase.is_active() {
        return None;
    }
    let mut next = state.clone();
    // The first window that starts after now: the one under way was cut by the restart.
    let first = state.window_at(now_ms).saturating_add(1);
    let skipped = first.saturating_sub(state.next_window);
    let limit = u64::from(state.settings.max_inconclusive.max(1));
    let reason = match state.phase {
        Phase::Progressing if skipped > limit => {
            next.phase = Phase::Paused;
            next.reason = "paused: the proxy was down too long".into();
            format!(
                "paused after a restart: {skipped} windows passed without a proxy, more than                  max_inconclusive ({limit}); users stay where they are: resume or abort by hand"
            )
        }
        Phase::Progressing => {
            next.next_window = first;
            format!(
                "resumed after a restart: {skipped} window(s) skipped while the proxy was down,                  judging again from window {first}"
            )
        }
        // Resuming by hand starts judging from the window then current.
        _ => "resumed after a restart, still paused".to_string(),
    };
    next.updated_ms = now_ms;
    next.version = state.version + 1;
    next.resumed_from_file = Some(Resumed {
        at_ms: now_ms,
        skipped_windows: skipped,
        reason: reason.clone(),
    });
    let entry = HistoryEntry {
        rollout_id: state.id.clone(),
        window: None,
        at_ms: now_ms,
        verdict: "restart".into(),
        reasons: vec![reason],
        numbers: Vec::new(),
        phase: next.phase,
        step: next.step,
        weight: next.weight,
    };
    Some((next, entry))
}
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
    persist: Option<Box<dyn Persist>>,
    inner: Mutex<Inner>,
}

impl LocalCoordinator {
    pub fn new(replica: String, set_percent: SetPercent) -> LocalCoordinator {
        LocalCoordinator {
            replica,
            set_percent,
            persist: None,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Save every write to `persist` (and [`LocalCoordinator::restore`] from it).
    pub fn with_persist(mut self, persist: Box<dyn Persist>) -> LocalCoordinator {
        self.persist = Some(persist);
        self
    }

    /// Take back the rollout saved before a restart (see the module documentation), apply
    /// its weight and log what was done. `Err`: the saved state cannot be read (logged by the
    /// caller); this process then starts without a rollout, and leaves the file as it is
    /// until the next rollout is started.
    pub fn restore(&self, now_ms: u64) -> Result<Option<Restored>, String> {
        let Some(persist) = &self.persist else {
            return Ok(None);
        };
        let Some(saved) = persist.load()? else {
            return Ok(None);
        };
        let mut inner = self.inner();
        let (state, entry) = match resume(&saved.state, now_ms) {
            Some((next, entry)) => (next, Some(entry)),
            None => (saved.state, None),
        };
        inner.history = saved.history.into_iter().collect();
        if let Some(entry) = &entry {
            inner.history.push_back(entry.clone());
        }
        while inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        inner.state = Some(state.clone());
        if state.phase != Phase::Idle {
            (self.set_percent)(state.weight);
        }
        if entry.is_some() {
            self.save(&inner);
        }
        let resumed = state.resumed_from_file.clone().filter(|_| entry.is_some());
        match &resumed {
            Some(r) => log::warn!(
                "rollout {}: taken over from {} at {} % ({}): {}",
                state.id,
                persist.describe(),
                state.weight.as_f64(),
                state.phase.as_str(),
                r.reason
            ),
            None => log::info!(
                "rollout {}: ended {} before the restart ({}); its weight {} % stays the \
                 canary_percent",
                state.id,
                state.phase.as_str(),
                persist.describe(),
                state.weight.as_f64()
            ),
        }
        let restored = Restored { state, resumed };
        Ok(Some(restored))
    }

    /// Save the state and the latest history; a failure is logged, never refused: a rollback
    /// must not wait for a disk (the rollout then only lives in this process until a save
    /// succeeds).
    fn save(&self, inner: &Inner) {
        let (Some(persist), Some(state)) = (&self.persist, &inner.state) else {
            return;
        };
        let skip = inner.history.len().saturating_sub(SAVED_HISTORY);
        let saved = Saved {
            state: state.clone(),
            history: inner.history.iter().skip(skip).cloned().collect(),
        };
        if let Err(e) = persist.save(&saved) {
            log::error!(
                "rollout {}: cannot save the state to {}: {e}; a restart now would lose it",
                state.id,
                persist.describe()
            );
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
        // Under the lock, so saves and the percent follow the order of the states.
        self.save(&inner);
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
    use crate::model::PoolKind;
    use crate::rollout::Command;
    use crate::rollout::RolloutSettings;
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
        let s = RolloutState::start(
            "r-1".into(),
            RolloutSettings::default(),
            "s".into(),
            0,
            None,
        )
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

    /// A state file in memory.
    #[derive(Default, Clone)]
    struct Memory(Arc<Mutex<Option<Saved>>>);

    impl Persist for Memory {
        fn load(&self) -> Result<Option<Saved>, String> {
            Ok(self.0.lock().expect("lock").clone())
        }
        fn save(&self, saved: &Saved) -> Result<(), String> {
            *self.0.lock().expect("lock") = Some(saved.clone());
            Ok(())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn at_step_1(started_ms: u64) -> RolloutState {
        let settings = RolloutSettings {
            interval: Duration::from_secs(1),
            max_inconclusive: 5,
            ..RolloutSettings::default()
        };
        let mut s = RolloutState::start("r-1".into(), settings, "frozen".into(), started_ms, None)
            .expect("start");
        s.step = 1;
        s.weight = s.settings.steps[1];
        s.next_window = 7;
        s.step_first_window = 6;
        s.passes_in_step = 0;
        s.failed = 1;
        s.step_counts[PoolKind::Canary].requests = 40;
        s
    }

    #[test]
    fn resume_skips_the_windows_that_passed_while_down_and_keeps_everything_else() {
        let s = at_step_1(0);
        // Down during windows 7 and 8, back 300 ms into window 9: 7, 8 and 9 are skipped.
        let (next, entry) = resume(&s, 9_300).expect("active");
        assert_eq!(next.phase, Phase::Progressing);
        assert_eq!(next.next_window, 10);
        assert_eq!(
            (&next.id, next.weight, &next.salt, next.step, next.failed),
            (&s.id, s.weight, &s.salt, s.step, s.failed)
        );
        assert_eq!(next.step_counts, s.step_counts);
        assert_eq!((next.version, next.updated_ms), (s.version + 1, 9_300));
        let resumed = next.resumed_from_file.clone().expect("resumed");
        assert_eq!((resumed.at_ms, resumed.skipped_windows), (9_300, 3));
        assert!(
            resumed.reason.starts_with("resumed after a restart"),
            "{resumed:?}"
        );
        assert_eq!((entry.verdict.as_str(), entry.window), ("restart", None));
        assert_eq!(entry.weight, s.weight);

        // Down longer than max_inconclusive windows: held, paused, for an operator.
        let (held, _) = resume(&s, 20_000).expect("active");
        assert_eq!((held.phase, held.weight), (Phase::Paused, s.weight));
        assert!(held
            .resumed_from_file
            .expect("resumed")
            .reason
            .contains("max_inconclusive"));

        // Paused stays paused; an ended rollout is not taken over.
        let (paused, _) = s.command(Command::Pause, 7_100).expect("pause");
        let (still, _) = resume(&paused, 30_000).expect("active");
        assert_eq!(
            (still.phase, still.next_window),
            (Phase::Paused, paused.next_window)
        );
        let (aborted, _) = s.command(Command::Abort, 7_100).expect("abort");
        assert!(resume(&aborted, 30_000).is_none());
    }

    #[tokio::test]
    async fn every_write_is_saved_and_a_new_process_takes_the_rollout_back() {
        let file = Memory::default();
        let percent = Arc::new(Mutex::new(None));
        let coordinator = |file: &Memory| {
            let p = percent.clone();
            LocalCoordinator::new(
                "me".into(),
                Box::new(move |w| *p.lock().expect("lock") = Some(w)),
            )
            .with_persist(Box::new(file.clone()))
        };
        let first = coordinator(&file);
        assert_eq!(first.restore(0).expect("restore"), None);
        let s = at_step_1(0);
        let entry = HistoryEntry {
            rollout_id: "r-1".into(),
            window: None,
            at_ms: 0,
            verdict: "start".into(),
            reasons: vec![],
            numbers: vec![],
            phase: s.phase,
            step: s.step,
            weight: s.weight,
        };
        assert!(first.command(None, &s, &entry).await.expect("cmd"));
        assert_eq!(file.load().expect("load").expect("saved").state, s);

        // The restart: a new process, the file's percent back in force.
        *percent.lock().expect("lock") = Some(Percent::default());
        let second = coordinator(&file);
        let restored = second.restore(7_500).expect("restore").expect("saved");
        let resumed = restored.resumed.clone().expect("resumed");
        assert_eq!(resumed.skipped_windows, 1);
        assert_eq!(restored.state.weight, s.weight);
        assert_eq!(*percent.lock().expect("lock"), Some(s.weight));
        let now = second.state().await.expect("state").expect("state");
        assert_eq!(now, restored.state);
        assert_eq!(file.load().expect("load").expect("saved").state, now);
        let history = second.history(10).await.expect("history");
        assert_eq!(
            history
                .iter()
                .map(|e| e.verdict.as_str())
                .collect::<Vec<_>>(),
            ["start", "restart"]
        );

        // It ends at 0; a third process keeps 0 and takes nothing over.
        let (aborted, entry) = now.command(Command::Abort, 8_000).expect("abort");
        assert!(second
            .command(Some(&now), &aborted, &entry)
            .await
            .expect("cmd"));
        *percent.lock().expect("lock") = Some(Percent::from_basis_points(2_500));
        let third = coordinator(&file);
        let restored = third.restore(60_000).expect("restore").expect("saved");
        assert_eq!(
            (restored.state.phase, restored.resumed),
            (Phase::Aborted, None)
        );
        assert_eq!(*percent.lock().expect("lock"), Some(Percent::default()));
    }
}
