//! One Pingora listening service answering 200 to every request, with the patches' settings
//! from the environment (MAX_HEAD, HEAD_TIMEOUT_MS, MAX_CONN), on 127.0.0.1:$PORT. Every 100 ms
//! it writes "rss_kb fds active refused" to $STATS for attack.py to read.
use async_trait::async_trait;
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::apps::HttpServerOptions;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::Server;
use pingora_core::services::listening::{ConnectionLimit, Service};
use std::sync::Arc;
use std::time::Duration;

struct Ok200;

#[async_trait]
impl ServeHttp for Ok200 {
    async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut response = http::Response::new(b"ok".to_vec());
        response
            .headers_mut()
            .insert("Content-Length", http::HeaderValue::from_static("2"));
        response
    }
}

fn env(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

fn rss_kb() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS"))?;
    line.split_whitespace().nth(1).map(str::to_string)
}

fn main() {
    let port = env("PORT").expect("PORT");
    let stats = std::env::var("STATS").expect("STATS");
    let mut server = Server::new(None).expect("server");
    server.bootstrap();

    let mut options = HttpServerOptions::default();
    options.h1_max_header_size = env("MAX_HEAD").map(|v| v as usize);
    options.h1_header_timeout = env("HEAD_TIMEOUT_MS").map(Duration::from_millis);
    let mut app = HttpServer::new_app(Ok200);
    app.server_options = Some(options);
    let mut service = Service::new("measure".into(), app);
    service.add_tcp(&format!("127.0.0.1:{port}"));
    let limit = env("MAX_CONN").map(|max| Arc::new(ConnectionLimit::new(max as usize)));
    if let Some(limit) = &limit {
        service.set_connection_limit(limit.clone());
    }

    std::thread::spawn(move || loop {
        // Out of descriptors (the EMFILE run) these reads fail: keep the last figures then.
        if let (Some(rss), Ok(fds)) = (rss_kb(), std::fs::read_dir("/proc/self/fd")) {
            let (active, refused) = limit.as_ref().map_or((0, 0), |l| (l.active(), l.refused()));
            let _ = std::fs::write(&stats, format!("{rss} {} {active} {refused}\n", fds.count()));
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    server.add_service(service);
    server.run_forever();
}
