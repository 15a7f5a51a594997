//! The signals of a running proxy: SIGHUP reloads the config file; SIGTERM drains within
//! `grace_period` (and exits as soon as nothing is in flight); SIGINT stops at once; SIGQUIT
//! hands the sockets to a new binary started with `--upgrade`; SIGUSR1 reopens the access log
//! file (logrotate's convention: rename it, then signal).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{error, info};
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::metrics::ReloadResult;
use crate::runtime::listeners::ExitCleanup;
use crate::runtime::serve::ExitNow;
use crate::state::Shared;
use crate::tls::{ListenerCerts, Resolvers};

/// Pingora's signal watch plus SIGHUP (reload the config file).
pub struct Signals {
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    resolvers: Resolvers,
    exit_now: ExitNow,
    /// The pid file and temporary files, removed before the SIGTERM watchdog exits.
    cleanup: ExitCleanup,
}

impl Signals {
    pub fn new(
        shared: Arc<Shared>,
        config_path: Option<PathBuf>,
        resolvers: Resolvers,
        exit_now: ExitNow,
        cleanup: ExitCleanup,
    ) -> Signals {
        Signals {
            shared,
            config_path,
            resolvers,
            exit_now,
            cleanup,
        }
    }

    /// SIGHUP: reload, log the outcome, record it for `/status` (`canary-lb reload`) and count
    /// it (`canary_lb_config_reloads_total{result}`, `canary_lb_config_last_reload_success`), so
    /// a refused reload is seen beyond its log line.
    fn reload(&self) {
        let result = self.try_reload();
        match &result {
            Ok(()) => self
                .shared
                .metrics()
                .record_config_reload(ReloadResult::Applied),
            // Nothing was attempted without a file: not a failed reload.
            Err(_) if self.config_path.is_none() => {}
            Err(_) => self
                .shared
                .metrics()
                .record_config_reload(ReloadResult::Failed),
        }
        if let Err(e) = &result {
            error!("SIGHUP: {e}");
        }
        self.shared.record_reload(result);
    }

    fn try_reload(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Err("no config file to reload".into());
        };
        let config =
            Config::load(path).map_err(|e| format!("{e}; keeping the running configuration"))?;
        // Certificates are read (and checked) before anything is applied: one bad file
        // refuses the whole reload, and the running certificates keep serving.
        let certs = ListenerCerts::load(&config).map_err(|e| {
            format!(
                "{} not applied: {e}; keeping the running configuration and certificates",
                path.display()
            )
        })?;
        self.shared
            .apply_file(config)
            .map_err(|e| format!("{} not applied: {e}", path.display()))?;
        let swapped = self.resolvers.swap(certs);
        info!(
            "SIGHUP: reloaded {} ({swapped} TLS listener(s) with reloaded certificates)",
            path.display()
        );
        Ok(())
    }

    /// Pingora waits the whole grace period after SIGTERM; exit as soon as nothing is in
    /// flight instead (listeners are closed by then, idle keep-alive connections are dropped).
    /// The last request to finish wakes the wait; the access log's queued lines are written
    /// out before the exit. Past the grace period Pingora's own shutdown takes over
    /// (`Assembled::run` flushes the log then).
    fn exit_when_idle(&self) {
        let shared = self.shared.clone();
        let grace = shared.started().grace_period;
        let exit_now = self.exit_now;
        let cleanup = self.cleanup.clone();
        std::thread::spawn(move || {
            // A request accepted just before the listeners closed gets to `request_filter`.
            std::thread::sleep(Duration::from_millis(200));
            let left = grace.saturating_sub(Duration::from_millis(200));
            if shared.in_flight().wait_idle(left) {
                info!("graceful shutdown: no request in flight, exiting");
                if let Some(log) = shared.access_log() {
                    log.finish();
                }
                cleanup.run();
                exit_now();
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
                    if let Some(log) = self.shared.access_log() {
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
