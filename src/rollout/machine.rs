//! The rollout's state machine for judged windows (pure: the engine reads the clock and the
//! coordinator, this decides). Operator commands and the start are in `mod.rs`
//! ([`RolloutState::command`], [`RolloutState::start`]).
//!
//! ```text
//! idle -> [shadow: weight 0, copies judged in pairs -pass x shadow.windows->]
//!         progressing(step 0) -pass x windows_per_step-> progressing(step 1) -> ... -> succeeded
//!            |  fail: failed += 1, weight held; failed == threshold -> rolled_back (weight 0)
//!            |  inconclusive: run += 1; run == max_inconclusive -> paused ("insufficient traffic")
//!            '- pause/resume/abort/promote by hand
//! ```

use super::judge::{Judgement, Verdict};
use super::{HistoryEntry, Phase, RolloutState, WindowCounts};
use crate::model::Percent;

/// The state after judging `window` (`counts` are its counts, `judgement` its verdict), and
/// the history entry that records it. Only meaningful for a progressing rollout whose
/// `next_window` is `window`.
pub fn transition(
    state: &RolloutState,
    window: u64,
    counts: &WindowCounts,
    judgement: &Judgement,
    now_ms: u64,
) -> (RolloutState, HistoryEntry) {
    let mut next = state.clone();
    let settings = &state.settings;
    next.next_window = window + 1;
    next.updated_ms = now_ms;
    next.version = state.version + 1;
    for (kind, w) in counts.iter() {
        next.step_counts[kind].add(w);
    }
    match judgement.verdict {
        Verdict::Pass if state.in_shadow().is_some() => {
            next.inconclusive_run = 0;
            next.passes_in_step += 1;
            let needed = state.in_shadow().map_or(1, |s| s.windows.max(1));
            if next.passes_in_step >= needed {
                // The shadow step passed: step 1 sends the first real users.
                if let Some(shadow) = next.shadow.as_mut() {
                    shadow.done = true;
                }
                next.weight = settings.steps.first().copied().unwrap_or_default();
                next.passes_in_step = 0;
                next.step_first_window = window + 1;
                next.step_counts = WindowCounts::default();
            }
        }
        Verdict::Pass => {
            next.inconclusive_run = 0;
            next.passes_in_step += 1;
            if next.passes_in_step >= settings.windows_per_step.max(1) {
                if state.step + 1 >= settings.steps.len() {
                    next.phase = Phase::Succeeded;
                    next.reason = "every step passed".into();
                } else {
                    next.step = state.step + 1;
                    next.weight = settings.steps[next.step];
                    next.passes_in_step = 0;
                    next.step_first_window = window + 1;
                    next.step_counts = WindowCounts::default();
                }
            }
        }
        Verdict::Fail => {
            next.inconclusive_run = 0;
            next.failed += 1;
            if next.failed >= settings.threshold.max(1) {
                next.phase = Phase::RolledBack;
                next.reason = judgement.finding.as_str().into();
                next.weight = Percent::default();
            }
        }
        Verdict::Inconclusive => {
            next.inconclusive_run += 1;
            if next.inconclusive_run >= settings.max_inconclusive.max(1) {
                next.phase = Phase::Paused;
                next.reason = "insufficient traffic".into();
            }
        }
    }
    let entry = HistoryEntry {
        rollout_id: state.id.clone(),
        window: Some(window),
        at_ms: now_ms,
        verdict: judgement.verdict.as_str().into(),
        reasons: judgement.reasons.clone(),
        numbers: judgement.numbers.clone(),
        phase: next.phase,
        step: next.step,
        weight: next.weight,
    };
    (next, entry)
}

/// The state after skipping `window` unjudged: no replica reported it (the coordinator was
/// unreachable then), so its counts are unknown, which is not the same as no traffic: it
/// counts neither as inconclusive nor as anything else.
pub fn skip(state: &RolloutState, window: u64, now_ms: u64) -> (RolloutState, HistoryEntry) {
    let mut next = state.clone();
    next.next_window = window + 1;
    next.updated_ms = now_ms;
    next.version = state.version + 1;
    let entry = HistoryEntry {
        rollout_id: state.id.clone(),
        window: Some(window),
        at_ms: now_ms,
        verdict: "skipped".into(),
        reasons: vec!["no replica reported this window".into()],
        numbers: Vec::new(),
        phase: next.phase,
        step: next.step,
        weight: next.weight,
    };
    (next, entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PoolKind;
    use crate::rollout::judge::Finding;
    use crate::rollout::RolloutSettings;
    use crate::rollout::{Command, CommandRefused, PoolWindow};

    fn pct(p: u32) -> Percent {
        Percent::from_basis_points(p * 100)
    }

    fn settings() -> RolloutSettings {
        RolloutSettings {
            steps: vec![pct(10), pct(50), pct(100)],
            windows_per_step: 2,
            threshold: 2,
            max_inconclusive: 3,
            ..RolloutSettings::default()
        }
    }

    fn start() -> RolloutState {
        RolloutState::start("r-1".into(), settings(), "salt".into(), 1_000, None).expect("start")
    }

    fn j(verdict: Verdict) -> Judgement {
        let finding = match verdict {
            Verdict::Pass => Finding::Healthy,
            Verdict::Fail => Finding::Latency,
            Verdict::Inconclusive => Finding::InsufficientTraffic,
        };
        Judgement {
            verdict,
            finding,
            reasons: vec!["why".into()],
            numbers: vec![("n".into(), 1.0)],
        }
    }

    fn one_request() -> WindowCounts {
        let mut c = WindowCounts::default();
        c[PoolKind::Canary] = PoolWindow {
            requests: 1,
            errors: 0,
            buckets: vec![1],
            ..PoolWindow::default()
        };
        c
    }

    /// Apply `verdicts` in order from `s`, returning every state.
    fn run(mut s: RolloutState, verdicts: &[Verdict]) -> Vec<RolloutState> {
        let mut out = Vec::new();
        for v in verdicts {
            let w = s.next_window;
            let (next, entry) = transition(&s, w, &one_request(), &j(*v), 2_000 + w);
            assert_eq!(entry.window, Some(w));
            assert_eq!(entry.verdict, v.as_str());
            assert_eq!(
                (entry.phase, entry.step, entry.weight),
                (next.phase, next.step, next.weight)
            );
            assert_eq!(next.version, s.version + 1);
            assert_eq!(next.next_window, w + 1);
            s = next;
            out.push(s.clone());
        }
        out
    }

    use Verdict::{Fail as F, Inconclusive as I, Pass as P};

    fn start_shadow() -> RolloutState {
        let settings = RolloutSettings {
            shadow: Some(super::super::shadow::ShadowSettings {
                windows: 2,
                ..Default::default()
            }),
            ..settings()
        };
        RolloutState::start("r-s".into(), settings, "salt".into(), 1_000, None).expect("start")
    }

    #[test]
    fn a_shadow_step_routes_no_one_until_its_windows_pass() {
        let s = start_shadow();
        assert_eq!(s.weight, pct(0));
        assert!(s.in_shadow().is_some());
        assert!(s.settings.shadow.is_none(), "moved into the state");
        let states = run(s, &[P, I, P, P, P]);
        let got: Vec<_> = states
            .iter()
            .map(|s| (s.weight, s.in_shadow().is_some(), s.step, s.passes_in_step))
            .collect();
        assert_eq!(
            got,
            [
                (pct(0), true, 0, 1),
                (pct(0), true, 0, 1),
                // The second pass ends the shadow step: step 1's weight, its own counts.
                (pct(10), false, 0, 0),
                (pct(10), false, 0, 1),
                (pct(50), false, 1, 0),
            ]
        );
        assert_eq!(states[2].step_first_window, 3);
        assert_eq!(states[2].step_counts, WindowCounts::default());
    }

    #[test]
    fn a_rollback_in_the_shadow_step_never_routed_anyone() {
        let states = run(start_shadow(), &[F, P, F]);
        let last = states.last().expect("states");
        assert_eq!(last.phase, Phase::RolledBack);
        assert!(states.iter().all(|s| s.weight == pct(0)));
        assert_eq!(last.shadow.as_ref().map(|s| s.done), Some(false));
        // Ended: nothing copies any more.
        assert!(last.in_shadow().is_none());
    }

    #[test]
    fn passes_advance_steps_and_the_last_succeeds() {
        let states = run(start(), &[P, P, P, P, P, P]);
        // (phase, step, weight, passes_in_step, step_first_window)
        let got: Vec<_> = states
            .iter()
            .map(|s| {
                (
                    s.phase,
                    s.step,
                    s.weight,
                    s.passes_in_step,
                    s.step_first_window,
                )
            })
            .collect();
        use Phase::{Progressing as G, Succeeded as S};
        assert_eq!(
            got,
            [
                (G, 0, pct(10), 1, 0),
                (G, 1, pct(50), 0, 2),
                (G, 1, pct(50), 1, 2),
                (G, 2, pct(100), 0, 4),
                (G, 2, pct(100), 1, 4),
                (S, 2, pct(100), 2, 4),
            ]
        );
        // Step counts: reset on a new step, summed within one.
        assert_eq!(states[1].step_counts, WindowCounts::default());
        assert_eq!(states[2].step_counts[PoolKind::Canary].requests, 1);
        assert_eq!(states[4].step_counts[PoolKind::Canary].requests, 1);
    }

    #[test]
    fn failures_hold_the_weight_and_roll_back_at_threshold() {
        let states = run(start(), &[P, F, P, F]);
        assert_eq!(states[1].phase, Phase::Progressing);
        assert_eq!(
            (states[1].failed, states[1].weight, states[1].step),
            (1, pct(10), 0)
        );
        // A pass after a failure still advances (threshold counts cumulative failures).
        assert_eq!((states[2].step, states[2].weight), (1, pct(50)));
        let last = &states[3];
        assert_eq!(last.phase, Phase::RolledBack);
        assert_eq!(last.weight, Percent::default());
        assert_eq!(last.failed, 2);
        assert_eq!(last.reason, "latency");
    }

    #[test]
    fn inconclusive_pauses_never_rolls_back_and_any_verdict_resets_the_run() {
        let states = run(start(), &[I, I, P, I, I, F, I, I, I]);
        let runs: Vec<_> = states.iter().map(|s| s.inconclusive_run).collect();
        assert_eq!(runs, [1, 2, 0, 1, 2, 0, 1, 2, 3]);
        let last = &states[8];
        assert_eq!(last.phase, Phase::Paused);
        assert_eq!(last.reason, "insufficient traffic");
        assert_eq!(last.weight, pct(10), "paused holds the weight");
        assert!(states.iter().all(|s| s.phase != Phase::RolledBack));
    }

    #[test]
    fn skip_moves_on_without_counting() {
        let s = start();
        let (next, entry) = skip(&s, 0, 5);
        assert_eq!(next.next_window, 1);
        assert_eq!(
            (next.failed, next.inconclusive_run, next.passes_in_step),
            (0, 0, 0)
        );
        assert_eq!(entry.verdict, "skipped");
        assert_eq!(next.version, s.version + 1);
    }

    #[test]
    fn start_refuses_while_active_and_carries_the_version() {
        let s = start();
        assert_eq!(
            (s.phase, s.weight, s.step, s.version),
            (Phase::Progressing, pct(10), 0, 1)
        );
        let again = RolloutState::start("r-2".into(), settings(), "s".into(), 5, Some(&s));
        assert!(matches!(again, Err(CommandRefused(_))));
        let (done, _) = s.command(Command::Abort, 10).expect("abort");
        let again = RolloutState::start("r-2".into(), settings(), "s".into(), 20, Some(&done))
            .expect("start after abort");
        assert_eq!(again.version, done.version + 1);
        assert_eq!((again.failed, again.next_window), (0, 0));
        let no_steps = RolloutSettings {
            steps: Vec::new(),
            ..settings()
        };
        assert!(RolloutState::start("r".into(), no_steps, "s".into(), 1, None).is_err());
    }

    #[test]
    fn commands_table() {
        use Command::*;
        use Phase::*;
        let progressing = start();
        let (paused, _) = progressing.command(Pause, 2_000).expect("pause");
        let (rolled, _) = transition(
            &RolloutState {
                failed: 1,
                ..progressing.clone()
            },
            0,
            &WindowCounts::default(),
            &j(F),
            2_000,
        );
        assert_eq!(rolled.phase, RolledBack);
        // (from, command, Some((phase, weight)) or None when refused)
        type Case<'a> = (&'a RolloutState, Command, Option<(Phase, Percent)>);
        let cases: Vec<Case> = vec![
            (&progressing, Pause, Some((Paused, pct(10)))),
            (&progressing, Resume, None),
            (&progressing, Abort, Some((Aborted, pct(0)))),
            (&progressing, Promote, Some((Succeeded, pct(100)))),
            (&paused, Pause, None),
            (&paused, Resume, Some((Progressing, pct(10)))),
            (&paused, Abort, Some((Aborted, pct(0)))),
            (&paused, Promote, Some((Succeeded, pct(100)))),
            (&rolled, Pause, None),
            (&rolled, Resume, None),
            (&rolled, Abort, None),
            (&rolled, Promote, None),
        ];
        for (i, (from, cmd, want)) in cases.into_iter().enumerate() {
            match (from.command(cmd, 7_000), want) {
                (Ok((next, entry)), Some((phase, weight))) => {
                    assert_eq!((next.phase, next.weight), (phase, weight), "case {i}");
                    assert_eq!(next.version, from.version + 1, "case {i}");
                    assert_eq!(entry.verdict, cmd.as_str(), "case {i}");
                    assert_eq!(entry.window, None, "case {i}");
                }
                (Err(_), None) => {}
                (got, want) => panic!(
                    "case {i}: {cmd:?} from {:?}: {got:?}, want {want:?}",
                    from.phase
                ),
            }
        }
        // Resume judges from the current window on: the paused ones are never judged.
        let (resumed, _) = paused.command(Resume, 1_000 + 95_000).expect("resume");
        assert_eq!(
            resumed.next_window, 3,
            "30 s windows: 95 s after the start is window 3"
        );
        assert_eq!(resumed.inconclusive_run, 0);
    }
}
