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
//! So the comparison needs no model of the traffic: a healthy canary's pair looks the same with
//! its two answers swapped, and a regression shows as pairs that lean one way.
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
//!    production on more than `max_mismatch_percent` of requests. The bound is absolute, not
//!    relative to production: transient errors that strike each side independently count
//!    on both, so two 0.3 % error rates disagree on about 0.6 % of pairs, under the default
//!    1 %; an endpoint whose own transient error rate is `e` needs `max_mismatch_percent`
//!    above `2e` (and, with `body_hash`, bodies that do not vary by time or request id).
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
//!
//!    A copy without an answer on a request whose production answer took the copy's whole
//!    budget (`shadow.timeout`) or longer counts in neither rule: it never had that time.
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
//!   1.5 % scheduling hiccups of 20-60 ms and 0.3 % independent 5xx on each side): 0 of
//!   20,000. About 10 % of such healthy pairs are slower beyond the margin and 0.6 % mismatch:
//!   both far from the nulls' edges (50 % and 1 %), so the measured rate is far below the
//!   bound; what a healthy window risks is mostly the status rule's `α`.
//! - **Smallest regression detected** (`max_mismatch_percent` 1, `confidence` 0.999):
//!   - status: 5 mismatching pairs of 50 (10 %), 9 of 200 (4.5 %); a canary mismatching on
//!     15.4 % of pairs fails 90 % of 50-pair windows, on 6.5 % of 200-pair ones (half that
//!     share: 35 % and 20 %). A canary answering 500 to 30 % of copies fails every window of
//!     40 pairs or more (4 mismatches of 40 suffice; 1,000 of 1,000 simulated windows of
//!     40-100 pairs failed).
//!   - latency: 37 slower pairs of 50 (74 %), 123 of 200 (61.5 %); a canary slower beyond the
//!     margin in 80 % of pairs fails 90 % of 50-pair steps, in 66 % of 200-pair ones. A
//!     canary 50 ms slower on every request (margin 25 ms): against a steady production (2-6
//!     ms) every pair is slower and the first window of 15 pairs fails (14 needed); against
//!     the log-normal 5-50 ms production above, the two sides drawn independently (no cost
//!     shared by a request's two answers: the hardest case for pairing), about 90 % of pairs
//!     are slower, and a step of 15-pair windows fails in its first window 54 % of the time,
//!     by its second 93 %, by its third 99.9 %.
//! - **One client** contributes at most 1 judged mismatching, slower and body-mismatching
//!   pair to a window and replica (each replica's busiest client is taken out but one), and
//!   every rule needs 2: it cannot fail a window alone, nor dilute one beyond its
//!   `per_client_requests` pairs.

use super::judge::{
    binomial_sf, insufficient, without_one_client, Finding, Judgement, Verdict, MIN_EVIDENCE,
};
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

/// What [`classify`] needs of the shadow settings, in seconds and shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLimits {
    /// `max_slowdown`.
    pub max_slowdown: f64,
    /// `max_slowdown_percent / 100`.
    pub max_slowdown_share: f64,
    /// `timeout`: a copy's whole budget.
    pub timeout: f64,
}

impl From<&ShadowSettings> for PairLimits {
    fn from(s: &ShadowSettings) -> Self {
        PairLimits {
            max_slowdown: s.max_slowdown.as_secs_f64(),
            max_slowdown_share: s.max_slowdown_percent / 100.0,
            timeout: s.timeout.as_secs_f64(),
        }
    }
}

/// Classify `pair`. The margin of a slower pair is `max(max_slowdown, max_slowdown_share x
/// production's time)`. A copy without an answer whose production answer itself took the
/// copy's whole budget (`timeout`) or longer says nothing: the copy never had the time
/// production took (a slow endpoint, not a failing canary), so it is neither a mismatch nor
/// latency-compared.
pub fn classify(pair: &Pair, limits: &PairLimits) -> PairClass {
    let (p, c) = (pair.production, pair.canary);
    if p.status.is_some() && c.status.is_none() && p.seconds >= limits.timeout {
        return PairClass {
            mismatch: false,
            slower: None,
            body_mismatch: None,
        };
    }
    let slower = match (p.status, c.status) {
        (None, _) => None,
        (Some(_), None) => Some(true),
        (Some(_), Some(_)) if p.seconds.is_finite() && c.seconds.is_finite() => {
            let margin = limits
                .max_slowdown
                .max(limits.max_slowdown_share * p.seconds);
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
        return insufficient(
            "shadow pairs",
            (w.pairs, settings.min_requests),
            w.pairs_capped,
            numbers,
        );
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
        numbers.push((
            "shadow_body_mismatches".into(),
            w.pair_body_mismatches as f64,
        ));
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

#[cfg(test)]
mod tests {
    use super::super::judge::Rng;
    use super::super::shadow::Answer;
    use super::*;
    use std::time::Duration;

    fn answer(status: Option<u16>, ms: f64) -> Answer {
        Answer {
            status,
            seconds: ms / 1e3,
        }
    }

    fn pair(p: (Option<u16>, f64), c: (Option<u16>, f64), body: Option<bool>) -> Pair {
        Pair {
            production: answer(p.0, p.1),
            canary: answer(c.0, c.1),
            body_match: body,
        }
    }

    #[test]
    fn each_pair_is_classified() {
        let ok = Some(200);
        // (production, canary, body) -> (mismatch, slower, body_mismatch); margin max(25 ms,
        // 20 % of production's time).
        type Case = (
            (Option<u16>, f64),
            (Option<u16>, f64),
            Option<bool>,
            PairClass,
        );
        let class = |mismatch, slower, body_mismatch| PairClass {
            mismatch,
            slower,
            body_mismatch,
        };
        let cases: &[Case] = &[
            (
                (ok, 10.0),
                (ok, 12.0),
                None,
                class(false, Some(false), None),
            ),
            // 26 ms slower than 10 ms: beyond 25 ms.
            ((ok, 10.0), (ok, 36.0), None, class(false, Some(true), None)),
            // 30 ms slower than 200 ms: within its 20 % (40 ms).
            (
                (ok, 200.0),
                (ok, 230.0),
                None,
                class(false, Some(false), None),
            ),
            (
                (ok, 200.0),
                (ok, 241.0),
                None,
                class(false, Some(true), None),
            ),
            // Faster is not slower.
            ((ok, 50.0), (ok, 1.0), None, class(false, Some(false), None)),
            // Same class, different codes: no mismatch.
            (
                (Some(201), 5.0),
                (ok, 5.0),
                None,
                class(false, Some(false), None),
            ),
            (
                (ok, 5.0),
                (Some(503), 5.0),
                None,
                class(true, Some(false), None),
            ),
            (
                (Some(404), 5.0),
                (Some(500), 5.0),
                None,
                class(true, Some(false), None),
            ),
            // The canary gave no answer: a mismatch, and slower.
            (
                (ok, 5.0),
                (None, 2000.0),
                None,
                class(true, Some(true), None),
            ),
            // Neither answered: the same class, and no latency to compare.
            (
                (None, 2000.0),
                (None, 2000.0),
                None,
                class(false, None, None),
            ),
            // Production gave none: a mismatch, no latency.
            ((None, 2000.0), (ok, 3.0), None, class(true, None, None)),
            // An unusable time: no latency.
            ((ok, f64::NAN), (ok, 3.0), None, class(false, None, None)),
            // Bodies.
            (
                (ok, 5.0),
                (ok, 5.0),
                Some(true),
                class(false, Some(false), Some(false)),
            ),
            (
                (ok, 5.0),
                (ok, 5.0),
                Some(false),
                class(false, Some(false), Some(true)),
            ),
        ];
        for (i, (p, c, body, want)) in cases.iter().enumerate() {
            assert_eq!(
                classify(&pair(*p, *c, *body), &limits(0.025, 0.2)),
                *want,
                "case {i}"
            );
        }
        // An exact tie at the margin is dropped (times exact in binary).
        let tie = pair((ok, 0.0), (ok, 0.0), None);
        assert_eq!(classify(&tie, &limits(0.0, 0.2)).slower, None);
        let tie = Pair {
            production: Answer {
                status: ok,
                seconds: 0.5,
            },
            canary: Answer {
                status: ok,
                seconds: 0.75,
            },
            body_match: None,
        };
        assert_eq!(classify(&tie, &limits(0.25, 0.0)).slower, None);
        assert_eq!(classify(&tie, &limits(0.125, 0.0)).slower, Some(true));
        // A copy that timed out on a request production itself took longer than the copy's
        // budget (2 s) to answer: no evidence either way. Within the budget: a mismatch.
        let slow_endpoint = pair((ok, 2500.0), (None, 2000.0), None);
        let none = PairClass {
            mismatch: false,
            slower: None,
            body_mismatch: None,
        };
        assert_eq!(classify(&slow_endpoint, &limits(0.025, 0.2)), none);
        let failed = pair((ok, 1500.0), (None, 2000.0), None);
        assert_eq!(
            classify(&failed, &limits(0.025, 0.2)),
            PairClass {
                mismatch: true,
                slower: Some(true),
                body_mismatch: None
            }
        );
        assert_eq!(
            PairLimits::from(&ShadowSettings::default()),
            limits(0.025, 0.2)
        );
    }

    /// The limits of the default settings (timeout 2 s) with this margin.
    fn limits(max_slowdown: f64, max_slowdown_share: f64) -> PairLimits {
        PairLimits {
            max_slowdown,
            max_slowdown_share,
            timeout: 2.0,
        }
    }

    /// Add one classified pair to `w`, each pair from its own client (as the request path
    /// counts it with the caps far away).
    fn tally(w: &mut PoolWindow, c: PairClass) {
        w.pairs += 1;
        if c.mismatch {
            w.pair_mismatches += 1;
            w.client_max_pair_mismatches = 1;
        }
        match c.slower {
            Some(true) => {
                w.pair_slower += 1;
                w.client_max_pair_slower = 1;
            }
            Some(false) => w.pair_not_slower += 1,
            None => {}
        }
        if let Some(differ) = c.body_mismatch {
            w.pair_body_compared += 1;
            if differ {
                w.pair_body_mismatches += 1;
                w.client_max_pair_body_mismatches = 1;
            }
        }
    }

    /// The canary's counts as given (production empty).
    fn canary(w: PoolWindow) -> WindowCounts {
        WindowCounts {
            production: PoolWindow::default(),
            canary: w,
        }
    }

    fn settings() -> (RolloutSettings, ShadowSettings) {
        let s = RolloutSettings {
            min_requests: 20,
            hard_fail_errors: 10,
            ..RolloutSettings::default()
        };
        let mut shadow = ShadowSettings::default();
        shadow.compare.push(Compare::BodyHash);
        (s, shadow)
    }

    fn number(j: &Judgement, name: &str) -> Option<f64> {
        j.numbers.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// p-values by exact fractions:
    /// python3 -c "from math import comb; from fractions import Fraction as F
    ///   sf=lambda k,n,p: float(sum(comb(n,i)*F(p)**i*(1-F(p))**(n-i) for i in range(k,n+1)))"
    #[test]
    fn each_rule_fails_exactly_at_its_boundary() {
        let (s, shadow) = settings();
        let judge = |w: PoolWindow| {
            let c = canary(w);
            judge_shadow(&s, &shadow, &c, &c)
        };
        // Status: (pairs, mismatches) -> p at 1 %.
        for (n, x, p, fails) in [
            (50, 4, 0.0015961730907328715, false),
            (50, 5, 0.00014568926807182698, true),
            (200, 8, 0.0010125571505207782, false),
            (200, 9, 0.00021253677246794636, true),
            (40, 3, 0.007497363395395944, false),
            (40, 4, 0.0006856064270094534, true),
        ] {
            let j = judge(PoolWindow {
                pairs: n,
                pair_mismatches: x,
                client_max_pair_mismatches: 1,
                ..PoolWindow::default()
            });
            let got = number(&j, "shadow_mismatch_p").expect("p");
            assert!((got - p).abs() <= 1e-8 * p, "{x} of {n}: p {got} != {p}");
            let want = if fails {
                (Verdict::Fail, Finding::ShadowMismatch)
            } else {
                (Verdict::Pass, Finding::Healthy)
            };
            assert_eq!((j.verdict, j.finding), want, "{x} of {n}: {j:?}");
        }
        // Latency over the step: (slower, not slower) -> p at 1/2.
        for (sl, ns, p, fails) in [
            (13, 2, 0.003692626953125, false),
            (14, 1, 0.00048828125, true),
            (36, 14, 0.0013010857283610733, false),
            (37, 13, 0.0004681114554259125, true),
            (122, 78, 0.0011397192509028646, false),
            (123, 77, 0.0007008452893978951, true),
        ] {
            let window = canary(PoolWindow {
                pairs: 20,
                ..PoolWindow::default()
            });
            let step = canary(PoolWindow {
                pairs: sl + ns,
                pair_slower: sl,
                pair_not_slower: ns,
                client_max_pair_slower: 1,
                ..PoolWindow::default()
            });
            let j = judge_shadow(&s, &shadow, &window, &step);
            let got = number(&j, "shadow_latency_p").expect("p");
            assert!((got - p).abs() <= 1e-8 * p, "{sl} vs {ns}: p {got} != {p}");
            let want = if fails {
                (Verdict::Fail, Finding::ShadowLatency)
            } else {
                (Verdict::Pass, Finding::Healthy)
            };
            assert_eq!((j.verdict, j.finding), want, "{sl} vs {ns}: {j:?}");
        }
        // Bodies: the same binomial test among the compared pairs.
        for (x, fails) in [(4, false), (5, true)] {
            let j = judge(PoolWindow {
                pairs: 80,
                pair_body_compared: 50,
                pair_body_mismatches: x,
                client_max_pair_body_mismatches: 1,
                ..PoolWindow::default()
            });
            assert_eq!(j.verdict == Verdict::Fail, fails, "{j:?}");
            if fails {
                assert_eq!(j.finding, Finding::ShadowBody);
            }
        }
        // A rule not listed in `compare` is not applied.
        let only_latency = ShadowSettings {
            compare: vec![Compare::Latency],
            ..shadow.clone()
        };
        let c = canary(PoolWindow {
            pairs: 50,
            pair_mismatches: 50,
            pair_body_compared: 50,
            pair_body_mismatches: 50,
            pair_not_slower: 50,
            ..PoolWindow::default()
        });
        assert_eq!(
            judge_shadow(&s, &only_latency, &c, &c).verdict,
            Verdict::Pass
        );
        let only_status = ShadowSettings {
            compare: vec![Compare::Status],
            ..shadow.clone()
        };
        let c = canary(PoolWindow {
            pairs: 50,
            pair_slower: 50,
            ..PoolWindow::default()
        });
        assert_eq!(
            judge_shadow(&s, &only_status, &c, &c).verdict,
            Verdict::Pass
        );
        assert_eq!(
            judge_shadow(&s, &shadow, &c, &c).finding,
            Finding::ShadowLatency
        );
    }

    #[test]
    fn too_few_pairs_is_inconclusive_unless_the_mismatches_are_overwhelming() {
        let (s, shadow) = settings(); // min_requests 20, hard_fail_errors 10
        let judge = |pairs, mismatches| {
            let c = canary(PoolWindow {
                pairs,
                pair_mismatches: mismatches,
                pair_slower: pairs,
                client_max_pair_mismatches: 1,
                pairs_capped: 7,
                ..PoolWindow::default()
            });
            judge_shadow(&s, &shadow, &c, &c)
        };
        let j = judge(19, 9);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Inconclusive, Finding::InsufficientTraffic),
            "{j:?}"
        );
        assert!(j.reasons[0].contains("19 shadow pairs"), "{:?}", j.reasons);
        assert!(j.reasons[0].contains("trusted_proxies"), "{:?}", j.reasons);
        let j = judge(19, 10);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Fail, Finding::ShadowMismatch),
            "{j:?}"
        );
        // Without status compared, mismatches decide nothing.
        let latency = ShadowSettings {
            compare: vec![Compare::Latency],
            ..shadow.clone()
        };
        let c = canary(PoolWindow {
            pairs: 5,
            pair_mismatches: 5,
            ..PoolWindow::default()
        });
        assert_eq!(
            judge_shadow(&s, &latency, &c, &c).verdict,
            Verdict::Inconclusive
        );
        // The numbers a status or history shows.
        let j = judge(40, 0);
        for name in [
            "shadow_pairs",
            "shadow_mismatches",
            "shadow_mismatch_percent",
            "shadow_slower",
            "shadow_step_latency_pairs",
            "shadow_latency_p",
            "shadow_pairs_capped",
            "shadow_body_compared",
        ] {
            assert!(
                number(&j, name).is_some(),
                "{name} missing: {:?}",
                j.numbers
            );
        }
    }

    /// One client sending every mismatching, slower and body-mismatching pair of a window: the
    /// request path counts at most `per_client_failures` (1) of each per replica and reports
    /// its replica's busiest client; summed over `r` replicas it adds up to `r` of each, and
    /// the judgement takes them out but one.
    #[test]
    fn one_client_alone_never_fails_a_window() {
        let (s, shadow) = settings();
        for replicas in 1..=4u64 {
            for pairs in [20, 40, 100, 300] {
                let c = canary(PoolWindow {
                    pairs,
                    pair_mismatches: replicas,
                    pair_slower: replicas,
                    pair_not_slower: pairs - replicas,
                    pair_body_compared: pairs,
                    pair_body_mismatches: replicas,
                    client_max_pair_mismatches: replicas,
                    client_max_pair_slower: replicas,
                    client_max_pair_body_mismatches: replicas,
                    ..PoolWindow::default()
                });
                let j = judge_shadow(&s, &shadow, &c, &c);
                assert_eq!(j.verdict, Verdict::Pass, "{replicas} replicas: {j:?}");
            }
        }
        // Even at 2 pairs a window, 1 of them from the one client (all it may count).
        let mut tiny = s.clone();
        tiny.min_requests = 2;
        let c = canary(PoolWindow {
            pairs: 2,
            pair_mismatches: 1,
            pair_slower: 1,
            client_max_pair_mismatches: 1,
            client_max_pair_slower: 1,
            ..PoolWindow::default()
        });
        assert_eq!(judge_shadow(&tiny, &shadow, &c, &c).verdict, Verdict::Pass);
        // The same counts from as many distinct clients are evidence.
        let c = canary(PoolWindow {
            pairs: 40,
            pair_mismatches: 6,
            client_max_pair_mismatches: 1,
            pair_not_slower: 40,
            ..PoolWindow::default()
        });
        assert_eq!(judge_shadow(&s, &shadow, &c, &c).verdict, Verdict::Fail);
        // With the protection off (`per_client_failures: 0`), one client's count like anyone's.
        let mut c = c;
        c.canary.client_max_pair_mismatches = 6;
        assert_eq!(judge_shadow(&s, &shadow, &c, &c).verdict, Verdict::Pass);
        let off = RolloutSettings {
            per_client_failures: 0,
            ..s.clone()
        };
        assert_eq!(judge_shadow(&off, &shadow, &c, &c).verdict, Verdict::Fail);
    }

    /// How one side answers in a simulation.
    #[derive(Clone, Copy)]
    struct Side {
        /// Log-normal latency with 90 % of answers between 5 and 50 ms; else uniform 2-6 ms.
        lognormal: bool,
        /// Share of answers stalled 20-60 ms (a scheduling hiccup).
        hiccup: f64,
        /// Share of 5xx answers.
        error: f64,
        /// Added to every answer, seconds.
        extra: f64,
    }

    const HEALTHY: Side = Side {
        lognormal: true,
        hiccup: 0.015,
        error: 0.003,
        extra: 0.0,
    };

    fn draw(rng: &mut Rng, side: Side) -> Answer {
        // ln 5 ms .. ln 50 ms as +-1.645 sigma.
        let (mu, sigma) = ((0.005f64 * 0.050).ln() / 2.0, (10f64).ln() / (2.0 * 1.645));
        let mut seconds = if side.lognormal {
            (mu + sigma * rng.normal()).exp()
        } else {
            0.002 + 0.004 * rng.unit()
        };
        if rng.unit() < side.hiccup {
            seconds += 0.020 + 0.040 * rng.unit();
        }
        let status = if rng.unit() < side.error { 500 } else { 200 };
        Answer {
            status: Some(status),
            seconds: seconds + side.extra,
        }
    }

    /// One window of `n` pairs, production `HEALTHY`-like with `production`'s shape and the
    /// canary as given, counted as the request path does.
    fn window(
        rng: &mut Rng,
        n: u64,
        production: Side,
        canary: Side,
        limits: &PairLimits,
    ) -> PoolWindow {
        let mut w = PoolWindow::default();
        for _ in 0..n {
            let p = Pair {
                production: draw(rng, production),
                canary: draw(rng, canary),
                body_match: None,
            };
            tally(&mut w, classify(&p, limits));
        }
        w
    }

    /// Run `steps` shadow steps of `windows` windows each (sizes drawn from `sizes`, judged
    /// from `sizes.0` pairs on: `min_requests`), judging every window with the step so far;
    /// the share of windows that failed, and the share of steps failed by their `by`-th
    /// window.
    fn run(
        seed: u64,
        steps: u32,
        windows: u32,
        sizes: (u64, u64),
        (production, canary_side): (Side, Side),
        by: u32,
    ) -> (f64, f64) {
        let (mut s, shadow) = settings();
        s.min_requests = sizes.0;
        let limits = PairLimits::from(&shadow);
        let mut rng = Rng(seed);
        let (mut failed_windows, mut failed_steps) = (0u32, 0u32);
        for _ in 0..steps {
            let mut step = WindowCounts::default();
            let mut failed_by = false;
            for i in 0..windows {
                let n = rng.range(sizes.0, sizes.1);
                let w = canary(window(&mut rng, n, production, canary_side, &limits));
                step = super::super::judge::step_with(&step, &w);
                if judge_shadow(&s, &shadow, &w, &step).verdict == Verdict::Fail {
                    failed_windows += 1;
                    failed_by |= i < by;
                }
            }
            failed_steps += u32::from(failed_by);
        }
        (
            f64::from(failed_windows) / f64::from(steps * windows),
            f64::from(failed_steps) / f64::from(steps),
        )
    }

    /// A healthy canary (answers from the same distribution as production's, hiccups and
    /// errors included, on both sides) fails under the stated bound of 2 alpha = 0.2 % a
    /// window.
    #[test]
    fn healthy_shadow_windows_rarely_fail() {
        let (rate, _) = run(50, 4_000, 5, (20, 300), (HEALTHY, HEALTHY), 5);
        println!("healthy shadow windows failed: {:.3} %", rate * 100.0);
        assert!(rate <= 0.002, "false failures {:.3} %", rate * 100.0);
        // How far from the nulls' edges a healthy pair is.
        let (s, shadow) = settings();
        let _ = s;
        let mut rng = Rng(51);
        let w = window(&mut rng, 100_000, HEALTHY, HEALTHY, &(&shadow).into());
        let slower = percent(w.pair_slower, w.pair_slower + w.pair_not_slower);
        let mismatch = percent(w.pair_mismatches, w.pairs);
        println!("healthy pairs: {slower:.2} % slower, {mismatch:.2} % mismatching");
        assert!((5.0..12.0).contains(&slower), "{slower}");
        assert!((0.4..0.8).contains(&mismatch), "{mismatch}");
    }

    /// The issue's regressions, at the sizes of its integration test.
    #[test]
    fn the_issues_regressions_fail_the_shadow_step() {
        // 500 to 30 % of copies: every window of 40-100 pairs fails by itself.
        let errors = Side {
            error: 0.30,
            ..HEALTHY
        };
        let (rate, _) = run(60, 1_000, 1, (40, 100), (HEALTHY, errors), 1);
        println!(
            "30 % 500s, 40-100 pairs: {:.2} % of windows fail",
            rate * 100.0
        );
        assert!(rate >= 0.995, "{rate}");
        // 50 ms slower on every request against a steady production: the first window of 15.
        let steady = Side {
            lognormal: false,
            hiccup: 0.0,
            ..HEALTHY
        };
        let slow = Side {
            extra: 0.050,
            ..steady
        };
        let (rate, _) = run(61, 1_000, 1, (15, 15), (steady, slow), 1);
        println!(
            "+50 ms, steady, 15 pairs: {:.2} % of windows fail",
            rate * 100.0
        );
        assert_eq!(rate, 1.0);
        // Against production's log-normal 5-50 ms, drawn independently for the two sides (no
        // per-request cost shared by the pair: the hardest case for pairing), about 90 % of
        // pairs are slower beyond the margin: the step fails within its first windows.
        let slow = Side {
            extra: 0.050,
            ..HEALTHY
        };
        let by: Vec<f64> = (1..=3)
            .map(|by| run(62, 1_000, 3, (15, 15), (HEALTHY, slow), by).1)
            .collect();
        println!(
            "+50 ms, log-normal, 15 pairs a window: the step failed by its first window {:.1} \
             %, second {:.1} %, third {:.1} %",
            by[0] * 100.0,
            by[1] * 100.0,
            by[2] * 100.0
        );
        assert!(by[0] >= 0.45 && by[1] >= 0.9 && by[2] >= 0.98, "{by:?}");
    }

    /// The smallest effects the module documentation states, at 50 and 200 pairs: each fails
    /// at least 90 % of windows (steps for latency), and half of it rarely.
    #[test]
    fn the_smallest_effects_stated_are_detected() {
        let (s, shadow) = settings();
        let fail_rate = |seed: u64, n: u64, mismatch: f64, slower: f64| {
            let mut rng = Rng(seed);
            let mut failed = 0u32;
            let rounds = 2_000u32;
            for _ in 0..rounds {
                let mut w = PoolWindow::default();
                for _ in 0..n {
                    let base = 0.005 + 0.010 * rng.unit();
                    let slow = rng.unit() < slower;
                    let p = Pair {
                        production: answer(Some(200), base * 1e3),
                        canary: Answer {
                            status: Some(if rng.unit() < mismatch { 500 } else { 200 }),
                            seconds: base + if slow { 0.100 } else { 0.0 },
                        },
                        body_match: None,
                    };
                    tally(&mut w, classify(&p, &limits(0.025, 0.2)));
                }
                let c = canary(w);
                failed += u32::from(judge_shadow(&s, &shadow, &c, &c).verdict == Verdict::Fail);
            }
            f64::from(failed) / f64::from(rounds)
        };
        for (n, mismatch, slower) in [(50, 0.154, 0.80), (200, 0.065, 0.656)] {
            let m = fail_rate(70 + n, n, mismatch, 0.0);
            let m_half = fail_rate(71 + n, n, mismatch / 2.0, 0.0);
            let l = fail_rate(72 + n, n, 0.0, slower);
            let l_less = fail_rate(73 + n, n, 0.0, 0.5 + (slower - 0.5) / 2.0);
            println!(
                "{n} pairs: {:.1} % mismatching fails {:.1} % (half of it {:.1} %); {:.1} % \
                 slower fails {:.1} % (half the excess over 50 % {:.1} %)",
                mismatch * 100.0,
                m * 100.0,
                m_half * 100.0,
                slower * 100.0,
                l * 100.0,
                l_less * 100.0
            );
            assert!(m >= 0.88 && l >= 0.88, "{n}: {m} {l}");
            assert!(m_half < 0.5 && l_less < 0.5, "{n}: {m_half} {l_less}");
        }
        let _ = Duration::ZERO;
    }
}
