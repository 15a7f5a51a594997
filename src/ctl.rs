//! `canary-lb ctl`: writes to the Redis control plane. (Being written.)

use crate::cli::CtlArgs;

pub fn run(_args: CtlArgs) -> anyhow::Result<()> {
    anyhow::bail!("ctl is not built yet")
}

/// Register `addr` in `pool` with a lease and renew it until SIGTERM/SIGINT, then deregister.
/// Used by `ctl register --heartbeat` and by `canary-lb app --register-redis`.
pub async fn heartbeat(
    _redis_url: &str,
    _namespace: &str,
    _pool: &str,
    _addr: &str,
    _weight: Option<i64>,
    _ttl: std::time::Duration,
) -> anyhow::Result<()> {
    anyhow::bail!("heartbeat is not built yet")
}
