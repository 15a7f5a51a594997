//! The shadow step's judgement: the canary judged on *pairs*, production's answer to a user's
//! request and the canary's answer to its copy ([`Pair`]), from counts alone (pure: no I/O,
//! no clock). The request path classifies each pair ([`classify`]) and counts it
//! (`window.rs`); the counts travel in the canary's [`PoolWindow`], summed over replicas;
//! [`judge_shadow`] judges a window from them.
//!
//! # Why pairs
//!
//! The two answers to the same request differ only by the build that served them (and by
//! noise): the request's own cost, its path and the user's data are the same on both sides.
//! So the comparison needs no model of the traffic, and under "the canary behaves like
//! production" each pair is *exchangeable* (its two answers could be swapped without changing
//! the distribution), which the tests below rely on.
//!
//! # The rules
//!
//! Each rule is listed in `shadow.compare` or skipped, and is a one-sided exact test at
//! `α = 1 - confidence` (default 0.001), as in `judge.rs`: every count a rule reads has the
//! busiest client's share taken out but one ([`without_one_client`]), each client contributes
//! at most `per_client_requests` pairs and `per_client_failures` mismatching, slower and
//! body-mismatching pairs to a window and replica, and no rule fails on fewer than
//! [`MIN_EVIDENCE`] (2) judged pairs: one client alone never fails a window.
//!
//! 1. **Inconclusive** when the window has fewer than `min_requests` pairs, unless `status`
//!    is compared and its mismatches without one client reach `max(hard_fail_errors, 2)`
//!    (then it fails).
//! 2. **Status mismatch** (`status`), over the window: `x` = pairs whose status class (1xx ..
//!    5xx, or no answer: refused, reset, timed out) differs, `n` = pairs. Fails when
//!    `P(Binomial(n, max_mismatch_percent / 100) >= x) < α`: the canary disagrees with
//!    production on more than `max_mismatch_percent` of requests. Two independent 0.3 % error
//!    rates disagree on about 0.6 % of pairs, under the default 1 %.
//! 3. **Paired latency** (`latency`), over the step so far (this window included, as the
//!    latency rules of `judge.rs`): a pair is *slower* when the canary took longer than
//!    production by more than the margin `max(max_slowdown, max_slowdown_percent` of
//!    production's time), or gave no answer while production did; *not slower* when both
//!    answered and it was not (a pair without production's answer says nothing about
//!    latency and is left out; an exact tie at the margin is dropped, as the sign test
//!    drops zero differences). With `s` slower (without one client) and `t` not slower, it
//!    fails when `P(Binomial(s + t, 1/2) >= s) < α`: a sign test of "the canary's slowdown
//!    exceeds the margin in at most half of the pairs", i.e. of the median slowdown against
//!    the margin. It detects a canary *typically* slower than production by more than the
//!    margin (a regression on every request, or on most of them), and by design tolerates
//!    any slowdown below the margin however many pairs there are, and a slow tail: a tail
//!    of a few percent is what the window's p99 rules catch once users are on the canary.
//!    A sign test rather than Wilcoxon's signed-rank: it needs only two counts per window,
//!    which replicas sum exactly (`HINCRBY`) and steps add up, where Wilcoxon needs every
//!    difference's rank among all pairs of all replicas; it is exact at any sample size,
//!    and it makes no assumption about the shape of the latencies (a skewed, hiccuping
//!    distribution is its home ground).
//! 4. **Body** (`body_hash`), over the window: among the pairs whose bodies were both
//!    hashed, those whose hashes differ, by the same binomial test as status.
//! 5. Otherwise **pass**.
//!
//! # What it decides, in numbers (the tests below check them)
//!
//! - **False failures.** Each rule's test is exact, so it fails a window with probability at
//!   most `α` when its null holds (true mismatch shares at most `max_mismatch_percent`; a
//!   canary's slowdown beyond the margin no more likely than not); with status and latency
//!   compared a healthy window fails with probability at most `2α = 0.2 %` (`3α` with
//!   bodies). Measured in `healthy_shadow_windows_rarely_fail` over 20,000 simulated windows
//!   (4,000 shadow steps of 5 windows, 20-300 pairs each, production's latency log-normal with
//!   90 % between 5 and 50 ms, the canary an independent draw from the same distribution,
//!   1.5 % scheduling hiccups of 20-60 ms and 0.3 % independent 5xx on each side): MEASURED.
//!   A healthy pair is slower by 25 ms in about 8 % of pairs and mismatches in 0.6 %: both
//!   far from the nulls' edges, so the measured rate is far below the bound.
//! - **Smallest regression detected** (`max_mismatch_percent` 1, `confidence` 0.999):
//!   - status: 5 mismatching pairs of 50 (10 %), 9 of 200 (4.5 %); a canary mismatching on
//!     15.4 % of pairs fails 90 % of 50-pair windows, on 6.5 % of 200-pair ones. A canary
//!     answering 500 to 30 % of copies fails every window of 40 pairs or more.
//!   - latency: 37 slower pairs of 50 (74 %), 123 of 200 (61.5 %); a canary slower beyond the
//!     margin in 80 % of pairs fails 90 % of 50-pair steps, in 66 % of 200-pair ones. A
//!     canary 50 ms slower on every request (margin 25 ms): against a steady production (a
//!     few ms of jitter) every pair is slower and the first window of 15 pairs fails (14
//!     needed); against the log-normal 5-50 ms production above about 93 % of pairs are
//!     slower: MEASURED15 of 15-pair windows fail by themselves, and the step fails by its
//!     second window (30 pairs) in MEASURED30.
//! - **One client** contributes at most 1 judged mismatching, slower and body-mismatching
//!   pair to a window and replica (each replica's busiest client is taken out but one), and
//!   every rule needs 2: it cannot fail a window alone, nor dilute one beyond its
//!   `per_client_requests` pairs.

use super::judge::{binomial_sf, without_one_client, Finding, Judgement, Verdict, MIN_EVIDENCE};
use super::settings::RolloutSettings;
use super::shadow::{status_class, Compare, Pair, ShadowSettings};
use super::{PoolWindow, WindowCounts};
use crate::model::PoolKind;

/// What one pair counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairClass {
    /// The two status classes differ (no answer is a class of its own).
    pub mismatch: bool,
    /// `Some(true)`: the canary was slower than production by more than the margin, or gave
    /// no answer while production did; `Some(false)`: both answered, and it was not;
    /// `None`: not latency-compared (production gave no answer, an unusable time, or an
    /// exact tie at the margin).
    pub slower: Option<bool>,
    /// `Some(true)` when the bodies were hashed and differ, `Some(false)` when they match,
    /// `None` when they were not compared.
    pub body_mismatch: Option<bool>,
}

/// Classify `pair`: the margin of a slower pair is `max(max_slowdown_seconds,
/// max_slowdown_share x production's seconds)`.
pub fn classify(pair: &Pair, max_slowdown_seconds: f64, max_slowdown_share: f64) -> PairClass {
    let (p, c) = (pair.production, pair.canary);
    let slower = match (p.status, c.status) {
        (None, _) => None,
        (Some(_), None) => Some(true),
        (Some(_), Some(_)) if p.seconds.is_finite() && c.seconds.is_finite() => {
            let margin = max_slowdown_seconds.max(max_slowdown_share * p.seconds);
            let excess = c.seconds - p.seconds - margin;
            if excess > 0.0 {
                Some(true)
            } else if excess < 0.0 {
                Some(false)
            } else {
                None
            }
        }
        (Some(_), Some(_)) => None,
    };
    PairClass {
        mismatch: status_class(p.status) != status_class(c.status),
        slower,
        body_mismatch: pair.body_match.map(|same| !same),
    }
}

/// `part / whole` in percent, 0 for an empty whole.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Judge one window of the shadow step from the canary's pair counts: `window` holds the
/// window's counts, `step` those of the step so far including this window (the latency rule
/// reads it). The rules are in the module documentation.
pub fn judge_shadow(
    settings: &RolloutSettings,
    shadow: &ShadowSettings,
    window: &WindowCounts,
    step: &WindowCounts,
) -> Judgement {
    let w: &PoolWindow = window.get(PoolKind::Canary);
    let alpha = 1.0 - settings.confidence;
    // `per_client_failures: 0` turns the per-client protection off: counts as they are.
    let without_one_client = |count: u64, heaviest: u64| {
        if settings.per_client_failures == 0 {
            count
        } else {
            without_one_client(count, heaviest)
        }
    };
    let max_share = shadow.max_mismatch_percent / 100.0;
    let status = shadow.compares(Compare::Status);
    let x = without_one_client(w.pair_mismatches, w.client_max_pair_mismatches);
    let mut numbers: Vec<(String, f64)> = vec![
        ("shadow_pairs".into(), w.pairs as f64),
        ("shadow_mismatches".into(), w.pair_mismatches as f64),
        ("shadow_mismatches_judged".into(), x as f64),
        (
            "production_requests".into(),
            window.get(PoolKind::Production).requests as f64,
        ),
    ];
    if w.pairs_capped > 0 {
        numbers.push(("shadow_pairs_capped".into(), w.pairs_capped as f64));
    }
    let mut reasons = Vec::new();
    let mut findings = Vec::new();

    let low_traffic = w.pairs < settings.min_requests;
    let hard = settings.hard_fail_errors.max(MIN_EVIDENCE);
    if low_traffic && !(status && x >= hard) {
        let capped = if w.pairs_capped > 0 {
            format!(
                " ({} more left out by the per-client caps: behind a load balancer, list it in \
                 trusted_proxies)",
                w.pairs_capped
            )
        } else {
            String::new()
        };
        return Judgement {
            verdict: Verdict::Inconclusive,
            finding: Finding::InsufficientTraffic,
            reasons: vec![format!(
                "insufficient traffic: {} shadow pairs < min_requests {}{capped}",
                w.pairs, settings.min_requests
            )],
            numbers,
        };
    }
    if low_traffic {
        findings.push(Finding::ShadowMismatch);
        reasons.push(format!(
            "{x} shadow pairs with differing status (without one client) >= hard_fail_errors \
             {hard} (of {} pairs)",
            w.pairs
        ));
    }

    // Status, this window.
    if status && !low_traffic {
        let share = percent(x, w.pairs);
        numbers.push(("shadow_mismatch_percent".into(), share));
        if x >= MIN_EVIDENCE {
            let p = binomial_sf(x, w.pairs, max_share);
            numbers.push(("shadow_mismatch_p".into(), p));
            if p < alpha {
                findings.push(Finding::ShadowMismatch);
                reasons.push(format!(
                    "canary status differs from production's on {share:.2} % of shadow pairs \
                     ({x} of {}), above max_mismatch_percent {} % (binomial p {p:.2e} < \
                     {alpha:.2e})",
                    w.pairs, shadow.max_mismatch_percent
                ));
            }
        }
    }

    // Latency, the step so far: a sign test of the slowdown against the margin.
    if shadow.compares(Compare::Latency) {
        let st = step.get(PoolKind::Canary);
        let s = without_one_client(st.pair_slower, st.client_max_pair_slower);
        let n = s + st.pair_not_slower;
        let share = percent(s, n);
        numbers.push(("shadow_step_latency_pairs".into(), n as f64));
        numbers.push(("shadow_slower".into(), st.pair_slower as f64));
        numbers.push(("shadow_slower_judged".into(), s as f64));
        numbers.push(("shadow_slower_percent".into(), share));
        if s >= MIN_EVIDENCE {
            let p = binomial_sf(s, n, 0.5);
            numbers.push(("shadow_latency_p".into(), p));
            if p < alpha {
                findings.push(Finding::ShadowLatency);
                reasons.push(format!(
                    "canary slower than production by more than max({:.1} ms, {} %) in {s} of \
                     {n} shadow pairs this step ({share:.1} %; sign test p {p:.2e} < {alpha:.2e})",
                    shadow.max_slowdown.as_secs_f64() * 1e3,
                    shadow.max_slowdown_percent
                ));
            }
        }
    }

    // Bodies, this window.
    if shadow.compares(Compare::BodyHash) && !low_traffic {
        let nb = w.pair_body_compared;
        let xb = without_one_client(w.pair_body_mismatches, w.client_max_pair_body_mismatches);
        let share = percent(xb, nb);
        numbers.push(("shadow_body_compared".into(), nb as f64));
        numbers.push(("shadow_body_mismatches".into(), w.pair_body_mismatches as f64));
        numbers.push(("shadow_body_mismatch_percent".into(), share));
        if xb >= MIN_EVIDENCE {
            let p = binomial_sf(xb, nb, max_share);
            numbers.push(("shadow_body_p".into(), p));
            if p < alpha {
                findings.push(Finding::ShadowBody);
                reasons.push(format!(
                    "canary body differs from production's on {share:.2} % of compared shadow \
                     pairs ({xb} of {nb}), above max_mismatch_percent {} % (binomial p {p:.2e} \
                     < {alpha:.2e})",
                    shadow.max_mismatch_percent
                ));
            }
        }
    }

    match findings.first() {
        Some(&finding) => Judgement {
            verdict: Verdict::Fail,
            finding,
            reasons,
            numbers,
        },
        None => Judgement {
            verdict: Verdict::Pass,
            finding: Finding::Healthy,
            reasons: vec!["healthy".into()],
            numbers,
        },
    }
}
