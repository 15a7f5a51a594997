//! The engine: one per process (a background service), the same code over any
//! [`Coordinator`]. Every tick it
//! 1. reads the rollout; while it is active, routes by its weight and frozen salt (every
//!    replica does, leader or not: this is how replicas agree within one tick);
//! 2. counts requests into the rollout's windows ([`WindowRecorder`]) and reports each
//!    finished window once;
//! 3. takes or renews the leader lease, and as leader, once window `next_window` has ended and
//!    a grace has passed for the replicas to report, collects it, judges it ([`judge`]),
//!    computes the next state ([`transition`]) and writes it with [`Coordinator::apply`]. A
//!    refused write (fenced: another leader, or a command, wrote first) is dropped and the
//!    state read again next tick.
//!
//! When the coordinator does not answer, the weight in force holds and nothing is judged; the
//! replica's counts for the windows that end meanwhile are dropped (a report that fails is not
//! retried). When it answers again, a window that no replica reported is *skipped* (history
//! verdict `skipped`, reason `no replica reported this window`): unknown counts are neither a
//! pass nor "no traffic", so they never move a step nor pause the rollout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use tokio::sync::watch;

use super::judge::{judge, judge_shadow, step_with, Finding, Verdict};
use super::machine::{skip, transition};
use super::shadow::ShadowSettings;
use super::window::WindowRecorder;
use super::{Coordinator, Phase, RolloutState};
use crate::metrics::Metrics;
use crate::model::{host_name, now_ms, Percent};

/// How long a finished rollout's weight and salt still override routing, so that replicas
/// that learn the persisted canary_percent through discovery (Redis pub/sub) never route by
/// the old one in between.
pub const TERMINAL_HOLD_MS: u64 = 5_000;
/// The tick without an active rollout.
pub const IDLE_TICK: Duration = Duration::from_millis(250);
/// Coordinator errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

/// The routing override of a rollout: its weight with its frozen salt, and while it is in
/// its shadow step (and progressing) the shadow settings the proxy copies requests by.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRoute {
    pub weight: Percent,
    pub salt: String,
    pub shadow: Option<Arc<ShadowSettings>>,
}

/// What the engine needs of the process (`state::Shared` implements it).
pub trait RolloutSink: Send + Sync {
    /// Route by `route` (or by the policy without a rollout: `None`) from the next request.
    fn set_route(&self, route: Option<RolloutRoute>);
    fn recorder(&self) -> &WindowRecorder;
    fn metrics(&self) -> &Metrics;
}

/// The override for `state` at `now_ms`: while active, and for [`TERMINAL_HOLD_MS`] after the
/// end.
pub fn route_for(state: Option<&RolloutState>, now_ms: u64) -> Option<RolloutRoute> {
    let s = state?;
    let holds = s.phase.is_active()
        || (s.phase != Phase::Idle && now_ms.saturating_sub(s.updated_ms) < TERMINAL_HOLD_MS);
    holds.then(|| RolloutRoute {
        weight: s.weight,
        salt: s.salt.clone(),
        // Copies only while windows are judged: a paused shadow step copies nothing.
        shadow: s
            .in_shadow()
            .filter(|_| s.phase == Phase::Progressing)
            .map(|sh| Arc::new(sh.clone())),
    })
}

/// The tick for `state`: often enough that reports land well within the grace.
pub fn tick_for(state: Option<&RolloutState>) -> Duration {
    match state {
        Some(s) if s.phase.is_active() => {
            (s.interval() / 8).clamp(Duration::from_millis(25), IDLE_TICK)
        }
        _ => IDLE_TICK,
    }
}

/// How long after a window's end the leader waits for the replicas' reports.
pub fn grace_for(state: &RolloutState) -> Duration {
    (state.interval() / 4).min(Duration::from_millis(500))
}

pub struct Engine {
    coordinator: Arc<dyn Coordinator>,
    replica: String,
    sink: Arc<dyn RolloutSink>,
}

/// What one engine remembers between ticks.
#[derive(Default)]
struct Memory {
    /// The rollout id the recorder counts for.
    following: Option<String>,
    /// When a coordinator error was last logged; `Some` while it fails.
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
}

impl Engine {
    pub fn new(
        coordinator: Arc<dyn Coordinator>,
        replica: String,
        sink: Arc<dyn RolloutSink>,
    ) -> Engine {
        Engine {
            coordinator,
            replica,
            sink,
        }
    }

    /// Tick until `shutdown` turns true (Pingora's shutdown watch).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut memory = Memory::default();
        loop {
            let pause = self.tick(&mut memory).await;
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
    }

    fn coordinator_failed(&self, memory: &mut Memory, what: &str, e: &super::CoordError) {
        let now = Instant::now();
        if memory.failing_since.is_none() {
            memory.failing_since = Some(now);
        }
        if memory
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY)
        {
            memory.last_logged = Some(now);
            warn!("rollout: {what}: {e}; the weight in force holds and nothing is judged");
        }
    }

    /// One round; returns how long to wait before the next.
    async fn tick(&self, memory: &mut Memory) -> Duration {
        let metrics = self.sink.metrics();
        let state = match self.coordinator.state().await {
            Ok(s) => s,
            Err(e) => {
                self.coordinator_failed(memory, "reading the rollout", &e);
                metrics.rollout.set_leader(false);
                // Keep counting and rotating, so the windows stay in step; their counts are
                // dropped (nobody can take them now).
                let _ = self.sink.recorder().take_finished(now_ms());
                return IDLE_TICK;
            }
        };
        if let Some(since) = memory.failing_since.take() {
            info!(
                "rollout: the coordinator answers again after {:.1} s",
                since.elapsed().as_secs_f64()
            );
            memory.last_logged = None;
        }
        let now = now_ms();
        self.sink.set_route(route_for(state.as_ref(), now));
        self.show(state.as_ref());
        self.follow(memory, state.as_ref(), now).await;

        let ttl = state.as_ref().map_or(Duration::from_secs(2), |s| {
            (s.interval() * 2).max(Duration::from_secs(1))
        });
        let epoch = match self.coordinator.lead(&self.replica, ttl).await {
            Ok(e) => e,
            Err(e) => {
                self.coordinator_failed(memory, "renewing the leader lease", &e);
                None
            }
        };
        metrics.rollout.set_leader(epoch.is_some());
        if let (Some(epoch), Some(s)) = (epoch, &state) {
            if let Err(e) = self.judge_due(epoch, s).await {
                self.coordinator_failed(memory, "judging a window", &e);
            }
        }
        tick_for(state.as_ref())
    }

    /// The metrics that describe the rollout as it stands.
    fn show(&self, state: Option<&RolloutState>) {
        let m = &self.sink.metrics().rollout;
        match state {
            Some(s) => m.set_state(s.phase, s.weight.as_f64(), s.failed),
            None => m.set_state(Phase::Idle, 0.0, 0),
        }
    }

    /// Count for the active rollout, and report its finished windows.
    async fn follow(&self, memory: &mut Memory, state: Option<&RolloutState>, now: u64) {
        let recorder = self.sink.recorder();
        let Some(s) = state.filter(|s| s.phase.is_active()) else {
            if memory.following.take().is_some() {
                recorder.end();
            }
            return;
        };
        if memory.following.as_deref() != Some(s.id.as_str()) {
            recorder.begin(s, s.window_at(now));
            memory.following = Some(s.id.clone());
            return;
        }
        for (window, counts) in recorder.take_finished(now) {
            for (kind, w) in counts.iter() {
                self.sink.metrics().rollout.capped(kind, w.capped);
            }
            if let Err(e) = self.coordinator.report(&s.id, window, &counts).await {
                self.coordinator_failed(memory, "reporting a window", &e);
            }
        }
    }

    /// As leader: judge the next window if it is due, and apply the transition.
    async fn judge_due(&self, epoch: u64, s: &RolloutState) -> Result<(), super::CoordError> {
        if s.phase != Phase::Progressing {
            return Ok(());
        }
        let now = now_ms();
        let window = s.next_window;
        let due = s.window_end_ms(window) + grace_for(s).as_millis() as u64;
        if now < due {
            return Ok(());
        }
        let (counts, reporters) = self.coordinator.collect(&s.id, window).await?;
        let (next, entry, reason) = if reporters == 0 {
            let (next, entry) = skip(s, window, now);
            (next, entry, Finding::NoReports)
        } else {
            let step = step_with(&s.step_counts, &counts);
            let j = match s.in_shadow() {
                Some(shadow) => judge_shadow(&s.settings, shadow, &counts, &step),
                None => judge(&s.settings, &counts, &step),
            };
            let (next, entry) = transition(s, window, &counts, &j, now);
            (next, entry, j.finding)
        };
        if !self.coordinator.apply(epoch, s, &next, &entry).await? {
            info!(
                "rollout {}: window {window} was written by another writer",
                s.id
            );
            return Ok(());
        }
        let metrics = &self.sink.metrics().rollout;
        metrics.verdict(reason);
        let verdict = entry.verdict.as_str();
        if next.phase == Phase::RolledBack {
            metrics.rollback(reason);
            warn!(
                "rollout {}: ROLLED BACK to 0 % at window {window} ({}): {}",
                s.id,
                next.reason,
                entry.reasons.join("; ")
            );
        } else if verdict == Verdict::Fail.as_str()
            || next.phase != s.phase
            || next.step != s.step
            || next.weight != s.weight
        {
            info!(
                "rollout {}: window {window} {verdict}: {}; now {} at step {} ({} %)",
                s.id,
                entry.reasons.join("; "),
                next.phase.as_str(),
                next.step,
                next.weight.as_f64()
            );
        }
        self.sink.set_route(route_for(Some(&next), now));
        self.show(Some(&next));
        Ok(())
    }
}

/// This replica's id: `<hostname>-<pid>-<4 random hex>` (the random part tells a restarted
/// process with a recycled pid from its predecessor).
pub fn replica_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host_name(), std::process::id(), &random[..4])
}
