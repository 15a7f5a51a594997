//! The per-window counters the request path records into: atomics only, no lock and no
//! allocation per request (the analysis may cost the request path at most 2 %).
//!
//! A ring of [`RING`] slots, each tagged with the window number it counts. A request ends in
//! window `n = (now - started) / interval` and adds to slot `n % RING` only when that slot is
//! tagged `n`; otherwise (the engine has fallen behind) it is dropped and counted in
//! [`WindowRecorder::dropped`]. Only the engine retags: once window `n` has ended it takes the
//! slot's counts (swapping them to 0) and tags it with the next window of the same residue
//! that has not begun, so the slots of the current and the next windows are always tagged
//! before their first request. No request is ever blocked by the rotation.
//!
//! A request finishing just as the engine takes its window may land in the slot after the swap;
//! it then counts in the slot's next window, [`RING`] windows later: off by one request in
//! thousands, never lost or double-counted in the total.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::Release};

use crate::model::{PerPool, PoolKind, LATENCY_BUCKETS_S};

use super::{PoolWindow, RolloutState, WindowCounts};

/// Slots in the ring: the window being taken, the current one and two ahead.
pub const RING: usize = 4;
/// A window is taken this long after its end, so requests finishing at the boundary land.
pub const SETTLE_MS: u64 = 20;
/// The tag of a slot that counts nothing.
const NONE: u64 = u64::MAX;
const BUCKETS: usize = LATENCY_BUCKETS_S.len() + 1;

#[derive(Default)]
struct PoolSlot {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl PoolSlot {
    fn take(&self) -> PoolWindow {
        PoolWindow {
            requests: self.requests.swap(0, Relaxed),
            errors: self.errors.swap(0, Relaxed),
            buckets: self.buckets.iter().map(|b| b.swap(0, Relaxed)).collect(),
        }
    }
}

struct Slot {
    window: AtomicU64,
    pools: PerPool<PoolSlot>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            window: AtomicU64::new(NONE),
            pools: PerPool::default(),
        }
    }
}

/// The counters of the rollout in force, shared by the request path and the engine.
pub struct WindowRecorder {
    active: AtomicBool,
    count_forced: AtomicBool,
    started_ms: AtomicU64,
    interval_ms: AtomicU64,
    slots: [Slot; RING],
    /// Requests that found their window's slot untagged (engine behind) since start.
    pub dropped: AtomicU64,
}

impl Default for WindowRecorder {
    fn default() -> Self {
        WindowRecorder {
            active: AtomicBool::new(false),
            count_forced: AtomicBool::new(false),
            started_ms: AtomicU64::new(0),
            interval_ms: AtomicU64::new(1),
            slots: Default::default(),
            dropped: AtomicU64::new(0),
        }
    }
}

/// The bucket of a duration: the first bound it does not exceed, else `+Inf`.
fn bucket_index(seconds: f64) -> usize {
    LATENCY_BUCKETS_S
        .iter()
        .position(|&b| seconds <= b)
        .unwrap_or(LATENCY_BUCKETS_S.len())
}

impl WindowRecorder {
    /// One answered request: `status` 0 means no answer was written (the client went away:
    /// not counted, nothing a client does counts against the canary); `forced` when the
    /// routing header or flag cookie chose the pool. A proxy's own 502/503/504 (connect
    /// failure, no server, timeout) count as errors like an app's 5xx.
    #[inline]
    pub fn record(&self, pool: PoolKind, status: u16, forced: bool, seconds: f64) {
        if !self.active.load(Relaxed) || status == 0 {
            return;
        }
        if forced && !self.count_forced.load(Relaxed) {
            return;
        }
        self.record_at(crate::model::now_ms(), pool, status, seconds);
    }

    fn record_at(&self, now_ms: u64, pool: PoolKind, status: u16, seconds: f64) {
        let started = self.started_ms.load(Relaxed);
        let Some(since) = now_ms.checked_sub(started) else {
            return;
        };
        let window = since / self.interval_ms.load(Relaxed).max(1);
        let slot = &self.slots[(window % RING as u64) as usize];
        if slot.window.load(Relaxed) != window {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        let p = &slot.pools[pool];
        p.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            p.errors.fetch_add(1, Relaxed);
        }
        p.buckets[bucket_index(seconds)].fetch_add(1, Relaxed);
    }

    /// Count for `state` from window `current` on: clears every slot and tags the ring with
    /// `current ..`. Called by the engine when a rollout it follows starts.
    pub fn begin(&self, state: &RolloutState, current: u64) {
        self.active.store(false, Relaxed);
        self.started_ms.store(state.started_ms, Relaxed);
        self.interval_ms
            .store(state.interval().as_millis().max(1) as u64, Relaxed);
        self.count_forced
            .store(state.settings.count_forced, Relaxed);
        for i in 0..RING as u64 {
            let w = current + i;
            let slot = &self.slots[(w % RING as u64) as usize];
            for p in slot.pools.values() {
                p.take();
            }
            slot.window.store(w, Release);
        }
        self.active.store(true, Release);
    }

    /// Stop counting (the rollout ended); the slots keep nothing of value.
    pub fn end(&self) {
        self.active.store(false, Relaxed);
        for slot in &self.slots {
            slot.window.store(NONE, Relaxed);
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// The windows that have ended by `now_ms` (plus [`SETTLE_MS`]) with their counts, oldest
    /// first; each slot is retagged with the first window of its residue not yet begun.
    pub fn take_finished(&self, now_ms: u64) -> Vec<(u64, WindowCounts)> {
        if !self.is_active() {
            return Vec::new();
        }
        let started = self.started_ms.load(Relaxed);
        let interval = self.interval_ms.load(Relaxed).max(1);
        let settled = now_ms.saturating_sub(SETTLE_MS);
        if settled < started {
            return Vec::new();
        }
        let current = (settled - started) / interval;
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let tag = slot.window.load(Relaxed);
            if tag != NONE && tag >= current {
                continue;
            }
            let counts = PerPool::from_fn(|kind| slot.pools[kind].take());
            // The first window >= current with this slot's residue: normally `tag + RING`;
            // after the engine fell behind, the current window itself when it is this slot's.
            let mut next = current;
            next += (i as u64 + RING as u64 - next % RING as u64) % RING as u64;
            slot.window.store(next, Release);
            if tag != NONE {
                out.push((tag, counts));
            }
        }
        out.sort_by_key(|(w, _)| *w);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::RolloutConfig;
    use std::time::Duration;

    fn state(started: u64) -> RolloutState {
        let settings = RolloutConfig {
            interval: Duration::from_millis(1000),
            ..RolloutConfig::default()
        };
        RolloutState::start("r".into(), settings, "s".into(), started, None).expect("start")
    }

    #[test]
    fn buckets_follow_the_histogram_bounds() {
        assert_eq!(bucket_index(0.0), 0);
        assert_eq!(bucket_index(0.0005), 0);
        assert_eq!(bucket_index(0.0006), 1);
        assert_eq!(bucket_index(0.8), 10);
        assert_eq!(bucket_index(10.0), 13);
        assert_eq!(bucket_index(11.0), 14);
    }

    #[test]
    fn requests_count_in_their_window_and_each_window_is_taken_once() {
        let r = WindowRecorder::default();
        r.record(PoolKind::Canary, 200, false, 0.01);
        assert!(
            r.take_finished(10_000).is_empty(),
            "inactive records nothing"
        );
        let s = state(10_000);
        r.begin(&s, 0);
        r.record_at(10_100, PoolKind::Canary, 200, 0.003);
        r.record_at(10_200, PoolKind::Canary, 503, 0.003);
        r.record_at(10_300, PoolKind::Production, 200, 0.8);
        r.record_at(11_500, PoolKind::Canary, 200, 0.003);
        // Window 0 ended at 11_000; it is taken once settled.
        assert!(r.take_finished(11_010).is_empty());
        let done = r.take_finished(11_030);
        assert_eq!(done.len(), 1);
        let (w, c) = &done[0];
        assert_eq!(*w, 0);
        assert_eq!(
            (c[PoolKind::Canary].requests, c[PoolKind::Canary].errors),
            (2, 1)
        );
        assert_eq!(c[PoolKind::Canary].buckets[3], 2);
        assert_eq!(c[PoolKind::Production].buckets[10], 1);
        assert!(r.take_finished(11_500).is_empty(), "taken once");
        // Windows keep rotating through the ring.
        for w in 2..12u64 {
            r.record_at(10_000 + w * 1000 + 10, PoolKind::Production, 200, 0.001);
            let done = r.take_finished(10_000 + (w + 1) * 1000 + 30);
            let got: Vec<_> = done
                .iter()
                .map(|(w, c)| (*w, c[PoolKind::Production].requests))
                .collect();
            let want = if w == 2 {
                vec![(1, 0), (2, 1)]
            } else {
                vec![(w, 1)]
            };
            assert_eq!(got, want, "window {w}");
        }
        assert_eq!(r.dropped.load(Relaxed), 0);
        // An engine that fell behind: windows 12..20 pass unseen; a request then finds no slot
        // tagged, the stale slots are handed back once and retagged from the current window.
        r.record_at(30_100, PoolKind::Canary, 200, 0.001);
        assert_eq!(r.dropped.load(Relaxed), 1);
        let stale: Vec<_> = r.take_finished(30_500).iter().map(|x| x.0).collect();
        assert_eq!(stale, [12, 13, 14, 15]);
        r.record_at(30_600, PoolKind::Canary, 200, 0.001);
        r.record_at(31_100, PoolKind::Canary, 200, 0.001);
        let done = r.take_finished(32_030);
        let got: Vec<_> = done
            .iter()
            .map(|(w, c)| (*w, c[PoolKind::Canary].requests))
            .collect();
        assert_eq!(got, [(20, 1), (21, 1)]);
        r.end();
        assert!(!r.is_active());
    }

    #[test]
    fn forced_requests_and_unanswered_ones_are_left_out_unless_asked() {
        let r = WindowRecorder::default();
        let mut s = state(crate::model::now_ms());
        r.begin(&s, 0);
        r.record(PoolKind::Canary, 200, true, 0.001);
        r.record(PoolKind::Canary, 0, false, 0.001);
        s.settings.count_forced = true;
        r.begin(&s, 0);
        r.record(PoolKind::Canary, 200, true, 0.001);
        let slot = &r.slots[0];
        assert_eq!(slot.pools[PoolKind::Canary].requests.load(Relaxed), 1);
    }
}
