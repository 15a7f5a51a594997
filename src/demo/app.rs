//! `canary-lb demo` and `canary-lb app`: built-in demo app servers.
//!
//! A demo app answers every request with its pool and name, so a person with curl (or an
//! integration test) can see at a glance which side of the canary split served a request. It
//! also echoes the headers the proxy is expected to add upstream (`X-Canary`, `X-Forwarded-*`,
//! `X-Request-Id`, `X-Features`) as `X-Seen-*` response headers: what the upstream saw is then visible to the
//! client without access to the upstream's logs.
//!
//! Endpoints (every response carries `X-Served-By`, `X-App-Pool`, the `X-Seen-*` echoes and
//! `X-Body-Length`, the length of the request body, which is always read in full):
//! - `/healthz`: 200 `ok\n`.
//! - `/slow?ms=N`: waits N ms (at most 60 s; 1 s without `ms`), then answers like any path.
//! - `/status/NNN`: answers with status NNN (200..=599; anything else is a 400).
//! - `POST /_control?error_rate=0.5&latency_ms=800`: from now on answer that share of requests
//!   with 500 (spread evenly, not at random) and add that latency to every request, so a
//!   rollout can be shown (and tested) failing; `GET /_control` shows the values, 0 resets.
//!   `error_rate` is 0..=1 and `latency_ms` at most 60 s (as `/slow`); `/healthz` and
//!   `/_control` themselves are never failed or slowed (the app stays in rotation).
//!   `slow_share=0.1` adds the latency to only that share of requests (spread evenly, like
//!   the errors; default 1, every request): a tail regression, not a uniformly slower app.
//! - any other path: 200 `pool=<pool> server=<name> path=<path>\n`.
//!
//! The app is a plain Pingora [`ServeHttp`] service, so the same type serves the standalone
//! `canary-lb app` process and the demo apps that `canary-lb demo` runs next to the proxy.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode};
use log::{error, info};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::cli::AppArgs;

use super::faults::{parse_control, Control};
use super::registration::{deregister_on_exit, Registration};

/// The longest `/slow` accepts, so a typo cannot park a connection for hours.
pub(super) const MAX_SLOW: Duration = Duration::from_secs(60);
/// `/slow` without `ms=`.
const DEFAULT_SLOW: Duration = Duration::from_secs(1);

/// Request headers echoed back as `X-Seen-<name>` (`-` when absent).
const ECHOED: &[(&str, &str)] = &[
    ("x-canary", "X-Seen-Canary"),
    ("x-forwarded-for", "X-Seen-Forwarded-For"),
    ("x-forwarded-proto", "X-Seen-Forwarded-Proto"),
    ("x-forwarded-host", "X-Seen-Forwarded-Host"),
    ("x-request-id", "X-Seen-Request-Id"),
    ("x-features", "X-Seen-Features"),
];

/// `canary-lb app`: one demo app server as its own Pingora server, optionally registered in
/// Redis for as long as it runs. An edge: returns `anyhow` to `main`.
pub fn run_app(args: AppArgs) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(|| args.listen.to_string());
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(app_service(&name, &args.pool, args.listen));
    let advertise = args.advertise.unwrap_or_else(|| args.listen.to_string());
    if let Some(url) = &args.register_redis {
        let registration = Registration {
            redis_url: url.clone(),
            namespace: args.namespace.clone(),
            pool: args.pool.clone(),
            addr: advertise.clone(),
        };
        server.add_service(background_service("redis registration", registration));
    }
    info!(
        "demo app {name} (pool {}) listening on {}",
        args.pool, args.listen
    );
    server.run(pingora_core::server::RunArgs::default());
    // Pingora has stopped every service (the heartbeat included, possibly before it could
    // deregister): remove the registration now, so the proxies stop at once rather than
    // when the lease runs out.
    if let Some(url) = &args.register_redis {
        deregister_on_exit(url, &args.namespace, &args.pool, &advertise);
    }
    Ok(())
}

/// A listening Pingora service that serves one [`DemoApp`] on `listen`.
pub fn app_service(name: &str, pool: &str, listen: SocketAddr) -> Service<DemoApp> {
    let mut service = Service::new(format!("demo app {name}"), DemoApp::new(name, pool));
    service.add_tcp(&listen.to_string());
    service
}

/// A demo app server: answers with its pool and name (see the module docs).
pub struct DemoApp {
    name: String,
    pool: String,
    control: Control,
}

impl DemoApp {
    pub fn new(name: &str, pool: &str) -> Self {
        DemoApp {
            name: name.to_string(),
            pool: pool.to_string(),
            control: Control::default(),
        }
    }

    /// `/_control`: GET shows, POST sets (a 400 names the bad key).
    fn control(&self, method: &http::Method, query: Option<&str>) -> (u16, String) {
        if method == http::Method::GET || method == http::Method::HEAD {
            return (200, self.control.show());
        }
        if method != http::Method::POST {
            return (405, "use GET or POST\n".into());
        }
        match parse_control(query) {
            Ok(q) => {
                if let Some(ppm) = q.error_ppm {
                    self.control.error_ppm.store(ppm, Relaxed);
                    self.control.seen.store(0, Relaxed);
                }
                if let Some(ms) = q.latency_ms {
                    self.control.latency_ms.store(ms, Relaxed);
                }
                if let Some(ppm) = q.slow_ppm {
                    self.control.slow_ppm.store(ppm, Relaxed);
                    self.control.slow_seen.store(0, Relaxed);
                }
                info!(
                    "demo app {}: _control {}",
                    self.name,
                    self.control.show().trim()
                );
                (200, self.control.show())
            }
            Err(e) => (400, format!("{e}\n")),
        }
    }

    fn body_for(&self, path: &str) -> String {
        format!("pool={} server={} path={path}\n", self.pool, self.name)
    }
}

/// What a request path asks the demo app to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Health,
    Slow(Duration),
    Status(u16),
    Echo,
    BadRequest(String),
}

/// Map a path and query string to an [`Action`]; pure, so it is unit-tested below.
fn parse_action(path: &str, query: Option<&str>) -> Action {
    if path == "/healthz" {
        return Action::Health;
    }
    if path == "/slow" {
        let ms = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find_map(|(key, v)| (key == "ms").then_some(v));
        return match ms {
            None => Action::Slow(DEFAULT_SLOW),
            Some(v) => match v.parse::<u64>() {
                Ok(ms) => Action::Slow(Duration::from_millis(ms).min(MAX_SLOW)),
                Err(_) => {
                    Action::BadRequest(format!("ms must be a number of milliseconds, got `{v}`"))
                }
            },
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => Action::Status(c),
            _ => Action::BadRequest(format!("status must be 200..=599, got `{code}`")),
        };
    }
    Action::Echo
}

#[async_trait]
impl ServeHttp for DemoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let control = (path == "/_control").then(|| self.control(&req.method, req.uri.query()));
        let action = parse_action(&path, req.uri.query());
        let seen: Vec<(&str, String)> = ECHOED
            .iter()
            .map(|(request_name, echo_name)| {
                let value = req
                    .headers
                    .get(*request_name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                (*echo_name, value.to_string())
            })
            .collect();

        let mut body_len = 0usize;
        let mut body_error = None;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => body_len += chunk.len(),
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }

        let injected = control.is_none() && action != Action::Health;
        if injected {
            if let Some(delay) = self.control.delay_next() {
                tokio::time::sleep(delay).await;
            }
        }
        let (status, body) = match (body_error, action) {
            (Some(e), _) => (400, format!("cannot read the request body: {e}\n")),
            (None, _) if control.is_some() => control.unwrap_or_default(),
            (None, _) if injected && self.control.fail_next() => (
                500,
                format!("failed by /_control: {}", self.body_for(&path)),
            ),
            (None, Action::Health) => (200, "ok\n".to_string()),
            (None, Action::Slow(wait)) => {
                tokio::time::sleep(wait).await;
                (200, self.body_for(&path))
            }
            (None, Action::Status(code)) => (code, self.body_for(&path)),
            (None, Action::Echo) => (200, self.body_for(&path)),
            (None, Action::BadRequest(message)) => (400, format!("{message}\n")),
        };
        // 204 and 304 must not carry a body (nor, for 204, a Content-Length).
        let no_body = status == 204 || status == 304;
        let body = if no_body {
            Vec::new()
        } else {
            body.into_bytes()
        };

        let mut builder = Response::builder()
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
            .header("X-Served-By", &self.name)
            .header("X-App-Pool", &self.pool)
            .header("Content-Type", "text/plain")
            .header("X-Body-Length", body_len.to_string());
        if !no_body {
            builder = builder.header("Content-Length", body.len().to_string());
        }
        for (name, value) in seen {
            builder = builder.header(name, value);
        }
        builder.body(body).unwrap_or_else(|e| {
            // Only reachable with a header value http refuses (e.g. a name with control bytes).
            error!("demo app {}: cannot build response: {e}", self.name);
            let mut resp = Response::new(b"bad response\n".to_vec());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::faults::ControlQuery;
    use super::*;

    #[test]
    fn paths_map_to_actions() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Option<&str>, Action)] = &[
            ("/healthz", None, Action::Health),
            ("/healthz", Some("x=1"), Action::Health),
            ("/slow", Some("ms=250"), Action::Slow(ms(250))),
            ("/slow", Some("a=b&ms=5"), Action::Slow(ms(5))),
            ("/slow", Some("ms=0"), Action::Slow(ms(0))),
            ("/slow", Some("ms=999999999"), Action::Slow(MAX_SLOW)),
            ("/slow", None, Action::Slow(DEFAULT_SLOW)),
            ("/status/200", None, Action::Status(200)),
            ("/status/418", None, Action::Status(418)),
            ("/status/503", None, Action::Status(503)),
            ("/status/599", None, Action::Status(599)),
            ("/", None, Action::Echo),
            ("/slowly", Some("ms=5"), Action::Echo),
            ("/a/status/500", None, Action::Echo),
        ];
        for (path, query, want) in cases {
            assert_eq!(&parse_action(path, *query), want, "{path} {query:?}");
        }
    }

    #[test]
    fn bad_slow_and_status_values_are_400() {
        let bad = [
            ("/slow", Some("ms=abc")),
            ("/slow", Some("ms=-1")),
            ("/slow", Some("ms=")),
            ("/status/100", None),
            ("/status/199", None),
            ("/status/600", None),
            ("/status/99", None),
            ("/status/", None),
            ("/status/abc", None),
            ("/status/200/x", None),
        ];
        for (path, query) in bad {
            assert!(
                matches!(parse_action(path, query), Action::BadRequest(_)),
                "{path} {query:?} should be a bad request"
            );
        }
    }

    #[test]
    fn control_values_are_validated_and_failures_are_an_exact_share() {
        let q = |error_ppm, latency_ms, slow_ppm| {
            Ok(ControlQuery {
                error_ppm,
                latency_ms,
                slow_ppm,
            })
        };
        assert_eq!(
            parse_control(Some("error_rate=0.5&latency_ms=800")),
            q(Some(500_000), Some(800), None)
        );
        assert_eq!(parse_control(Some("error_rate=0")), q(Some(0), None, None));
        assert_eq!(parse_control(None), q(None, None, None));
        assert_eq!(
            parse_control(Some("latency_ms=300&slow_share=0.1")),
            q(None, Some(300), Some(100_000))
        );
        for bad in [
            "error_rate=1.5",
            "error_rate=-0.1",
            "error_rate=NaN",
            "latency_ms=60001",
            "latency_ms=-1",
            "latency=5",
            "slow_share=1.1",
            "slow_share=-0.5",
            "slow_share=",
        ] {
            assert!(parse_control(Some(bad)).is_err(), "{bad}");
        }
        let app = DemoApp::new("c", "canary");
        let post = http::Method::POST;
        assert_eq!(app.control(&post, Some("error_rate=0.25")).0, 200);
        let failed = (0..1000).filter(|_| app.control.fail_next()).count();
        assert_eq!(failed, 250);
        assert_eq!(app.control(&post, Some("error_rate=2")).0, 400);
        assert_eq!(
            app.control(&http::Method::GET, None).1,
            "error_rate=0.25 latency_ms=0 slow_share=1\n"
        );
        assert_eq!(app.control(&post, Some("error_rate=1")).0, 200);
        assert!((0..10).all(|_| app.control.fail_next()));
        app.control(&post, Some("error_rate=0"));
        assert!((0..10).all(|_| !app.control.fail_next()));
    }

    #[test]
    fn slow_share_delays_exactly_that_share_and_defaults_to_every_request() {
        let app = DemoApp::new("c", "canary");
        let post = http::Method::POST;
        assert_eq!(app.control.delay_next(), None, "no latency set: no delay");
        assert_eq!(app.control(&post, Some("latency_ms=300")).0, 200);
        let ms = Duration::from_millis(300);
        assert!(
            (0..20).all(|_| app.control.delay_next() == Some(ms)),
            "without slow_share every request is slowed"
        );
        assert_eq!(app.control(&post, Some("slow_share=0.1")).0, 200);
        let delays: Vec<_> = (0..1000).map(|_| app.control.delay_next()).collect();
        assert_eq!(delays.iter().filter(|d| **d == Some(ms)).count(), 100);
        assert!(delays.iter().all(|d| d.is_none() || *d == Some(ms)));
        // Evenly spread: every run of 10 requests has exactly one slow one.
        for chunk in delays.chunks(10) {
            assert_eq!(chunk.iter().filter(|d| d.is_some()).count(), 1);
        }
        assert_eq!(
            app.control(&http::Method::GET, None).1,
            "error_rate=0 latency_ms=300 slow_share=0.1\n"
        );
        assert_eq!(app.control(&post, Some("slow_share=0")).0, 200);
        assert!((0..20).all(|_| app.control.delay_next().is_none()));
        assert_eq!(app.control(&post, Some("slow_share=1&latency_ms=0")).0, 200);
        assert!((0..20).all(|_| app.control.delay_next().is_none()));
    }

    #[test]
    fn body_names_pool_server_and_path() {
        let app = DemoApp::new("p1", "production");
        assert_eq!(app.body_for("/x"), "pool=production server=p1 path=/x\n");
    }
}
