//! The admin endpoint on `metrics_listen`: `GET /metrics` (Prometheus text), `GET /status`
//! (JSON: pools, servers, routing in force, discovery) and `GET /healthz`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::config::PoolKind;
use crate::state::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp { shared }
    }
}

/// The `/status` document.
pub fn status(shared: &Shared) -> serde_json::Value {
    let policy = shared.policy();
    let overrides = shared.overrides();
    let mut pools = serde_json::Map::new();
    for kind in PoolKind::ALL {
        let servers = shared.pools.get(kind).view();
        let (requests, errors) = shared.metrics.pool_counts(kind);
        pools.insert(
            kind.as_str().into(),
            json!({
                "in_rotation": servers.iter().filter(|s| s.in_rotation).count(),
                "requests": requests,
                "errors_5xx": errors,
                "servers": servers,
            }),
        );
    }
    let d = &shared.discovery;
    let last_error = d
        .last_error
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    json!({
        "pools": pools,
        "routing": {
            "canary_percent": policy.percent.as_f64(),
            "salt": policy.salt,
            "header": policy.header.as_str(),
            "flag_cookie": policy.flag_cookie,
            "user_cookie": policy.user_cookie,
            "user_header": policy.user_header.as_ref().map(|h| h.as_str()),
            "canary_percent_from": if overrides.canary_percent.is_some() { "redis" } else { "file" },
            "salt_from": if overrides.salt.is_some() { "redis" } else { "file" },
        },
        "discovery": {
            "provider": d.provider,
            "source": d.source,
            "up": d.up.load(Relaxed),
            "last_sync_unix_ms": d.last_sync_ms.load(Relaxed),
            "last_error": last_error,
        },
        "in_flight": shared.in_flight.load(Relaxed),
    })
}

fn reply(code: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let builder = Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store");
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        match path {
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                self.shared
                    .metrics
                    .render(&self.shared.pools, self.shared.discovery.up.load(Relaxed)),
            ),
            "/status" => {
                let body = serde_json::to_vec_pretty(&status(&self.shared)).unwrap_or_default();
                reply(200, "application/json", body)
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            _ => reply(
                404,
                "text/plain",
                b"not found: try /metrics or /status\n".to_vec(),
            ),
        }
    }
}
