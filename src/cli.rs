//! The command line: `serve`, `check`, `health`, `demo`, `app`, `ctl`, `reload` and
//! `reopen-logs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::rollout::settings::START_KEYS;

#[derive(Debug, Parser)]
#[command(
    name = "canary-lb",
    version,
    about = "Edge load balancer with sticky canary routing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in the foreground (or as a daemon with --daemon).
    Serve(ServeArgs),
    /// Validate a config file: exit 0, or print the bad key and line and exit 1. Warnings (a
    /// config that can only answer 503, the same server in both pools) are printed and still
    /// exit 0, unless --strict.
    Check {
        #[arg(short, long, env = "CANARY_LB_CONFIG")]
        config: PathBuf,
        /// Exit 1 on a warning too (for CI).
        #[arg(long)]
        strict: bool,
    },
    /// Exit 0 when GET /healthz (liveness; --ready: /readyz, readiness) on the config's
    /// metrics_listen answers 200, else 1 (the container HEALTHCHECK; it follows
    /// CANARY_LB_METRICS_LISTEN like `serve`).
    Health(HealthArgs),
    /// Run the proxy with built-in demo app servers on loopback and print curl lines to try.
    Demo(DemoArgs),
    /// Run one demo app server (answers with its pool and name, serves /healthz).
    App(AppArgs),
    /// Change the Redis control plane: register servers, drain them, move the canary percent.
    Ctl(CtlArgs),
    /// Reload the running proxy's config file (SIGHUP to the pid in the config's pid_file);
    /// exit 0 once it applied the file, 1 if it refused it (the reason is printed).
    Reload(SignalArgs),
    /// Make the running proxy reopen its access log file (SIGUSR1 to the pid in the config's
    /// pid_file), after logrotate renamed it.
    ReopenLogs(SignalArgs),
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The running proxy's config file: its pid_file names the process, its metrics_listen
    /// (and metrics_auth_token_file) is where `reload` reads the result.
    #[arg(short, long, env = "CANARY_LB_CONFIG")]
    pub config: PathBuf,
    /// How long `reload` waits for the proxy to say whether it applied the file.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(short, long, env = "CANARY_LB_CONFIG")]
    pub config: PathBuf,
    /// Run in the background (Pingora daemon mode; the config's pid_file, if set, is its pid
    /// file, else pid_file in --pingora-conf).
    #[arg(short, long)]
    pub daemon: bool,
    /// Take over the listening sockets of a running instance (graceful binary upgrade).
    #[arg(short, long)]
    pub upgrade: bool,
    /// Optional Pingora server config (pid_file, upgrade_sock, error_log, user, group).
    #[arg(long)]
    pub pingora_conf: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[arg(
        short,
        long,
        env = "CANARY_LB_CONFIG",
        required_unless_present = "addr"
    )]
    pub config: Option<PathBuf>,
    /// Probe this address instead of the config's metrics_listen (e.g. a demo app server).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Limit for connecting and reading the status line.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub timeout: Duration,
    /// Probe readiness (GET /readyz: listeners bound, servers known, a healthy production
    /// server) instead of liveness (GET /healthz).
    #[arg(long)]
    pub ready: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the demo serves /metrics and /status.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub metrics_listen: SocketAddr,
    /// Where the demo proxy serves HTTPS (HTTP/1.1 and HTTP/2) with a certificate it makes.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub tls_listen: SocketAddr,
    /// First port of the three demo app servers (two production, one canary).
    #[arg(long, default_value_t = 3001)]
    pub app_base_port: u16,
    /// Canary percentage for the demo.
    #[arg(long, default_value_t = 20.0)]
    pub canary_percent: f64,
}

#[derive(Debug, Args)]
pub struct AppArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    /// Name shown in responses (default: the listen address).
    #[arg(long)]
    pub name: Option<String>,
    /// Pool shown in responses (production or canary).
    #[arg(long, default_value = "production")]
    pub pool: String,
    /// Register this app server in Redis with a lease and keep renewing it until stopped.
    #[arg(long)]
    pub register_redis: Option<String>,
    /// Address registered in Redis (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    #[arg(long, default_value = "canary-lb")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Redis URL (also CANARY_LB_REDIS_URL, or discovery.url of --config). With --cluster,
    /// a Redis Cluster's seed nodes: repeat it or separate the URLs with commas.
    #[arg(
        long,
        env = "CANARY_LB_REDIS_URL",
        global = true,
        value_delimiter = ','
    )]
    pub redis: Vec<String>,
    /// The URLs are seed nodes of a Redis Cluster (or a managed Redis in cluster mode); also
    /// CANARY_LB_REDIS_CLUSTER=true, or discovery.cluster of --config.
    #[arg(long, env = "CANARY_LB_REDIS_CLUSTER", global = true)]
    pub cluster: bool,
    /// Read the Redis URL and namespace from this config file.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Key namespace (default canary-lb, or discovery.namespace of --config).
    #[arg(long, env = "CANARY_LB_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Add a server to a pool (optionally with a lease kept alive by --heartbeat).
    Register {
        /// The pool: production or canary.
        #[arg(long)]
        pool: String,
        /// The server, `host:port` (an IP or a name the proxies resolve).
        addr: String,
        /// Its share of the pool's requests, 1..=1000 (default: keep its weight, or 1).
        #[arg(long)]
        weight: Option<i64>,
        /// Lease length; without it the server has no lease.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Keep running and renew the lease every ttl/3; deregister on SIGTERM/SIGINT.
        #[arg(long)]
        heartbeat: bool,
    },
    /// Remove a server from a pool.
    Deregister {
        /// The pool: production or canary.
        #[arg(long)]
        pool: String,
        /// The server, `host:port` (as registered).
        addr: String,
    },
    /// Stop sending new requests to a server (in-flight ones finish).
    Drain {
        /// The pool: production or canary.
        #[arg(long)]
        pool: String,
        /// The server, `host:port` (as registered).
        addr: String,
    },
    /// Put a drained server back into rotation.
    Undrain {
        /// The pool: production or canary.
        #[arg(long)]
        pool: String,
        /// The server, `host:port` (as registered).
        addr: String,
    },
    /// Set a server's weight.
    Weight {
        /// The pool: production or canary.
        #[arg(long)]
        pool: String,
        /// The server, `host:port` (as registered).
        addr: String,
        /// Its share of the pool's requests, 1..=1000.
        weight: i64,
    },
    /// Read or set the canary percentage.
    Canary {
        #[command(subcommand)]
        command: CanaryCommand,
    },
    /// Print each pool's servers and the canary settings.
    Status,
    /// Move a store written by a release before the tagged key layout (`ns:…` keys) to its
    /// tagged names (`{ns}:…`, one Redis Cluster slot per namespace), in one atomic script.
    ///
    /// Until then this release reads and writes such a store under its old names. Refused
    /// while a proxy of an older release reports (it would lose the store); proxies of this
    /// release follow within a second. On a tagged store it says so and exits 0.
    MigrateKeys {
        /// Migrate even while proxies of an older release report: they keep their last
        /// known servers, but follow no change until upgraded.
        #[arg(long)]
        force: bool,
    },
    /// Feature flags in Redis: set, turn off, delete, list. Every proxy applies a change
    /// within a second.
    Flag {
        #[command(subcommand)]
        command: FlagCommand,
    },
    /// Progressive delivery: start a rollout, follow it, pause, resume, abort or promote it.
    ///
    /// With Redis (the default) it writes the rollout every proxy follows; with --admin URL
    /// it asks one proxy's admin endpoint (the file provider, one box).
    Rollout(RolloutArgs),
    /// Replace OLD by NEW without failing a request: a deploy pipeline's rolling step.
    ///
    /// Registers NEW, waits until a proxy keeps it in rotation for --settle, drains OLD, waits
    /// until OLD is out of every proxy's rotation with nothing in flight, deregisters OLD.
    /// Progress lines start with `replace:`.
    ///
    /// Exit codes:
    ///   0  done (also when OLD is not registered: nothing to drain). An OLD with a lease
    ///      (heartbeat) is left registered but drained: stopping it deregisters it
    ///   1  bad input or Redis error; every step is idempotent, so re-run it
    ///   2  NEW was never reported serving within --timeout: OLD untouched, NEW deregistered
    ///      again (unless it was registered before)
    ///   3  only with --strict: OLD still had requests in flight at --timeout; it is
    ///      deregistered anyway and those requests finish, but do not stop OLD yet
    ///      (without --strict: a `replace: warning:` line and exit 0)
    #[command(verbatim_doc_comment)]
    Replace {
        /// The pool: production or canary.
        #[arg(long)]
        pool: String,
        /// The server being replaced (`host:port`).
        old: String,
        /// Its replacement (`host:port`), already started.
        new: String,
        /// Limit of each wait: for NEW to serve, then for OLD to finish its requests.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        timeout: Duration,
        /// Weight of NEW (default: keep its current weight, or 1).
        #[arg(long)]
        weight: Option<i64>,
        /// How long NEW must stay in a proxy's rotation to count as serving. Keep it above
        /// health_check.interval x unhealthy_threshold, so a dead NEW (in rotation until its
        /// first failed probes) is caught before OLD is drained.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        settle: Duration,
        /// Exit 3 instead of 0 when OLD still had requests in flight at the timeout.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Ask this proxy's admin endpoint (its metrics_listen, e.g. http://127.0.0.1:9091)
    /// instead of Redis: for proxies on the file provider.
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// File holding the admin bearer token (the proxy's metrics_auth_token_file), for --admin.
    #[arg(long, global = true)]
    pub admin_token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout at its first step; flags override the `rollout:` section of --config.
    /// The flags are the keys of that section and of the admin endpoint's
    /// `POST /rollout/start?key=value`, with the same limits.
    Start(RolloutStartArgs),
    /// Phase, weight, step, failed checks, leader and the last verdicts.
    ///
    /// Exit codes with --wait:
    ///   0  the rollout succeeded (100 %)
    ///   1  error (no rollout, Redis unreachable for long, --timeout passed)
    ///   2  rolled back or aborted (0 %)
    ///   3  paused (by hand, or for lack of traffic): someone must resume or abort it
    #[command(verbatim_doc_comment)]
    Status {
        /// Print the status every second until the rollout ends (or Ctrl-C).
        #[arg(long)]
        watch: bool,
        /// Wait until the rollout ends or pauses; the exit code says how (see above).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit 1) after this long.
        #[arg(long, value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Option<Duration>,
        /// Print JSON: {"state": .., "history": [..], "leader": ..}.
        #[arg(long)]
        json: bool,
    },
    /// Hold the weight and stop judging windows.
    Pause,
    /// Judge windows again from the current one.
    Resume,
    /// End the rollout now: canary_percent 0.
    Abort,
    /// End the rollout now: canary_percent 100.
    Promote,
    /// The last verdicts and commands, oldest first.
    History {
        /// How many entries, newest last (1..=1000).
        #[arg(
            short = 'n',
            long = "last",
            alias = "n",
            value_name = "N",
            default_value_t = 20
        )]
        n: usize,
        /// One JSON entry a line.
        #[arg(long)]
        json: bool,
    },
}

/// `ctl rollout start`: one flag for each key of the rollout's start-key table
/// (`rollout::settings::START_KEYS`), which also parses and checks them, as it does the
/// admin endpoint's query keys; a new key there is a new flag here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutStartArgs {
    keys: Vec<(&'static str, String)>,
}

impl RolloutStartArgs {
    /// The flags given, as `(key of rollout:, value)`, in the table's order.
    pub fn keys(&self) -> Vec<(&'static str, String)> {
        self.keys.clone()
    }
}

impl clap::FromArgMatches for RolloutStartArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        let keys = START_KEYS
            .iter()
            .filter_map(|k| {
                matches
                    .try_remove_one::<String>(k.name)
                    .ok()
                    .flatten()
                    .map(|v| (k.name, v))
            })
            .collect();
        Ok(RolloutStartArgs { keys })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for RolloutStartArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        START_KEYS.iter().fold(cmd, |cmd, k| {
            cmd.arg(
                clap::Arg::new(k.name)
                    .long(k.flag)
                    .value_name(k.value)
                    .help(k.help),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Create or change a flag and turn it on. Values not given are kept from the stored
    /// flag (a new flag: 0 %, no allow/deny list, salt = its name).
    Set {
        /// The flag's name: 1..=64 characters of a-z, 0-9 and -.
        name: String,
        /// Share of users, 0..=100 (decimals ok); default: the stored flag's (a new flag: 0).
        #[arg(long)]
        percent: Option<String>,
        /// The bucket salt; a new salt reshuffles which users have the flag.
        #[arg(long)]
        salt: Option<String>,
        /// A user key that always gets the flag (repeat; replaces the stored list).
        #[arg(long, num_args = 1..)]
        allow: Option<Vec<String>>,
        /// A user key that never gets the flag (repeat; replaces the stored list).
        #[arg(long, num_args = 1..)]
        deny: Option<Vec<String>>,
    },
    /// Turn a flag off for everyone (kept, with its settings, for a later `set`).
    Off {
        /// The flag's name.
        name: String,
    },
    /// Delete a flag.
    Delete {
        /// The flag's name.
        name: String,
    },
    /// Print the flags stored in Redis (and any bad entry the proxies skip).
    List,
}

#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Set the canary percentage every proxy routes by (overrides routing.canary_percent).
    Set {
        /// Share of users sent to canary, 0..=100 (decimals ok).
        percent: String,
    },
    /// Print the canary percentage stored in Redis.
    Get,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `ctl … --help` explains every argument, and every option is spelled as a word.
    #[test]
    fn every_ctl_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(format!("{path} (the command)"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
                if arg.get_long().is_some_and(|l| l.len() == 1) {
                    missing.push(format!("{path}: --{id} is a one-letter long option"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let cli = Cli::command();
        let ctl = cli.find_subcommand("ctl").expect("ctl");
        let mut missing = Vec::new();
        walk(ctl, "canary-lb", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
