//! Arguments, flags and rendering of `ctl rollout`, without Redis or a proxy.

use std::time::Duration;

use super::args::apply_flags;
use super::render::format_view;
use super::*;
use crate::cli::RolloutCommand;
use crate::model::Percent;
use crate::rollout::{HistoryEntry, Phase, RolloutSettings, RolloutState};
use crate::routing::salt_fingerprint;

fn flags(keys: &[(&'static str, &str)]) -> StartFlags {
    StartFlags {
        keys: keys.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    }
}

#[test]
fn steps_are_validated_naming_the_value() {
    let s = apply_flags(
        RolloutSettings::default(),
        &flags(&[("steps", "5, 10,25%,100")]),
    )
    .expect("valid");
    assert_eq!(
        s.steps,
        [5, 10, 25, 100]
            .map(|p| Percent::from_basis_points(p * 100))
            .to_vec()
    );
    for (bad, named) in [
        ("5,150", "150"),
        ("10,5", "5"),
        ("5,5", "5"),
        ("5,,10", "``"),
        ("five", "five"),
    ] {
        let e = apply_flags(RolloutSettings::default(), &flags(&[("steps", bad)]))
            .expect_err(bad)
            .to_string();
        assert!(e.contains("--steps") && e.contains(named), "{bad}: {e}");
    }
    let many: Vec<String> = (0..=crate::config::MAX_ROLLOUT_STEPS)
        .map(|i| format!("{}", i as f64 / 2.0 + 0.5))
        .collect();
    let e = apply_flags(
        RolloutSettings::default(),
        &flags(&[("steps", &many.join(","))]),
    )
    .expect_err("too many");
    assert!(e.to_string().contains("--steps"), "{e}");
}

#[test]
fn start_flags_override_the_config_and_are_bounded() {
    let base = RolloutSettings {
        threshold: 7,
        ..RolloutSettings::default()
    };
    let s = apply_flags(
        base,
        &flags(&[
            ("steps", "10"),
            ("interval", "2s"),
            ("windows_per_step", "2"),
            ("min_requests", "9"),
            ("max_inconclusive", "4"),
            ("hard_fail_errors", "3"),
        ]),
    )
    .expect("valid");
    assert_eq!(s.steps, vec![Percent::from_basis_points(1000)]);
    assert_eq!(s.interval, Duration::from_secs(2));
    assert_eq!(s.windows_per_step, 2);
    assert_eq!(s.threshold, 7, "unset flags keep the config's value");
    assert_eq!(
        (s.min_requests, s.max_inconclusive, s.hard_fail_errors),
        (9, 4, 3)
    );

    for (key, value, named) in [
        ("interval", "10ms", "--interval: must be at least 100ms"),
        ("interval", "30", "--interval: `30` has no unit"),
        ("threshold", "0", "--threshold: must be 1..=10000, got 0"),
        (
            "windows_per_step",
            "10001",
            "--windows-per-step: must be 1..=10000",
        ),
        (
            "max_inconclusive",
            "x",
            "--max-inconclusive: `x` is not a whole number",
        ),
        (
            "hard_fail_errors",
            "0",
            "--hard-fail-errors: must be at least 1",
        ),
        ("steps", "", "--steps"),
    ] {
        let e = apply_flags(RolloutSettings::default(), &flags(&[(key, value)]))
            .expect_err(named)
            .to_string();
        assert!(e.contains(named), "{e}");
    }
}

/// Every key the admin endpoint's start takes is a `ctl rollout start` flag.
#[test]
fn ctl_start_has_a_flag_for_every_admin_key() {
    use clap::{CommandFactory, Parser};
    let names = crate::rollout::start_key_names();
    let cli = crate::cli::Cli::command();
    let start = cli
        .find_subcommand("ctl")
        .and_then(|c| c.find_subcommand("rollout"))
        .and_then(|c| c.find_subcommand("start"))
        .expect("ctl rollout start");
    for key in &names {
        let long = key.replace('_', "-");
        assert!(
            start.get_arguments().any(|a| a.get_long() == Some(&long)),
            "no --{long}"
        );
    }
    let mut argv = vec!["canary-lb".to_string(), "ctl".into(), "rollout".into()];
    argv.push("start".into());
    for key in names.iter().rev() {
        argv.push(format!("--{}", key.replace('_', "-")));
        argv.push("1".into());
    }
    let cli = crate::cli::Cli::try_parse_from(argv).expect("every flag");
    let crate::cli::Command::Ctl(ctl) = cli.command else {
        panic!("not ctl");
    };
    let crate::cli::CtlCommand::Rollout(rollout) = ctl.command else {
        panic!("not rollout");
    };
    let RolloutCommand::Start(all) = rollout.command else {
        panic!("not start");
    };
    let keys: Vec<&str> = all.keys().iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, names);
}

const SALT: &str = "unit-test-distinctive-salt";

fn view() -> View {
    let mut state = RolloutState::start(
        "r-1".into(),
        RolloutSettings::default(),
        SALT.into(),
        1_000,
        None,
    )
    .expect("start");
    state.step = 1;
    state.weight = Percent::from_basis_points(1000);
    state.failed = 1;
    state.next_window = 4;
    let entry = HistoryEntry {
        rollout_id: "r-1".into(),
        window: Some(3),
        at_ms: 91_000,
        verdict: "fail".into(),
        reasons: vec!["canary error rate 4.1 % > 1 %".into()],
        numbers: vec![
            ("canary_requests".into(), 120.0),
            ("canary_error_percent".into(), 4.1666),
        ],
        phase: Phase::Progressing,
        step: 1,
        weight: state.weight,
    };
    let mut old = entry.clone();
    old.rollout_id = "r-0".into();
    View::new(
        Some(&state),
        vec![old, entry],
        Some("host-1-ab12".into()),
        None,
    )
}

#[test]
fn status_shows_phase_weight_step_checks_leader_and_verdicts() {
    let text = format_view(&view(), 121_500);
    for needle in [
        "rollout r-1: progressing (started)",
        "weight:   10 %  step 2/5 of [5, 10, 25, 50, 100]",
        "failed 1/3",
        "interval 30s, next to judge 4, started 2m ago",
        "leader:   host-1-ab12",
        "window 3",
        "fail",
        "canary error rate 4.1 % > 1 %",
        "canary_requests=120 canary_error_percent=4.167",
        "1970-01-01T00:01:31Z  window 3",
        &format!("salt:     fingerprint {}", salt_fingerprint(SALT)),
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    assert!(!text.contains(SALT), "the salt in clear:\n{text}");
    let json = serde_json::to_string(&view()).expect("json");
    assert!(!json.contains(SALT), "the salt in clear: {json}");
    assert_eq!(
        text.matches("window 3").count(),
        1,
        "only this rollout's verdicts:\n{text}"
    );
    let none = format_view(
        &View {
            state: None,
            history: Vec::new(),
            leader: None,
            replica: None,
        },
        0,
    );
    assert!(none.contains("no rollout"), "{none}");
}

#[test]
fn the_view_reads_the_admin_endpoints_json() {
    let v = view();
    let json = serde_json::to_string(&View {
        replica: Some("me".into()),
        ..v.clone()
    })
    .expect("json");
    let back: View = serde_json::from_str(&json).expect("parse");
    assert_eq!(back.state, v.state);
    assert_eq!(back.replica.as_deref(), Some("me"));
    let minimal: View =
        serde_json::from_str(r#"{"state": null, "history": [], "leader": null}"#).expect("parse");
    assert!(minimal.state.is_none());
}

#[test]
fn status_shows_the_shadow_step_with_its_numbers() {
    let settings = RolloutSettings {
        shadow: Some(crate::rollout::shadow::ShadowSettings::default()),
        ..RolloutSettings::default()
    };
    let mut state =
        RolloutState::start("r-2".into(), settings, SALT.into(), 1_000, None).expect("start");
    state.passes_in_step = 2;
    let view = View::new(Some(&state), Vec::new(), None, None);
    let text = format_view(&view, 5_000);
    for needle in [
        "weight:   0 %",
        "shadow:   copying 10 % of production's requests to canary, no user routed there; \
         passing 2/5 windows",
        "compares status, latency (mismatches over 1 %, slower by 25ms and 20 %); methods GET, HEAD",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    state.shadow.as_mut().expect("shadow").done = true;
    let text = format_view(&View::new(Some(&state), Vec::new(), None, None), 5_000);
    assert!(text.contains("shadow:   passed"), "{text}");
}
