//! The admin endpoint on `metrics_listen`: `GET /metrics` (Prometheus text), `GET /status`
//! (JSON: pools, servers, routing in force, discovery, rollout, reloads), `GET /healthz`
//! (liveness: the process answers), `GET /readyz` (readiness, [`readiness`]), and the
//! rollout's `GET /rollout` and `POST /rollout/start|pause|resume|abort|promote`
//! (`rollout_api.rs`).
//!
//! The container image and the compose stack publish this port, so it is built for a hostile
//! client as much as the proxy port is:
//! - only GET and HEAD are served (405 with `Allow` otherwise), POST only on the rollout's
//!   command paths (its body is never read), and no byte of the request is echoed back in a
//!   response (a refused rollout query names the key, never the value sent);
//! - `/status` shows a fingerprint of the routing salt, never the salt: with the documented
//!   bucket hash, the salt tells anyone which user ids land in canary. A rollout's state is
//!   shown the same way, here and in every `/rollout` answer, through
//!   [`crate::rollout::view`];
//! - with `metrics_auth_token_file` set, `/metrics` and `/status` want `Authorization: Bearer
//!   <token>` (compared in constant time), and so do `/rollout` and its commands; `/healthz`
//!   and `/readyz` stay open for container health checks and Kubernetes probes, which send
//!   no token (they say only whether the proxy serves, and a fixed reason: no address, no
//!   name);
//!   The token comes from the config snapshot of each request, so a SIGHUP reload that
//!   re-reads the file applies at once;
//! - one request per connection, whose head must arrive within [`HEAD_DEADLINE`] (or
//!   `client.header_timeout` if shorter) and whose response must be taken within
//!   [`RESPONSE_DEADLINE`]; at most [`MAX_CONNECTIONS`] connections at a time and
//!   [`MAX_PER_ADDRESS`] from one address ([`connection_limit`]): slow clients cannot pile up
//!   the descriptors and memory the proxy port shares with this one. A connection that has not
//!   sent a whole head yet is idle: a new connection at either limit closes the longest-idle
//!   one (of its own address at the per-address limit) instead of being refused, so idle
//!   sockets cannot keep `/healthz` from answering the container's health check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use log::debug;
use pingora_core::apps::{HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::ConnectionLimit;
use pingora_http::{RequestHeader, ResponseHeader};
use serde_json::json;

use crate::model::PoolKind;
use crate::state::Shared;

/// Admin connections open at once. Prometheus and an operator need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// Admin connections open at once from one address.
pub const MAX_PER_ADDRESS: usize = 16;

/// How long a new admin connection may take to send its request head: Prometheus, `curl` and
/// the health check send it at once.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// The admin port's connection limit (Pingora's, patches/pingora/0006): [`MAX_CONNECTIONS`],
/// [`MAX_PER_ADDRESS`], the longest-idle connection shed to make room.
pub fn connection_limit() -> ConnectionLimit {
    ConnectionLimit::new(MAX_CONNECTIONS)
        .shed_idle()
        .per_address(MAX_PER_ADDRESS)
}

/// How long a client may take to read a whole response (`/metrics` is tens of KiB).
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(10);

/// The value of `WWW-Authenticate` on a 401.
pub const AUTH_CHALLENGE: &str = "Bearer realm=\"canary-lb\"";

pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp { shared }
    }

    /// The response to one request head, the rollout's paths included.
    pub async fn handle(&self, req: &RequestHeader) -> Response<Vec<u8>> {
        let path = req.uri.path();
        if path == "/rollout" || path.starts_with("/rollout/") {
            if let Some(refused) = self.refuse_unauthorized(req) {
                return refused;
            }
            return super::rollout_api::handle(&self.shared, req).await;
        }
        let rollout = if path == "/status" && self.refuse_unauthorized(req).is_none() {
            super::rollout_api::view(&self.shared).await
        } else {
            serde_json::Value::Null
        };
        self.respond(req, rollout)
    }

    /// The 401 for a request without the token, when one is configured.
    fn refuse_unauthorized(&self, req: &RequestHeader) -> Option<Response<Vec<u8>>> {
        let config = self.shared.config();
        let token = config.metrics_auth_token_file.as_ref().map(|t| t.token());
        if token.is_none_or(|t| authorized(t, &req.headers)) {
            return None;
        }
        let mut r = reply(
            401,
            "text/plain",
            b"unauthorized: send Authorization: Bearer <token>\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(AUTH_CHALLENGE),
        );
        Some(r)
    }

    /// The response to one request head (the request body, if any, is never read);
    /// `rollout` is `/status`'s rollout object.
    pub fn respond(&self, req: &RequestHeader, rollout: serde_json::Value) -> Response<Vec<u8>> {
        let head = req.method == Method::HEAD;
        if req.method != Method::GET && !head {
            let mut r = reply(405, "text/plain", b"method not allowed: use GET or HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let config = self.shared.config();
        let token = config.metrics_auth_token_file.as_ref().map(|t| t.token());
        let path = req.uri.path();
        let mut r = match path {
            "/healthz" => reply(200, "text/plain", b"ok\n"),
            "/readyz" => {
                let (code, doc) = match readiness(&self.shared) {
                    Ok(()) => (200, json!({ "ready": true })),
                    Err(reason) => (503, json!({ "ready": false, "reason": reason })),
                };
                let mut body = serde_json::to_vec(&doc).unwrap_or_default();
                body.push(b'\n');
                reply(code, "application/json", &body)
            }
            "/metrics" | "/status" if !token.is_none_or(|t| authorized(t, &req.headers)) => {
                let mut r = reply(
                    401,
                    "text/plain",
                    b"unauthorized: send Authorization: Bearer <token>\n",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(AUTH_CHALLENGE),
                );
                r
            }
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                &metrics_text(&self.shared),
            ),
            "/status" => {
                let mut doc = status(&self.shared);
                doc["rollout"] = rollout;
                let body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
                reply(200, "application/json", &body)
            }
            _ => reply(404, "text/plain", b"not found: try /metrics or /status\n"),
        };
        if head {
            // Content-Length stays that of the GET response (RFC 9110 9.3.2).
            r.body_mut().clear();
        }
        r
    }

    /// Write `response` and flush it; the connection is closed afterwards.
    async fn write(
        session: &mut ServerSession,
        response: Response<Vec<u8>>,
    ) -> pingora_error::Result<()> {
        let (parts, body) = response.into_parts();
        let header: ResponseHeader = parts.into();
        session.write_response_header(Box::new(header)).await?;
        if !body.is_empty() {
            session.write_response_body(body.into(), true).await?;
        }
        session.finish_body().await
    }
}

/// Whether this proxy can serve (`/readyz`), or the first reason it cannot: its listeners
/// are bound, its servers are known (the file's, or the discovery provider has answered once)
/// and checked once, and production has a server in rotation (or canary has one and
/// `fallback_to_canary` sends production's traffic there). A replica that can only answer 503
/// is taken out of a load balancer's rotation instead of served traffic.
pub fn readiness(shared: &Shared) -> Result<(), &'static str> {
    if !shared.listeners_bound() {
        return Err("listeners not bound yet");
    }
    if !shared.discovery_status().servers_known() {
        return Err("discovery has not answered yet");
    }
    if !shared.health_checked() {
        return Err("first health check not done yet");
    }
    let in_rotation = |kind: PoolKind| {
        shared
            .pools()
            .get(kind)
            .view()
            .iter()
            .any(|s| s.in_rotation)
    };
    if in_rotation(PoolKind::Production)
        || (shared.live().fallback_to_canary && in_rotation(PoolKind::Canary))
    {
        return Ok(());
    }
    Err("no healthy production server")
}

/// The `/metrics` text, with the pool gauges taken from the pools as they are now and the
/// discovery gauge from `/status`'s state.
fn metrics_text(shared: &Shared) -> Vec<u8> {
    for kind in PoolKind::ALL {
        shared.pools().get(kind).export_metrics();
    }
    let discovery_up = shared.discovery_status().is_up();
    shared.discovery_status().metrics().set_up(discovery_up);
    shared.metrics().render()
}

/// The `/status` document.
pub fn status(shared: &Shared) -> serde_json::Value {
    let policy = shared.policy();
    let (percent_from, salt_from) = shared.routing_sources();
    let mut pools = serde_json::Map::new();
    for kind in PoolKind::ALL {
        let servers = shared.pools().get(kind).view();
        let (requests, errors) = shared.pools().get(kind).metrics().counts();
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
    let d = shared.discovery_status().report();
    json!({
        "pools": pools,
        "routing": {
            "canary_percent": policy.percent.as_f64(),
            "salt_fingerprint": crate::routing::salt_fingerprint(&policy.salt),
            "header": policy.header.as_str(),
            "flag_cookie": policy.flag_cookie,
            "user_cookie": policy.user_cookie,
            "user_header": policy.user_header.as_ref().map(|h| h.as_str()),
            "canary_percent_from": percent_from,
            "salt_from": salt_from,
        },
        "discovery": {
            "provider": d.provider,
            "source": d.source,
            "up": d.up,
            "last_sync_unix_ms": d.last_sync_ms,
            "last_error": d.last_error,
            "store_reinitialised": d.reinitialised,
            "reconciling": d.reconciling,
        },
        "flags": flags_status(&shared.live()),
        "in_flight": shared.in_flight().get(),
        "reload": reload_status(shared),
    })
}

/// The SIGHUP reloads: `generation` counts those tried since start; `last` is `applied`,
/// `failed` (with `error`) or null before the first. `canary-lb reload` waits on these.
fn reload_status(shared: &Shared) -> serde_json::Value {
    let (generation, last) = shared.last_reload();
    let (last, error) = match last {
        None => (None, None),
        Some(Ok(())) => (Some("applied"), None),
        Some(Err(e)) => (Some("failed"), Some(e)),
    };
    json!({ "generation": generation, "last": last, "error": error })
}

/// The feature flags in force (salts as fingerprints, like the routing salt).
fn flags_status(live: &crate::state::Live) -> serde_json::Value {
    let items: Vec<serde_json::Value> = live
        .flags
        .iter()
        .map(|f| {
            json!({
                "name": f.name(),
                "enabled": f.enabled(),
                "percent": f.percent(),
                "salt_fingerprint": crate::routing::salt_fingerprint(f.salt()),
                "allow": f.allow_len(),
                "deny": f.deny_len(),
            })
        })
        .collect();
    json!({
        "source": live.flags_source,
        "header": live.flag_header.as_str(),
        "items": items,
    })
}

/// Whether `headers` carry exactly one `Authorization: Bearer <token>` with this token. The
/// scheme is case-insensitive (RFC 9110 11.1); the token is compared in constant time.
pub fn authorized(token: &[u8], headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, rest)) = value.split_at_checked(7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"Bearer ") {
        return false;
    }
    let presented = rest.trim_ascii();
    constant_time_eq(presented, token)
}

/// Equality whose time depends on the lengths only, never on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

pub(super) fn reply(code: u16, content_type: &'static str, body: &[u8]) -> Response<Vec<u8>> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store")
        // Browsers must not guess HTML from a text/plain or JSON body.
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(body.to_vec())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// Half-close the connection; the flush this implies is bounded, since a client that does not
/// read could otherwise hold it.
async fn close(session: &mut ServerSession) {
    let _ = tokio::time::timeout(Duration::from_secs(1), session.shutdown()).await;
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let head_deadline = HEAD_DEADLINE.min(self.shared.config().client.header_timeout);
        match tokio::time::timeout(head_deadline, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                debug!("admin: bad request head: {e}");
                let bad = reply(400, "text/plain", b"bad request\n");
                let _ =
                    tokio::time::timeout(RESPONSE_DEADLINE, Self::write(&mut session, bad)).await;
                close(&mut session).await;
                return None;
            }
            Err(_) => {
                debug!("admin: request head not complete within {head_deadline:?}");
                return None;
            }
        }
        session.set_keepalive(None);
        let response = self.handle(session.req_header()).await;
        match tokio::time::timeout(RESPONSE_DEADLINE, Self::write(&mut session, response)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!("admin: writing the response: {e}"),
            Err(_) => debug!("admin: response not taken within {RESPONSE_DEADLINE:?}"),
        }
        close(&mut session).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        h
    }

    #[test]
    fn bearer_token_checks() {
        let token = b"0123456789abcdef-token";
        let ok = [
            "Bearer 0123456789abcdef-token",
            "bearer 0123456789abcdef-token",
            "BEARER   0123456789abcdef-token ",
        ];
        for v in ok {
            assert!(authorized(token, &headers(&[v])), "{v:?} should pass");
        }
        let bad: [&[&str]; 8] = [
            &[],
            &[""],
            &["Bearer"],
            &["Bearer "],
            &["Basic 0123456789abcdef-token"],
            &["Bearer 0123456789abcdef-tokeN"],
            &["Bearer 0123456789abcdef-token-and-more"],
            &[
                "Bearer 0123456789abcdef-token",
                "Bearer 0123456789abcdef-token",
            ],
        ];
        for v in bad {
            assert!(!authorized(token, &headers(v)), "{v:?} should fail");
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
