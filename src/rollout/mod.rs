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

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::schema::RolloutConfig;
use crate::model::{PerPool, Percent, LATENCY_BUCKETS_S};

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
}

impl Default for PoolWindow {
    fn default() -> Self {
        PoolWindow {
            requests: 0,
            errors: 0,
            buckets: vec![0; LATENCY_BUCKETS_S.len() + 1],
        }
    }
}

impl PoolWindow {
    /// Add `other` into `self` (summing replicas, or windows of a step).
    pub fn add(&mut self, other: &PoolWindow) {
        self.requests += other.requests;
        self.errors += other.errors;
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
    pub settings: RolloutConfig,
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
}

impl RolloutState {
    /// The window length, at least 1 ms.
    pub fn interval(&self) -> Duration {
        self.settings.interval.max(Duration::from_millis(1))
    }
}

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
    /// still current and the stored state still has `expected.id` and `expected.next_window`.
    /// `Ok(false)`: fenced, nothing written.
    async fn apply(
        &self,
        epoch: u64,
        expected: &RolloutState,
        next: &RolloutState,
        entry: &HistoryEntry,
    ) -> Result<bool, CoordError>;
    /// The last `n` history entries, newest last.
    async fn history(&self, n: usize) -> Result<Vec<HistoryEntry>, CoordError>;
}
