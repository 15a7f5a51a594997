//! The bare-Pingora floor: the smallest `ProxyHttp` there is, a round robin over the given
//! upstreams, on canary-lb's build profile and allocator (jemalloc) and with canary-lb's
//! runtime choices (one worker thread, `work_stealing = false`). Everything else is Pingora's
//! default: no filters, no timeouts, no health checks, the default downstream modules.
//! `benches/perf-table.sh` runs it next to canary-lb to show what canary-lb adds to Pingora.
//!
//!   cargo build --release --example floor
//!   target/release/examples/floor [LISTEN [UPSTREAM...]]
//!   (defaults: 127.0.0.1:8084, upstreams 127.0.0.1:9001 127.0.0.1:9002)

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;
use pingora_proxy::{ProxyHttp, Session};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// canary-lb's jemalloc options (src/main.rs): a thread cache that keeps Pingora's 64 KiB
// body buffers.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: Option<&u8> = Some(&JEMALLOC_CONF_TEXT[0]);
static JEMALLOC_CONF_TEXT: [u8; 17] = *b"tcache_max:65536\0";

struct Floor(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no upstream"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8084".to_string());
    let mut upstreams: Vec<String> = args.collect();
    if upstreams.is_empty() {
        upstreams = vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()];
    }
    let lb = LoadBalancer::try_from_iter(upstreams.iter().map(String::as_str))?;

    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Floor(Arc::new(lb)),
        "floor",
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
