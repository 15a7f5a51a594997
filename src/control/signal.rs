//! `canary-lb reload` and `canary-lb reopen-logs`: nginx's `-s reload` and `-s reopen` for a
//! proxy started with `pid_file` in its config.
//!
//! Both read the config file the proxy runs with, take the pid from its `pid_file` and send a
//! signal: SIGHUP (reload) or SIGUSR1 (reopen the access log). A signal says nothing back, so
//! `reload` reads the proxy's reload record on the admin port (`/status`, `reload`: how many
//! reloads were tried, how the last one ended) before and after, and exits 0 only once the
//! count moved and the last one applied; a refused file exits 1 with the proxy's reason.
//! Without `metrics_listen` nothing can confirm it: the signal is sent, and the command says so.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::SignalArgs;
use crate::config::Config;
use crate::control::admin_client::AdminClient;

/// `canary-lb reload`.
pub fn reload(args: SignalArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let pid = read_pid(&config, &args.config)?;
    let Some(admin) = admin(&config, args.timeout)? else {
        send(pid, libc::SIGHUP, "SIGHUP")?;
        eprintln!(
            "canary-lb: sent SIGHUP to {pid}; {} has no metrics_listen, so the result cannot be \
             read: see the proxy's log",
            args.config.display()
        );
        return Ok(());
    };
    let (before, _) = reload_record(&admin)?;
    send(pid, libc::SIGHUP, "SIGHUP")?;
    let deadline = Instant::now() + args.timeout;
    loop {
        let (generation, last) = reload_record(&admin)?;
        if generation > before {
            return match last {
                Some(Ok(())) => {
                    println!("reloaded {} (pid {pid})", args.config.display());
                    Ok(())
                }
                Some(Err(e)) => bail!("pid {pid} refused the reload: {e}"),
                None => bail!("pid {pid} reloaded, but its status shows no result"),
            };
        }
        if Instant::now() >= deadline {
            bail!(
                "sent SIGHUP to {pid}, but it reported no reload within {}",
                humantime::format_duration(args.timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `canary-lb reopen-logs`.
pub fn reopen_logs(args: SignalArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let pid = read_pid(&config, &args.config)?;
    send(pid, libc::SIGUSR1, "SIGUSR1")?;
    if config.access_log.settings().is_none() {
        eprintln!("canary-lb: note: access_log is off in the config; there is nothing to reopen");
    }
    println!("sent SIGUSR1 to {pid}: the access log file is reopened");
    Ok(())
}

/// The pid in the config's `pid_file`.
fn read_pid(config: &Config, config_path: &Path) -> anyhow::Result<i32> {
    let Some(path) = &config.pid_file else {
        bail!(
            "{}: pid_file is not set: nothing says which process runs this config",
            config_path.display()
        );
    };
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "pid_file {}: cannot read it (is the proxy running?)",
            path.display()
        )
    })?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => bail!(
            "pid_file {}: `{}` is not a pid",
            path.display(),
            text.trim()
        ),
    }
}

fn send(pid: i32, signal: libc::c_int, name: &str) -> anyhow::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot send {name} to pid {pid}: {e} (a stale pid_file?)");
    }
    Ok(())
}

/// The admin port of a config (its wildcard reached on loopback), with its token.
struct Admin {
    client: AdminClient,
}

/// The most bytes of `/status` read.
const MAX_STATUS: u64 = 4 << 20;

fn admin(config: &Config, timeout: Duration) -> anyhow::Result<Option<Admin>> {
    let Some(listen) = config.metrics_listen else {
        return Ok(None);
    };
    let addr = crate::control::probe::probe_addr(listen);
    let token = config
        .metrics_auth_token_file
        .as_ref()
        .map(|t| String::from_utf8_lossy(t.token()).into_owned());
    Ok(Some(Admin {
        client: AdminClient::new(format!("http://{addr}"), token, timeout, MAX_STATUS),
    }))
}

impl Admin {
    /// `GET /status`: its status code and body, within the timeout.
    fn status(&self) -> anyhow::Result<(u16, Vec<u8>)> {
        self.client
            .get("/status")
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("GET {}", self.client.url("/status")))
    }
}

/// `/status`'s `reload`: the reloads tried and the last one's result.
fn reload_record(admin: &Admin) -> anyhow::Result<(u64, Option<Result<(), String>>)> {
    let (status, body) = admin.status()?;
    if status != 200 {
        bail!("GET /status on the admin port answered {status}");
    }
    let doc: serde_json::Value = serde_json::from_slice(&body).context("GET /status: not JSON")?;
    let reload = &doc["reload"];
    let generation = reload["generation"]
        .as_u64()
        .context("GET /status has no reload.generation (an older canary-lb?)")?;
    let last = match reload["last"].as_str() {
        Some("applied") => Some(Ok(())),
        Some(_) => Some(Err(reload["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string())),
        None => None,
    };
    Ok((generation, last))
}
