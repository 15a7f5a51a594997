//! `canary-lb app --register-redis`: keep the app registered while it runs (a lease renewed
//! by a heartbeat) and deregister it on exit.

use std::time::Duration;

use async_trait::async_trait;
use log::{error, info};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// Lease of an app registered with `--register-redis`; the heartbeat renews it every third.
pub(super) const REGISTRATION_TTL: Duration = Duration::from_secs(15);

pub(super) fn deregister_on_exit(url: &str, namespace: &str, pool: &str, addr: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(crate::control::deregister_once(
            url,
            namespace,
            pool,
            addr,
            Duration::from_secs(2),
        )),
        Err(e) => Err(crate::control::CtlError::Runtime(e)),
    };
    match result {
        Ok(()) => info!("deregistered {addr} from pool {pool}"),
        Err(e) => error!(
            "could not deregister {addr} from pool {pool} at {}: {e}; its lease runs out instead",
            crate::config::redact_url(url)
        ),
    }
}

/// Keeps this app registered in Redis while the process runs (`--register-redis`).
pub(super) struct Registration {
    pub(super) redis_url: String,
    pub(super) namespace: String,
    pub(super) pool: String,
    pub(super) addr: String,
}

#[async_trait]
impl BackgroundService for Registration {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // `heartbeat` watches SIGTERM/SIGINT itself and deregisters before returning, so it is
        // not cancelled on Pingora's shutdown signal here.
        let result = crate::control::heartbeat(
            &self.redis_url,
            &self.namespace,
            &self.pool,
            &self.addr,
            None,
            REGISTRATION_TTL,
        )
        .await;
        if let Err(e) = result {
            error!(
                "registering {} in pool {} at {}: {e}",
                self.addr,
                self.pool,
                crate::config::redact_url(&self.redis_url)
            );
        }
    }
}
