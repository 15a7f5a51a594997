//! The listening sockets, before and after Pingora binds them.
//!
//! Before: [`check_free`] tries each address (`listen`, `metrics_listen`) with a plain socket
//! and refuses the start with one line naming every busy address and the OS error. Pingora
//! itself retries a port in use for about a minute ("is in use, will try again"), then its
//! listener threads panic and the process keeps running without a listener: a supervisor sees
//! a live process that serves nothing. Skipped for `--upgrade`, where the old process holds
//! the sockets and hands them over.
//!
//! After: Pingora binds in its own runtimes and says nothing when it is done (a listening
//! service reports ready before it binds), so [`Bound`], a background service, watches the
//! kernel's table of this process's listening sockets (`/proc/net/tcp*` matched with
//! `/proc/self/fd`: no connection is made, nothing is counted as a client). Once every address
//! listens it logs one line per listener, marks the proxy's listeners bound for `/readyz` and
//! writes `pid_file`. Without `/proc` (not Linux) the listeners count as bound once the
//! services start.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::{Config, Listener};
use crate::state::Shared;

/// Every address the config listens on, each with the key that names it.
fn addresses(config: &Config) -> Vec<(String, SocketAddr)> {
    let mut all: Vec<(String, SocketAddr)> = config
        .listen
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listen[{i}]"), l.addr))
        .collect();
    if let Some(m) = config.metrics_listen {
        all.push(("metrics_listen".into(), m));
    }
    all
}

/// Refuse to start when any address cannot be bound: one line naming each, with the OS error.
/// The probe sockets are closed at once (`SO_REUSEADDR`, as Pingora's: a port in `TIME_WAIT`
/// is not reported busy).
pub fn check_free(config: &Config) -> anyhow::Result<()> {
    let busy: Vec<String> = addresses(config)
        .into_iter()
        .filter_map(|(key, addr)| {
            std::net::TcpListener::bind(addr)
                .err()
                .map(|e| format!("{addr} ({key}): {e}"))
        })
        .collect();
    if busy.is_empty() {
        return Ok(());
    }
    anyhow::bail!("cannot listen on {}", busy.join("; "))
}

/// How one listener is described in the start-up log.
pub fn describe(l: &Listener) -> String {
    let kind = if l.tls.is_some() {
        "HTTPS (TLS, HTTP/2 by ALPN)"
    } else if l.redirect_to_https {
        "HTTP, redirect to HTTPS"
    } else if l.h2c {
        "HTTP (HTTP/1.1 and h2c)"
    } else {
        "HTTP (HTTP/1.1)"
    };
    format!("{} {kind}", l.addr)
}

/// Paths removed when the process ends (the pid file, the demo's certificate directory): on
/// Pingora's return and before the SIGTERM watchdog's exit.
#[derive(Clone, Default)]
pub struct ExitCleanup(Arc<Mutex<Vec<Cleanup>>>);

#[derive(Clone)]
enum Cleanup {
    /// Removed only while it still holds this process's pid: after a binary upgrade the new
    /// process has written its own.
    PidFile(PathBuf),
    Dir(PathBuf),
}

impl ExitCleanup {
    pub fn remove_dir(&self, dir: PathBuf) {
        self.lock().push(Cleanup::Dir(dir));
    }

    fn remove_pid_file(&self, path: PathBuf) {
        self.lock().push(Cleanup::PidFile(path));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Cleanup>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove everything registered (once: the list is emptied).
    pub fn run(&self) {
        let items = std::mem::take(&mut *self.lock());
        for item in items {
            match item {
                Cleanup::Dir(dir) => {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        warn!("cannot remove {}: {e}", dir.display());
                    }
                }
                Cleanup::PidFile(path) => {
                    let ours = std::fs::read_to_string(&path)
                        .is_ok_and(|t| t.trim() == std::process::id().to_string());
                    if ours {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
    }
}

/// Waits until every listener is bound, then logs them, marks them bound and writes the pid
/// file (see the module doc).
pub struct Bound {
    pub shared: Arc<Shared>,
    pub cleanup: ExitCleanup,
}

#[async_trait]
impl BackgroundService for Bound {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let config = self.shared.started();
        let wanted: Vec<SocketAddr> = addresses(config).into_iter().map(|(_, a)| a).collect();
        loop {
            match listening(&wanted) {
                Some(true) | None => break,
                Some(false) => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        for l in &config.listen {
            info!("listening on {}", describe(l));
        }
        match config.metrics_listen {
            Some(m) => info!(
                "admin port on {m}: /metrics, /status, /healthz, /readyz, /rollout{}",
                if config.metrics_auth_token_file.is_some() {
                    " (token required but for /healthz and /readyz)"
                } else {
                    ""
                }
            ),
            None => info!("no admin port (metrics_listen is not set)"),
        }
        self.shared.set_listeners_bound();
        if let Some(path) = &config.pid_file {
            match std::fs::write(path, format!("{}\n", std::process::id())) {
                Ok(()) => self.cleanup.remove_pid_file(path.clone()),
                Err(e) => log::error!("pid_file: cannot write {}: {e}", path.display()),
            }
        }
    }
}

/// Whether every address in `wanted` is a listening socket of this process; None when the
/// kernel's tables cannot be read.
fn listening(wanted: &[SocketAddr]) -> Option<bool> {
    let ours = socket_inodes()?;
    let mut listening = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if *state == "0A" && inode.parse().is_ok_and(|i: u64| ours.contains(&i)) {
                listening.insert(local.to_string());
            }
        }
    }
    Some(wanted.iter().all(|a| listening.contains(&proc_net_addr(a))))
}

/// The inodes of this process's sockets (`/proc/self/fd/N -> socket:[INODE]`).
fn socket_inodes() -> Option<HashSet<u64>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|target| {
                let t = target.to_str()?;
                t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect(),
    )
}

/// An address as `/proc/net/tcp*` prints it: each 32-bit word of the address in host order as
/// 8 hex digits, then `:` and the port as 4.
fn proc_net_addr(addr: &SocketAddr) -> String {
    let words: String = match addr.ip() {
        IpAddr::V4(ip) => format!("{:08X}", u32::from_ne_bytes(ip.octets())),
        IpAddr::V6(ip) => ip
            .octets()
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{words}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_is_seen_and_a_free_port_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        if socket_inodes().is_none() {
            return; // not Linux
        }
        assert_eq!(listening(&[addr]), Some(true));
        drop(l);
        assert_eq!(listening(&[addr]), Some(false));
        // IPv6, where loopback is available: `/proc/net/tcp6` words in host order.
        if let Ok(l6) = std::net::TcpListener::bind("[::1]:0") {
            let addr6 = l6.local_addr().expect("addr");
            assert_eq!(listening(&[addr6]), Some(true));
        }
    }

    #[test]
    fn a_busy_address_is_named_with_the_os_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        let config = Config::parse(&format!("listen: [\"{addr}\"]\n")).expect("config");
        let e = check_free(&config).expect_err("busy").to_string();
        assert!(e.contains(&format!("{addr} (listen[0])")), "{e}");
        assert!(e.contains("in use"), "{e}");
    }
}
