//! Active health checks, built from the `health_check` section.
//!
//! Pingora runs the probes ([`crate::pool::Pool::health_check`]); this module turns the
//! typed config into a checker with the configured thresholds and timeout, which connects to
//! each server as a request does (the pool's [`Upstream`]: TLS, SNI, client certificate,
//! HTTP/2), so a TLS or h2 pool is checked over TLS or h2.
//! Passive detection (transport failures seen by requests) lives with the server state in
//! [`crate::pool::ServerState`].
//!
//! A probe that fails for the proxy's own reasons (out of file descriptors, buffers or local
//! ports) says nothing about the server: the server keeps its last verdict, so an attack that
//! exhausts the proxy's descriptors does not leave healthy servers marked down afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;

use crate::config::{CheckKind, HealthCheckConfig};
use crate::model::PoolKind;
use crate::pool::failure::{is_proxy_own, tls_failure};
use crate::pool::{PeerTimeouts, PoolError, ServerState, Upstream};

pub type Checker = Box<dyn HealthCheck + Send + Sync>;

/// The checker of `cfg` for a plain HTTP/1.1 pool (`canary-lb check` builds it to validate the
/// `health_check` section).
pub fn checker(cfg: &HealthCheckConfig, pool: PoolKind) -> Result<Checker, PoolError> {
    checker_for(cfg, pool, Arc::new(Upstream::plain()))
}

/// The checker of `cfg` for a pool whose servers are reached through `upstream`.
pub fn checker_for(
    cfg: &HealthCheckConfig,
    pool: PoolKind,
    upstream: Arc<Upstream>,
) -> Result<Checker, PoolError> {
    Ok(Box::new(OwnErrorsIgnored {
        inner: probe(cfg, pool, upstream)?,
        last: Mutex::new(HashMap::new()),
    }))
}

/// The probe, except that one failing for the proxy's own reasons, or on a certificate the
/// proxy does not accept (a trust mismatch between `pools.X.tls` and the server, which
/// passive health does not count either), repeats the server's last verdict instead of
/// counting as a failure.
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
            Err(e) if is_proxy_own(&e) || tls_failure(&e).is_some_and(|k| k.is_certificate()) => {
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

/// The probe of `cfg` over `upstream`: a TCP connect (with the TLS handshake on a TLS pool) or
/// an HTTP request (over TLS, and HTTP/2 when the pool speaks it), each connecting to a server
/// exactly as a request does ([`Upstream::peer`]).
fn probe(
    cfg: &HealthCheckConfig,
    pool: PoolKind,
    upstream: Arc<Upstream>,
) -> Result<Checker, PoolError> {
    let http = match cfg.kind {
        CheckKind::Tcp => Kind::Tcp(TransportConnector::new(None)),
        CheckKind::Http => {
            let mut req = RequestHeader::build("GET", cfg.path.as_bytes(), None)?;
            req.insert_header("Host", cfg.host.as_str())?;
            req.insert_header("User-Agent", "canary-lb-health")?;
            // HTTP/2 wants the scheme and authority in the request's URI (`:scheme`,
            // `:authority`), as Pingora's proxy sets them for its own h2 requests.
            let mut req_h2 = req.clone();
            let scheme = if upstream.is_tls() { "https" } else { "http" };
            let uri = http::Uri::builder()
                .scheme(scheme)
                .authority(cfg.host.as_str())
                .path_and_query(cfg.path.as_str())
                .build()
                .map_err(|e| {
                    pingora_error::Error::because(
                        pingora_error::ErrorType::InvalidHTTPHeader,
                        "health_check.host and health_check.path make no HTTP/2 request",
                        e,
                    )
                })?;
            req_h2.set_uri(uri);
            Kind::Http(Box::new(HttpKind {
                connector: HttpConnector::new(None),
                req,
                req_h2,
                expect: cfg.expect_status,
            }))
        }
    };
    Ok(Box::new(Probe {
        pool,
        upstream,
        kind: http,
        timeouts: PeerTimeouts {
            connect: cfg.timeout,
            read: cfg.timeout,
            write: cfg.timeout,
            idle: cfg.timeout,
        },
        consecutive_success: cfg.healthy_threshold,
        consecutive_failure: cfg.unhealthy_threshold,
    }))
}

enum Kind {
    Tcp(TransportConnector),
    Http(Box<HttpKind>),
}

struct HttpKind {
    connector: HttpConnector,
    req: RequestHeader,
    req_h2: RequestHeader,
    expect: (u16, u16),
}

/// Pingora's TCP and HTTP checks (`TcpHealthCheck`, `HttpHealthCheck`), except that each
/// server's peer comes from the pool's [`Upstream`]: TLS with the server's own SNI, the
/// pool's CA and client certificate, HTTP/2 by ALPN or prior knowledge. No connection is kept.
struct Probe {
    pool: PoolKind,
    upstream: Arc<Upstream>,
    kind: Kind,
    timeouts: PeerTimeouts,
    consecutive_success: usize,
    consecutive_failure: usize,
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InternalError,
                "health check of a server without an IP address",
            ));
        };
        let name = target
            .ext
            .get::<Arc<ServerState>>()
            .map_or_else(|| addr.to_string(), |s| s.name.clone());
        let peer = self.upstream.peer(addr, &name, &self.timeouts, 0);
        match &self.kind {
            Kind::Tcp(connector) => connector.get_stream(&*peer).await.map(|_| ()),
            Kind::Http(http) => {
                let HttpKind {
                    connector,
                    req,
                    req_h2,
                    expect: (lo, hi),
                } = &**http;
                let (mut session, _) = connector.get_http_session(&*peer).await?;
                let req = match session {
                    HttpSession::H2(_) => req_h2,
                    _ => req,
                };
                session.set_write_timeout(peer.options.write_timeout);
                session.write_request_header(Box::new(req.clone())).await?;
                session.finish_request_body().await?;
                session.set_read_timeout(peer.options.read_timeout);
                session.read_response_header().await?;
                let code = session.response_header().map_or(0, |r| r.status.as_u16());
                if !(*lo..=*hi).contains(&code) {
                    return Err(pingora_error::Error::explain(
                        pingora_error::ErrorType::HTTPStatus(code),
                        format!("health check answered {code}, expected {lo}-{hi}"),
                    ));
                }
                while session.read_response_body().await?.is_some() {}
                Ok(())
            }
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("pool {}: server {}", self.pool, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.consecutive_success
        } else {
            self.consecutive_failure
        }
    }
}
