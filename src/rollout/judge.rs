//! The judgement of one window: canary against production, from counts alone (pure: no I/O,
//! no clock), so it is table-tested against values computed independently (SciPy, NumPy).
//!
//! In order (README, "Progressive delivery"):
//! 1. **Inconclusive** when the canary answered fewer than `min_requests` requests in the
//!    window and fewer than `hard_fail_errors` of them were errors.
//! 2. **Errors fail** when the canary's error rate (5xx and connect failures) is above
//!    `error_rate.max_percent`, or above production's by more than `max_excess_points` with a
//!    one-sided pooled two-proportion z statistic above `error_rate.z`. Below `min_requests`,
//!    reaching `hard_fail_errors` errors fails the window by itself. Without production
//!    traffic in the window (the 100 % step) only `max_percent` applies.
//! 3. **Latency fails** when the canary's p99 over the step so far (this window included),
//!    interpolated from the duration buckets exactly as Prometheus' `histogram_quantile`
//!    does, is above `latency.p99_max`, or above `p99_max_ratio` x max(production p99,
//!    `floor`) (production's p99 over the same windows; without production traffic in the
//!    step, as at a 100 % step, only `p99_max` applies).
//! 4. With `mann_whitney`, a Mann-Whitney U test on the two step histograms (each bucket a
//!    group of ties, mid-ranks, normal approximation with tie and continuity correction, as
//!    SciPy's `mannwhitneyu(method="asymptotic")`) fails the window when the canary is slower
//!    with one-sided p < 0.001 ([`MW_Z`]) *and* the effect is large: the canary is slower
//!    in more than [`MW_MIN_EFFECT`] of canary-production pairs (U / (n1 n2)). The effect
//!    floor keeps a huge sample from failing a canary that is 1 ms slower; the test adds to
//!    the p99 rules and never passes a window they fail.
//! 5. Otherwise **pass**.

use crate::config::schema::RolloutConfig;
use crate::model::{PoolKind, LATENCY_BUCKETS_S};

use super::{PoolWindow, WindowCounts};

/// One-sided z for p < 0.001: the Mann-Whitney gate.
pub const MW_Z: f64 = 3.090_232_306_167_813;
/// The canary must be slower in more than this share of pairs for Mann-Whitney to fail it.
pub const MW_MIN_EFFECT: f64 = 0.6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// What decided a verdict (the first failing rule for a fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Every rule passed.
    Healthy,
    InsufficientTraffic,
    Errors,
    Latency,
    MannWhitney,
}

impl Finding {
    /// The word a rollback's `reason` and the metrics use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Finding::Healthy => "healthy",
            Finding::InsufficientTraffic => "insufficient traffic",
            Finding::Errors => "errors",
            Finding::Latency => "latency",
            Finding::MannWhitney => "mann_whitney",
        }
    }
}

/// A verdict with its reasons (operator's words) and the numbers it used.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The first failing rule for a fail; `InsufficientTraffic` for inconclusive.
    pub finding: Finding,
    pub reasons: Vec<String>,
    pub numbers: Vec<(String, f64)>,
}

/// Judge one window. `window` holds the window's counts; `step` the counts of the step so far
/// including this window (the latency rules read it).
pub fn judge(settings: &RolloutConfig, window: &WindowCounts, step: &WindowCounts) -> Judgement {
    let c = window.get(PoolKind::Canary);
    let p = window.get(PoolKind::Production);
    let mut numbers: Vec<(String, f64)> = vec![
        ("canary_requests".into(), c.requests as f64),
        ("canary_errors".into(), c.errors as f64),
        ("production_requests".into(), p.requests as f64),
        ("production_errors".into(), p.errors as f64),
    ];
    let mut reasons = Vec::new();
    let mut findings = Vec::new();

    let low_traffic = c.requests < settings.min_requests;
    if low_traffic && c.errors < settings.hard_fail_errors {
        return Judgement {
            verdict: Verdict::Inconclusive,
            finding: Finding::InsufficientTraffic,
            reasons: vec![format!(
                "insufficient traffic: {} canary requests < min_requests {}",
                c.requests, settings.min_requests
            )],
            numbers,
        };
    }
    if low_traffic {
        findings.push(Finding::Errors);
        reasons.push(format!(
            "{} canary errors >= hard_fail_errors {} (with {} requests)",
            c.errors, settings.hard_fail_errors, c.requests
        ));
    }

    // Errors, this window.
    let rate_c = percent(c.errors, c.requests);
    numbers.push(("canary_error_percent".into(), rate_c));
    let er = &settings.error_rate;
    if !low_traffic {
        if rate_c > er.max_percent {
            findings.push(Finding::Errors);
            reasons.push(format!(
                "canary error rate {rate_c:.2} % > max_percent {} %",
                er.max_percent
            ));
        } else if p.requests > 0 {
            let rate_p = percent(p.errors, p.requests);
            let z = two_proportion_z(c.errors, c.requests, p.errors, p.requests);
            numbers.push(("production_error_percent".into(), rate_p));
            numbers.push(("z".into(), z));
            if rate_c - rate_p > er.max_excess_points && z > er.z {
                findings.push(Finding::Errors);
                reasons.push(format!(
                    "canary error rate {rate_c:.2} % exceeds production's {rate_p:.2} % by more \
                     than {} points (z {z:.2} > {})",
                    er.max_excess_points, er.z
                ));
            }
        }
    }

    // Latency, the step so far.
    let sc = step.get(PoolKind::Canary);
    let sp = step.get(PoolKind::Production);
    let lat = &settings.latency;
    if let Some(c99) = histogram_quantile(0.99, &sc.buckets) {
        numbers.push(("canary_p99_ms".into(), c99 * 1e3));
        let p99_max = lat.p99_max.as_secs_f64();
        let floor = lat.floor.as_secs_f64();
        let p99 = histogram_quantile(0.99, &sp.buckets);
        if let Some(p99) = p99 {
            numbers.push(("production_p99_ms".into(), p99 * 1e3));
        }
        let limit = p99.map(|p| lat.p99_max_ratio * p.max(floor));
        if c99 > p99_max {
            findings.push(Finding::Latency);
            reasons.push(format!(
                "canary p99 {:.1} ms > p99_max {:.1} ms",
                c99 * 1e3,
                p99_max * 1e3
            ));
        } else if let Some(limit) = limit.filter(|&l| c99 > l) {
            findings.push(Finding::Latency);
            reasons.push(format!(
                "canary p99 {:.1} ms > {} x max(production p99, floor) = {:.1} ms",
                c99 * 1e3,
                lat.p99_max_ratio,
                limit * 1e3
            ));
        }
    }

    if settings.mann_whitney {
        if let Some(mw) = mann_whitney(&sc.buckets, &sp.buckets) {
            let effect = mw.u / mw.pairs;
            numbers.push(("mw_u".into(), mw.u));
            numbers.push(("mw_z".into(), mw.z));
            numbers.push(("mw_effect".into(), effect));
            if mw.z > MW_Z && effect > MW_MIN_EFFECT {
                findings.push(Finding::MannWhitney);
                reasons.push(format!(
                    "canary slower than production (Mann-Whitney z {:.2} > {MW_Z:.2}, slower in \
                     {:.0} % of pairs)",
                    mw.z,
                    effect * 100.0
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

/// `part / whole` in percent, 0 for an empty whole.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The one-sided pooled two-proportion z statistic of `x1/n1` above `x2/n2`; 0 when it is
/// undefined (an empty side, or no variance: both rates 0 % or both 100 %).
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.0;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 || !se.is_finite() {
        return 0.0;
    }
    (x1 as f64 / n1f - x2 as f64 / n2f) / se
}

/// The `q` quantile, in seconds, of per-bucket counts over [`LATENCY_BUCKETS_S`] (the last
/// count is the `+Inf` bucket), as Prometheus' `histogram_quantile` computes it: the rank
/// `q * count` falls in the first bucket whose cumulative count reaches it, interpolated
/// linearly within that bucket; the lowest bucket starts at 0; a rank in the `+Inf` bucket
/// returns the highest finite bound. `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        let cum = below + n;
        let Some(&end) = LATENCY_BUCKETS_S.get(i) else {
            break;
        };
        if cum as f64 >= rank {
            let start = if i == 0 {
                0.0
            } else {
                LATENCY_BUCKETS_S[i - 1]
            };
            if n == 0 {
                return Some(start);
            }
            return Some(start + (end - start) * ((rank - below as f64) / n as f64));
        }
        below = cum;
    }
    LATENCY_BUCKETS_S.last().copied()
}

/// A Mann-Whitney U test of canary against production, from bucket counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of the canary sample: the pairs (canary, production) where the canary is slower,
    /// ties counting one half.
    pub u: f64,
    /// n1 * n2.
    pub pairs: f64,
    /// The normal approximation with tie and continuity correction, one-sided ("canary
    /// slower"): SciPy's `mannwhitneyu(c, p, alternative="greater", method="asymptotic")`.
    pub z: f64,
}

/// Mann-Whitney U on two bucket-count lists of the same bounds (samples in one bucket are
/// ties and get the bucket's mid-rank). `None` when a side is empty.
pub fn mann_whitney(canary: &[u64], production: &[u64]) -> Option<MannWhitney> {
    let n1: u64 = canary.iter().sum();
    let n2: u64 = production.iter().sum();
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let len = canary.len().max(production.len());
    let mut before = 0f64;
    let mut rank_sum = 0f64;
    let mut ties = 0f64;
    for i in 0..len {
        let c = canary.get(i).copied().unwrap_or(0) as f64;
        let t = c + production.get(i).copied().unwrap_or(0) as f64;
        if t == 0.0 {
            continue;
        }
        let mid = before + (t + 1.0) / 2.0;
        rank_sum += c * mid;
        ties += t * t * t - t;
        before += t;
    }
    let (n1, n2) = (n1 as f64, n2 as f64);
    let n = n1 + n2;
    let u = rank_sum - n1 * (n1 + 1.0) / 2.0;
    let mu = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let z = if var > 0.0 {
        (u - mu - 0.5) / var.sqrt()
    } else {
        0.0
    };
    Some(MannWhitney {
        u,
        pairs: n1 * n2,
        z,
    })
}

/// The counts of a step so far: `step` (judged windows) plus `window`.
pub fn step_with(step: &WindowCounts, window: &WindowCounts) -> WindowCounts {
    let mut out = step.clone();
    for (kind, w) in window.iter() {
        let s: &mut PoolWindow = &mut out[kind];
        s.add(w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PerPool;

    /// Per-bucket counts (15 slots: 14 bounds and +Inf) from (index, count) pairs.
    fn b(pairs: &[(usize, u64)]) -> Vec<u64> {
        let mut v = vec![0; LATENCY_BUCKETS_S.len() + 1];
        for &(i, n) in pairs {
            v[i] = n;
        }
        v
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what}: {a} != {b}"
        );
    }

    #[test]
    fn z_statistic_matches_scipy() {
        // python3 -c "import numpy as np; z=lambda x1,n1,x2,n2: (lambda p: (x1/n1-x2/n2)/np.sqrt(p*(1-p)*(1/n1+1/n2)))((x1+x2)/(n1+n2)); print(z(30,1000,50,10000), z(5,200,20,2000), z(12,400,10,400), z(1,100,0,100), z(0,100,3,100))"
        let cases = [
            ((30, 1000, 50, 10000), 8.871152367215),
            ((5, 200, 20, 2000), 1.9082398461264842),
            ((12, 400, 10, 400), 0.43238821676011113),
            ((1, 100, 0, 100), 1.002509414234171),
            ((0, 100, 3, 100), -1.74518918148945),
        ];
        for ((x1, n1, x2, n2), want) in cases {
            close(two_proportion_z(x1, n1, x2, n2), want, "z");
        }
        // Undefined: an empty side, or no variance.
        assert_eq!(two_proportion_z(0, 100, 0, 100), 0.0);
        assert_eq!(two_proportion_z(5, 100, 0, 0), 0.0);
        assert_eq!(two_proportion_z(100, 100, 50, 50), 0.0);
    }

    #[test]
    fn quantile_matches_prometheus_histogram_quantile() {
        // A literal Python port of Prometheus promql/quantile.go BucketQuantile:
        // python3 -c "import math; B=[0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1.0,2.5,5.0,10.0,math.inf]
        // def bq(q,c):
        //   cum=[sum(c[:i+1]) for i in range(len(c))]; r=q*cum[-1]
        //   b=next((i for i in range(len(B)-1) if cum[i]>=r),len(B)-1)
        //   if b==len(B)-1: return B[-2]
        //   s,e,n=(0.0,B[0],cum[0]) if b==0 else (B[b-1],B[b],cum[b]-cum[b-1]); r-= 0 if b==0 else cum[b-1]
        //   return s+(e-s)*(r/n)
        // ..." with the count lists below
        let cases: &[(&[(usize, u64)], f64)] = &[
            (&[(5, 100)], 0.02485),
            (&[(3, 90), (8, 10)], 0.23500000000000001),
            // Rank in +Inf: the highest finite bound.
            (&[(0, 95), (14, 5)], 10.0),
            // The lowest bucket starts at 0.
            (&[(0, 100)], 0.000495),
            // The rank exactly at a bucket's cumulative count: that bucket's upper bound.
            (&[(4, 50), (5, 49), (9, 1)], 0.025),
            (&[(9, 1)], 0.4975),
        ];
        for (pairs, want) in cases {
            let got = histogram_quantile(0.99, &b(pairs)).expect("observations");
            close(got, *want, &format!("{pairs:?}"));
        }
        assert_eq!(histogram_quantile(0.99, &b(&[])), None);
    }

    #[test]
    fn mann_whitney_matches_scipy() {
        // Samples expanded at each bucket's upper bound (ties within a bucket), then
        // python3 -c "from scipy.stats import mannwhitneyu, norm; r=mannwhitneyu(c, p,
        //   alternative='greater', method='asymptotic', use_continuity=True);
        //   print(r.statistic, norm.isf(r.pvalue))"
        type Case<'a> = (&'a [(usize, u64)], &'a [(usize, u64)], f64, f64);
        let cases: &[Case] = &[
            (
                &[(4, 50), (5, 30), (6, 20)],
                &[(4, 60), (5, 30), (6, 10)],
                5650.0,
                1.7706835550433178,
            ),
            (
                &[(6, 40), (7, 40), (8, 20)],
                &[(3, 50), (4, 30), (5, 15), (6, 5)],
                9900.0,
                12.216896753588223,
            ),
            (
                &[(5, 10), (6, 10)],
                &[(5, 10), (6, 10)],
                200.0,
                -0.015612494995995863,
            ),
        ];
        for (c, p, u, z) in cases {
            let mw = mann_whitney(&b(c), &b(p)).expect("samples");
            close(mw.u, *u, "U");
            assert!((mw.z - z).abs() < 1e-6, "z {} != {z}", mw.z);
        }
        assert_eq!(mann_whitney(&b(&[]), &b(&[(1, 1)])), None);
    }

    fn counts(c: (u64, u64, &[(usize, u64)]), p: (u64, u64, &[(usize, u64)])) -> WindowCounts {
        let pool = |(requests, errors, buckets): (u64, u64, &[(usize, u64)])| PoolWindow {
            requests,
            errors,
            buckets: b(buckets),
        };
        PerPool::from_fn(|k| match k {
            PoolKind::Canary => pool(c),
            PoolKind::Production => pool(p),
        })
    }

    #[test]
    fn judgement_table() {
        let s = RolloutConfig::default(); // min 50, hard 10, 1 %, 0.5 pts, z 2.33, 500 ms, 1.5x, 20 ms
        let fast: &[(usize, u64)] = &[(3, 100)]; // p99 ~5 ms
                                                 // (canary (req, err, buckets), production (...), verdict, finding)
        type Case<'a> = (
            (u64, u64, &'a [(usize, u64)]),
            (u64, u64, &'a [(usize, u64)]),
            Verdict,
            Finding,
        );
        let cases: &[Case] = &[
            (
                (100, 0, fast),
                (1000, 0, fast),
                Verdict::Pass,
                Finding::Healthy,
            ),
            // Low traffic: inconclusive, even with a few errors.
            (
                (49, 9, fast),
                (1000, 0, fast),
                Verdict::Inconclusive,
                Finding::InsufficientTraffic,
            ),
            // Low traffic but hard_fail_errors reached.
            (
                (12, 10, fast),
                (1000, 0, fast),
                Verdict::Fail,
                Finding::Errors,
            ),
            // Above max_percent.
            (
                (100, 2, fast),
                (1000, 0, fast),
                Verdict::Fail,
                Finding::Errors,
            ),
            // 1 % exactly is not above it, and only 0.2 points above production's 0.8 %.
            (
                (100, 1, fast),
                (1000, 8, fast),
                Verdict::Pass,
                Finding::Healthy,
            ),
            // 1 % against production's 0 %: 1 point of excess, z 3.16 > 2.33.
            (
                (100, 1, fast),
                (1000, 0, fast),
                Verdict::Fail,
                Finding::Errors,
            ),
            // No production traffic (100 % step): max_percent and p99_max alone.
            ((100, 1, fast), (0, 0, &[]), Verdict::Pass, Finding::Healthy),
            (
                (100, 0, &[(8, 100)]),
                (0, 0, &[]),
                Verdict::Pass,
                Finding::Healthy,
            ),
            // Latency: canary all in (0.25, 0.5], p99 ~0.4975 s < 500 ms but > 1.5 x 20 ms.
            (
                (100, 0, &[(9, 100)]),
                (1000, 0, fast),
                Verdict::Fail,
                Finding::Latency,
            ),
            // Latency above p99_max.
            (
                (100, 0, &[(10, 100)]),
                (1000, 0, &[(10, 1000)]),
                Verdict::Fail,
                Finding::Latency,
            ),
            // Slow production too: canary 1.2 x production's p99 passes.
            (
                (100, 0, &[(8, 100)]),
                (1000, 0, &[(8, 500), (7, 500)]),
                Verdict::Pass,
                Finding::Healthy,
            ),
        ];
        for (i, (c, p, verdict, finding)) in cases.iter().enumerate() {
            let w = counts(*c, *p);
            let j = judge(&s, &w, &w);
            assert_eq!(
                (j.verdict, j.finding),
                (*verdict, *finding),
                "case {i}: {j:?}"
            );
            assert!(!j.reasons.is_empty(), "case {i}");
        }
    }

    #[test]
    fn excess_over_production_needs_significance() {
        let mut s = RolloutConfig::default();
        s.error_rate.max_percent = 5.0;
        let fast: &[(usize, u64)] = &[(3, 100)];
        // 3 % of 5000 against 1.5 % of 10000: 1.5 points, z 6.2 -> fail.
        let w = counts((5000, 150, fast), (10000, 150, fast));
        let j = judge(&s, &w, &w);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Fail, Finding::Errors),
            "{j:?}"
        );
        // 4 % of 100 against 2 % of 100: 2 points but z 0.83 -> pass.
        let w = counts((100, 4, fast), (100, 2, fast));
        let j = judge(&s, &w, &w);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
        let z = j.numbers.iter().find(|(k, _)| k == "z").map(|(_, v)| *v);
        assert!(z.is_some_and(|z| (0.8..0.9).contains(&z)), "{z:?}");
    }

    #[test]
    fn mann_whitney_gates_only_a_large_significant_slowdown() {
        let mut s = RolloutConfig {
            mann_whitney: true,
            ..RolloutConfig::default()
        };
        s.latency.p99_max_ratio = 100.0; // keep the p99 rules out of it
        let slow = counts(
            (100, 0, &[(6, 40), (7, 40), (8, 20)]),
            (100, 0, &[(3, 50), (4, 30), (5, 15), (6, 5)]),
        );
        let j = judge(&s, &slow, &slow);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Fail, Finding::MannWhitney),
            "{j:?}"
        );
        let same = counts(
            (100, 0, &[(4, 50), (5, 30), (6, 20)]),
            (100, 0, &[(4, 60), (5, 30), (6, 10)]),
        );
        let j = judge(&s, &same, &same);
        assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
    }
}
