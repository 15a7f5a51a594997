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
//!
//! **No single client moves a verdict.** Each slot and pool also holds a table of
//! [`CLIENT_SLOTS`] counters, one word per client address (an IPv6 client by its /64), found
//! by a hash keyed at random per process (so nobody can aim at a slot): its counted requests,
//! errors and slow answers (slower than [`judge::client_slow_index`]'s bound) in the window. A
//! request counts only while its client is below `per_client_requests`, and an error or a slow
//! answer only while its client is below `per_client_failures`; otherwise it is served but
//! only counted as `capped`. Taking a window also reports its busiest client's errors and slow
//! answers, which the judgement takes out ([`judge::without_one_client`]). Clients that share
//! a slot share its caps: with 1,024 slots, a window needs about a thousand active clients
//! before that matters, and a window counts at most 1,024 x `per_client_requests` requests a
//! pool and replica (beyond that the judgement reads a sample: each slot's first requests).
//! Cost per request: one hash, one load and one add on the client's word.
//!
//! **Pairs** (the shadow step, [`WindowRecorder::record_pair`]) count the same way into the
//! slot's own pair counters and their own client table (`PairSlot`): a client's pairs up to
//! `per_client_requests`, its mismatching, slower or body-mismatching pairs each up to
//! `per_client_failures`, the rest `pairs_capped`; taking the window reports the busiest
//! client's counts of each, in the canary's [`PoolWindow`]. What a pair counts as is
//! [`paired::classify`], with the limits the engine handed over in [`WindowRecorder::begin`].

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::Release};

use crate::model::{PerPool, PoolKind, LATENCY_BUCKETS_S};

use super::shadow::Pair;
use super::{judge, paired, PoolWindow, RolloutState, WindowCounts};

/// Client counters per slot and pool (a power of two).
pub const CLIENT_SLOTS: usize = 1024;
/// A client word: requests in bits 0-31, errors in 32-47, slow answers in 48-63 (each stays
/// within its bits: the caps are validated at most 1,000,000 and 10,000).
const REQUESTS_MASK: u64 = 0xffff_ffff;
const ERROR_ONE: u64 = 1 << 32;
const SLOW_ONE: u64 = 1 << 48;

/// A pair client word: pairs in bits 0-21, then mismatching, slower and body-mismatching pairs
/// in 14 bits each (the caps are validated at most 1,000,000 and 10,000, and a cap is
/// exceeded by at most the worker threads racing past it).
const PAIRS_MASK: u64 = (1 << 22) - 1;
const PAIR_FAIL_MASK: u64 = (1 << 14) - 1;
const MISMATCH_SHIFT: u32 = 22;
const SLOWER_SHIFT: u32 = 36;
const BODY_SHIFT: u32 = 50;

/// Slots in the ring: the window being taken, the current one and two ahead.
pub const RING: usize = 4;
/// A window is taken this long after its end, so requests finishing at the boundary land.
pub const SETTLE_MS: u64 = 20;
/// The tag of a slot that counts nothing.
const NONE: u64 = u64::MAX;
const BUCKETS: usize = LATENCY_BUCKETS_S.len() + 1;

struct PoolSlot {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    capped: AtomicU64,
    clients: Box<[AtomicU64]>,
}

impl Default for PoolSlot {
    fn default() -> Self {
        PoolSlot {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: Default::default(),
            capped: AtomicU64::new(0),
            clients: (0..CLIENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl PoolSlot {
    fn take(&self) -> PoolWindow {
        let (mut max_errors, mut max_slow) = (0, 0);
        for c in self.clients.iter() {
            let v = c.swap(0, Relaxed);
            max_errors = max_errors.max((v >> 32) & 0xffff);
            max_slow = max_slow.max(v >> 48);
        }
        PoolWindow {
            requests: self.requests.swap(0, Relaxed),
            errors: self.errors.swap(0, Relaxed),
            buckets: self.buckets.iter().map(|b| b.swap(0, Relaxed)).collect(),
            capped: self.capped.swap(0, Relaxed),
            client_max_errors: max_errors,
            client_max_slow: max_slow,
            ..PoolWindow::default()
        }
    }
}

/// One window's pairs (they travel in the canary's [`PoolWindow`]).
struct PairSlot {
    pairs: AtomicU64,
    mismatches: AtomicU64,
    slower: AtomicU64,
    not_slower: AtomicU64,
    body_compared: AtomicU64,
    body_mismatches: AtomicU64,
    capped: AtomicU64,
    clients: Box<[AtomicU64]>,
}

impl Default for PairSlot {
    fn default() -> Self {
        PairSlot {
            pairs: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            slower: AtomicU64::new(0),
            not_slower: AtomicU64::new(0),
            body_compared: AtomicU64::new(0),
            body_mismatches: AtomicU64::new(0),
            capped: AtomicU64::new(0),
            clients: (0..CLIENT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl PairSlot {
    /// Move the counts into `w` (the canary's window), leaving 0.
    fn take_into(&self, w: &mut PoolWindow) {
        let (mut mismatches, mut slower, mut body) = (0, 0, 0);
        for c in self.clients.iter() {
            let v = c.swap(0, Relaxed);
            mismatches = mismatches.max((v >> MISMATCH_SHIFT) & PAIR_FAIL_MASK);
            slower = slower.max((v >> SLOWER_SHIFT) & PAIR_FAIL_MASK);
            body = body.max(v >> BODY_SHIFT);
        }
        w.pairs = self.pairs.swap(0, Relaxed);
        w.pair_mismatches = self.mismatches.swap(0, Relaxed);
        w.pair_slower = self.slower.swap(0, Relaxed);
        w.pair_not_slower = self.not_slower.swap(0, Relaxed);
        w.pair_body_compared = self.body_compared.swap(0, Relaxed);
        w.pair_body_mismatches = self.body_mismatches.swap(0, Relaxed);
        w.pairs_capped = self.capped.swap(0, Relaxed);
        w.client_max_pair_mismatches = mismatches;
        w.client_max_pair_slower = slower;
        w.client_max_pair_body_mismatches = body;
    }
}

struct Slot {
    window: AtomicU64,
    pools: PerPool<PoolSlot>,
    pairs: PairSlot,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            window: AtomicU64::new(NONE),
            pools: PerPool::default(),
            pairs: PairSlot::default(),
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
    /// The rollout's caps per client and window (`per_client_requests`, `_failures`).
    cap_requests: AtomicU64,
    cap_failures: AtomicU64,
    /// Answers in buckets after this one are slow for the client caps.
    slow_index: AtomicUsize,
    /// The rollout is in its shadow step: pairs are counted.
    shadow: AtomicBool,
    /// The shadow step's [`paired::PairLimits`], each as `f64` bits.
    slowdown_seconds: AtomicU64,
    slowdown_share: AtomicU64,
    copy_timeout: AtomicU64,
    /// The per-process key of the client hash.
    seed: u64,
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
            cap_requests: AtomicU64::new(u64::MAX),
            cap_failures: AtomicU64::new(u64::MAX),
            slow_index: AtomicUsize::new(BUCKETS),
            shadow: AtomicBool::new(false),
            slowdown_seconds: AtomicU64::new(0),
            slowdown_share: AtomicU64::new(0),
            copy_timeout: AtomicU64::new(0),
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64),
            dropped: AtomicU64::new(0),
        }
    }
}

/// A client address as hash input: a family tag, then an IPv4 address (also IPv4-mapped
/// IPv6) whole, or an IPv6 address's /64 (one subscriber's or host's share of the space).
fn client_key(ip: IpAddr) -> ([u8; 9], usize) {
    let mut key = [0u8; 9];
    match ip {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_none() => {
            key[0] = 6;
            key[1..9].copy_from_slice(&a.octets()[..8]);
            (key, 9)
        }
        IpAddr::V6(a) => {
            key[0] = 4;
            key[1..5].copy_from_slice(&a.octets()[12..]);
            (key, 5)
        }
        IpAddr::V4(a) => {
            key[0] = 4;
            key[1..5].copy_from_slice(&a.octets());
            (key, 5)
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
    /// routing header or flag cookie chose the pool; `client` the address by the
    /// trusted-proxy rule (`None`: all such requests share one client's caps). A proxy's own
    /// 502/503/504 (connect failure, no server, timeout) count as errors like an app's 5xx.
    #[inline]
    pub fn record(
        &self,
        pool: PoolKind,
        status: u16,
        forced: bool,
        seconds: f64,
        client: Option<IpAddr>,
    ) {
        if !self.active.load(Relaxed) || status == 0 {
            return;
        }
        if forced && !self.count_forced.load(Relaxed) {
            return;
        }
        self.record_at(crate::model::now_ms(), pool, status, seconds, client);
    }

    /// The client table slot of `client`.
    fn client_slot(&self, client: Option<IpAddr>) -> usize {
        let Some(ip) = client else { return 0 };
        let (key, len) = client_key(ip);
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key[..len], self.seed);
        (h as usize) & (CLIENT_SLOTS - 1)
    }

    /// The slot of the window `now_ms` is in, when it is tagged for it (else the request is
    /// dropped and counted); `None` before the start.
    fn slot_at(&self, now_ms: u64) -> Option<&Slot> {
        let started = self.started_ms.load(Relaxed);
        let since = now_ms.checked_sub(started)?;
        let window = since / self.interval_ms.load(Relaxed).max(1);
        let slot = &self.slots[(window % RING as u64) as usize];
        if slot.window.load(Relaxed) != window {
            self.dropped.fetch_add(1, Relaxed);
            return None;
        }
        Some(slot)
    }

    fn record_at(
        &self,
        now_ms: u64,
        pool: PoolKind,
        status: u16,
        seconds: f64,
        client: Option<IpAddr>,
    ) {
        let Some(slot) = self.slot_at(now_ms) else {
            return;
        };
        let p = &slot.pools[pool];
        let bucket = bucket_index(seconds);
        let error = status >= 500;
        let slow = bucket > self.slow_index.load(Relaxed);
        let (requests_cap, failures) = (
            self.cap_requests.load(Relaxed),
            self.cap_failures.load(Relaxed),
        );
        // Both caps off (0 in the config): no table at all.
        if requests_cap != u64::MAX || failures != u64::MAX {
            let cell = &p.clients[self.client_slot(client)];
            let seen = cell.load(Relaxed);
            if seen & REQUESTS_MASK >= requests_cap
                || (error && (seen >> 32) & 0xffff >= failures)
                || (slow && seen >> 48 >= failures)
            {
                p.capped.fetch_add(1, Relaxed);
                return;
            }
            // Failures are tracked only under a cap, so their 16 bits never overflow. Two
            // requests of one client racing past the check may both count: a cap is exceeded
            // by at most the number of worker threads.
            let tracked = failures != u64::MAX;
            cell.fetch_add(
                1 + if error && tracked { ERROR_ONE } else { 0 }
                    + if slow && tracked { SLOW_ONE } else { 0 },
                Relaxed,
            );
        }
        p.requests.fetch_add(1, Relaxed);
        if error {
            p.errors.fetch_add(1, Relaxed);
        }
        p.buckets[bucket].fetch_add(1, Relaxed);
    }

    /// One pair of the shadow step: production's answer to a user's request and the canary's
    /// answer to its copy, counted into the window it ends in (now) as [`paired::classify`]
    /// says; `client` as for [`WindowRecorder::record`]. A no-op unless the rollout counted
    /// for is in its shadow step ([`WindowRecorder::begin`]).
    #[inline]
    pub fn record_pair(&self, pair: &Pair, client: Option<IpAddr>) {
        if !self.active.load(Relaxed) || !self.shadow.load(Relaxed) {
            return;
        }
        self.record_pair_at(crate::model::now_ms(), pair, client);
    }

    fn record_pair_at(&self, now_ms: u64, pair: &Pair, client: Option<IpAddr>) {
        let Some(slot) = self.slot_at(now_ms) else {
            return;
        };
        let limits = paired::PairLimits {
            max_slowdown: f64::from_bits(self.slowdown_seconds.load(Relaxed)),
            max_slowdown_share: f64::from_bits(self.slowdown_share.load(Relaxed)),
            timeout: f64::from_bits(self.copy_timeout.load(Relaxed)),
        };
        let class = paired::classify(pair, &limits);
        let p = &slot.pairs;
        let slower = class.slower == Some(true);
        let body_mismatch = class.body_mismatch == Some(true);
        let (pairs_cap, failures) = (
            self.cap_requests.load(Relaxed),
            self.cap_failures.load(Relaxed),
        );
        if pairs_cap != u64::MAX || failures != u64::MAX {
            let cell = &p.clients[self.client_slot(client)];
            let seen = cell.load(Relaxed);
            let at_cap = |shift: u32| (seen >> shift) & PAIR_FAIL_MASK >= failures;
            if seen & PAIRS_MASK >= pairs_cap
                || (class.mismatch && at_cap(MISMATCH_SHIFT))
                || (slower && at_cap(SLOWER_SHIFT))
                || (body_mismatch && at_cap(BODY_SHIFT))
            {
                p.capped.fetch_add(1, Relaxed);
                return;
            }
            // As in `record_at`, failures are tracked only under a cap; so are pairs, whose 22
            // bits a busy client could fill in a long window with no cap.
            let tracked = failures != u64::MAX;
            let one = |on: bool, shift: u32| if on && tracked { 1 << shift } else { 0 };
            cell.fetch_add(
                u64::from(pairs_cap != u64::MAX)
                    + one(class.mismatch, MISMATCH_SHIFT)
                    + one(slower, SLOWER_SHIFT)
                    + one(body_mismatch, BODY_SHIFT),
                Relaxed,
            );
        }
        p.pairs.fetch_add(1, Relaxed);
        if class.mismatch {
            p.mismatches.fetch_add(1, Relaxed);
        }
        match class.slower {
            Some(true) => p.slower.fetch_add(1, Relaxed),
            Some(false) => p.not_slower.fetch_add(1, Relaxed),
            None => 0,
        };
        if let Some(differ) = class.body_mismatch {
            p.body_compared.fetch_add(1, Relaxed);
            if differ {
                p.body_mismatches.fetch_add(1, Relaxed);
            }
        }
    }

    /// Count for `state` from window `current` on: clears every slot and tags the ring with
    /// `current ..`. Called by the engine when a rollout it follows starts. While `state` is
    /// in its shadow step ([`RolloutState::in_shadow`]) pairs are counted too, with its margin
    /// of a slower pair; otherwise [`WindowRecorder::record_pair`] counts nothing.
    pub fn begin(&self, state: &RolloutState, current: u64) {
        self.active.store(false, Relaxed);
        self.started_ms.store(state.started_ms, Relaxed);
        self.interval_ms
            .store(state.interval().as_millis().max(1) as u64, Relaxed);
        self.count_forced
            .store(state.settings.count_forced, Relaxed);
        let settings = &state.settings;
        // 0 turns a cap off.
        let cap = |v: u64| if v == 0 { u64::MAX } else { v };
        self.cap_requests
            .store(cap(settings.per_client_requests), Relaxed);
        self.cap_failures
            .store(cap(settings.per_client_failures), Relaxed);
        self.slow_index
            .store(judge::client_slow_index(settings), Relaxed);
        let shadow = state.in_shadow();
        if let Some(sh) = shadow {
            let limits = paired::PairLimits::from(sh);
            self.slowdown_seconds
                .store(limits.max_slowdown.to_bits(), Relaxed);
            self.slowdown_share
                .store(limits.max_slowdown_share.to_bits(), Relaxed);
            self.copy_timeout.store(limits.timeout.to_bits(), Relaxed);
        }
        self.shadow.store(shadow.is_some(), Relaxed);
        for i in 0..RING as u64 {
            let w = current + i;
            let slot = &self.slots[(w % RING as u64) as usize];
            for p in slot.pools.values() {
                p.take();
            }
            slot.pairs.take_into(&mut PoolWindow::default());
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
            let mut counts = PerPool::from_fn(|kind| slot.pools[kind].take());
            slot.pairs.take_into(&mut counts[PoolKind::Canary]);
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
    use crate::rollout::RolloutSettings;
    use std::time::Duration;

    fn state(started: u64) -> RolloutState {
        let settings = RolloutSettings {
            interval: Duration::from_millis(1000),
            ..RolloutSettings::default()
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
        r.record(PoolKind::Canary, 200, false, 0.01, None);
        assert!(
            r.take_finished(10_000).is_empty(),
            "inactive records nothing"
        );
        let s = state(10_000);
        r.begin(&s, 0);
        r.record_at(10_100, PoolKind::Canary, 200, 0.003, None);
        r.record_at(10_200, PoolKind::Canary, 503, 0.003, None);
        r.record_at(10_300, PoolKind::Production, 200, 0.8, None);
        r.record_at(11_500, PoolKind::Canary, 200, 0.003, None);
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
            r.record_at(
                10_000 + w * 1000 + 10,
                PoolKind::Production,
                200,
                0.001,
                None,
            );
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
        r.record_at(30_100, PoolKind::Canary, 200, 0.001, None);
        assert_eq!(r.dropped.load(Relaxed), 1);
        let stale: Vec<_> = r.take_finished(30_500).iter().map(|x| x.0).collect();
        assert_eq!(stale, [12, 13, 14, 15]);
        r.record_at(30_600, PoolKind::Canary, 200, 0.001, None);
        r.record_at(31_100, PoolKind::Canary, 200, 0.001, None);
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
        r.record(PoolKind::Canary, 200, true, 0.001, None);
        r.record(PoolKind::Canary, 0, false, 0.001, None);
        s.settings.count_forced = true;
        r.begin(&s, 0);
        r.record(PoolKind::Canary, 200, true, 0.001, None);
        let slot = &r.slots[0];
        assert_eq!(slot.pools[PoolKind::Canary].requests.load(Relaxed), 1);
    }

    #[test]
    fn each_client_counts_a_bounded_share_and_the_busiest_is_reported() {
        // A fixed key, so the four clients below are known to land in four slots.
        let r = WindowRecorder {
            seed: 7,
            ..WindowRecorder::default()
        };
        let mut s = state(10_000);
        s.settings.per_client_requests = 5;
        s.settings.per_client_failures = 1;
        r.begin(&s, 0);
        let attacker: IpAddr = "203.0.113.7".parse().expect("ip");
        // 12 requests of one client, all 500s: 1 counted (its first error), 11 capped.
        for i in 0..12 {
            r.record_at(10_100 + i, PoolKind::Canary, 500, 0.002, Some(attacker));
        }
        // Another address of the same IPv6 /64 is the same client; another /64 is not.
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let slots: std::collections::HashSet<usize> = [attacker, a, c]
            .into_iter()
            .map(|ip| r.client_slot(Some(ip)))
            .collect();
        assert_eq!(slots.len(), 3, "seed 7 separates them");
        assert_eq!(r.client_slot(Some(a)), r.client_slot(Some(b)), "one /64");
        for ip in [a, b, c] {
            for i in 0..4 {
                r.record_at(10_200 + i, PoolKind::Canary, 200, 0.002, Some(ip));
            }
        }
        // Slow answers (above the 50 ms bound): one per client.
        for i in 0..3 {
            r.record_at(10_300 + i, PoolKind::Production, 200, 0.3, Some(attacker));
        }
        let done = r.take_finished(11_030);
        let (_, w) = &done[0];
        let canary = &w[PoolKind::Canary];
        // attacker 1; /64 of a and b: 5 of 8 (cap 5); c: 4.
        assert_eq!(
            (canary.requests, canary.errors, canary.capped),
            (1 + 5 + 4, 1, 11 + 3)
        );
        assert_eq!(canary.client_max_errors, 1);
        let prod = &w[PoolKind::Production];
        assert_eq!(
            (prod.requests, prod.capped, prod.client_max_slow),
            (1, 2, 1)
        );
        // The next window starts afresh.
        r.record_at(11_100, PoolKind::Canary, 500, 0.002, Some(attacker));
        let done = r.take_finished(12_030);
        assert_eq!(done[0].1[PoolKind::Canary].errors, 1);
        // 0 turns the caps off.
        s.settings.per_client_requests = 0;
        s.settings.per_client_failures = 0;
        r.begin(&s, 3);
        for i in 0..30 {
            r.record_at(13_100 + i, PoolKind::Canary, 500, 0.3, Some(attacker));
        }
        let done = r.take_finished(14_030);
        let c = &done[0].1[PoolKind::Canary];
        assert_eq!((c.requests, c.errors, c.capped), (30, 30, 0));
        assert_eq!((c.client_max_errors, c.client_max_slow), (0, 0));
        // An IPv4-mapped IPv6 address is its IPv4 address.
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("ip");
        assert_eq!(r.client_slot(Some(mapped)), r.client_slot(Some(attacker)));
    }

    fn shadow_state(started: u64) -> RolloutState {
        let settings = RolloutSettings {
            interval: Duration::from_millis(1000),
            per_client_requests: 5,
            per_client_failures: 1,
            shadow: Some(super::super::shadow::ShadowSettings::default()),
            ..RolloutSettings::default()
        };
        RolloutState::start("r".into(), settings, "s".into(), started, None).expect("start")
    }

    fn pair(
        production: (Option<u16>, f64),
        canary: (Option<u16>, f64),
        body: Option<bool>,
    ) -> Pair {
        use super::super::shadow::Answer;
        Pair {
            production: Answer {
                status: production.0,
                seconds: production.1,
            },
            canary: Answer {
                status: canary.0,
                seconds: canary.1,
            },
            body_match: body,
        }
    }

    #[test]
    fn pairs_count_only_in_a_shadow_step_with_its_margin() {
        let r = WindowRecorder::default();
        let same = pair((Some(200), 0.010), (Some(200), 0.012), None);
        r.record_pair(&same, None);
        // A rollout without a shadow step counts no pairs.
        let plain = state(crate::model::now_ms());
        r.begin(&plain, 0);
        r.record_pair(&same, None);
        assert_eq!(r.slots[0].pairs.pairs.load(Relaxed), 0);
        let mut s = shadow_state(crate::model::now_ms());
        r.begin(&s, 0);
        r.record_pair(&same, None);
        r.record_pair(&same, None);
        assert_eq!(r.slots[0].pairs.pairs.load(Relaxed), 2);
        // The margin is the one begin handed over: 30 ms slower passes at 40 ms, not at 25 ms.
        let slower = pair((Some(200), 0.010), (Some(200), 0.040), None);
        let take = |r: &WindowRecorder| {
            let mut w = PoolWindow::default();
            r.slots[0].pairs.take_into(&mut w);
            w
        };
        r.record_pair(&slower, None);
        let w = take(&r);
        assert_eq!((w.pair_slower, w.pair_not_slower), (1, 2));
        if let Some(stage) = s.shadow.as_mut() {
            stage.settings.max_slowdown = Duration::from_millis(40);
        }
        r.begin(&s, 0);
        r.record_pair(&slower, None);
        let w = take(&r);
        assert_eq!((w.pair_slower, w.pair_not_slower), (0, 1));
    }

    #[test]
    fn pairs_are_capped_per_client_and_travel_in_the_canarys_window() {
        let r = WindowRecorder {
            seed: 7,
            ..WindowRecorder::default()
        };
        let s = shadow_state(10_000); // 5 pairs and 1 failure of each kind per client
        r.begin(&s, 0);
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let (attacker, b, c, d) = (
            ip("203.0.113.7"),
            ip("2001:db8:1:2::1"),
            ip("2001:db8:1:3::1"),
            ip("198.51.100.4"),
        );
        let slots: std::collections::HashSet<usize> = [attacker, b, c, d]
            .into_iter()
            .map(|ip| r.client_slot(Some(ip)))
            .collect();
        assert_eq!(slots.len(), 4, "seed 7 separates them");
        // The attacker: 12 pairs where the canary gave no answer (a mismatch and slower):
        // 1 counted, 11 capped.
        let dead = pair((Some(200), 0.005), (None, 2.0), None);
        for i in 0..12 {
            r.record_pair_at(10_100 + i, &dead, Some(attacker));
        }
        // b: 8 healthy pairs, bodies alike: 5 counted.
        let fine = pair((Some(200), 0.005), (Some(200), 0.006), Some(true));
        for i in 0..8 {
            r.record_pair_at(10_200 + i, &fine, Some(b));
        }
        // c: 3 slower pairs (same status): 1 counted.
        let slow = pair((Some(200), 0.005), (Some(200), 0.300), None);
        for i in 0..3 {
            r.record_pair_at(10_300 + i, &slow, Some(c));
        }
        // d: 2 pairs with differing bodies: 1 counted; 1 where neither answered.
        let differ = pair((Some(200), 0.005), (Some(200), 0.005), Some(false));
        r.record_pair_at(10_400, &differ, Some(d));
        r.record_pair_at(10_401, &differ, Some(d));
        r.record_pair_at(10_402, &pair((None, 2.0), (None, 2.0), None), Some(d));
        // Users' requests count apart.
        r.record_at(10_500, PoolKind::Production, 200, 0.005, Some(b));
        let done = r.take_finished(11_030);
        let (window, counts) = &done[0];
        assert_eq!(*window, 0);
        let w = &counts[PoolKind::Canary];
        assert_eq!((w.pairs, w.pairs_capped), (1 + 5 + 1 + 2, 11 + 3 + 2 + 1));
        assert_eq!(
            (w.pair_mismatches, w.pair_slower, w.pair_not_slower),
            (1, 2, 5 + 1)
        );
        assert_eq!((w.pair_body_compared, w.pair_body_mismatches), (5 + 1, 1));
        assert_eq!(
            (
                w.client_max_pair_mismatches,
                w.client_max_pair_slower,
                w.client_max_pair_body_mismatches
            ),
            (1, 1, 1)
        );
        assert_eq!(w.requests, 0, "pairs are not the canary's requests");
        assert_eq!(counts[PoolKind::Production].pairs, 0);
        assert_eq!(counts[PoolKind::Production].requests, 1);
        // The attacker alone never fails the window it filled ("without one client").
        let mut settings = s.settings.clone();
        settings.min_requests = 5;
        let shadow = super::super::shadow::ShadowSettings::default();
        let j = judge::judge_shadow(&settings, &shadow, counts, counts);
        assert_eq!(j.verdict, judge::Verdict::Pass, "{j:?}");
        // The next window starts afresh.
        r.record_pair_at(11_100, &dead, Some(attacker));
        let done = r.take_finished(12_030);
        assert_eq!(done[0].1[PoolKind::Canary].pairs, 1);
        assert_eq!(done[0].1[PoolKind::Canary].pairs_capped, 0);
        // Without a pair cap, failures are still capped; with neither, everything counts.
        for (requests, failures, counted) in [(0, 1, (1, 1, 11)), (0, 0, (12, 0, 0))] {
            let mut s = shadow_state(10_000);
            s.settings.per_client_requests = requests;
            s.settings.per_client_failures = failures;
            r.begin(&s, 3);
            for i in 0..12 {
                r.record_pair_at(13_100 + i, &dead, Some(attacker));
            }
            let done = r.take_finished(14_030);
            let w = &done[0].1[PoolKind::Canary];
            assert_eq!(
                (
                    w.pair_mismatches,
                    w.client_max_pair_mismatches,
                    w.pairs_capped
                ),
                counted
            );
        }
    }
}
