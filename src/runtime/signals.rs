//! The signals of a running proxy: SIGHUP reloads the config file; SIGTERM drains within
//! `grace_period` (and exits as soon as nothing is in flight); SIGINT stops at once; SIGQUIT
//! hands the sockets to a new binary started with `--upgrade`; SIGUSR1 reopens the access log
//! file (logrotate's convention: rename it, then signal).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{error, info, warn};
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::metrics::ReloadResult;
use crate::runtime::serve::ExitNow;
use crate::state::Shared;
use crate::tls::{ListenerCerts, Resolvers};

/// Pingora's signal watch plus SIGHUP (reload the config file).
pub struct Signals {
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    resolvers: Resolvers,
    exit_now: ExitNow,
}

impl Signals {
    pub fn new(
        shared: Arc<Shared>,
        config_path: Option<PathBuf>,
        resolvers: Resolvers,
        exit_now: ExitNow,
    ) -> Signals {
        Signals {
            shared,
            config_path,
            resolvers,
            exit_now,
        }
    }

    /// A SIGHUP: reload, and count the outcome (`canary_lb_config_reloads_total{result}`,
    /// `canary_lb_config_last_reload_success`), so a refused reload is seen beyond its log line.
    fn reload(&self) {
        if let Some(result) = self.try_reload() {
            self.shared.metrics.record_config_reload(result);
        }
    }

    /// None when there is no file to reload (nothing was attempted).
    fn try_reload(&self) -> Option<ReloadResult> {
        let Some(path) = &self.config_path else {
            warn!("SIGHUP: no config file to reload");
            return None;
        };
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                error!("SIGHUP: {e}; keeping the running configuration");
                return Some(ReloadResult::Failed);
            }
        };
        // Certificates are read (and checked) before anything is applied: one bad file
        // refuses the whole reload, and the running certificates keep serving.
        let certs = match ListenerCerts::load(&config) {
            Ok(certs) => certs,
            Err(e) => {
                error!(
                "SIGHUP: {} not applied: {e}; keeping the running configuration and certificates",
                path.display()
            );
                return Some(ReloadResult::Failed);
            }
        };
        match self.shared.apply_file(config) {
            Ok(()) => {
                let swapped = self.resolvers.swap(certs);
                info!(
                    "SIGHUP: reloaded {} ({swapped} TLS listener(s) with reloaded certificates)",
                    path.display()
                );
                Some(ReloadResult::Applied)
            }
            Err(e) => {
                error!("SIGHUP: {} not applied: {e}", path.display());
                Some(ReloadResult::Failed)
            }
        }
    }

    /// Pingora waits the whole grace period after SIGTERM; exit as soon as nothing is in
    /// flight instead (listeners are closed by then, idle keep-alive connections are dropped).
    fn exit_when_idle(&self) {
        let shared = self.shared.clone();
        let grace = shared.started().grace_period;
        let exit_now = self.exit_now;
        std::thread::spawn(move || {
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(200));
            while start.elapsed() < grace {
                if shared.in_flight.load(Relaxed) <= 0 {
                    info!("graceful shutdown: no request in flight, exiting");
                    exit_now();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let streams = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::user_defined1()),
        );
        let (Ok(mut hup), Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut usr1)) = streams else {
            error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload(),
                _ = usr1.recv() => {
                    if let Some(log) = &self.shared.access_log {
                        info!("SIGUSR1: reopening the access log");
                        log.reopen();
                    }
                }
                _ = term.recv() => {
                    info!("SIGTERM: draining in-flight requests (grace period {:?})", self.shared.started().grace_period);
                    self.exit_when_idle();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            }
        }
    }
}
