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
use crate::config::{Config, Coordination};
use crate::discovery::Sink;
use crate::proxy::budget::UpstreamBudget;
use crate::proxy::{CanaryProxy, ProxyMetrics};
use crate::rollout::engine::{replica_id, Engine, RolloutSink};
use crate::rollout::local::LocalCoordinator;
use crate::rollout::Coordinator;
use crate::runtime::admin::AdminApp;
use crate::runtime::listeners::{Bound, ExitCleanup};
use crate::runtime::signals::Signals;
use crate::state::{RolloutHandle, Shared};
use crate::tls::redirect::RedirectApp;
use crate::tls::{ListenerCerts, Resolvers, SniResolver};

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
    /// The TLS listeners' certificates, swapped by SIGHUP.
    resolvers: Resolvers,
    /// What is removed when the process ends (the pid file; `demo` adds its certificates).
    pub cleanup: ExitCleanup,
}

/// Build the server from `config`. An edge for `serve` and `demo`: returns `anyhow`.
pub fn assemble(
    config: Config,
    config_path: Option<PathBuf>,
    opt: Opt,
    mut conf: ServerConf,
) -> anyhow::Result<Assembled> {
    config.check_pid_file().map_err(anyhow::Error::msg)?;
    // A busy port stops the start here, naming it (see `listeners`). With `--upgrade` the old
    // process still holds the sockets it is about to hand over.
    if !opt.upgrade {
        crate::runtime::listeners::check_free(&config)?;
    }
    if let (true, Some(pid_file)) = (opt.daemon, &config.pid_file) {
        // Pingora's daemon writes its own pid file: make it the same one.
        conf.pid_file = pid_file.display().to_string();
    }
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
    let https_port = config.https_port();
    let metrics_listen = config.metrics_listen;
    // Certificates before anything starts: a bad file stops `serve` naming the file.
    let certs = ListenerCerts::load(&config)?;
    let mut resolvers = Resolvers::default();
    for (addr, set) in certs.sets {
        resolvers.add(addr, SniResolver::new(set));
    }
    let shared = Arc::new(Shared::new(config)?);
    count_newer_schema(&shared);

    let keeper = background_service(
        "pool keeper",
        PoolKeeper {
            shared: shared.clone(),
        },
    );
    // Client limits Pingora enforces while it reads a request head and accepts connections
    // (patches/pingora/0001, 0002 and 0006), taken at start; the rest are applied per request.
    // At the limit the longest-idle connection makes room: silent sockets cannot keep out
    // clients that send requests.
    let client = shared.started().client.clone();
    let limit = Arc::new(ConnectionLimit::new(client.max_connections).shed_idle());
    let proxy_metrics = Arc::new(ProxyMetrics::register(shared.metrics().registry())?);
    proxy_metrics.watch_connection_limit(limit.clone());
    // One set of HTTP/2 upstream budgets for every listener (proxy/budget.rs).
    let budget = UpstreamBudget::new(
        client.max_upstream_per_connection,
        client.max_upstream_connections,
        proxy_metrics.h2_upstream_in_flight.clone(),
    );
    // `h2c` is a per-service option in Pingora: plain listeners with h2c get their own
    // service (same proxy logic, same connection limit). TLS listeners negotiate h2 by ALPN.
    let shadow = Arc::new(crate::proxy::shadow::Shadow::new(proxy_metrics.clone()));
    let proxy_service = |name: &str, h2c: bool| {
        let mut proxy = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            CanaryProxy::new(
                shared.clone(),
                budget.clone(),
                proxy_metrics.clone(),
                shadow.clone(),
            ),
            name,
        );
        if let Some(app) = proxy.app_logic_mut() {
            let mut opts = HttpServerOptions::default();
            opts.h1_header_timeout = Some(client.header_timeout);
            opts.h1_max_header_size = Some(client.max_header_bytes);
            opts.h2c = h2c;
            opts.h2_idle_timeout = Some(client.keepalive_timeout);
            opts.handshake_timeout = Some(client.handshake_timeout);
            app.server_options = Some(opts);
            // HTTP/2 heads: the same size limit as HTTP/1 (decoded); streams per connection.
            let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
            h2.max_header_list_size(client.max_header_bytes.try_into().unwrap_or(u32::MAX));
            h2.max_concurrent_streams(client.h2_max_concurrent_streams);
            app.h2_options = Some(h2);
        }
        proxy.set_connection_limit(limit.clone());
        proxy.set_handshake_timeout(client.handshake_timeout);
        proxy
    };
    let mut proxy = proxy_service("canary-lb proxy", false);
    let mut h2c_proxy = proxy_service("canary-lb proxy (h2c)", true);
    let mut redirect = Service::new(
        "canary-lb redirect to https".into(),
        RedirectApp::new(
            resolvers.clone(),
            https_port.unwrap_or(443),
            client.header_timeout,
        )
        .answering_with(
            crate::proxy::server_header_value(&shared.started().server_header),
            |req| crate::proxy::headers::request_id_of(req).value,
        ),
    );
    redirect.set_connection_limit(limit.clone());
    redirect.set_handshake_timeout(client.handshake_timeout);
    let (mut n_h2c, mut n_redirect) = (0, 0);
    for l in &listen {
        let addr = l.addr.to_string();
        if l.tls.is_some() {
            let resolver = resolvers
                .get(l.addr)
                .ok_or_else(|| anyhow::anyhow!("listen {addr}: certificates not loaded"))?;
            proxy.add_tls_with_settings(&addr, None, crate::tls::settings(resolver)?);
        } else if l.redirect_to_https {
            redirect.add_tcp(&addr);
            n_redirect += 1;
        } else if l.h2c {
            h2c_proxy.add_tcp(&addr);
            n_h2c += 1;
        } else {
            proxy.add_tcp(&addr);
        }
    }
    let n_main = listen.len() - n_h2c - n_redirect;
    let keeper = server.add_service(keeper);
    // The access log's writer starts before the proxies that feed it.
    let writer = shared.access_log().is_some().then(|| {
        server.add_service(background_service(
            "access log writer",
            AccessLogWriter {
                shared: shared.clone(),
            },
        ))
    });
    if n_main > 0 {
        let proxy = server.add_service(proxy);
        proxy.add_dependency(&keeper);
        if let Some(writer) = &writer {
            proxy.add_dependency(writer);
        }
    }
    if n_h2c > 0 {
        let h2c_proxy = server.add_service(h2c_proxy);
        h2c_proxy.add_dependency(&keeper);
        if let Some(writer) = &writer {
            h2c_proxy.add_dependency(writer);
        }
    }
    if n_redirect > 0 {
        server.add_service(redirect);
    }
    if let Some(engine) = rollout_engine(&shared, config_path.as_deref())? {
        server.add_service(background_service("rollout engine", engine));
    }
    if let Some(addr) = metrics_listen {
        let mut admin = Service::new("canary-lb admin".into(), AdminApp::new(shared.clone()));
        admin.add_tcp(&addr.to_string());
        let admin_limit = Arc::new(crate::runtime::admin::connection_limit());
        proxy_metrics.watch_admin_connection_limit(admin_limit.clone());
        admin.set_connection_limit(admin_limit);
        server.add_service(admin);
    }
    let cleanup = ExitCleanup::default();
    server.add_service(background_service(
        "listeners bound",
        Bound {
            shared: shared.clone(),
            cleanup: cleanup.clone(),
        },
    ));
    Ok(Assembled {
        server,
        shared,
        config_path,
        resolvers,
        cleanup,
    })
}

/// Stored values a newer release wrote, refused by `store`'s codec, counted in
/// `canary_lb_store_newer_schema_total{kind}` (every kind at 0 from the first scrape).
fn count_newer_schema(shared: &Arc<Shared>) {
    let kinds = crate::store::codec::StoredKind::ALL.map(|k| k.as_str());
    shared.metrics().preset_store_newer_schema(&kinds);
    let weak = Arc::downgrade(shared);
    crate::store::codec::on_newer_schema(move |kind| {
        if let Some(shared) = weak.upgrade() {
            shared.metrics().store_newer_schema(kind.as_str());
        }
    });
}

/// The file provider's rollout state file: `rollout.state_file`, else beside the config file.
/// An explicit path that cannot be written stops the start (the operator asked for it); the
/// default one only warns, and the rollout then lives in the process alone, as before the
/// state file existed (e.g. a container whose config directory is read-only).
fn state_file(
    config: &crate::config::Config,
    config_path: Option<&Path>,
) -> anyhow::Result<Option<crate::store::RolloutStateFile>> {
    use crate::store::RolloutStateFile;
    if let Some(path) = &config.rollout.state_file {
        let file = RolloutStateFile::new(path);
        file.check_writable().map_err(|e| {
            anyhow::anyhow!(
                "rollout.state_file: {e}: the rollout cannot be kept across restarts; point \
                 rollout.state_file at a writable file"
            )
        })?;
        return Ok(Some(file));
    }
    let Some(config_path) = config_path else {
        return Ok(None);
    };
    let file = RolloutStateFile::beside(config_path);
    match file.check_writable() {
        Ok(()) => Ok(Some(file)),
        Err(e) => {
            log::warn!(
                "rollout: the state is NOT kept across restarts: {e}; a restart during a \
                 rollout would reset it. Set rollout.state_file to a writable file"
            );
            Ok(None)
        }
    }
}

/// The coordinator of the file provider: in-process, kept in the state file, and the rollout
/// saved before a restart taken back (with its routing applied) before the proxy serves.
fn local_coordinator(
    shared: &Arc<Shared>,
    replica: &str,
    config_path: Option<&Path>,
) -> anyhow::Result<LocalCoordinator> {
    // Weak: the coordinator lives in `shared`.
    let weak = Arc::downgrade(shared);
    let mut local = LocalCoordinator::new(
        replica.to_string(),
        Box::new(move |percent| {
            if let Some(shared) = weak.upgrade() {
                shared.set_percent_override(percent);
            }
        }),
    );
    if let Some(file) = state_file(shared.started(), config_path)? {
        local = local.with_persist(Box::new(file));
    }
    let now = crate::model::now_ms();
    match local.restore(now) {
        Ok(Some(restored)) => {
            shared.set_route(crate::rollout::engine::route_for(
                Some(&restored.state),
                now,
            ));
        }
        Ok(None) => {}
        Err(e) => log::error!(
            "rollout: the saved rollout is not taken back ({e}); starting without one, and \
             the file is left as it is until the next rollout starts"
        ),
    }
    Ok(local)
}

/// The rollout engine of this process, with the coordinator its discovery provider implies
/// (README, "Progressive delivery").
fn rollout_engine(
    shared: &Arc<Shared>,
    config_path: Option<&Path>,
) -> anyhow::Result<Option<RolloutService>> {
    let replica = replica_id();
    let coordinator: Arc<dyn Coordinator> = match shared.provider_role().coordination {
        Coordination::InProcess => Arc::new(local_coordinator(shared, &replica, config_path)?),
        Coordination::SharedStore => {
            match crate::store::RolloutStore::for_discovery(&shared.started().discovery) {
                Ok(store) => Arc::new(store.with_reporter(&replica)),
                Err(e) => {
                    log::error!(
                        "rollout: no Redis coordinator ({e}); this proxy runs no rollout engine"
                    );
                    return Ok(None);
                }
            }
        }
    };
    shared.set_rollout(RolloutHandle {
        coordinator: coordinator.clone(),
        replica: replica.clone(),
    });
    let sink: Arc<dyn RolloutSink> = shared.clone();
    Ok(Some(RolloutService {
        engine: Engine::new(coordinator, replica, sink),
    }))
}

/// The rollout engine as a Pingora background service.
struct RolloutService {
    engine: Engine,
}

#[async_trait]
impl BackgroundService for RolloutService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.engine.run(shutdown).await;
    }
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
        let watch = Signals::new(
            self.shared.clone(),
            self.config_path,
            self.resolvers,
            exit_now,
            self.cleanup.clone(),
        );
        self.server.run(RunArgs {
            shutdown_signal: Box::new(watch),
        });
        if let Some(log) = self.shared.access_log() {
            log.finish();
        }
        self.cleanup.run();
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
        if let Some(log) = self.shared.access_log() {
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
        for pool in shared.pools().values() {
            pool.refresh().await;
        }
        ready.notify_ready();

        let mut tasks = tokio::task::JoinSet::new();
        for kind in crate::model::PoolKind::ALL {
            let shared = shared.clone();
            let interval = config.health_check.interval;
            tasks.spawn(async move {
                loop {
                    shared.pools().get(kind).health_check().await;
                    if kind == crate::model::PoolKind::Production {
                        shared.set_health_checked();
                    }
                    tokio::time::sleep(interval).await;
                }
            });
        }
        let provider = shared.provider();
        let sink: Arc<dyn Sink> = shared.clone();
        tasks.spawn(provider.run(sink, shutdown.clone()));
        let resync = config.discovery.resync_interval;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = shared.wanted_changed() => {}
                _ = tokio::time::sleep(resync) => {}
            }
            for pool in shared.pools().values() {
                pool.refresh().await;
            }
        }
        tasks.shutdown().await;
    }
}
