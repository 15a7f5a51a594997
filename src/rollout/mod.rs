//! Progressive delivery: the proxy ramps the canary step by step, judges it against production
//! over the same windows, and rolls it back on its own (README, "Progressive delivery").
//!
//! This file is the contract between the parts:
//! - the words: [`Phase`], [`RolloutState`], [`PoolWindow`] / [`WindowCounts`], [`HistoryEntry`];
//! - [`Coordinator`]: where the engine reads and writes the shared rollout, in-process for one
//!   box (the file provider, the demo) or in Redis for replicas (`store`), so the engine that
//!   drives windows, verdicts and transitions is the same code for both.
//!
//! Window `n` of a rollout covers wall-clock time `[started_ms + n * interval, + interval)`:
//! every replica counts its requests into the window they end in, reports each finished window
//! once, and the leader judges window `n` once the replicas have reported (a short grace).

pub mod engine;
pub mod judge;
pub mod local;
pub mod machine;
pub mod paired;
pub mod settings;
pub mod shadow;
pub mod view;
pub mod window;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::metrics::LabelValue;
use crate::model::{PerPool, Percent, LATENCY_BUCKETS_S};
pub use settings::{start_key_names, RolloutSettings, SettingError, StartKey, START_KEYS};

/// Where a rollout is. `Idle` only before the first start; the others are kept (with their
/// reason) until the next start, so `status` still says how the last rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Idle,
    Progressing,
    Paused,
    Succeeded,
    RolledBack,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Idle,
        Phase::Progressing,
        Phase::Paused,
        Phase::Succeeded,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }

    /// Still running: windows are counted and judged (`Progressing`) or held (`Paused`).
    pub const fn is_active(self) -> bool {
        matches!(self, Phase::Progressing | Phase::Paused)
    }
}

/// The `phase` label of `canary_lb_rollout_phase` is the phase itself.
impl LabelValue for Phase {
    const ALL: &'static [Phase] = &Phase::ALL;

    fn label(self) -> &'static str {
        self.as_str()
    }
}

/// One pool's counts over one window (or summed over several): what the judgement reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolWindow {
    /// Requests answered (forced requests only when `count_forced`).
    pub requests: u64,
    /// Of those: 5xx answers and connect failures.
    pub errors: u64,
    /// Per-bucket (not cumulative) duration counts: `buckets[i]` counts durations in
    /// `(LATENCY_BUCKETS_S[i-1], LATENCY_BUCKETS_S[i]]`, the last one `+Inf`.
    pub buckets: Vec<u64>,
    /// Requests answered but left out of the counts above: their client had reached its
    /// per-window cap (`per_client_requests`, or `per_client_failures` for an error or a slow
    /// answer). Absent (0) in what older releases wrote.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub capped: u64,
    /// The most errors one client (one slot of the client table) had counted in the window;
    /// summed over replicas and windows, an upper bound of one client's share of `errors`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_max_errors: u64,
    /// The same for answers slower than the latency rules' lowest threshold
    /// ([`judge::client_slow_index`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_max_slow: u64,
    /// The shadow step's pairs (production's answer to a user's request and the canary's to
    /// its copy, [`shadow::Pair`]), counted in the canary's window only (`paired.rs` says
    /// what each count means and how they are judged). Absent (0) in what older releases
    /// wrote and whenever no pair was counted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pairs: u64,
    /// Pairs whose status class differs (no answer is a class of its own).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pair_mismatches: u64,
    /// Pairs where the canary was slower than production by more than the margin
    /// (`max(max_slowdown, max_slowdown_percent` of production's time)), or gave no answer
    /// while production did.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pair_slower: u64,
    /// Pairs where both answered and the canary was less than the margin slower, or faster.
    /// Pairs without production's answer, and exact ties at the margin, are in neither.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pair_not_slower: u64,
    /// Pairs whose two bodies were hashed (`compare: [.., body_hash]`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pair_body_compared: u64,
    /// Of those, pairs whose hashes differ.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pair_body_mismatches: u64,
    /// Pairs left out of the counts above by the per-client caps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pairs_capped: u64,
    /// The most mismatching pairs one client had counted in the window (summed over replicas
    /// and windows like `client_max_errors`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_max_pair_mismatches: u64,
    /// The same for slower pairs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_max_pair_slower: u64,
    /// The same for pairs whose bodies differ.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_max_pair_body_mismatches: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Default for PoolWindow {
    fn default() -> Self {
        PoolWindow {
            requests: 0,
            errors: 0,
            buckets: vec![0; LATENCY_BUCKETS_S.len() + 1],
            capped: 0,
            client_max_errors: 0,
            client_max_slow: 0,
            pairs: 0,
            pair_mismatches: 0,
            pair_slower: 0,
            pair_not_slower: 0,
            pair_body_compared: 0,
            pair_body_mismatches: 0,
            pairs_capped: 0,
            client_max_pair_mismatches: 0,
            client_max_pair_slower: 0,
            client_max_pair_body_mismatches: 0,
        }
    }
}

impl PoolWindow {
    /// Add `other` into `self` (summing replicas, or windows of a step).
    pub fn add(&mut self, other: &PoolWindow) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.capped += other.capped;
        // Sums of maxima: one client can have contributed at most this much to the sum.
        self.client_max_errors += other.client_max_errors;
        self.client_max_slow += other.client_max_slow;
        self.pairs += other.pairs;
        self.pair_mismatches += other.pair_mismatches;
        self.pair_slower += other.pair_slower;
        self.pair_not_slower += other.pair_not_slower;
        self.pair_body_compared += other.pair_body_compared;
        self.pair_body_mismatches += other.pair_body_mismatches;
        self.pairs_capped += other.pairs_capped;
        self.client_max_pair_mismatches += other.client_max_pair_mismatches;
        self.client_max_pair_slower += other.client_max_pair_slower;
        self.client_max_pair_body_mismatches += other.client_max_pair_body_mismatches;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }
}

/// Both pools' counts over one window.
pub type WindowCounts = PerPool<PoolWindow>;

/// The shared state of the current (or last) rollout. Serialized as JSON where it is stored;
/// every replica reads the same copy, so every replica shows and routes by the same weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Unique per start (e.g. `r-<unix ms>`): window reports and history are tagged with it.
    pub id: String,
    pub phase: Phase,
    /// Why the phase: `started`, `errors`, `latency`, `insufficient traffic`, `by hand`, ...
    pub reason: String,
    /// The settings frozen at start (`ctl rollout start` flags over the config's `rollout:`).
    pub settings: RolloutSettings,
    /// Index into `settings.steps` of the step in force.
    pub step: usize,
    /// canary_percent in force (0 after a rollback or abort).
    pub weight: Percent,
    /// The routing salt frozen for the rollout's life, so each step only adds users.
    pub salt: String,
    /// Wall clock (Unix ms) of window 0's start.
    pub started_ms: u64,
    /// The first window not yet judged.
    pub next_window: u64,
    /// The first window of the current step (latency p99 is over the step so far).
    pub step_first_window: u64,
    /// Passing windows in the current step.
    pub passes_in_step: u32,
    /// Failed windows in this rollout (cumulative; `threshold` rolls back).
    pub failed: u32,
    /// Consecutive inconclusive windows (`max_inconclusive` pauses).
    pub inconclusive_run: u32,
    /// Counts summed over the current step's judged windows.
    pub step_counts: WindowCounts,
    /// Wall clock (Unix ms) of the last change.
    pub updated_ms: u64,
    /// Grows by one with every write (judged transition or command): the compare-and-set
    /// token of [`Coordinator::apply`] and of `ctl`'s writes.
    pub version: u64,
    /// Set when a restarted process took this rollout over from its state file (the file
    /// provider, `local.rs`); never written while `None`, so releases before it read the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_file: Option<Resumed>,
    /// The shadow step, when the rollout started with one: while it is not `done`, the
    /// weight is 0 and the proxies copy production requests to the canary instead. Never
    /// written while `None`; releases before it ignore it and see a step at weight 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<shadow::ShadowStage>,
}

/// How a restarted process went on with the rollout it found in its state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Windows that ended while no process ran: skipped, never judged.
    pub skipped_windows: u64,
    /// What it did and why, in words an operator reads.
    pub reason: String,
}

impl RolloutState {
    /// A rollout starting now at its first step. `previous` is the stored state, if any: its
    /// version carries on, so a compare-and-set against it still works. `settings` are
    /// checked ([`RolloutSettings::validate`]) whoever built them.
    pub fn start(
        id: String,
        settings: impl Into<RolloutSettings>,
        salt: String,
        now_ms: u64,
        previous: Option<&RolloutState>,
    ) -> Result<RolloutState, CommandRefused> {
        if previous.is_some_and(|p| p.phase.is_active()) {
            return Err(CommandRefused(
                "a rollout is already running: abort or promote it first".into(),
            ));
        }
        let mut settings = settings.into();
        settings
            .validate()
            .map_err(|(key, problem)| CommandRefused(format!("{key}: {problem}")))?;
        let Some(&first) = settings.steps.first() else {
            return Err(CommandRefused("a rollout needs at least one step".into()));
        };
        let shadow = settings.shadow.take().map(|settings| shadow::ShadowStage {
            settings,
            done: false,
        });
        Ok(RolloutState {
            id,
            phase: Phase::Progressing,
            reason: "started".into(),
            settings,
            step: 0,
            // No user reaches the canary during a shadow step.
            weight: if shadow.is_some() {
                Percent::default()
            } else {
                first
            },
            salt,
            started_ms: now_ms,
            next_window: 0,
            step_first_window: 0,
            passes_in_step: 0,
            failed: 0,
            inconclusive_run: 0,
            step_counts: WindowCounts::default(),
            updated_ms: now_ms,
            version: previous.map_or(1, |p| p.version + 1),
            resumed_from_file: None,
            shadow,
        })
    }

    /// The shadow step's settings while the rollout is in it (active or paused there).
    pub fn in_shadow(&self) -> Option<&shadow::ShadowSettings> {
        self.shadow
            .as_ref()
            .filter(|s| !s.done && self.phase.is_active())
            .map(|s| &s.settings)
    }

    /// The window length, at least 1 ms.
    pub fn interval(&self) -> Duration {
        self.settings.interval.max(Duration::from_millis(1))
    }

    /// The state after an operator's command, and its history entry; refused when it makes
    /// no sense in this phase (resume while progressing, anything after the end, ...).
    ///
    /// `Pause` holds the weight and stops judging; `Resume` starts judging again from the
    /// current window (the paused windows are never judged); `Abort` sets the weight to 0 at
    /// once; `Promote` sets it to 100 and ends the rollout as succeeded.
    pub fn command(
        &self,
        cmd: Command,
        now_ms: u64,
    ) -> Result<(RolloutState, HistoryEntry), CommandRefused> {
        let mut next = self.clone();
        match (cmd, self.phase) {
            (Command::Pause, Phase::Progressing) => {
                next.phase = Phase::Paused;
                next.reason = "paused by hand".into();
            }
            (Command::Resume, Phase::Paused) => {
                next.phase = Phase::Progressing;
                next.reason = "resumed by hand".into();
                next.inconclusive_run = 0;
                next.next_window = self.window_at(now_ms);
            }
            (Command::Abort, p) if p.is_active() => {
                next.phase = Phase::Aborted;
                next.reason = "aborted by hand".into();
                next.weight = Percent::default();
            }
            (Command::Promote, p) if p.is_active() => {
                next.phase = Phase::Succeeded;
                next.reason = "promoted by hand".into();
                next.weight = Percent::from_basis_points(10_000);
            }
            (cmd, phase) => {
                return Err(CommandRefused(format!(
                    "cannot {} a rollout that is {}",
                    cmd.as_str(),
                    phase.as_str()
                )))
            }
        }
        next.updated_ms = now_ms;
        next.version = self.version + 1;
        let entry = HistoryEntry {
            rollout_id: next.id.clone(),
            window: None,
            at_ms: now_ms,
            verdict: cmd.as_str().into(),
            reasons: vec![next.reason.clone()],
            numbers: Vec::new(),
            phase: next.phase,
            step: next.step,
            weight: next.weight,
        };
        Ok((next, entry))
    }

    /// The window that contains wall-clock `now_ms` (0 before the start).
    pub fn window_at(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.started_ms) / self.interval().as_millis().max(1) as u64
    }

    /// Wall clock (Unix ms) at which `window` ends.
    pub fn window_end_ms(&self, window: u64) -> u64 {
        self.started_ms
            .saturating_add((window + 1).saturating_mul(self.interval().as_millis() as u64))
    }
}

/// An operator's command (`ctl rollout pause|resume|abort|promote`, or the admin endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl Command {
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Promote => "promote",
        }
    }
}

/// A command that does not apply to the rollout as it stands; the message says why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CommandRefused(pub String);

/// One judged window or one command, with its numbers: the rollout's history (a capped Redis
/// stream, or an in-memory ring for one box), `/status`'s last verdicts and the pub/sub event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub rollout_id: String,
    /// The judged window, `None` for a command.
    pub window: Option<u64>,
    pub at_ms: u64,
    /// `pass`, `fail`, `inconclusive`, or the command (`start`, `pause`, ...).
    pub verdict: String,
    /// Why, in words an operator reads: `canary error rate 4.1 % > 1 %`, ...
    pub reasons: Vec<String>,
    /// The figures the verdict used, by name (`canary_requests`, `canary_error_percent`,
    /// `production_p99_ms`, `z`, ...).
    pub numbers: Vec<(String, f64)>,
    /// Phase, step and weight after this entry.
    pub phase: Phase,
    pub step: usize,
    pub weight: Percent,
}

/// Why the coordinator could not answer: the engine logs it and skips this round (the weight
/// in force holds; nothing is judged until it answers again).
#[derive(Debug, thiserror::Error)]
#[error("rollout coordination: {0}")]
pub struct CoordError(pub String);

/// Where the rollout lives. [`Coordinator::apply`] is the only writer of a judged transition,
/// and it is atomic: state, canary_percent, history and event in one step, refused when the
/// caller's lease epoch or expected window is stale (so a failover never judges a window twice
/// or skips one). Commands from `ctl` (start, pause, ...) write through the same store.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// The current (or last) rollout; `None` when none was ever started.
    async fn state(&self) -> Result<Option<RolloutState>, CoordError>;
    /// Add this replica's counts for `window` of rollout `id` (summed over replicas).
    async fn report(&self, id: &str, window: u64, counts: &WindowCounts) -> Result<(), CoordError>;
    /// The counts of `window` summed over the replicas that reported, and how many reported.
    async fn collect(&self, id: &str, window: u64) -> Result<(WindowCounts, u32), CoordError>;
    /// Take or renew the leader lease for `ttl`; `Some(epoch)` while `replica` leads. The
    /// epoch grows each time the lease changes hands (fencing).
    async fn lead(&self, replica: &str, ttl: Duration) -> Result<Option<u64>, CoordError>;
    /// Replace `expected` by `next` and record `entry`, atomically, if the lease `epoch` is
    /// still current and the stored state still has `expected.id` and `expected.version`
    /// (`next.version` is one more). The same write sets the routing `canary_percent` to
    /// `next.weight` and publishes the change. `Ok(false)`: fenced, nothing written.
    async fn apply(
        &self,
        epoch: u64,
        expected: &RolloutState,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError>;
    /// Write an operator's command or a start: like [`Coordinator::apply`] without a lease
    /// (compare-and-set on `expected`'s id and version; `None` expected = nothing stored).
    async fn command(
        &self,
        expected: Option<&RolloutState>,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError>;
    /// The last `n` history entries, newest last.
    async fn history(&self, n: usize) -> Result<Vec<HistoryEntry>, CoordError>;
    /// The replica holding the leader lease now, if any (for status).
    async fn leader(&self) -> Result<Option<String>, CoordError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every phase has its `canary_lb_rollout_phase` series from the start, idle at 1.
    #[test]
    fn phases_are_the_phase_metrics_labels() {
        crate::metrics::assert_distinct::<Phase>();
        let m = crate::metrics::Metrics::new().expect("metrics");
        m.rollout.export_phases(Phase::Idle);
        let text = || String::from_utf8(m.render()).expect("utf-8");
        let t = text();
        for p in Phase::ALL {
            let line = format!(
                "canary_lb_rollout_phase{{phase=\"{}\"}} {}",
                p.as_str(),
                i32::from(p == Phase::Idle)
            );
            assert!(t.contains(&line), "{line} missing:\n{t}");
        }
        m.rollout.set_state(Phase::RolledBack, 0.0, 3);
        let t = text();
        for line in [
            "canary_lb_rollout_phase{phase=\"idle\"} 0",
            "canary_lb_rollout_phase{phase=\"rolled_back\"} 1",
            "canary_lb_rollout_failed_checks 3",
        ] {
            assert!(t.contains(line), "{line} missing:\n{t}");
        }
    }
}
