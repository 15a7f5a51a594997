//! Active health checks, built from the `health_check` section.
//!
//! Pingora runs the probes ([`crate::pool::Pool::health_check`]); this module only turns
//! the typed config into Pingora's checkers, with the configured thresholds and timeout.
//! Passive detection (transport failures seen by requests) lives with the server state in
//! [`crate::pool::ServerState`].
//!
//! A probe that fails for the proxy's own reasons (out of file descriptors, buffers or local
//! ports) says nothing about the server: the server keeps its last verdict, so an attack that
//! exhausts the proxy's descriptors does not leave healthy servers marked down afterwards.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;

use crate::config::{CheckKind, HealthCheckConfig};
use crate::model::PoolKind;
use crate::pool::failure::is_proxy_own;
use crate::pool::PoolError;

pub type Checker = Box<dyn HealthCheck + Send + Sync>;

pub fn checker(cfg: &HealthCheckConfig, pool: PoolKind) -> Result<Checker, PoolError> {
    Ok(Box::new(OwnErrorsIgnored {
        inner: pingora_checker(cfg, pool)?,
        last: Mutex::new(HashMap::new()),
    }))
}

/// Pingora's checker, except that a probe failing for the proxy's own reasons repeats the
/// server's last verdict instead of counting as a failure.
struct OwnErrorsIgnored {
    inner: Checker,
    /// Last real verdict per server address.
    last: Mutex<HashMap<SocketAddr, bool>>,
}

#[async_trait]
impl HealthCheck for OwnErrorsIgnored {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let result = self.inner.check(target).await;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Err(e) if is_proxy_own(&e) => {
                log::warn!(
                    "health check of {} could not run ({e}); keeping its last verdict",
                    target.addr
                );
                match last.get(&target.addr) {
                    Some(false) => Err(e),
                    _ => Ok(()),
                }
            }
            result => {
                last.insert(target.addr.clone(), result.is_ok());
                result
            }
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.inner.backend_summary(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

fn pingora_checker(cfg: &HealthCheckConfig, pool: PoolKind) -> Result<Checker, PoolError> {
    match cfg.kind {
        CheckKind::Tcp => {
            let mut hc = TcpHealthCheck::new();
            hc.consecutive_success = cfg.healthy_threshold;
            hc.consecutive_failure = cfg.unhealthy_threshold;
            hc.peer_template.options.connection_timeout = Some(cfg.timeout);
            hc.peer_template.options.total_connection_timeout = Some(cfg.timeout);
            Ok(hc)
        }
        CheckKind::Http => {
            let mut hc = HttpHealthCheck::new(&cfg.host, false);
            hc.consecutive_success = cfg.healthy_threshold;
            hc.consecutive_failure = cfg.unhealthy_threshold;
            hc.reuse_connection = false;
            hc.set_backend_summary(move |b| format!("pool {pool}: server {}", b.addr));
            let mut req = RequestHeader::build("GET", cfg.path.as_bytes(), None)?;
            req.insert_header("Host", cfg.host.as_str())?;
            req.insert_header("User-Agent", "canary-lb-health")?;
            hc.req = req;
            set_timeouts(&mut hc.peer_template, cfg);
            let (lo, hi) = cfg.expect_status;
            hc.validator = Some(Box::new(move |resp: &ResponseHeader| {
                let code = resp.status.as_u16();
                if (lo..=hi).contains(&code) {
                    Ok(())
                } else {
                    Err(pingora_error::Error::explain(
                        pingora_error::ErrorType::HTTPStatus(code),
                        format!("health check answered {code}, expected {lo}-{hi}"),
                    ))
                }
            }));
            Ok(Box::new(hc))
        }
    }
}

fn set_timeouts(peer: &mut HttpPeer, cfg: &HealthCheckConfig) {
    let o = &mut peer.options;
    o.connection_timeout = Some(cfg.timeout);
    o.total_connection_timeout = Some(cfg.timeout);
    o.read_timeout = Some(cfg.timeout);
    o.write_timeout = Some(cfg.timeout);
}
