//! Assembling the Pingora server: the proxy service, the admin service and the background task
//! that keeps the pools current (health checks, the discovery provider, refreshes). The signals
//! that reload or stop it are in `signals.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::{ConnectionLimit, Service};
use pingora_core::services::ServiceReadyNotifier;

use crate::cli::ServeArgs;
use crate::config::Config;
use crate::discovery::Sink;
use crate::proxy::CanaryProxy;
use crate::runtime::admin::AdminApp;
use crate::runtime::signals::Signals;
use crate::state::Shared;

/// `canary-lb check`: validate a config file and say what it holds. An edge, like [`serve`]
/// and [`assemble`]: it returns `anyhow` to `main`, over the library's typed errors.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    crate::pool::health::checker(&config.health_check, crate::model::PoolKind::Production)?;
    crate::routing::CanaryPolicy::from_config(&config.routing)?;
    println!(
        "{}: OK ({} production and {} canary server(s), discovery: {}, canary_percent: {})",
        path.display(),
        config.pools.production.servers.len(),
        config.pools.canary.servers.len(),
        crate::discovery::from_config(&config).describe(),
        config.routing.canary_percent.as_f64(),
    );
    Ok(())
}

/// `canary-lb serve`; `exit_now` as in [`Assembled::run`]. An edge: `anyhow`, which also
/// carries Pingora's config-file error with its context.
pub fn serve(args: ServeArgs, exit_now: ExitNow) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let pingora_conf = match &args.pingora_conf {
        Some(p) => ServerConf::load_from_yaml(p.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("pingora config {}", p.display()))?,
        None => ServerConf::default(),
    };
    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        ..Opt::default()
    };
    assemble(config, Some(args.config), opt, pingora_conf)?.run(exit_now);
    Ok(())
}

/// Ends the process at once with exit status 0. Library code never ends the process itself:
/// the binary passes this in (`main.rs`), and only the SIGTERM drain watchdog calls it (see
/// [`Assembled::run`]).
pub type ExitNow = fn() -> !;

/// A ready-to-run server: `demo` adds its app services before [`Assembled::run`].
pub struct Assembled {
    pub server: Server,
    pub shared: Arc<Shared>,
    config_path: Option<PathBuf>,
}

/// Build the server from `config`. An edge for `serve` and `demo`: returns `anyhow`.
pub fn assemble(
    config: Config,
    config_path: Option<PathBuf>,
    opt: Opt,
    mut conf: ServerConf,
) -> anyhow::Result<Assembled> {
    conf.threads = config.threads;
    conf.grace_period_seconds = Some(config.grace_period.as_secs().max(1));
    conf.graceful_shutdown_timeout_seconds = Some(1);
    conf.upstream_keepalive_pool_size = config.upstream.keepalive_pool_size;
    // `upstream.max_tries` is live: the proxy's own retry rules decide within this bound.
    conf.max_retries = crate::config::MAX_TRIES;
    // One current-thread runtime per worker: measured faster for this proxy (BENCHMARKS.md).
    conf.work_stealing = false;
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let listen = config.listen.clone();
    let metrics_listen = config.metrics_listen;
    let shared = Arc::new(Shared::new(config)?);

    let keeper = background_service(
        "pool keeper",
        PoolKeeper {
            shared: shared.clone(),
        },
    );
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        CanaryProxy::new(shared.clone()),
        "canary-lb proxy",
    );
    // Client limits Pingora enforces while it reads a request head and accepts connections
    // (patches/pingora/0001 and 0002), taken at start; the rest are applied per request.
    let client = shared.started().client.clone();
    if let Some(app) = proxy.app_logic_mut() {
        let mut opts = HttpServerOptions::default();
        opts.h1_header_timeout = Some(client.header_timeout);
        opts.h1_max_header_size = Some(client.max_header_bytes);
        app.server_options = Some(opts);
    }
    let limit = Arc::new(ConnectionLimit::new(client.max_connections));
    proxy.set_connection_limit(limit.clone());
    shared.metrics.watch_connection_limit(limit);
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    let keeper = server.add_service(keeper);
    let proxy = server.add_service(proxy);
    proxy.add_dependency(&keeper);
    if shared.access_log.is_some() {
        let writer = background_service(
            "access log writer",
            AccessLogWriter {
                shared: shared.clone(),
            },
        );
        let writer = server.add_service(writer);
        proxy.add_dependency(&writer);
    }
    if let Some(addr) = metrics_listen {
        let mut admin = Service::new("canary-lb admin".into(), AdminApp::new(shared.clone()));
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    Ok(Assembled {
        server,
        shared,
        config_path,
    })
}

impl Assembled {
    /// Run until a signal stops the server, then return (SIGINT, SIGQUIT, or SIGTERM once the
    /// grace period is over).
    ///
    /// `exit_now` is for SIGTERM: the drain watchdog calls it as soon as nothing is in flight.
    /// It cannot return to the caller instead: after a graceful terminate, Pingora's
    /// `Server::run` sleeps the whole grace period on the calling (main) thread with no way
    /// to wake it, and running Pingora on another thread would break daemon mode (it forks
    /// inside `run`, and the child keeps only the forking thread).
    pub fn run(self, exit_now: ExitNow) {
        let watch = Signals::new(self.shared.clone(), self.config_path, exit_now);
        self.server.run(RunArgs {
            shutdown_signal: Box::new(watch),
        });
    }
}

/// Starts the access log's writer thread once Pingora runs (no thread may exist before:
/// daemon mode forks), then waits for shutdown.
struct AccessLogWriter {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        if let Some(log) = &self.shared.access_log {
            if let Err(e) = log.start_writer() {
                log::error!("access log: cannot start its writer thread: {e}");
            }
        }
        ready.notify_ready();
        let _ = shutdown.changed().await;
    }
}

/// Keeps the pools current: first discovery before the proxy listens, then health checks,
/// refreshes on demand (reload, Redis event) and periodic resyncs (DNS re-resolution).
struct PoolKeeper {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for PoolKeeper {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let shared = &self.shared;
        let config = shared.started();
        for pool in shared.pools.values() {
            pool.refresh().await;
        }
        ready.notify_ready();

        let mut tasks = tokio::task::JoinSet::new();
        for kind in crate::model::PoolKind::ALL {
            let shared = shared.clone();
            let interval = config.health_check.interval;
            tasks.spawn(async move {
                loop {
                    shared.pools.get(kind).health_check().await;
                    tokio::time::sleep(interval).await;
                }
            });
        }
        let provider = crate::discovery::from_config(config);
        let sink: Arc<dyn Sink> = shared.clone();
        tasks.spawn(provider.run(sink, shutdown.clone()));
        let resync = config.discovery.resync_interval;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = shared.refresh.notified() => {}
                _ = tokio::time::sleep(resync) => {}
            }
            for pool in shared.pools.values() {
                pool.refresh().await;
            }
        }
        tasks.shutdown().await;
    }
}
