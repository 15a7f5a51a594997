//! The static provider: the `servers` lists of the config file.
//!
//! The file's lists are also what every pool starts with under any provider (they serve until
//! the provider first answers: `state::Shared::new` feeds them), and a SIGHUP re-feeds them when
//! this provider is configured.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;

use super::{Provider, Sink};
use crate::config::{PoolConfig, Pools};
use crate::model::PoolKind;
use crate::pool::WantedServer;

/// The servers listed in the config file.
pub struct FileServers;

#[async_trait]
impl Provider for FileServers {
    fn describe(&self) -> String {
        "config file".to_string()
    }

    /// The lists were fed when the state was built (every provider starts from them) and a
    /// SIGHUP re-feeds them ([`feed`]); there is nothing to follow, so this only reports the
    /// source read.
    async fn run(self: Box<Self>, sink: Arc<dyn Sink>, _shutdown: ShutdownWatch) {
        sink.synced();
    }
}

/// Make the file's `servers` lists the wanted servers of each pool.
pub fn feed(pools: &Pools, sink: &dyn Sink) {
    for kind in PoolKind::ALL {
        sink.set_wanted(kind, wanted(pools.get(kind)));
    }
}

/// One pool's `servers` list as wanted servers.
pub fn wanted(pc: &PoolConfig) -> Vec<WantedServer> {
    pc.servers
        .iter()
        .map(|s| WantedServer {
            addr: s.addr.clone(),
            weight: s.weight,
            draining: false,
        })
        .collect()
}
