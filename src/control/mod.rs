//! `canary-lb ctl`: the operator's and the deploy job's way to change the Redis control plane.
//!
//! Every command validates its input before it connects, so a typo (`--pool canry`, weight `0`,
//! percent `150`) is refused with a message naming the value and nothing is written. The writes
//! themselves live in [`crate::store`], which owns the schema; this module resolves where Redis
//! is, turns arguments into typed values, and prints the result for a person.
//!
//! `register --heartbeat` (and `canary-lb app --register-redis`, through [`heartbeat`]) keeps a
//! lease alive ([`lease`]); `status` prints the table of [`status`].
//!
//! On a store without the `ns:meta` marker (a brand-new Redis, or one that lost its data), the
//! first write that changes something creates it, and the proxies follow the store from then on;
//! `ctl` says so on stderr with what the store now holds, because after a wipe that may be far
//! less than the proxies were serving. `replace` refuses such a store instead: the proxies are
//! keeping their last known servers, and one replacement would make them follow a store
//! holding a single server. See docs/redis-schema.md.
//!
//! `replace` ([`replace`]) is the deploy pipeline's rolling step; it is the one command with
//! exit codes other than 0 and 1, so a pipeline can tell "NEW never came up" apart.
//!
//! Nothing here ends the process: [`run`] returns a [`CtlError`] whose
//! [`exit_code`](CtlError::exit_code) the binary exits with.

use std::time::Duration;

use crate::cli::{CanaryCommand, CtlArgs, CtlCommand};
use crate::config::{redact_url, Config, ConfigError};
use crate::model::{InvalidValue, Percent, PoolKind, ServerAddr, Weight};
use crate::rollout::{CoordError, Phase};
use crate::store::{self, Connection, Endpoint, EndpointError, Store, StoreError};

mod admin_client;
mod flag;
mod lease;
mod migrate;
pub mod probe;
pub mod replace;
pub mod rollout;
pub mod signal;
mod status;

use lease::Lease;
pub use lease::{deregister_once, heartbeat};
use replace::{Outcome, PlanError, ReplaceError};

const DEFAULT_NAMESPACE: &str = "canary-lb";
/// Lease length of `register --heartbeat` without `--ttl`.
const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(15);
/// Shorter leases leave no room for a renewal to cross the network.
const MIN_TTL: Duration = Duration::from_secs(1);
/// Bounds every Redis call, so an unreachable Redis is reported instead of hanging.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a `ctl` command failed. Every one exits 1 (bad input or a Redis error: re-run it once
/// fixed, each command is idempotent) except a `replace` that ran but did not complete, which
/// exits with the code of its [`Outcome`] (2 or 3; see `canary-lb ctl replace --help`).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A value on the command line, refused before connecting.
    #[error(transparent)]
    Value(#[from] InvalidValue),
    #[error("--ttl must be at least {}, got {}", humantime::format_duration(*.min), humantime::format_duration(*.got))]
    TtlTooShort { min: Duration, got: Duration },
    /// A `replace` plan refused before connecting.
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no Redis URL: pass --redis URL, set CANARY_LB_REDIS_URL or pass --config FILE")]
    NoRedisUrl,
    #[error("--namespace must not be empty")]
    EmptyNamespace,
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The URL is already redacted.
    #[error("`{url}` is not a usable Redis URL: {error}")]
    BadRedisUrl {
        url: String,
        error: redis::RedisError,
    },
    /// The URL is already redacted.
    #[error("cannot reach Redis at {url}: {error}")]
    Unreachable { url: String, error: EndpointError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// `drain` or `weight` of a server that is not in the pool.
    #[error("{0} (register it first)")]
    NotRegistered(StoreError),
    #[error(
        "{meta} is missing (a new store, or Redis lost its data): the proxies keep their last \
         known servers, and replacing one server would make them follow a store holding only \
         {new}. Register the {pool} servers again with `ctl register` first. Nothing changed."
    )]
    NoMarker {
        meta: String,
        new: ServerAddr,
        pool: PoolKind,
    },
    #[error("Redis did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for {0}: {1}")]
    Signal(&'static str, std::io::Error),
    /// A `replace` step that failed on Redis (exit 1; re-run it).
    #[error(transparent)]
    Replace(#[from] ReplaceError),
    /// A `replace` that ran to its end without completing; it printed why (`replace: FAILED:`).
    #[error("replace did not complete: {0}")]
    Incomplete(Outcome),
    /// A flag refused before connecting (`flag` without its `--`).
    #[error("--{flag}: {problem}")]
    BadFlag { flag: String, problem: String },
    /// An argument that is not a flag (a flag's NAME), or a refusal of a whole command,
    /// before connecting: the message names the value.
    #[error("{0}")]
    BadArg(String),
    /// A rollout command that does not apply now, or found no rollout (exit 1).
    #[error("{0}")]
    Rollout(String),
    /// `rollout status --wait` saw the rollout end other than succeeded (exit 2) or pause
    /// (exit 3); the status was printed.
    #[error("the rollout is {}", .0.as_str())]
    RolloutEnded(Phase),
    /// Redis did not answer a rollout read or write.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// `migrate-keys` refused: the message says why (exit 1).
    #[error("{0}")]
    Migrate(String),
    /// `rollout --admin`: the proxy's admin endpoint failed.
    #[error("{url}: {problem}")]
    Admin { url: String, problem: String },
}

impl CtlError {
    /// The documented exit code: 2 or 3 for an incomplete `replace`, otherwise 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Incomplete(outcome) => outcome.exit_code(),
            CtlError::RolloutEnded(Phase::Paused) => 3,
            CtlError::RolloutEnded(_) => 2,
            _ => 1,
        }
    }

    /// Whether the command already printed why it failed, so the binary need not repeat it.
    pub fn is_reported(&self) -> bool {
        matches!(self, CtlError::Incomplete(_))
    }
}

/// Where the control plane lives.
struct Target {
    redis: RedisAt,
    store: Store,
}

/// Where Redis is: one URL, or (`cluster`) a Redis Cluster's seed nodes, as `--redis` and
/// `--cluster` (or `--config`'s `discovery.url` and `discovery.cluster`) say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAt {
    urls: Vec<String>,
    cluster: bool,
}

impl RedisAt {
    /// One Redis at `url`.
    pub fn url(url: &str) -> RedisAt {
        RedisAt {
            urls: vec![url.to_string()],
            cluster: false,
        }
    }

    /// `--redis` (repeated or comma-separated) and `--cluster`; `None` without `--redis`.
    fn from_flags(urls: Vec<String>, cluster: bool) -> Option<RedisAt> {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        (!urls.is_empty()).then_some(RedisAt { urls, cluster })
    }

    /// The URLs, passwords hidden.
    fn describe(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn endpoint(&self) -> Result<Endpoint, CtlError> {
        if self.urls.len() > 1 && !self.cluster {
            return Err(CtlError::BadArg(format!(
                "--redis: {} URLs are the seed nodes of a Redis Cluster: add --cluster, or give \
                 one URL",
                self.urls.len()
            )));
        }
        Endpoint::open(&self.urls, self.cluster, None).map_err(|error| CtlError::BadRedisUrl {
            url: self.describe(),
            error,
        })
    }
}

/// A validated `ctl` command.
enum Op {
    Register {
        pool: PoolKind,
        addr: ServerAddr,
        weight: Option<Weight>,
        ttl: Option<Duration>,
        heartbeat: bool,
    },
    Deregister(PoolKind, ServerAddr),
    Drain(PoolKind, ServerAddr),
    Undrain(PoolKind, ServerAddr),
    SetWeight(PoolKind, ServerAddr, Weight),
    CanarySet(Percent),
    CanaryGet,
    Status,
    MigrateKeys {
        force: bool,
    },
    Replace(replace::Replace),
}

/// `canary-lb ctl`: validate, connect, run one command.
pub fn run(args: CtlArgs) -> Result<(), CtlError> {
    let redis = RedisAt::from_flags(args.redis, args.cluster);
    let at = Where {
        redis,
        config: args.config,
        namespace: args.namespace,
        cluster: args.cluster,
    };
    if let CtlCommand::Rollout(rollout_args) = args.command {
        return rollout::run(rollout_args, at);
    }
    if let CtlCommand::Flag { command } = args.command {
        return flag::run(command, at);
    }
    let op = parse_op(args.command)?;
    let target = at.resolve()?;
    let runtime = runtime()?;
    runtime.block_on(execute(op, &target))
}

/// Where the store is, as the command line says, before the config file is read.
struct Where {
    redis: Option<RedisAt>,
    config: Option<std::path::PathBuf>,
    namespace: Option<String>,
    cluster: bool,
}

impl Where {
    fn resolve(self) -> Result<Target, CtlError> {
        resolve_target(self.redis, self.config, self.namespace, self.cluster)
    }
}

/// The one-thread Tokio runtime every `ctl` command runs its Redis or HTTP calls on.
fn runtime() -> Result<tokio::runtime::Runtime, CtlError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)
}

fn parse_op(command: CtlCommand) -> Result<Op, CtlError> {
    let pool = |p: &str| PoolKind::parse(p);
    let addr = |a: &str| ServerAddr::parse(a);
    let weight = |w: i64| Weight::new(w);
    Ok(match command {
        CtlCommand::Register {
            pool: p,
            addr: a,
            weight: w,
            ttl,
            heartbeat,
        } => {
            let ttl = match (ttl, heartbeat) {
                (None, true) => Some(DEFAULT_HEARTBEAT_TTL),
                (ttl, _) => ttl,
            };
            if let Some(ttl) = ttl {
                check_ttl(ttl)?;
            }
            Op::Register {
                pool: pool(&p)?,
                addr: addr(&a)?,
                weight: w.map(weight).transpose()?,
                ttl,
                heartbeat,
            }
        }
        CtlCommand::Deregister { pool: p, addr: a } => Op::Deregister(pool(&p)?, addr(&a)?),
        CtlCommand::Drain { pool: p, addr: a } => Op::Drain(pool(&p)?, addr(&a)?),
        CtlCommand::Undrain { pool: p, addr: a } => Op::Undrain(pool(&p)?, addr(&a)?),
        CtlCommand::Weight {
            pool: p,
            addr: a,
            weight: w,
        } => Op::SetWeight(pool(&p)?, addr(&a)?, weight(w)?),
        CtlCommand::Canary {
            command: CanaryCommand::Set { percent },
        } => Op::CanarySet(Percent::parse(&percent)?),
        CtlCommand::Canary {
            command: CanaryCommand::Get,
        } => Op::CanaryGet,
        CtlCommand::Status => Op::Status,
        CtlCommand::MigrateKeys { force } => Op::MigrateKeys { force },
        // `run` hands rollout and flag commands to their modules before this.
        CtlCommand::Rollout(_) | CtlCommand::Flag { .. } => {
            return Err(CtlError::Rollout(
                "ctl rollout runs through rollout::run".into(),
            ))
        }
        CtlCommand::Replace {
            pool: p,
            old,
            new,
            timeout,
            weight: w,
            settle,
            strict,
        } => {
            let plan = replace::Replace {
                pool: pool(&p)?,
                old: addr(&old)?,
                new: addr(&new)?,
                weight: w.map(weight).transpose()?,
                timeout,
                settle,
                strict,
            };
            plan.validate()?;
            Op::Replace(plan)
        }
    })
}

fn check_ttl(ttl: Duration) -> Result<(), CtlError> {
    if ttl < MIN_TTL {
        return Err(CtlError::TtlTooShort {
            min: MIN_TTL,
            got: ttl,
        });
    }
    Ok(())
}

/// `--redis` (or CANARY_LB_REDIS_URL, via clap), else `--config`'s discovery.url (and its
/// `discovery.cluster`; `--cluster` makes either a cluster); the namespace from `--namespace`,
/// else the config's, else `canary-lb`.
fn resolve_target(
    redis: Option<RedisAt>,
    config: Option<std::path::PathBuf>,
    namespace: Option<String>,
    cluster: bool,
) -> Result<Target, CtlError> {
    let config = config.map(|path| Config::load(&path)).transpose()?;
    let mut redis = match (redis, &config) {
        (Some(redis), _) => redis,
        (None, Some(c)) => RedisAt {
            urls: c.discovery.url.as_slice().to_vec(),
            cluster: c.discovery.cluster,
        },
        (None, None) => return Err(CtlError::NoRedisUrl),
    };
    redis.cluster |= cluster;
    let namespace = namespace
        .or_else(|| config.map(|c| c.discovery.namespace))
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if namespace.is_empty() {
        return Err(CtlError::EmptyNamespace);
    }
    Ok(Target {
        redis,
        store: Store::new(&namespace),
    })
}

/// A connection to `endpoint`, every call bounded by `timeout`.
async fn connect(endpoint: &mut Endpoint, timeout: Duration) -> Result<Connection, CtlError> {
    endpoint
        .connect(timeout)
        .await
        .map_err(|error| CtlError::Unreachable {
            url: endpoint.describe().to_string(),
            error,
        })
}

/// Run one command.
async fn execute(op: Op, target: &Target) -> Result<(), CtlError> {
    let mut endpoint = target.redis.endpoint()?;
    let store = &target.store;
    if let Op::Register {
        pool,
        addr,
        weight,
        ttl: Some(ttl),
        heartbeat: true,
    } = op
    {
        let lease = Lease::new(endpoint, store.clone(), pool, addr, weight, ttl);
        return lease.keep_alive().await;
    }
    let mut conn = connect(&mut endpoint, REDIS_TIMEOUT).await?;
    let c = &mut conn;
    let unmarked_before_write = op.writes() && store.read_marker(c).await?.is_none();
    let result = run_op(op, c, target).await;
    if result.is_ok() && unmarked_before_write && store.read_marker(c).await?.is_some() {
        let snap = store.read_snapshot(c, store::now_ms()).await?;
        eprintln!(
            "note: {} was missing (a new store, or Redis lost its data); this write created it, \
             so every proxy now follows the store as it is: {} production and {} canary \
             server(s). Register any missing server again.",
            store.marker_key(),
            snap.servers.production.len(),
            snap.servers.canary.len()
        );
    }
    result
}

/// The command itself, on an open connection.
async fn run_op(op: Op, c: &mut Connection, target: &Target) -> Result<(), CtlError> {
    let store = &target.store;
    match op {
        Op::Register {
            pool,
            addr,
            weight,
            ttl,
            ..
        } => {
            store.register(c, pool, &addr, weight, ttl).await?;
            let lease = ttl.map_or("no lease".to_string(), |t| {
                format!("lease {}", humantime::format_duration(t))
            });
            let weight = weight.map_or(String::new(), |w| format!(", weight {}", w.get()));
            println!("registered {addr} in {pool} ({lease}{weight})");
        }
        Op::Deregister(pool, addr) => {
            if store.deregister(c, pool, &addr).await? {
                println!("deregistered {addr} from {pool}");
            } else {
                println!("{addr} was not registered in {pool}; nothing to do");
            }
        }
        Op::Drain(pool, addr) => {
            store.drain(c, pool, &addr).await.map_err(explain)?;
            println!("draining {addr} in {pool}: it gets no new requests");
        }
        Op::Undrain(pool, addr) => {
            if store.undrain(c, pool, &addr).await? {
                println!("{addr} in {pool} is back in rotation");
            } else {
                println!("{addr} in {pool} was not draining; nothing to do");
            }
        }
        Op::SetWeight(pool, addr, weight) => {
            store
                .set_weight(c, pool, &addr, weight)
                .await
                .map_err(explain)?;
            println!("weight of {addr} in {pool} set to {}", weight.get());
        }
        Op::CanarySet(percent) => {
            store.set_canary_percent(c, percent).await?;
            println!("canary percent set to {}", percent.as_f64());
        }
        Op::CanaryGet => match store.get_canary_percent(c).await? {
            Some(p) => println!("{}", p.as_f64()),
            None => println!("unset (the proxies use routing.canary_percent from their config)"),
        },
        Op::Replace(plan) => {
            if store.read_marker(c).await?.is_none() {
                return Err(CtlError::NoMarker {
                    meta: store.marker_key(),
                    new: plan.new,
                    pool: plan.pool,
                });
            }
            return match plan.run(c, store).await? {
                Outcome::Done => Ok(()),
                incomplete => Err(CtlError::Incomplete(incomplete)),
            };
        }
        Op::Status => {
            let status = store.read_status(c).await?;
            let named = store.in_layout_in_force(c).await?;
            print!(
                "{}",
                status::format_status(&status, &named, &target.redis.describe(), store::now_ms())
            );
            if let Some(line) = migrate::layout_note(store.key_layout(c).await?, store) {
                println!("{line}");
            }
        }
        Op::MigrateKeys { force } => migrate::run(c, store, force).await?,
    }
    Ok(())
}

impl Op {
    /// Whether the command may change the store (and so create a missing marker).
    fn writes(&self) -> bool {
        matches!(
            self,
            Op::Register { .. }
                | Op::Deregister(..)
                | Op::Drain(..)
                | Op::Undrain(..)
                | Op::SetWeight(..)
                | Op::CanarySet(_)
        )
    }
}

fn explain(e: StoreError) -> CtlError {
    match e {
        StoreError::NotRegistered { .. } => CtlError::NotRegistered(e),
        e => CtlError::Store(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_documented_exit_codes() {
        let incomplete = |o| CtlError::Incomplete(o);
        assert_eq!(incomplete(Outcome::NewNeverServed).exit_code(), 2);
        assert_eq!(incomplete(Outcome::OldStillBusy).exit_code(), 3);
        assert!(incomplete(Outcome::NewNeverServed).is_reported());
        for e in [CtlError::NoRedisUrl, CtlError::EmptyNamespace] {
            assert_eq!(e.exit_code(), 1, "{e}");
            assert!(!e.is_reported(), "{e}");
        }
    }

    #[test]
    fn bad_input_is_refused_before_connecting() {
        let register = |pool: &str, addr: &str, weight| CtlCommand::Register {
            pool: pool.into(),
            addr: addr.into(),
            weight,
            ttl: None,
            heartbeat: false,
        };
        let cases = [
            (register("canry", "10.0.0.1:80", None), "canry"),
            (register("canary", "nowhere", None), "nowhere"),
            (register("canary", "10.0.0.1:80", Some(0)), "0"),
            (
                CtlCommand::Canary {
                    command: CanaryCommand::Set {
                        percent: "150".into(),
                    },
                },
                "150",
            ),
        ];
        for (cmd, value) in cases {
            let e = parse_op(cmd).err().expect("refused").to_string();
            assert!(e.contains(value), "`{e}` should name `{value}`");
        }
    }
}
