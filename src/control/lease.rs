//! The heartbeat lease of `ctl register --heartbeat` and `canary-lb app --register-redis`.
//!
//! It renews every ttl/3, so two renewals may fail before the server drops out, keeps retrying
//! while Redis is unreachable, and deregisters on SIGTERM/SIGINT so a clean shutdown leaves the
//! pool at once instead of when the lease lapses.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{check_ttl, connect, CtlError, RedisAt, REDIS_TIMEOUT};
use crate::model::{PoolKind, ServerAddr, Weight};
use crate::store::{Connection, Endpoint, Store};

/// Register `addr` in `pool` with a lease and renew it until SIGTERM/SIGINT, then deregister.
/// Used by `ctl register --heartbeat` and by `canary-lb app --register-redis`.
pub async fn heartbeat(
    redis_url: &str,
    namespace: &str,
    pool: &str,
    addr: &str,
    weight: Option<i64>,
    ttl: Duration,
) -> Result<(), CtlError> {
    let pool = PoolKind::parse(pool)?;
    let addr = ServerAddr::parse(addr)?;
    let weight = weight.map(Weight::new).transpose()?;
    check_ttl(ttl)?;
    Lease::new(
        RedisAt::url(redis_url).endpoint()?,
        Store::new(namespace),
        pool,
        addr,
        weight,
        ttl,
    )
    .keep_alive()
    .await
}

/// Deregister `addr` from `pool` once, giving up after `timeout`: `canary-lb app` calls it
/// after Pingora stopped, which may have cancelled its heartbeat before it deregistered.
pub async fn deregister_once(
    redis_url: &str,
    namespace: &str,
    pool: &str,
    addr: &str,
    timeout: Duration,
) -> Result<(), CtlError> {
    let pool = PoolKind::parse(pool)?;
    let addr = ServerAddr::parse(addr)?;
    let mut endpoint = RedisAt::url(redis_url).endpoint()?;
    let work = async {
        let mut conn = connect(&mut endpoint, timeout).await?;
        Store::new(namespace)
            .deregister(&mut conn, pool, &addr)
            .await?;
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(CtlError::Timeout(timeout)))
}

/// SIGTERM or SIGINT, whichever comes first.
struct ShutdownSignal {
    term: Signal,
    int: Signal,
}

impl ShutdownSignal {
    fn install() -> Result<Self, CtlError> {
        let listen = |kind, name| signal(kind).map_err(|e| CtlError::Signal(name, e));
        Ok(ShutdownSignal {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
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
pub(super) struct Lease {
    endpoint: Endpoint,
    store: Store,
    pool: PoolKind,
    addr: ServerAddr,
    weight: Option<Weight>,
    ttl: Duration,
    renew_every: Duration,
    /// Bounds each Redis call: a hung Redis must not hold a renewal past the lease.
    call_timeout: Duration,
    conn: Option<Connection>,
}

impl Lease {
    pub(super) fn new(
        endpoint: Endpoint,
        store: Store,
        pool: PoolKind,
        addr: ServerAddr,
        weight: Option<Weight>,
        ttl: Duration,
    ) -> Lease {
        let renew_every = Duration::from_millis((ttl / 3).as_millis() as u64);
        Lease {
            endpoint,
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
    pub(super) async fn keep_alive(mut self) -> Result<(), CtlError> {
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
                            self.endpoint.describe(),
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
                        log::warn!("cannot renew the lease of {addr} in {pool}: {e}; retrying");
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
                        "cannot deregister {addr} from {pool}: {e}; its lease lapses within {}",
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
    async fn take_connection(&mut self) -> Result<Connection, CtlError> {
        match self.conn.take() {
            Some(conn) => Ok(conn),
            None => connect(&mut self.endpoint, self.call_timeout).await,
        }
    }

    async fn renew(&mut self) -> Result<(), CtlError> {
        let mut conn = self.take_connection().await?;
        let ttl = Some(self.ttl);
        self.store
            .register(&mut conn, self.pool, &self.addr, self.weight, ttl)
            .await?;
        self.conn = Some(conn);
        Ok(())
    }

    async fn deregister(&mut self) -> Result<(), CtlError> {
        let mut conn = self.take_connection().await?;
        self.store
            .deregister(&mut conn, self.pool, &self.addr)
            .await?;
        self.conn = Some(conn);
        Ok(())
    }
}
