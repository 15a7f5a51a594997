//! `canary-lb check`: load a config as `serve` would (the file, the environment overrides,
//! the health check, the routing policy, every certificate file) and say what is wrong, each
//! error naming the file, the key and its line, like nginx's `-t`. Then the warnings: a config
//! that can only answer 503 (nothing set, no server, a name that does not resolve) or the same
//! server in both pools. Warnings leave the exit code 0; `--strict` makes them fail it.
//! An edge, like `serve`: it returns `anyhow` to `main`.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::config::{Config, ConfigError, Loaded, Warning};
use crate::model::PoolKind;
use crate::tls::ListenerCerts;

/// How long a host name may take to resolve before it counts as not resolving.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(path: &Path, strict: bool) -> anyhow::Result<()> {
    let loaded = Config::load_with_text(path)?;
    let config = &loaded.config;
    crate::pool::health::checker(&config.health_check, PoolKind::Production)?;
    crate::routing::CanaryPolicy::from_config(&config.routing)?;
    let tls_listeners = check_certificates(&loaded)?;
    // The pools' `tls` files, read as at start; an error names the key and its line.
    for kind in PoolKind::ALL {
        crate::pool::Upstream::load(kind, config.pools.get(kind))
            .map_err(|e| loaded.error(e.key, e.reason))?;
    }
    config.check_pid_file().map_err(anyhow::Error::msg)?;
    let provider = crate::discovery::from_config(config);
    let mut warnings = loaded.warnings();
    warnings.extend(unresolved_names(&loaded));
    if let Err(problem) = provider.check() {
        warnings.push(loaded.warning("discovery", problem));
    }
    for w in &warnings {
        eprintln!("warning: config file {}: {w}", path.display());
    }
    println!(
        "{}: OK ({} production and {} canary server(s), discovery: {}, canary_percent: {}{}{})",
        path.display(),
        config.pools.production.servers.len(),
        config.pools.canary.servers.len(),
        provider.describe(),
        config.routing.canary_percent.as_f64(),
        match tls_listeners {
            0 => String::new(),
            n => format!(", {n} TLS listener(s) with valid certificates"),
        },
        match warnings.len() {
            0 => String::new(),
            n => format!(", {n} warning(s)"),
        },
    );
    if strict && !warnings.is_empty() {
        anyhow::bail!(
            "{}: {} warning(s), and --strict makes a warning an error",
            path.display(),
            warnings.len()
        );
    }
    Ok(())
}

/// Every certificate and key of every TLS listener, loaded as at start; an error names the
/// key (`listen[0].tls.cert`, `listen[1].tls.sni[0].key`) and its line. The count of TLS
/// listeners.
fn check_certificates(loaded: &Loaded) -> Result<usize, ConfigError> {
    let certs = ListenerCerts::load(&loaded.config).map_err(|e| loaded.error(e.key, e.error))?;
    Ok(certs.sets.len())
}

/// The static servers whose host name does not resolve (an address is not looked up): each
/// is a server the proxy can never reach.
fn unresolved_names(loaded: &Loaded) -> Vec<Warning> {
    let config = &loaded.config;
    if !config.discovery.provider.role().servers_in_config_file {
        return Vec::new();
    }
    let mut names: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (pool, p) in [
        ("production", &config.pools.production),
        ("canary", &config.pools.canary),
    ] {
        for (i, s) in p.servers.iter().enumerate() {
            let addr = s.addr.as_str();
            if addr.parse::<std::net::SocketAddr>().is_err() {
                names
                    .entry(addr)
                    .or_default()
                    .push(format!("pools.{pool}.servers[{i}]"));
            }
        }
    }
    let mut out = Vec::new();
    for (addr, keys) in names {
        if let Some(problem) = resolve_problem(addr) {
            for key in keys {
                out.push(loaded.warning(
                    key,
                    format!(
                        "`{addr}` does not resolve ({problem}): the proxy cannot reach it and \
                         keeps trying every discovery.resync_interval"
                    ),
                ));
            }
        }
    }
    out
}

/// Why `addr` (`host:port`) does not resolve, or `None` when it does. The lookup runs on its
/// own thread so a resolver that hangs costs at most [`RESOLVE_TIMEOUT`].
fn resolve_problem(addr: &str) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let owned = addr.to_string();
    std::thread::spawn(move || {
        let result = owned.to_socket_addrs().map(|mut a| a.next().is_some());
        let _ = tx.send(result);
    });
    match rx.recv_timeout(RESOLVE_TIMEOUT) {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => Some("no address".into()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no answer within {}",
            humantime::format_duration(RESOLVE_TIMEOUT)
        )),
    }
}
