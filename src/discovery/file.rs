//! The static provider: the `servers` lists of the config file.
//!
//! The file's lists are also what every pool starts with under any provider (they serve until
//! the provider first answers: `state::Shared::new` feeds them), and a SIGHUP re-feeds them when
//! this provider is configured (`ProviderRole::servers_in_config_file`).

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;

use super::{Provider, Sink, Snapshot};
use crate::config::{PoolConfig, Pools, ServerSpec};
use crate::model::PerPool;
use crate::pool::WantedServer;

/// The servers listed in the config file.
pub struct FileServers;

#[async_trait]
impl Provider for FileServers {
    fn describe(&self) -> String {
        "config file".to_string()
    }

    /// The lists serve from the start (every provider starts from them) and a SIGHUP applies
    /// them again (`state::Shared::apply_file`); there is nothing to follow, so this reports
    /// the source read once, with nothing of its own: the file's servers, and the routing
    /// overrides in force (the weight a finished rollout left), stay.
    async fn run(self: Box<Self>, sink: Arc<dyn Sink>, _shutdown: ShutdownWatch) {
        sink.apply(Ok(Snapshot::default()));
    }
}

/// The file's `servers` lists as the wanted servers of each pool.
pub fn servers(pools: &Pools) -> PerPool<Vec<WantedServer>> {
    PerPool::from_fn(|kind| wanted(pools.get(kind)))
}

/// One pool's `servers` list as wanted servers.
pub fn wanted(pc: &PoolConfig) -> Vec<WantedServer> {
    from_specs(&pc.servers)
}

/// Server entries of the config file's shape (`"host:port"` or `{ addr, weight }`) as wanted
/// servers; also the entries of the `file_watch` provider's file.
pub fn from_specs(specs: &[ServerSpec]) -> Vec<WantedServer> {
    specs
        .iter()
        .map(|s| WantedServer {
            addr: s.addr.clone(),
            weight: s.weight,
            draining: false,
        })
        .collect()
}
