//! Active health checks, built from the `health_check` section.
//!
//! Pingora runs the probes ([`crate::discovery::Pool::health_check`]); this module only turns
//! the typed config into Pingora's checkers, with the configured thresholds and timeout.
//! Passive detection (connect failures and 5xx answers seen by requests) lives with the server
//! state in [`crate::discovery::ServerState`].

use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};

use crate::config::{CheckKind, HealthCheckConfig, PoolKind};

pub type Checker = Box<dyn HealthCheck + Send + Sync>;

pub fn checker(cfg: &HealthCheckConfig, pool: PoolKind) -> anyhow::Result<Checker> {
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
