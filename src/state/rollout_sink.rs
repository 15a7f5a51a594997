//! How the rollout engine reaches the process: `Shared` as its [`RolloutSink`]. A running
//! rollout's weight and frozen salt are one more layer of the routing policy
//! ([`Change::Rollout`]), so the request path reads them as data from the `Live` snapshot and
//! never asks the rollout.

use super::{Change, Shared};
use crate::metrics::Metrics;
use crate::rollout::engine::{RolloutRoute, RolloutSink};
use crate::rollout::window::WindowRecorder;

impl RolloutSink for Shared {
    fn set_route(&self, route: Option<RolloutRoute>) {
        if let Err(e) = self.relayer(Change::Rollout(route)) {
            log::error!("rollout routing not applied: {e}");
        }
    }

    fn recorder(&self) -> &WindowRecorder {
        &self.rollout_windows
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
