//! The request path: Pingora's `ProxyHttp` callbacks for canary-lb.
//!
//! `request_filter` makes the routing decision and picks the first server, so a request with
//! nowhere to go is answered 503 before any upstream work. `upstream_peer` is called once per
//! attempt: the first uses that pick, retries pick another server of the same pool.
//!
//! Retry rules (nothing is ever sent to an app server twice unless it provably did not get it):
//! - a connect failure is retried on a different server, for any method, up to `max_tries`
//!   attempts: the request never left the proxy;
//! - once a connection carried the request, only an idempotent request without a body, reset
//!   before any response byte, is retried, once;
//! - an error caused by the client (it hung up, half-closed, or misbehaved) is never retried:
//!   the upstream request is abandoned.
//!
//! Every answer carries the request's `X-Request-Id` ([`headers::request_id_of`], taken
//! first in `early_request_filter`): the app's, and the proxy's own (a refusal, 503 with no
//! server, 502/504 from `fail_to_proxy`), which carry no `Server` header unless
//! `server_header` names one. Pingora's own answers before any other callback runs (a head it
//! cannot parse: 400; `CONNECT`: 405) get the same through `early_error_response` (Pingora
//! patch 0009); only the 408 for a head cut by `client.header_timeout` (patch 0001's fixed
//! bytes) has no id, and no `Server` either.
//!
//! Passive health sees only the upstream's transport failures ([`is_server_failure`]): never
//! the client's errors, the proxy's own (out of descriptors or buffers), or a 5xx answer
//! (unless `passive_health.error_rate` is set).

pub mod budget;
pub mod framing;
pub mod headers;
pub mod metrics;
pub mod shadow;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::accesslog::{self, Entry};
use crate::flags::FlagBits;
use crate::model::{PoolKind, Reason};
use crate::pool::failure::{is_reset, is_server_failure, tls_failure};
use crate::pool::ServerState;
use crate::routing::{self, RequestFacts, UserKey};
use crate::state::{Live, Shared};
use budget::UpstreamBudget;
use headers::{
    has_body, CookieLines, Origin, RequestId, C_X_CANARY_POOL, C_X_REQUEST_ID, X_CANARY_POOL,
    X_REQUEST_ID,
};
pub use metrics::{
    BudgetLabel, ClientErrorKind, MethodLabel, ProxyMetrics, RefusalCode, PRESET_REQUEST_CODES,
};

/// The proxy keeps no settings of its own but `server_header` (restart only): each request
/// reads the [`Live`] snapshot it took in `new_ctx`, so a SIGHUP applies from the next request
/// on.
pub struct CanaryProxy {
    shared: Arc<Shared>,
    /// HTTP/2 streams' upstream budgets, one for all listeners of the process.
    budget: UpstreamBudget,
    /// `server_header`: the `Server` of the proxy's own answers; None sends none.
    server_header: Option<HeaderValue>,
    /// What the proxy measures (`metrics.rs`), one set for all proxy services.
    metrics: Arc<ProxyMetrics>,
    /// The shadow step's copies to the canary (`shadow.rs`).
    shadow: Arc<shadow::Shadow>,
}

impl CanaryProxy {
    /// `budget` and `shadow` are the process's, shared by all its proxy services.
    pub fn new(
        shared: Arc<Shared>,
        budget: UpstreamBudget,
        metrics: Arc<ProxyMetrics>,
        shadow: Arc<shadow::Shadow>,
    ) -> CanaryProxy {
        let server_header = server_header_value(&shared.started().server_header);
        CanaryProxy {
            shared,
            budget,
            server_header,
            metrics,
            shadow,
        }
    }
}

/// `server_header` as a header value (config validation admits only printable ASCII).
pub fn server_header_value(setting: &crate::config::ServerHeader) -> Option<HeaderValue> {
    setting.text().and_then(|t| HeaderValue::from_str(t).ok())
}

/// The headers every answer the proxy writes itself carries: the request's id, and `Server`
/// only when `server_header` names one.
pub fn own_answer_headers(
    resp: &mut ResponseHeader,
    id: Option<&RequestId>,
    server: Option<&HeaderValue>,
) -> Result<()> {
    if let Some(id) = id {
        resp.insert_header(X_REQUEST_ID, id.value.clone())?;
    }
    match server {
        Some(server) => {
            resp.insert_header(header::SERVER, server.clone())?;
        }
        None => {
            resp.remove_header(&header::SERVER);
        }
    }
    Ok(())
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    /// The settings in force when the request arrived, for the whole request.
    live: Arc<Live>,
    pool: Option<PoolKind>,
    /// Server of the current attempt.
    server: Option<Arc<ServerState>>,
    /// Server whose in-flight count this request holds.
    counted_on: Option<Arc<ServerState>>,
    /// Servers that failed this request.
    tried: Vec<SocketAddr>,
    attempts: usize,
    /// A retry after a reset may go back to the same server when no other is left.
    same_server_ok: bool,
    reset_retried: bool,
    new_user_id: Option<String>,
    /// Taken first in `early_request_filter`: every answer and the access log carry it.
    request_id: Option<RequestId>,
    in_flight: bool,
    /// The routing header or flag cookie chose the pool (left out of rollout analysis).
    forced: bool,
    /// The peer and the client by the trusted-proxy rule, from `request_filter` on.
    origin: Origin,
    reason: Option<Reason>,
    /// XXH3 of the user key, for the access log (never the key).
    user_hash: Option<u64>,
    /// When the current attempt was handed to Pingora, and how long its response head took.
    upstream_start: Option<Instant>,
    upstream_time: Option<Duration>,
    /// The feature flags on for this request (bits of `live.flags`).
    features: FlagBits,
    /// The client is on `routing.header_trusted_networks` (a set list): its override header
    /// was honoured and goes upstream.
    features_trusted: bool,
    /// An HTTP/2 stream's place in the upstream budgets (`budget.rs`), held until the request
    /// ends.
    place: Option<budget::Place>,
    /// Picked to be copied to the canary by the shadow step (`shadow.rs`), sent in `logging`.
    shadow: Option<Box<shadow::Picked>>,
}

impl CanaryProxy {
    /// A failed attempt on `server` of `pool`: counted as a TLS failure when it is one, and
    /// held against the server's passive health only when it is the server's
    /// ([`is_server_failure`]: never a certificate the proxy does not accept).
    fn record_attempt_failure(&self, pool: PoolKind, server: &ServerState, e: &Error, ctx: &Ctx) {
        if let Some(kind) = tls_failure(e) {
            self.shared.pools().get(pool).metrics().tls_failure(kind);
        }
        if is_server_failure(e) {
            self.shared
                .pools()
                .get(pool)
                .record_transport_failure(server, &ctx.live.passive_health);
        }
    }

    /// A 503 the proxy writes itself: `body` as plain text, the request's id and
    /// `server_header`, `extra` headers; `close` ends the connection after it.
    async fn respond_503(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        body: &'static [u8],
        extra: &[(&'static str, &'static str)],
        close: bool,
    ) -> Result<bool> {
        let mut resp = ResponseHeader::build(503, Some(4 + extra.len()))?;
        own_answer_headers(
            &mut resp,
            ctx.request_id.as_ref(),
            self.server_header.as_ref(),
        )?;
        resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        for (name, value) in extra {
            resp.insert_header(*name, *value)?;
        }
        if close {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(body)), true)
            .await?;
        Ok(true)
    }

    /// 503 for an HTTP/2 stream that found no place in `budget` in time; the connection and
    /// its other streams go on.
    async fn respond_over_budget(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        budget: BudgetLabel,
    ) -> Result<bool> {
        self.metrics.record_budget_refusal(budget);
        let extra = [("Retry-After", "1")];
        self.respond_503(
            session,
            ctx,
            b"503 too many requests in flight\n",
            &extra,
            false,
        )
        .await
    }

    /// 503 when the chosen pool (and its fallback) has no server in rotation.
    async fn respond_no_server(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        pool: PoolKind,
    ) -> Result<bool> {
        let mut extra = vec![("Cache-Control", "no-store")];
        if ctx.live.policy.pool_response_header {
            extra.push((X_CANARY_POOL, pool.as_str()));
        }
        self.respond_503(
            session,
            ctx,
            b"503 no healthy upstream server\n",
            &extra,
            true,
        )
        .await
    }
}

#[async_trait]
impl ProxyHttp for CanaryProxy {
    // Boxed: Pingora keeps the context in three nested request futures, and the 360 bytes it
    // took there three times put the per-request future over the 8 KiB that glibc copies with
    // vector moves (the future is moved into its box once per request; issue 23).
    type CTX = Box<Ctx>;

    /// No downstream modules: Pingora's default adds a (disabled) compression module to every
    /// request, which costs work per request for nothing here.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    /// Strict framing at the edge (`framing.rs`), before routing or any upstream work: a refused
    /// request gets a short fixed answer and the connection is closed; the returned error
    /// stops Pingora here (its `fail_to_proxy` sees the response already written).
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        ctx.request_id = Some(headers::request_id_of(session.req_header()));
        let client = &ctx.live.client;
        let limits = &client.head;
        let verdict = match session.as_http1() {
            Some(h1) => {
                framing::check_head(session.req_header(), &h1.get_headers_raw_bytes(), limits)
            }
            // HTTP/2 (ALPN or h2c): the same limits on the decoded head; cookie crumbs joined.
            None => framing::check_h2_head(session.req_header(), limits).map(|()| {
                framing::join_cookie_crumbs(session.req_header_mut());
            }),
        };
        if let Err(rejection) = verdict {
            self.metrics
                .record_refusal(RefusalCode::of(rejection.status));
            let body = rejection.body();
            // (Pingora drops `Connection: close` from it on HTTP/2.)
            let mut resp = rejection.response_header(body.len())?;
            own_answer_headers(
                &mut resp,
                ctx.request_id.as_ref(),
                self.server_header.as_ref(),
            )?;
            session.set_keepalive(None);
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await?;
            session.shutdown().await;
            return Err(
                Error::explain(ErrorType::HTTPStatus(rejection.status), rejection.reason)
                    .into_down(),
            );
        }
        if client.drop_underscore_headers {
            framing::drop_underscore_headers(session.req_header_mut());
        }
        // Pingora keeps an HTTP/1.1 connection open forever between requests unless told
        // otherwise; `Some(0)` is its "no timeout", `None` means the connection closes.
        let idle = client.keepalive_secs;
        if session.get_keepalive().is_some_and(|t| t == 0 || t > idle) {
            session.set_keepalive(Some(idle));
        }
        session.set_read_timeout(Some(client.body_timeout));
        session.set_write_timeout(Some(client.send_timeout));
        Ok(())
    }

    /// What a client caused (a refused request, a client that closed, stalled or broke the
    /// protocol mid-request) is counted, not logged: any client could fill the log otherwise.
    /// Refusals are counted in `canary_lb_refused_requests_total` where they are made.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        if !matches!(error.esource(), ErrorSource::Downstream) {
            return false;
        }
        let kind = match error.etype() {
            ErrorType::HTTPStatus(_) => return true,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => ClientErrorKind::Timeout,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                ClientErrorKind::Closed
            }
            _ => ClientErrorKind::Protocol,
        };
        self.metrics.record_client_error(kind);
        true
    }

    /// Pingora's 400 (a head it cannot parse: no request, so a new id) and 405 (`CONNECT`):
    /// the request id and `server_header`, as on every answer the proxy writes itself.
    fn early_error_response(&self, resp: &mut ResponseHeader, req: Option<&RequestHeader>) {
        let id = req.map_or_else(headers::new_request_id, headers::request_id_of);
        if let Err(e) = own_answer_headers(resp, Some(&id), self.server_header.as_ref()) {
            log::debug!("early error response headers: {e}");
        }
    }

    fn new_ctx(&self) -> Self::CTX {
        Box::new(Ctx {
            start: Instant::now(),
            live: self.shared.live(),
            pool: None,
            server: None,
            counted_on: None,
            tried: Vec::new(),
            attempts: 0,
            same_server_ok: false,
            reset_retried: false,
            new_user_id: None,
            request_id: None,
            in_flight: false,
            forced: false,
            origin: Origin::default(),
            reason: None,
            user_hash: None,
            upstream_start: None,
            upstream_time: None,
            features: FlagBits::default(),
            features_trusted: false,
            place: None,
            shadow: None,
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        self.shared.in_flight().enter();
        ctx.in_flight = true;

        // An HTTP/2 stream waits for a place in the upstream budgets before any upstream work,
        // and reads its response only as fast as the client's window takes it
        // (patches/pingora/0008): a stalled stream holds two pieces, not ten.
        if session.as_http2().is_some() {
            session.set_bounded_h2_response_pipe(true);
            let key = (
                session.client_addr().and_then(|a| a.as_inet()).copied(),
                session.server_addr().and_then(|a| a.as_inet()).copied(),
            );
            let wait = ctx.live.client.upstream_queue_timeout;
            match self.budget.acquire(key, wait).await {
                Ok(place) => ctx.place = Some(place),
                Err(budget) => return self.respond_over_budget(session, ctx, budget).await,
            }
        }

        let live = &ctx.live;
        let policy = &live.policy;
        let cookies = CookieLines::of(session.req_header());
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        ctx.origin = Origin::of(req, peer, &live.trusted_proxies);
        let client_ip = if policy.trusted_networks.is_empty() {
            None
        } else {
            ctx.origin.client
        };
        let facts = RequestFacts {
            header: req.headers.get(&policy.header).map(|v| v.as_bytes()),
            cookies: cookies.as_slice(),
            user_header: policy
                .user_header
                .as_ref()
                .and_then(|h| req.headers.get(h))
                .map(|v| v.as_bytes()),
            client_ip,
        };
        let pools = self.shared.pools();
        let mut picked = None;
        let decision = routing::decide(
            policy,
            &facts,
            live.fallback_to_canary,
            routing::new_user_id,
            |pool, key| {
                picked = pools.get(pool).select(key, &[]);
                picked.is_some()
            },
        );
        let pool = decision.pool;
        self.metrics.record_decision(pool, decision.reason);
        ctx.pool = Some(pool);
        ctx.forced = matches!(
            decision.reason,
            routing::Reason::Header | routing::Reason::Cookie
        );
        ctx.reason = Some(decision.reason);
        if self.shared.access_log().is_some() {
            let key = decision.hash_key();
            ctx.user_hash = (!key.is_empty()).then(|| accesslog::user_hash(key));
        }
        // Feature flags for the same user key; the override header only from a trusted
        // network (`client_ip` is read only when that list is set, so never when it is empty).
        if !live.flags.is_empty() {
            let key = decision.hash_key();
            let mut bits = live.flags.evaluate((!key.is_empty()).then_some(key));
            ctx.features_trusted =
                client_ip.is_some_and(|ip| policy.trusted_networks.iter().any(|n| n.contains(&ip)));
            if ctx.features_trusted {
                if let Some(v) = req.headers.get(&live.flag_override_header) {
                    bits = live.flags.apply_override(bits, v.as_bytes());
                }
            }
            ctx.features = bits;
        }
        if let UserKey::New(id) = decision.user {
            ctx.new_user_id = Some(id);
        }
        if live.shadow.is_some() {
            ctx.shadow =
                self.shadow
                    .pick(live, pool, session.req_header(), session.is_upgrade_req());
        }
        match picked {
            Some((_, server)) => {
                ctx.server = Some(server);
                Ok(false)
            }
            None => self.respond_no_server(session, ctx, pool).await,
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request was not routed"))?;
        if ctx.attempts > 0 {
            // A retry gives up stickiness to a server (consistent hashing): any other will do.
            let key = b"";
            let p = self.shared.pools().get(pool);
            let next = p
                .select(key, &ctx.tried)
                .or_else(|| ctx.same_server_ok.then(|| p.select(key, &[])).flatten());
            match next {
                Some((_, server)) => ctx.server = Some(server),
                None => {
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(502),
                        format!("no other {pool} server left to retry on"),
                    ))
                }
            }
            self.metrics.record_retry(pool);
        }
        ctx.attempts += 1;
        let server = ctx
            .server
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no server picked"))?;
        if let Some(prev) = ctx.counted_on.take() {
            prev.end_request();
        }
        server.begin_request();
        // An upgrade request's reads may be a tunnel's (`client.tunnel_idle_timeout`).
        let timeouts = *ctx.live.upstream.timeouts(session.is_upgrade_req());
        let peer = self
            .shared
            .pools()
            .get(pool)
            .peer(&server, &timeouts, worker_slot());
        ctx.counted_on = Some(server);
        ctx.upstream_start = Some(Instant::now());
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.origin.peer.is_none() {
            // Not routed by `request_filter` (cannot happen today): the peer, trusting no one.
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            ctx.origin = Origin::of(upstream, peer, &[]);
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        headers::set_forwarding(upstream, &ctx.origin, if tls { "https" } else { "http" })?;
        // (Taken in `early_request_filter`, which every request passes.)
        let id = ctx
            .request_id
            .get_or_insert_with(|| headers::request_id_of(upstream));
        headers::set_request_id(upstream, id)?;
        let live = &ctx.live;
        let features = if ctx.features.is_empty() {
            None
        } else {
            Some(live.flags.header_value(ctx.features))
        };
        headers::set_features(
            upstream,
            (&live.flag_header, &live.flag_header_wire),
            (!ctx.features_trusted).then_some(&live.flag_override_header),
            features,
        )?;
        // Only the proxy's copies carry the shadow mark: a client's own would tell the app
        // servers to skip the side effects of a real request.
        if upstream.headers.contains_key(&live.shadow_header) {
            upstream.remove_header(&live.shadow_header);
        }
        // A running shadow step's mark, when a reload named another since it started.
        if let Some(run) = live
            .shadow
            .as_ref()
            .filter(|r| r.header != live.shadow_header)
        {
            upstream.remove_header(&run.header);
        }
        let policy = &live.policy;
        if ctx.pool == Some(PoolKind::Canary) {
            upstream.insert_header(policy.header.clone(), HeaderValue::from_static("1"))?;
        } else if upstream.headers.contains_key(&policy.header) {
            upstream.remove_header(&policy.header);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(picked), Some(chunk)) = (ctx.shadow.as_mut(), body.as_ref()) {
            picked.request_body(chunk);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let (Some(picked), Some(chunk)) = (ctx.shadow.as_mut(), body.as_ref()) {
            picked.response_body(chunk);
        }
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.upstream_time = ctx.upstream_start.map(|t| t.elapsed());
        if let (Some(pool), Some(server)) = (ctx.pool, &ctx.server) {
            let status = upstream_response.status.as_u16();
            self.shared.pools().get(pool).metrics().upstream(
                &server.label,
                &server.upstream_series,
                Some(status),
            );
            self.shared
                .pools()
                .get(pool)
                .record_answer(server, status, &ctx.live.passive_health);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // Pingora switches to a tunnel only on a 101 to an upgrade request; from here on a
            // quiet WebSocket is normal, and only `tunnel_idle_timeout` of silence ends it.
            let idle = ctx.live.client.tunnel_idle_timeout;
            session.set_read_timeout(Some(idle));
        }
        let policy = &ctx.live.policy;
        if let (true, Some(pool)) = (policy.pool_response_header, ctx.pool) {
            resp.insert_header(&C_X_CANARY_POOL, HeaderValue::from_static(pool.as_str()))?;
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header(&C_X_REQUEST_ID, id.value.clone())?;
        }
        if let Some(uid) = ctx.new_user_id.take() {
            resp.append_header(header::SET_COOKIE, policy.set_cookie(&uid))?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(server)) = (ctx.pool, &ctx.server) {
            self.shared.pools().get(pool).metrics().upstream(
                &server.label,
                &server.upstream_series,
                None,
            );
            self.record_attempt_failure(pool, server, &e, ctx);
            ctx.tried.push(server.addr);
        }
        // The request never left the proxy: any method may try another server.
        if ctx.attempts < ctx.live.upstream.max_tries {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        upstream_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // The client hung up or misbehaved: abandon the upstream request, never repeat it,
        // and do not hold it against the server.
        if matches!(e.esource(), ErrorSource::Downstream) {
            e.set_retry(false);
            return e;
        }
        let response_started = session.as_ref().response_written().is_some();
        if let (Some(pool), Some(server), false) = (ctx.pool, &ctx.server, response_started) {
            self.shared.pools().get(pool).metrics().upstream(
                &server.label,
                &server.upstream_series,
                None,
            );
            // A pooled keep-alive connection that the server had closed is a benign race.
            if !upstream_reused {
                self.record_attempt_failure(pool, server, &e, ctx);
            }
        }
        let req = session.req_header();
        let replayable =
            !response_started && is_reset(&e) && req.method.is_idempotent() && !has_body(req);
        if replayable && !ctx.reset_retried && ctx.attempts < ctx.live.upstream.max_tries.max(2) {
            ctx.reset_retried = true;
            ctx.same_server_ok = true;
            if let Some(server) = &ctx.server {
                ctx.tried.push(server.addr);
            }
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Pingora's answer to a failed request (an empty body, `Cache-Control: private,
    /// no-store`, the connection closed), except that an upstream that timed out gets 504 (as
    /// nginx), not 502, and that it carries the request's id and no `Server: Pingora`.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = error_status(e);
        if code > 0 {
            let mut resp = pingora_core::protocols::http::ServerSession::generate_error(code);
            let written = match own_answer_headers(
                &mut resp,
                ctx.request_id.as_ref(),
                self.server_header.as_ref(),
            ) {
                Ok(()) => {
                    session
                        .as_downstream_mut()
                        .write_error_response(resp, Bytes::new())
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                log::error!("failed to send error response to downstream: {e}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        if let Some(server) = ctx.counted_on.take() {
            server.end_request();
        }
        if let Some(pool) = ctx.pool {
            let code = session
                .as_ref()
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0);
            let method = MethodLabel::from_method(&session.req_header().method);
            self.metrics
                .record_request(pool, code, method, ctx.start.elapsed().as_secs_f64());
            self.shared.pools().get(pool).metrics().answered(code);
            self.shared.record_rollout(
                pool,
                code,
                ctx.forced,
                (ctx.start, ctx.upstream_time),
                ctx.origin.client,
            );
            if let (Some(picked), Some(took), true) =
                (ctx.shadow.take(), ctx.upstream_time, code != 0)
            {
                self.send_shadow(session, ctx, picked, code, took);
            }
        }
        if let Some(log) = self.shared.access_log() {
            log.log(Self::entry(session, ctx));
        }
        // Last: a drain that sees nothing in flight finds every line queued.
        if ctx.in_flight {
            self.shared.in_flight().leave();
        }
    }
}

/// This worker thread's share of the upstream connection pool, as the pool's reuse key. With
/// `threads > 1` each thread runs its own single-threaded runtime, and an upstream connection
/// stays registered with the I/O driver of the thread that opened it: reused by a request on
/// another thread, every read and write of it woke two threads. Keyed by thread, a thread
/// reuses only its own connections, as each nginx worker keeps its own (`benches/scaling.sh`).
fn worker_slot() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SLOT: u64 = NEXT.fetch_add(1, Relaxed);
    }
    SLOT.with(|s| *s)
}

impl CanaryProxy {
    /// Copy a request production answered (`code` after `took`) to the canary.
    fn send_shadow(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        picked: Box<shadow::Picked>,
        code: u16,
        took: Duration,
    ) {
        let body_done = session.is_body_done();
        let features =
            (!ctx.features.is_empty()).then(|| ctx.live.flags.header_value(ctx.features));
        let original = shadow::Original {
            live: &ctx.live,
            req: session.req_header(),
            origin: &ctx.origin,
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            request_id: ctx.request_id.as_ref(),
            features,
            production: crate::rollout::shadow::Answer {
                status: Some(code),
                seconds: took.as_secs_f64(),
            },
            body_done,
        };
        self.shadow.send(&self.shared, picked, original);
    }

    /// The access log's line for a finished request: cheap clones only, formatted later by
    /// the writer thread.
    fn entry(session: &Session, ctx: &Ctx) -> Entry {
        let req = session.req_header();
        let client = ctx.origin.client.or_else(|| {
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
        });
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| s.version.clone());
        Entry {
            time: SystemTime::now(),
            client,
            method: req.method.clone(),
            uri: req.uri.clone(),
            version: req.version,
            status: session
                .as_ref()
                .response_written()
                .map(|r| r.status.as_u16()),
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            duration: ctx.start.elapsed(),
            upstream: ctx
                .server
                .as_ref()
                .filter(|_| ctx.attempts > 0)
                .map(|s| s.addr),
            upstream_time: ctx.upstream_time,
            pool: ctx.pool.map(|p| p.as_str()),
            reason: ctx.reason.map(|r| r.as_str()),
            user_hash: ctx.user_hash,
            request_id: ctx.request_id.as_ref().map(|id| id.value.clone()),
            tls,
            referer: req.headers.get(header::REFERER).cloned(),
            user_agent: req.headers.get(header::USER_AGENT).cloned(),
            shadow: false,
        }
    }
}

/// The status Pingora's default `fail_to_proxy` answers an error with, but 504 for an upstream
/// timeout (connect, read or write): 0 when the client is gone.
pub fn error_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if matches!(e.esource(), ErrorSource::Upstream) =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}
