//! `redirect_to_https: true`: a plain listener that answers every request with a 308 to the
//! same path and query on the TLS listener.
//!
//! The Host header is the client's to write, and a redirect built from any Host would make
//! the proxy an open redirect (`Host: evil.example` sending users to a host of the client's
//! choosing). So the rule is: the redirect goes only to a name one of the TLS listeners'
//! certificates covers (exactly or by a wildcard), the same names the TLS listener can
//! serve; any other Host, an IP address, or none at all gets a 400 with a fixed text.
//!
//! One request per connection (the client is sent elsewhere anyway); its head must arrive
//! within `client.header_timeout` and the answer be taken within [`RESPONSE_DEADLINE`]. Every
//! answer carries an `X-Request-Id` (the client's valid one, else a new one: the proxy's rule,
//! handed in by the runtime) and a `Server` header only when `server_header` names one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, HeaderValue, Response};
use log::debug;
use pingora_core::apps::{HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::{RequestHeader, ResponseHeader};

use super::Resolvers;

/// How long a client may take to read the short answer.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(5);

/// Longest Host value looked at (a DNS name is at most 253 bytes, plus a port).
const MAX_HOST: usize = 260;

/// The `Location` of the redirect for `req`, or the fixed reason for a 400.
/// `covers` says whether a certificate of a TLS listener covers a (lowercase) name.
pub fn location(
    req: &RequestHeader,
    https_port: u16,
    covers: impl Fn(&str) -> bool,
) -> Result<String, &'static str> {
    let host = match req.headers.get(header::HOST) {
        Some(h) => h.as_bytes(),
        None => return Err("a Host header is required"),
    };
    if host.len() > MAX_HOST {
        return Err("Host too long");
    }
    let host = std::str::from_utf8(host).map_err(|_| "invalid Host")?;
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return Err("invalid Host"),
        None => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !name_ok || !covers(&name) {
        return Err("Host is not a name this proxy serves over HTTPS");
    }
    let path = req
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    Ok(if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    })
}

/// The request id of a request (`proxy::headers::request_id_of`'s value).
pub type RequestIdFn = fn(&RequestHeader) -> HeaderValue;

/// The app behind a `redirect_to_https` listener.
pub struct RedirectApp {
    resolvers: Resolvers,
    https_port: u16,
    header_timeout: Duration,
    server_header: Option<HeaderValue>,
    request_id: Option<RequestIdFn>,
}

impl RedirectApp {
    pub fn new(resolvers: Resolvers, https_port: u16, header_timeout: Duration) -> RedirectApp {
        RedirectApp {
            resolvers,
            https_port,
            header_timeout,
            server_header: None,
            request_id: None,
        }
    }

    /// Answer with `Server: server_header` (None: no `Server`) and the id `request_id` gives.
    pub fn answering_with(
        mut self,
        server_header: Option<HeaderValue>,
        request_id: RequestIdFn,
    ) -> RedirectApp {
        self.server_header = server_header;
        self.request_id = Some(request_id);
        self
    }

    fn respond(&self, req: &RequestHeader) -> Response<Vec<u8>> {
        let mut builder = Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .header(header::CONNECTION, "close");
        if let Some(id) = self.request_id {
            builder = builder.header("X-Request-Id", id(req));
        }
        if let Some(server) = &self.server_header {
            builder = builder.header(header::SERVER, server.clone());
        }
        let built = match location(req, self.https_port, |n| self.resolvers.cover(n)) {
            Ok(to) => {
                let body = b"308 use HTTPS\n".to_vec();
                builder
                    .status(308)
                    .header(header::LOCATION, to)
                    .header(header::CONTENT_LENGTH, body.len())
                    .body(body)
            }
            Err(reason) => {
                let body = format!("400 {reason}\n").into_bytes();
                builder
                    .status(400)
                    .header(header::CONTENT_LENGTH, body.len())
                    .body(body)
            }
        };
        built.unwrap_or_else(|_| {
            let mut r = Response::new(b"400 bad request\n".to_vec());
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            r
        })
    }

    async fn write(
        session: &mut ServerSession,
        response: Response<Vec<u8>>,
    ) -> pingora_error::Result<()> {
        let (parts, body) = response.into_parts();
        let header: ResponseHeader = parts.into();
        session.write_response_header(Box::new(header)).await?;
        if req_is_head(session) {
            return session.finish_body().await;
        }
        session.write_response_body(body.into(), true).await?;
        session.finish_body().await
    }
}

fn req_is_head(session: &ServerSession) -> bool {
    session.req_header().method == http::Method::HEAD
}

#[async_trait]
impl HttpServerApp for RedirectApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match tokio::time::timeout(self.header_timeout, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                debug!("redirect: bad request head: {e}");
                return None;
            }
            Err(_) => {
                debug!("redirect: request head not complete in time");
                return None;
            }
        }
        session.set_keepalive(None);
        let response = self.respond(session.req_header());
        match tokio::time::timeout(RESPONSE_DEADLINE, Self::write(&mut session, response)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!("redirect: writing the response: {e}"),
            Err(_) => debug!("redirect: response not taken in time"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), session.shutdown()).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).expect("request");
        if let Some(h) = host {
            r.insert_header(header::HOST, h).expect("host");
        }
        r
    }

    #[test]
    fn redirects_only_to_covered_names_keeping_path_and_query() {
        let covers = |n: &str| n == "site.test" || n.ends_with(".site.test");
        let loc = |target, host| location(&req(target, host), 8443, covers);
        assert_eq!(
            loc("/a/b?x=1&y=2", Some("site.test:8080")),
            Ok("https://site.test:8443/a/b?x=1&y=2".to_string())
        );
        assert_eq!(
            loc("/", Some("WWW.Site.Test")),
            Ok("https://www.site.test:8443/".to_string())
        );
        assert_eq!(
            location(&req("/p", Some("site.test")), 443, covers),
            Ok("https://site.test/p".to_string())
        );
        // Absolute-form target: only its path and query are kept, never its host.
        assert_eq!(
            loc("http://evil.test/x?q", Some("site.test")),
            Ok("https://site.test:8443/x?q".to_string())
        );
        for bad in [
            None,
            Some("evil.test"),
            Some("site.test.evil.test"),
            Some("127.0.0.1"),
            Some("[::1]:80"),
            Some("site.test:80:80"),
            Some("site.test:x"),
            Some("evil.test/site.test"),
            Some("user@site.test"),
            Some(""),
        ] {
            assert!(loc("/", bad).is_err(), "{bad:?} must not redirect");
        }
    }
}
