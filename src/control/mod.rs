//! `canary-lb ctl`: the operator's and the deploy job's way to change the Redis control plane.
//!
//! Every command validates its input before it connects, so a typo (`--pool canry`, weight `0`,
//! percent `150`) is refused with a message naming the value and nothing is written. The writes
//! themselves live in [`crate::store`], which owns the schema; this module resolves where Redis
//! is, turns arguments into typed values, and prints the result for a person.
//!
//! `register --heartbeat` (and `canary-lb app --register-redis`, through [`heartbeat`]) keeps a
//! lease alive: it renews every ttl/3, so two renewals may fail before the server drops out,
//! keeps retrying while Redis is unreachable, and deregisters on SIGTERM/SIGINT so a clean
//! shutdown leaves the pool at once instead of when the lease lapses.
//!
//! On a store without its marker (a brand-new Redis, or one that lost its data), the
//! first write that changes something creates it, and the proxies follow the store from then on;
//! `ctl` says so on stderr with what the store now holds, because after a wipe that may be far
//! less than the proxies were serving. `replace` refuses such a store instead: the proxies are
//! keeping their last known servers, and one replacement would make them follow a store
//! holding a single server. See docs/redis-schema.md.
//!
//! `replace` (in `ctl/replace.rs`) is the deploy pipeline's rolling step; it is the one command
//! with exit codes other than 0 and 1, so a pipeline can tell "NEW never came up" apart.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use redis::aio::MultiplexedConnection;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cli::{CanaryCommand, CtlArgs, CtlCommand};
use crate::config::{redact_url, Config};
use crate::model::{Percent, PoolKind, ServerAddr, Weight};
use crate::store::{self, Status, Store, StoreError, SERVING_FRESH_MS};

pub mod probe;
mod replace;

const DEFAULT_NAMESPACE: &str = "canary-lb";
/// Lease length of `register --heartbeat` without `--ttl`.
const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(15);
/// Shorter leases leave no room for a renewal to cross the network.
const MIN_TTL: Duration = Duration::from_secs(1);
/// Bounds every Redis call, so an unreachable Redis is reported instead of hanging.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the control plane lives.
struct Target {
    url: String,
    store: Store,
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
    Replace(replace::Replace),
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let op = parse_op(args.command)?;
    let target = resolve_target(args.redis, args.config, args.namespace)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(execute(op, &target))?;
    drop(runtime);
    if code != 0 {
        // The binary maps errors to exit 1; `replace` also needs 2 and 3.
        std::process::exit(code);
    }
    Ok(())
}

/// Register `addr` in `pool` with a lease and renew it until SIGTERM/SIGINT, then deregister.
/// Used by `ctl register --heartbeat` and by `canary-lb app --register-redis`.
pub async fn heartbeat(
    redis_url: &str,
    namespace: &str,
    pool: &str,
    addr: &str,
    weight: Option<i64>,
    ttl: std::time::Duration,
) -> anyhow::Result<()> {
    let pool = PoolKind::parse(pool).map_err(|e| anyhow!(e))?;
    let addr = ServerAddr::parse(addr).map_err(|e| anyhow!(e))?;
    let weight = weight
        .map(Weight::new)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    check_ttl(ttl)?;
    let client = open_client(redis_url)?;
    Lease::new(
        client,
        redis_url,
        Store::new(namespace),
        pool,
        addr,
        weight,
        ttl,
    )
    .keep_alive()
    .await
}

fn parse_op(command: CtlCommand) -> anyhow::Result<Op> {
    let pool = |p: &str| PoolKind::parse(p).map_err(|e| anyhow!(e));
    let addr = |a: &str| ServerAddr::parse(a).map_err(|e| anyhow!(e));
    let weight = |w: i64| Weight::new(w).map_err(|e| anyhow!(e));
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
        } => Op::CanarySet(Percent::parse(&percent).map_err(|e| anyhow!(e))?),
        CtlCommand::Canary {
            command: CanaryCommand::Get,
        } => Op::CanaryGet,
        CtlCommand::Status => Op::Status,
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

fn check_ttl(ttl: Duration) -> anyhow::Result<()> {
    if ttl < MIN_TTL {
        bail!(
            "--ttl must be at least {}, got {}",
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(ttl)
        );
    }
    Ok(())
}

/// `--redis` (or CANARY_LB_REDIS_URL, via clap), else `--config`'s discovery.url; the namespace
/// from `--namespace`, else the config's, else `canary-lb`.
fn resolve_target(
    redis: Option<String>,
    config: Option<std::path::PathBuf>,
    namespace: Option<String>,
) -> anyhow::Result<Target> {
    let config = config.map(|path| Config::load(&path)).transpose()?;
    let url = match (redis, &config) {
        (Some(url), _) => url,
        (None, Some(c)) => c.discovery.url.clone(),
        (None, None) => {
            bail!("no Redis URL: pass --redis URL, set CANARY_LB_REDIS_URL or pass --config FILE")
        }
    };
    let namespace = namespace
        .or_else(|| config.map(|c| c.discovery.namespace))
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if namespace.is_empty() {
        bail!("--namespace must not be empty");
    }
    Ok(Target {
        url,
        store: Store::new(&namespace),
    })
}

fn open_client(url: &str) -> anyhow::Result<redis::Client> {
    redis::Client::open(url)
        .map_err(|e| anyhow!("`{}` is not a usable Redis URL: {e}", redact_url(url)))
}

async fn connect(
    client: &redis::Client,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| anyhow!("cannot reach Redis at {}: {e}", redact_url(url)))
}

/// Run one command; returns the exit code (errors exit 1).
async fn execute(op: Op, target: &Target) -> anyhow::Result<i32> {
    let client = open_client(&target.url)?;
    let store = &target.store;
    if let Op::Register {
        pool,
        addr,
        weight,
        ttl: Some(ttl),
        heartbeat: true,
    } = op
    {
        let lease = Lease::new(client, &target.url, store.clone(), pool, addr, weight, ttl);
        return lease.keep_alive().await.map(|()| 0);
    }
    let mut conn = connect(&client, &target.url, REDIS_TIMEOUT).await?;
    let c = &mut conn;
    let unmarked_before_write = op.writes() && store.read_marker(c).await?.is_none();
    let code = run_op(op, c, target).await?;
    if unmarked_before_write && store.read_marker(c).await?.is_some() {
        let snap = store.read_snapshot(c, store::now_ms()).await?;
        eprintln!(
            "note: {} was missing (a new store, or Redis lost its data); this write created it, \
             so every proxy now follows the store as it is: {} production and {} canary \
             server(s). Register any missing server again.",
            store.marker_key(),
            snap.production.len(),
            snap.canary.len()
        );
    }
    Ok(code)
}

/// The command itself, on an open connection.
async fn run_op(op: Op, c: &mut MultiplexedConnection, target: &Target) -> anyhow::Result<i32> {
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
                bail!(
                    "{} is missing (a new store, or Redis lost its data): the proxies keep their \
                     last known servers, and replacing one server would make them follow a store \
                     holding only {}. Register the {} servers again with `ctl register` first. \
                     Nothing changed.",
                    store.marker_key(),
                    plan.new,
                    plan.pool
                );
            }
            return Ok(plan.run(c, store).await?.exit_code());
        }
        Op::Status => {
            let status = store.read_status(c).await?;
            print!(
                "{}",
                format_status(&status, store, &redact_url(&target.url), store::now_ms())
            );
        }
    }
    Ok(0)
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

fn explain(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::NotRegistered { .. } => anyhow!("{e} (register it first)"),
        e => anyhow!(e),
    }
}

/// SIGTERM or SIGINT, whichever comes first.
struct ShutdownSignal {
    term: Signal,
    int: Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<Self> {
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// One server kept registered with a lease until SIGTERM/SIGINT.
struct Lease {
    client: redis::Client,
    url: String,
    store: Store,
    pool: PoolKind,
    addr: ServerAddr,
    weight: Option<Weight>,
    ttl: Duration,
    renew_every: Duration,
    /// Bounds each Redis call: a hung Redis must not hold a renewal past the lease.
    call_timeout: Duration,
    conn: Option<MultiplexedConnection>,
}

impl Lease {
    fn new(
        client: redis::Client,
        url: &str,
        store: Store,
        pool: PoolKind,
        addr: ServerAddr,
        weight: Option<Weight>,
        ttl: Duration,
    ) -> Lease {
        let renew_every = Duration::from_millis((ttl / 3).as_millis() as u64);
        Lease {
            client,
            url: url.to_string(),
            store,
            pool,
            addr,
            weight,
            ttl,
            renew_every,
            call_timeout: REDIS_TIMEOUT.min(renew_every),
            conn: None,
        }
    }

    /// Renew every ttl/3 until a signal (retrying sooner while Redis is unreachable), then
    /// deregister.
    async fn keep_alive(mut self) -> anyhow::Result<()> {
        // Installed before the first registration, so a signal never finds the server
        // registered and the process without a handler.
        let mut shutdown = ShutdownSignal::install()?;
        let retry_after = self.renew_every.min(Duration::from_secs(1));
        let (addr, pool) = (self.addr.clone(), self.pool);
        let mut healthy = None;
        let signal_name = loop {
            let wait = match self.renew().await {
                Ok(()) => {
                    if healthy != Some(true) {
                        log::info!(
                            "registered {addr} in {pool} at {} with a {} lease, renewing every {}",
                            redact_url(&self.url),
                            humantime::format_duration(self.ttl),
                            humantime::format_duration(self.renew_every)
                        );
                    }
                    healthy = Some(true);
                    self.renew_every
                }
                Err(e) => {
                    // Logged once per outage, not at every retry.
                    if healthy != Some(false) {
                        log::warn!("cannot renew the lease of {addr} in {pool}: {e:#}; retrying");
                    }
                    healthy = Some(false);
                    retry_after
                }
            };
            tokio::select! {
                name = shutdown.recv() => break name,
                _ = tokio::time::sleep(wait) => {}
            }
        };
        log::info!("{signal_name}: deregistering {addr} from {pool}");
        // A few quick attempts; if Redis stays away the lease lapses within `ttl` anyway.
        let deadline = tokio::time::Instant::now() + self.ttl.min(Duration::from_secs(5));
        loop {
            match self.deregister().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    log::warn!(
                        "cannot deregister {addr} from {pool}: {e:#}; its lease lapses within {}",
                        humantime::format_duration(self.ttl)
                    );
                    return Ok(());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The open connection, or a new one. Callers put it back only after a successful call, so
    /// a failed call reconnects next time.
    async fn take_connection(&mut self) -> anyhow::Result<MultiplexedConnection> {
        match self.conn.take() {
            Some(conn) => Ok(conn),
            None => connect(&self.client, &self.url, self.call_timeout).await,
        }
    }

    async fn renew(&mut self) -> anyhow::Result<()> {
        let mut conn = self.take_connection().await?;
        let ttl = Some(self.ttl);
        self.store
            .register(&mut conn, self.pool, &self.addr, self.weight, ttl)
            .await?;
        self.conn = Some(conn);
        Ok(())
    }

    async fn deregister(&mut self) -> anyhow::Result<()> {
        let mut conn = self.take_connection().await?;
        self.store
            .deregister(&mut conn, self.pool, &self.addr)
            .await?;
        self.conn = Some(conn);
        Ok(())
    }
}

/// `12s`, `none` or `expired`.
fn lease_left(expiry_ms: Option<u64>, now_ms: u64) -> String {
    match expiry_ms {
        None => "none".to_string(),
        Some(t) if t > now_ms => format!("{}s", (t - now_ms).div_ceil(1000)),
        Some(_) => "expired".to_string(),
    }
}

fn format_status(status: &Status, store: &Store, url: &str, now_ms: u64) -> String {
    let mut out = format!("redis {url}, namespace {}\n", store.namespace());
    match &status.marker {
        Some(m) => {
            let changed = m.updated_ms.map_or(String::new(), |t| {
                format!(
                    ", last change {}s ago",
                    now_ms.saturating_sub(t).div_ceil(1000)
                )
            });
            out += &format!("store: generation {}{changed}\n", m.generation);
        }
        None => {
            out += &format!(
                "store: NO MARKER ({} missing: a new store, or Redis lost its data); the proxies \
                 keep their last known servers until a write creates it\n",
                store.marker_key()
            )
        }
    }
    match status.canary_percent {
        Some(p) => out += &format!("canary percent: {}\n", p.as_f64()),
        None if status.problems.iter().any(|p| p.kind == "canary_percent") => {
            out += "canary percent: invalid, ignored (see problems below)\n"
        }
        None => out += "canary percent: unset (the proxies use their config)\n",
    }
    match &status.salt {
        Some(s) => out += &format!("salt: {s:?}\n"),
        None => out += "salt: unset (the proxies use their config)\n",
    }
    for pool in PoolKind::ALL {
        out += &format!("\n{pool}\n");
        let rows = status.pool(pool);
        if rows.is_empty() {
            out += "  (no servers)\n";
            continue;
        }
        let mut table = vec![[
            "SERVER".to_string(),
            "WEIGHT".to_string(),
            "LEASE".to_string(),
            "DRAINING".to_string(),
            "SERVING".to_string(),
        ]];
        for row in rows {
            let s = &row.server;
            let serving = row
                .serving_seen_ms
                .is_some_and(|seen| seen + SERVING_FRESH_MS >= now_ms);
            table.push([
                s.addr.to_string(),
                s.weight.get().to_string(),
                lease_left(s.lease_expiry_ms, now_ms),
                yes_no(s.draining),
                yes_no(serving),
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in &table {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out += &format!("  {}\n", line.join("  ").trim_end());
        }
    }
    if !status.problems.is_empty() {
        out += "\nproblems (these entries are ignored by the proxies):\n";
        for p in &status.problems {
            out += &format!("  {} [{}]: {}\n", p.key, p.kind, p.detail);
        }
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ServerStatus, StoredServer};

    #[test]
    fn lease_left_is_rounded_up_seconds() {
        assert_eq!(lease_left(None, 1000), "none");
        assert_eq!(lease_left(Some(13_000), 1000), "12s");
        assert_eq!(lease_left(Some(1001), 1000), "1s");
        assert_eq!(lease_left(Some(1000), 1000), "expired");
    }

    #[test]
    fn status_table_has_every_column() {
        let now = 100_000;
        let server = |addr: &str, expiry, draining| StoredServer {
            addr: ServerAddr::parse(addr).expect("valid"),
            weight: Weight::new(2).expect("valid"),
            lease_expiry_ms: expiry,
            draining,
        };
        let status = Status {
            marker: Some(store::Marker {
                generation: 7,
                updated_ms: Some(now - 3000),
                created_ms: Some(1),
            }),
            production: vec![ServerStatus {
                server: server("10.0.0.1:80", None, false),
                serving_seen_ms: Some(now - 1000),
            }],
            canary: vec![ServerStatus {
                server: server("10.0.0.7:3000", Some(now + 12_000), true),
                serving_seen_ms: Some(now - 60_000),
            }],
            canary_percent: Percent::parse("12.5").ok(),
            salt: Some("r1".into()),
            problems: vec![],
        };
        let text = format_status(&status, &Store::new("ns"), "redis://h/0", now);
        assert!(
            text.contains("store: generation 7, last change 3s ago"),
            "{text}"
        );
        let unmarked = Status {
            marker: None,
            ..status.clone()
        };
        let unmarked = format_status(&unmarked, &Store::new("ns"), "redis://h/0", now);
        assert!(
            unmarked.contains(&format!(
                "store: NO MARKER ({} missing",
                Store::new("ns").marker_key()
            )),
            "{unmarked}"
        );
        assert!(text.contains("canary percent: 12.5"), "{text}");
        assert!(text.contains("salt: \"r1\""), "{text}");
        let prod = text
            .lines()
            .find(|l| l.contains("10.0.0.1:80"))
            .expect("row");
        assert_eq!(
            prod.split_whitespace().collect::<Vec<_>>(),
            ["10.0.0.1:80", "2", "none", "no", "yes"]
        );
        let canary = text
            .lines()
            .find(|l| l.contains("10.0.0.7:3000"))
            .expect("row");
        assert_eq!(
            canary.split_whitespace().collect::<Vec<_>>(),
            ["10.0.0.7:3000", "2", "12s", "yes", "no"]
        );
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
