//! The text of `ctl rollout status` and `history` (or their JSON).

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::Percent;
use crate::rollout::HistoryEntry;
use crate::store;

use super::View;

pub(super) fn print_view(view: &View, json: bool) {
    if json {
        println!("{}", serde_json::to_string(view).unwrap_or_default());
    } else {
        print!("{}", format_view(view, store::now_ms()));
    }
}

pub(super) fn steps_text(steps: &[Percent]) -> String {
    steps
        .iter()
        .map(|p| p.as_f64().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A figure as an operator reads it: integers bare, others with at most 3 decimals.
pub(super) fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One history line: `2026-12-07T10:40:00Z  window 3  fail  10 %  reasons  (numbers)`, the
/// time in UTC.
pub(super) fn entry_line(e: &HistoryEntry) -> String {
    let what = match e.window {
        Some(w) => format!("window {w}"),
        None => "command".to_string(),
    };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms);
    let mut line = format!(
        "{}  {what:<10} {:<12} {:>6} %  {}",
        humantime::format_rfc3339_seconds(at),
        e.verdict,
        e.weight.as_f64(),
        e.reasons.join("; ")
    );
    if !e.numbers.is_empty() {
        let nums: Vec<String> = e
            .numbers
            .iter()
            .map(|(k, v)| format!("{k}={}", number(*v)))
            .collect();
        let _ = write!(line, "  ({})", nums.join(" "));
    }
    line
}

/// The text of `ctl rollout status`.
pub(super) fn format_view(view: &View, now_ms: u64) -> String {
    let mut out = String::new();
    let Some(s) = &view.state else {
        out.push_str("no rollout was started (ctl rollout start)\n");
        return out;
    };
    let n = s.settings.steps.len();
    let _ = writeln!(out, "rollout {}: {} ({})", s.id, s.phase.as_str(), s.reason);
    let _ = writeln!(
        out,
        "weight:   {} %  step {}/{} of [{}]",
        s.weight.as_f64(),
        (s.step + 1).min(n),
        n,
        steps_text(&s.settings.steps)
    );
    let _ = writeln!(
        out,
        "salt:     fingerprint {}",
        if s.salt_fingerprint.is_empty() {
            "not sent (an older proxy)"
        } else {
            &s.salt_fingerprint
        }
    );
    if let Some(shadow) = &s.shadow {
        let how = if shadow.done {
            "passed: users are routed by the steps".to_string()
        } else {
            format!(
                "copying {} % of production's requests to canary, no user routed there; \
                 passing {}/{} windows",
                shadow.settings.percent.as_f64(),
                s.passes_in_step,
                shadow.settings.windows
            )
        };
        let _ = writeln!(out, "shadow:   {how}");
        let compare: Vec<&str> = shadow.settings.compare.iter().map(|c| c.as_str()).collect();
        let _ = writeln!(
            out,
            "          compares {} (mismatches over {} %, slower by {} and {} %); methods {}",
            compare.join(", "),
            number(shadow.settings.max_mismatch_percent),
            humantime::format_duration(shadow.settings.max_slowdown),
            number(shadow.settings.max_slowdown_percent),
            shadow.settings.methods.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "checks:   failed {}/{}, passing in step {}/{}, inconclusive in a row {}/{}",
        s.failed,
        s.settings.threshold,
        s.passes_in_step,
        s.settings.windows_per_step,
        s.inconclusive_run,
        s.settings.max_inconclusive
    );
    let age = Duration::from_millis(now_ms.saturating_sub(s.started_ms) / 1000 * 1000);
    let _ = writeln!(
        out,
        "windows:  interval {}, next to judge {}, started {} ago",
        humantime::format_duration(s.settings.interval),
        s.next_window,
        humantime::format_duration(age)
    );
    let _ = writeln!(
        out,
        "leader:   {}{}",
        view.leader.as_deref().unwrap_or("none"),
        view.replica
            .as_deref()
            .map(|r| format!(" (answered by {r})"))
            .unwrap_or_default()
    );
    let verdicts: Vec<&HistoryEntry> = view
        .history
        .iter()
        .filter(|e| e.rollout_id == s.id)
        .collect();
    if verdicts.is_empty() {
        out.push_str("last verdicts: none yet\n");
    } else {
        out.push_str("last verdicts:\n");
        for e in verdicts {
            let _ = writeln!(out, "  {}", entry_line(e));
        }
    }
    out
}
