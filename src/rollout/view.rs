//! A rollout as every output shows it: the admin endpoint (`/status`, `GET /rollout`, each
//! `POST /rollout/...` answer) and `ctl rollout` (text and `--json`).
//!
//! The stored [`RolloutState`] carries the routing salt in clear, because every replica routes
//! by it. Nothing else may: with the documented bucket hash, the salt tells anyone which user ids
//! land in canary. So no output serializes a `RolloutState`; each goes through [`StateView`],
//! which has the same fields with the salt replaced by its fingerprint
//! ([`crate::routing::salt_fingerprint`], the one `/status` shows for the routing salt), and
//! [`RolloutView`], the whole document. `From<&RolloutState>` names every field, so a field
//! added to the state does not compile until someone decides whether outputs show it.
//!
//! Reads are lenient (unknown fields ignored, the fingerprint optional), so a `ctl` reads the
//! answer of a proxy one version apart.

use serde::{Deserialize, Serialize};

use super::settings::RolloutSettings;
use super::shadow::ShadowStage;
use super::{HistoryEntry, Phase, Resumed, RolloutState, WindowCounts};
use crate::model::Percent;

/// The fields of a [`RolloutState`] an output shows: all but the salt, which is shown only as
/// `salt_fingerprint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateView {
    pub id: String,
    pub phase: Phase,
    pub reason: String,
    pub settings: RolloutSettings,
    pub step: usize,
    pub weight: Percent,
    /// The fingerprint of the salt the rollout routes with (empty from a proxy that predates
    /// it: such a proxy sent the salt itself, which is never read).
    #[serde(default)]
    pub salt_fingerprint: String,
    pub started_ms: u64,
    pub next_window: u64,
    pub step_first_window: u64,
    pub passes_in_step: u32,
    pub failed: u32,
    pub inconclusive_run: u32,
    pub step_counts: WindowCounts,
    pub updated_ms: u64,
    pub version: u64,
    /// Set when a restarted process took the rollout over from its state file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_file: Option<Resumed>,
    /// The shadow step, when the rollout has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStage>,
}

impl From<&RolloutState> for StateView {
    fn from(s: &RolloutState) -> StateView {
        // Every field by name (no `..`): a new field must be placed here, or it fails to build.
        let RolloutState {
            id,
            phase,
            reason,
            settings,
            step,
            weight,
            salt,
            started_ms,
            next_window,
            step_first_window,
            passes_in_step,
            failed,
            inconclusive_run,
            step_counts,
            updated_ms,
            version,
            resumed_from_file,
            shadow,
        } = s;
        StateView {
            id: id.clone(),
            phase: *phase,
            reason: reason.clone(),
            settings: settings.clone(),
            step: *step,
            weight: *weight,
            salt_fingerprint: crate::routing::salt_fingerprint(salt),
            started_ms: *started_ms,
            next_window: *next_window,
            step_first_window: *step_first_window,
            passes_in_step: *passes_in_step,
            failed: *failed,
            inconclusive_run: *inconclusive_run,
            step_counts: step_counts.clone(),
            updated_ms: *updated_ms,
            version: *version,
            resumed_from_file: resumed_from_file.clone(),
            shadow: shadow.clone(),
        }
    }
}

/// The rollout document: the body of `GET /rollout` and of every command's answer, the
/// `rollout` object of `/status`, and what `ctl rollout status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    pub state: Option<StateView>,
    /// Newest last.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    #[serde(default)]
    pub leader: Option<String>,
    /// The replica that answered (admin endpoint only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl RolloutView {
    pub fn new(
        state: Option<&RolloutState>,
        history: Vec<HistoryEntry>,
        leader: Option<String>,
        replica: Option<String>,
    ) -> RolloutView {
        RolloutView {
            state: state.map(StateView::from),
            history,
            leader,
            replica,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &str = "view-test-distinctive-salt";

    fn state() -> RolloutState {
        RolloutState::start(
            "r-7".into(),
            RolloutSettings::default(),
            SALT.into(),
            1_000,
            None,
        )
        .expect("start")
    }

    #[test]
    fn the_view_shows_the_fingerprint_never_the_salt() {
        let s = state();
        let json = serde_json::to_string(&RolloutView::new(Some(&s), Vec::new(), None, None))
            .expect("json");
        assert!(!json.contains(SALT), "{json}");
        assert!(!json.contains("\"salt\""), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("parse");
        assert_eq!(
            v["state"]["salt_fingerprint"],
            crate::routing::salt_fingerprint(SALT),
            "{v}"
        );
        assert_eq!(v["state"]["id"], "r-7");
        assert_eq!(v["state"]["phase"], "progressing");
        // The debug form (what a log line or a panic would print) holds no salt either.
        assert!(!format!("{:?}", StateView::from(&s)).contains(SALT));
    }

    #[test]
    fn views_read_back_and_an_older_proxys_answer_still_reads() {
        let s = state();
        let view = RolloutView::new(Some(&s), Vec::new(), Some("a".into()), Some("b".into()));
        let back: RolloutView =
            serde_json::from_str(&serde_json::to_string(&view).expect("json")).expect("parse");
        assert_eq!(back.state, view.state);
        assert_eq!(back.replica.as_deref(), Some("b"));
        // A proxy that predates the view sent the state itself: it still reads, salt dropped.
        let old = serde_json::json!({ "state": s, "history": [], "leader": null }).to_string();
        let back: RolloutView = serde_json::from_str(&old).expect("parse");
        let state = back.state.expect("state");
        assert_eq!(state.id, "r-7");
        assert!(state.salt_fingerprint.is_empty());
        assert!(!format!("{state:?}").contains(SALT));
        let minimal: RolloutView =
            serde_json::from_str(r#"{"state": null}"#).expect("parse minimal");
        assert!(minimal.state.is_none() && minimal.history.is_empty());
    }
}
