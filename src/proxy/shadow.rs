//! The shadow step's copies (README, "Progressive delivery"): while a rollout is in its shadow
//! step, `shadow.percent` of the requests routed to production are copied to a canary server,
//! and the two answers to the same request make a pair the rollout judges
//! (`rollout::judge::judge_shadow`). The canary's answer goes to no one.
//!
//! What a copy may never do, and how:
//! - **change what the user gets**: the copy is sent from `logging`, after production's answer
//!   was written to the user, on a task of its own; nothing of it reaches the request's path;
//! - **cost production**: at most `shadow.max_in_flight` copies per process (one atomic
//!   counter; a copy beyond it is dropped and counted, never queued), each under
//!   `shadow.timeout` for the whole exchange, each response body read at most
//!   [`MAX_COPY_BODY`] and never buffered (hashed as it streams when `body_hash` is compared);
//! - **act as the user**: `Cookie` and `Authorization` go only with
//!   `shadow.forward_credentials`, `Proxy-Authorization` never; every copy carries
//!   `shadow.header: 1` (and a client's own such header is removed from every request, so a
//!   client cannot make the app servers skip side effects of a real request);
//! - **run a side effect twice by accident**: only `shadow.methods` are copied (GET and HEAD
//!   by default); a request with a body only when its method is listed, with a body of at
//!   most `shadow.max_body`, buffered as it passes and copied only when it arrived whole;
//!   upgrade requests (WebSocket) never;
//! - **count against a server**: a copy's failure touches no passive health, no in-flight
//!   count and no request metric; it is one pair (the canary gave no answer) and one
//!   `canary_lb_shadow_requests_total{outcome}`.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue};
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_http::RequestHeader;
use xxhash_rust::xxh3::Xxh3;

use super::headers::{self, Origin, RequestId};
use super::metrics::ShadowOutcome;
use super::ProxyMetrics;
use crate::accesslog::Entry;
use crate::model::PoolKind;
use crate::rollout::shadow::{Answer, Compare, Pair};
use crate::state::{Live, ShadowRun, Shared};

/// The most response body a copy (or production's answer, for `body_hash`) is read and hashed
/// over; past it the bodies are not compared and the copy's connection is closed.
pub const MAX_COPY_BODY: usize = 1024 * 1024;

/// Hop-by-hop headers: they describe the user's connection, not the request.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// A request picked to be copied, kept in its `Ctx` until `logging`.
pub struct Picked {
    run: Arc<ShadowRun>,
    /// The request body as it passed (only for a listed method with a body).
    body: BytesMut,
    /// The body outgrew `shadow.max_body` (or the client did not send it whole): no copy.
    body_refused: bool,
    /// Production's response body as it streamed to the user (only with `body_hash`).
    production_hash: Option<Xxh3>,
    production_bytes: usize,
}

impl Picked {
    /// A chunk of the user's request body on its way to production.
    pub fn request_body(&mut self, chunk: &Bytes) {
        if self.body_refused {
            return;
        }
        if self.body.len() + chunk.len() > self.run.settings.max_body as usize {
            self.body_refused = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// A chunk of production's response body on its way to the user.
    pub fn response_body(&mut self, chunk: &Bytes) {
        if let Some(h) = self.production_hash.as_mut() {
            self.production_bytes += chunk.len();
            if self.production_bytes > MAX_COPY_BODY {
                self.production_hash = None;
            } else {
                h.update(chunk);
            }
        }
    }
}

/// The copies of one process: one connector (its own connection pool to the canary servers)
/// and the in-flight bound.
pub struct Shadow {
    connector: HttpConnector,
    in_flight: AtomicUsize,
    metrics: Arc<ProxyMetrics>,
}

/// What a copy needs from the request it copies, taken in `logging`.
pub struct Original<'a> {
    pub live: &'a Live,
    pub req: &'a RequestHeader,
    pub origin: &'a Origin,
    pub tls: bool,
    pub request_id: Option<&'a RequestId>,
    pub features: Option<String>,
    /// Production's answer to the user: its status and how long its head took.
    pub production: Answer,
    /// The user's request body arrived whole.
    pub body_done: bool,
}

impl Shadow {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Shadow {
        Shadow {
            connector: HttpConnector::new(None),
            in_flight: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Whether to copy this request (`request_filter`, after routing): routed to production
    /// while a shadow step runs, a listed method, not an upgrade, a body no larger than
    /// `shadow.max_body` as far as its `Content-Length` tells, and the `shadow.percent` draw.
    pub fn pick(
        &self,
        live: &Live,
        pool: PoolKind,
        req: &RequestHeader,
        upgrade: bool,
    ) -> Option<Box<Picked>> {
        let run = live.shadow.as_ref()?;
        if pool != PoolKind::Production || upgrade {
            return None;
        }
        let settings = &run.settings;
        if !settings.copies(req.method.as_str()) {
            return None;
        }
        if (fastrand::u32(..) as u64) >= run.threshold {
            return None;
        }
        if headers::has_body(req) {
            let declared = req
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > settings.max_body) {
                self.metrics.shadow(ShadowOutcome::TooLarge);
                return None;
            }
        }
        Some(Box::new(Picked {
            run: run.clone(),
            body: BytesMut::new(),
            body_refused: false,
            production_hash: settings.compares(Compare::BodyHash).then(Xxh3::new),
            production_bytes: 0,
        }))
    }

    /// Send the copy of a finished request (`logging`): on a task of its own, unless
    /// `max_in_flight` copies are already out (dropped, counted).
    pub fn send(self: &Arc<Self>, shared: &Arc<Shared>, picked: Box<Picked>, o: Original<'_>) {
        let Picked {
            run,
            body,
            body_refused,
            production_hash,
            ..
        } = *picked;
        let settings = run.settings.clone();
        if body_refused || (headers::has_body(o.req) && !o.body_done) {
            self.metrics.shadow(ShadowOutcome::TooLarge);
            return;
        }
        let limit = settings.max_in_flight as usize;
        if self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .is_err()
        {
            self.metrics.shadow(ShadowOutcome::Dropped);
            return;
        }
        let pool = shared.pools().get(PoolKind::Canary);
        let Some((_, server)) = pool.select(b"", &[]) else {
            self.in_flight.fetch_sub(1, Relaxed);
            self.metrics.shadow(ShadowOutcome::NoServer);
            return;
        };
        let head = match copy_head(&run, &o, body.len()) {
            Ok(head) => head,
            Err(e) => {
                self.in_flight.fetch_sub(1, Relaxed);
                log::debug!("shadow copy not built: {e}");
                self.metrics.shadow(ShadowOutcome::Failed);
                return;
            }
        };
        let timeouts = *o.live.upstream.timeouts(false);
        let peer = pool.peer(&server, &timeouts, super::worker_slot());
        let production = o.production;
        let client = o.origin.client;
        let production_hash = production_hash.map(|h| h.digest());
        let entry = shared
            .access_log()
            .filter(|l| l.logs_shadow())
            .map(|_| Entry {
                time: SystemTime::now(),
                client,
                method: o.req.method.clone(),
                uri: o.req.uri.clone(),
                version: o.req.version,
                status: None,
                bytes_in: body.len(),
                bytes_out: 0,
                duration: Duration::ZERO,
                upstream: Some(server.addr),
                upstream_time: None,
                pool: Some(PoolKind::Canary.as_str()),
                reason: Some("shadow"),
                user_hash: None,
                request_id: o.request_id.map(|id| id.value.clone()),
                tls: None,
                referer: None,
                user_agent: None,
                shadow: true,
            });
        let this = self.clone();
        let shared = shared.clone();
        let body = body.freeze();
        tokio::spawn(async move {
            let start = Instant::now();
            let hashing = settings.compares(Compare::BodyHash) && production_hash.is_some();
            let exchange = this.exchange(&peer, head, body, hashing);
            let result = tokio::time::timeout(settings.timeout, exchange).await;
            let (outcome, canary, canary_hash, bytes_out) = match result {
                Ok(Ok(got)) => (
                    ShadowOutcome::Answered,
                    Answer {
                        status: Some(got.status),
                        seconds: got.head_time.as_secs_f64(),
                    },
                    got.hash,
                    got.bytes,
                ),
                Ok(Err(e)) => {
                    log::debug!("shadow copy to {}: {e}", server.addr);
                    let seconds = start.elapsed().as_secs_f64();
                    let failed = Answer {
                        status: None,
                        seconds,
                    };
                    (ShadowOutcome::Failed, failed, None, 0)
                }
                Err(_) => {
                    let seconds = settings.timeout.as_secs_f64();
                    let timed_out = Answer {
                        status: None,
                        seconds,
                    };
                    (ShadowOutcome::Timeout, timed_out, None, 0)
                }
            };
            this.in_flight.fetch_sub(1, Relaxed);
            this.metrics.shadow(outcome);
            let body_match = match (production_hash, canary_hash) {
                (Some(p), Some(c)) => Some(p == c),
                _ => None,
            };
            shared.record_shadow_pair(
                &Pair {
                    production,
                    canary,
                    body_match,
                },
                client,
            );
            if let (Some(mut entry), Some(log)) = (entry, shared.access_log()) {
                entry.status = canary.status;
                entry.duration = start.elapsed();
                entry.upstream_time = canary
                    .status
                    .map(|_| Duration::from_secs_f64(canary.seconds));
                entry.bytes_out = bytes_out;
                log.log(entry);
            }
        });
    }

    /// One copy's exchange with the canary: the head and body out, the answer's head back
    /// (its time is the latency compared), then its body read (hashed when compared) up to
    /// [`MAX_COPY_BODY`] so the connection can be reused.
    async fn exchange(
        &self,
        peer: &pingora_core::upstreams::peer::HttpPeer,
        mut head: Box<RequestHeader>,
        body: Bytes,
        hashing: bool,
    ) -> pingora_error::Result<Answered> {
        let start = Instant::now();
        let (mut session, _reused) = self.connector.get_http_session(peer).await?;
        if matches!(session, HttpSession::H2(_)) {
            // HTTP/2 wants the scheme and authority in the URI (`:scheme`, `:authority`).
            let authority = head
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| peer._address.to_string());
            let path = head
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let scheme = if peer.is_tls() { "https" } else { "http" };
            if let Ok(uri) = http::Uri::builder()
                .scheme(scheme)
                .authority(authority.as_str())
                .path_and_query(path.as_str())
                .build()
            {
                head.set_uri(uri);
            }
            head.remove_header(&header::HOST);
        }
        session.set_write_timeout(peer.options.write_timeout);
        session.set_read_timeout(peer.options.read_timeout);
        session.write_request_header(head).await?;
        if !body.is_empty() {
            session.write_request_body(body, true).await?;
        }
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let head_time = start.elapsed();
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        let mut hash = hashing.then(Xxh3::new);
        let mut bytes = 0usize;
        while let Some(chunk) = session.read_response_body().await? {
            bytes += chunk.len();
            if bytes > MAX_COPY_BODY {
                // Not worth more reading: the connection is closed, not reused.
                return Ok(Answered {
                    status,
                    head_time,
                    hash: None,
                    bytes,
                });
            }
            if let Some(h) = hash.as_mut() {
                h.update(&chunk);
            }
        }
        if session.response_done() {
            self.connector
                .release_http_session(session, peer, Some(Duration::from_secs(30)))
                .await;
        }
        Ok(Answered {
            status,
            head_time,
            hash: hash.map(|h| h.digest()),
            bytes,
        })
    }
}

/// The canary's answer to a copy.
struct Answered {
    status: u16,
    head_time: Duration,
    hash: Option<u64>,
    bytes: usize,
}

/// The copy's head: the user's request as production got it (method, target, end-to-end
/// headers, forwarding headers, request id, feature flags), without hop-by-hop headers and,
/// unless `forward_credentials`, without `Cookie` and `Authorization`; with the routing header
/// at `1` (it goes to the canary), `shadow.header: 1`, and the buffered body's length.
fn copy_head(
    run: &ShadowRun,
    o: &Original<'_>,
    body_len: usize,
) -> pingora_error::Result<Box<RequestHeader>> {
    let req = o.req;
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = RequestHeader::build(req.method.clone(), target.as_bytes(), None)?;
    let listed_in_connection: Vec<HeaderName> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    let live = o.live;
    let forward_credentials = run.settings.forward_credentials;
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        let dropped = HOP_BY_HOP.contains(&n)
            || listed_in_connection.contains(name)
            || *name == header::CONTENT_LENGTH
            || *name == run.header
            || *name == live.policy.header
            || *name == live.flag_header
            || *name == live.flag_override_header
            || (!forward_credentials
                && (*name == header::COOKIE || *name == header::AUTHORIZATION));
        if !dropped {
            head.append_header(name.clone(), value.clone())?;
        }
    }
    if req.uri.authority().is_some() && !head.headers.contains_key(header::HOST) {
        // An HTTP/2 user request has its host as `:authority`.
        if let Some(a) = req.uri.authority() {
            head.insert_header(header::HOST, a.as_str())?;
        }
    }
    headers::set_forwarding(&mut head, o.origin, if o.tls { "https" } else { "http" })?;
    if let Some(id) = o.request_id {
        head.insert_header(headers::X_REQUEST_ID, id.value.clone())?;
    }
    if let Some(f) = &o.features {
        head.insert_header(live.flag_header.clone(), f.as_str())?;
    }
    head.insert_header(live.policy.header.clone(), HeaderValue::from_static("1"))?;
    head.insert_header(run.header.clone(), HeaderValue::from_static("1"))?;
    if body_len > 0 || headers::has_body(req) {
        head.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    }
    Ok(Box::new(head))
}
