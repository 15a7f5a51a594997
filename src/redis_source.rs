//! Redis discovery: follows the store (see `store.rs`) and feeds the pools. (Being written.)

use std::sync::Arc;

use pingora_core::server::ShutdownWatch;

use crate::state::Shared;

pub async fn run(_shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let _ = shutdown.changed().await;
}
