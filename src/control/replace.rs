//! `ctl replace`: one rolling-replacement step of a deploy pipeline, OLD -> NEW in one pool.
//!
//! The step only trusts what the proxies report back through Redis, never its own writes:
//! NEW counts as serving once some proxy has kept it in rotation (its serving report) for
//! `settle`, because a proxy puts a new server in rotation *before* its first health probe,
//! so a single report would also accept a NEW that nobody listens on. OLD counts as finished
//! once no proxy has reported it in rotation for [`OUT_OF_ROTATION_MS`] (every proxy applied
//! the drain) and the proxies' in-flight reports (`Store::in_flight`) sum to zero for it.
//!
//! An OLD kept alive by a heartbeat (a lease) is left registered but drained instead of
//! deregistered: its next renewal would add it straight back, while stopping it deregisters it.
//!
//! Every write is idempotent (register, drain, deregister), so a pipeline may simply re-run a
//! step that failed half-way; an OLD that is already gone is a note, not an error.

use std::io::Write;
use std::time::Duration;

use crate::store::Connection;

use crate::model::{PoolKind, ServerAddr, Weight};
use crate::store::{self, Registration, Store, StoreError};

/// How often the reports are read while waiting.
const POLL: Duration = Duration::from_millis(200);
/// A server no proxy re-reported within this long is out of every proxy's rotation. Proxies
/// report every second; the rest is slack for a busy proxy or Redis.
const OUT_OF_ROTATION_MS: u64 = 1_500;
/// How often a wait prints that it is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A validated `ctl replace`.
#[derive(Debug, Clone)]
pub struct Replace {
    pub pool: PoolKind,
    pub old: ServerAddr,
    pub new: ServerAddr,
    pub weight: Option<Weight>,
    pub timeout: Duration,
    pub settle: Duration,
    pub strict: bool,
}

/// How the step ended; each maps to the documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// NEW serves, OLD is out of rotation for good (also when OLD still had requests in flight,
    /// without --strict).
    Done,
    /// NEW was never reported serving: OLD untouched, NEW deregistered again.
    NewNeverServed,
    /// --strict: OLD still had requests in flight at the timeout (it is out of rotation anyway).
    OldStillBusy,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::NewNeverServed => 2,
            Outcome::OldStillBusy => 3,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Done => "done",
            Outcome::NewNeverServed => "NEW was never reported serving (exit 2)",
            Outcome::OldStillBusy => "OLD still had requests in flight, --strict (exit 3)",
        })
    }
}

/// A plan refused before anything is written (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("OLD and NEW are the same server ({0})")]
    SameServer(ServerAddr),
    #[error("--timeout must be more than 0")]
    ZeroTimeout,
    #[error(
        "--settle ({}) must be shorter than --timeout ({})",
        humantime::format_duration(*.settle),
        humantime::format_duration(*.timeout)
    )]
    SettleNotShorter { settle: Duration, timeout: Duration },
}

/// A Redis call that failed during a step; `step` says what was being done and what state it
/// left (exit 1: every step is idempotent, so re-run it).
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct ReplaceError {
    step: String,
    #[source]
    source: StoreError,
}

/// `.context(..)` for a store call inside a step.
trait Step<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, ReplaceError>;
}

impl<T, E: Into<StoreError>> Step<T> for Result<T, E> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, ReplaceError> {
        self.map_err(|e| ReplaceError {
            step: step(),
            source: e.into(),
        })
    }
}

impl Replace {
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.old == self.new {
            return Err(PlanError::SameServer(self.old.clone()));
        }
        if self.timeout.is_zero() {
            return Err(PlanError::ZeroTimeout);
        }
        if self.settle >= self.timeout {
            return Err(PlanError::SettleNotShorter {
                settle: self.settle,
                timeout: self.timeout,
            });
        }
        Ok(())
    }

    pub async fn run(&self, conn: &mut Connection, store: &Store) -> Result<Outcome, ReplaceError> {
        let started = tokio::time::Instant::now();
        let (pool, old, new) = (self.pool, &self.old, &self.new);
        say(&format!(
            "{pool}: replacing {old} with {new} (timeout {} per wait, settle {})",
            humantime::format_duration(self.timeout),
            humantime::format_duration(self.settle)
        ));
        let read = "reading the pool (nothing changed)";
        let old_was = store
            .registration(conn, pool, old)
            .await
            .step(|| read.into())?;
        let new_was = store
            .registration(conn, pool, new)
            .await
            .step(|| read.into())?;
        if old_was == Registration::Absent {
            say(&format!(
                "note: {old} is not registered in {pool}; nothing to drain (already replaced?)"
            ));
        }

        let registered_at = store::now_ms();
        self.register_new(conn, store, new_was)
            .await
            .step(|| format!("registering {new} (OLD untouched)"))?;

        if !self.wait_serving(conn, store, registered_at).await? {
            let undo = if new_was == Registration::Absent {
                store
                    .deregister(conn, pool, new)
                    .await
                    .step(|| format!("deregistering {new} again (OLD untouched)"))?;
                format!("deregistered {new} again")
            } else {
                format!("{new} was registered before, so it stays registered")
            };
            fail(&format!(
                "{new} was not reported serving by any proxy within {}; {old} untouched; {undo}. \
                 Is it listening and passing the proxies' health check? (exit 2)",
                humantime::format_duration(self.timeout)
            ));
            return Ok(Outcome::NewNeverServed);
        }

        let outcome = match old_was {
            Registration::Absent => Outcome::Done,
            _ => self.retire_old(conn, store, old_was).await?,
        };
        say(&format!(
            "done in {:.1}s: {pool} serves {new} instead of {old}",
            started.elapsed().as_secs_f64()
        ));
        Ok(outcome)
    }

    /// Register NEW without a lease; one that is already registered (e.g. by its own
    /// heartbeat) keeps its registration and only gets the new weight.
    async fn register_new(
        &self,
        conn: &mut Connection,
        store: &Store,
        was: Registration,
    ) -> Result<(), store::StoreError> {
        let (pool, new) = (self.pool, &self.new);
        let weight = self
            .weight
            .map_or(String::new(), |w| format!(", weight {}", w.get()));
        if was == Registration::Absent {
            store.register(conn, pool, new, self.weight, None).await?;
            say(&format!("registered {new} in {pool} (no lease{weight})"));
        } else {
            if let Some(w) = self.weight {
                store.set_weight(conn, pool, new, w).await?;
            }
            say(&format!(
                "{new} is already registered in {pool}; kept{weight}"
            ));
        }
        Ok(())
    }

    /// Drain OLD, wait until it is idle (or the timeout), then remove it: deregister it, or,
    /// when a heartbeat keeps it registered (a lease), leave it registered but drained, since
    /// the next renewal would only add it again; stopping it deregisters it.
    async fn retire_old(
        &self,
        conn: &mut Connection,
        store: &Store,
        was: Registration,
    ) -> Result<Outcome, ReplaceError> {
        let (pool, old, new) = (self.pool, &self.old, &self.new);
        store
            .drain(conn, pool, old)
            .await
            .step(|| format!("draining {old} ({new} is registered and serving)"))?;
        let drained_at = store::now_ms();
        say(&format!("draining {old}: it gets no new requests"));
        let idle = self.wait_idle(conn, store, drained_at).await?;
        let leased = matches!(was, Registration::Lease { .. });
        let mut outcome = Outcome::Done;
        if !idle {
            let next = if leased {
                "it stays drained"
            } else {
                "deregistering it anyway"
            };
            let msg = format!(
                "{old} still had requests in flight after {}; {next} (the proxies let those \
                 requests finish, but do not stop {old} yet)",
                humantime::format_duration(self.timeout)
            );
            if self.strict {
                fail(&format!("{msg} (exit 3, --strict)"));
                outcome = Outcome::OldStillBusy;
            } else {
                say(&format!("warning: {msg}"));
            }
        }
        if leased {
            say(&format!(
                "{old} renews a lease (heartbeat): left registered but drained; stopping it \
                 deregisters it, or its lease lapses"
            ));
        } else {
            store
                .deregister(conn, pool, old)
                .await
                .step(|| format!("deregistering {old} (it is drained; {new} serves)"))?;
            say(&format!("deregistered {old} from {pool}"));
        }
        Ok(outcome)
    }

    /// Until some proxy has kept NEW in rotation for `settle` without a gap (true), or the
    /// timeout (false).
    async fn wait_serving(
        &self,
        conn: &mut Connection,
        store: &Store,
        registered_at: u64,
    ) -> Result<bool, ReplaceError> {
        let new = &self.new;
        say(&format!(
            "waiting for a proxy to report {new} in rotation for {}",
            humantime::format_duration(self.settle)
        ));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let settle_ms = self.settle.as_millis() as u64;
        let mut first_seen: Option<u64> = None;
        let mut progress = Progress::new();
        loop {
            let seen = store
                .serving_seen_ms(conn, self.pool, new)
                .await
                .step(|| format!("reading serving reports ({new} is registered, OLD untouched)"))?
                .filter(|&t| t >= registered_at);
            let now = store::now_ms();
            match seen {
                // Reported since registration and not gone quiet since.
                Some(t) if now.saturating_sub(t) <= OUT_OF_ROTATION_MS => {
                    let first = *first_seen.get_or_insert_with(|| {
                        say(&format!(
                            "{new} is in rotation; checking that it stays there"
                        ));
                        t
                    });
                    if t >= first + settle_ms {
                        say(&format!("{new} is serving"));
                        return Ok(true);
                    }
                }
                _ => {
                    if first_seen.take().is_some() {
                        say(&format!(
                            "{new} left rotation again (failed health checks?)"
                        ));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            progress.tick(|| format!("still waiting for {new} to serve"));
            tokio::time::sleep(POLL).await;
        }
    }

    /// Until OLD is out of every proxy's rotation and nothing is in flight on it (true), or the
    /// timeout (false).
    async fn wait_idle(
        &self,
        conn: &mut Connection,
        store: &Store,
        drained_at: u64,
    ) -> Result<bool, ReplaceError> {
        let old = &self.old;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut progress = Progress::new();
        let mut last = None;
        loop {
            let context = || format!("reading proxy reports ({old} is draining, NEW serves)");
            let now = store::now_ms();
            let seen = store
                .serving_seen_ms(conn, self.pool, old)
                .await
                .step(context)?;
            let flight = store.in_flight(conn, self.pool, old).await.step(context)?;
            // Every proxy had time to apply the drain and report after it.
            let settled = now >= drained_at + OUT_OF_ROTATION_MS;
            let out_of_rotation = seen.is_none_or(|t| t + OUT_OF_ROTATION_MS < now);
            if settled && out_of_rotation && flight.requests == 0 {
                say(&format!(
                    "{old} is idle: out of rotation and nothing in flight ({} proxy report(s))",
                    flight.proxies
                ));
                return Ok(true);
            }
            let state = (out_of_rotation, flight.requests);
            if settled && last != Some(state) {
                let rotation = if out_of_rotation {
                    "out of rotation"
                } else {
                    "still in rotation on some proxy"
                };
                say(&format!(
                    "{old}: {rotation}, {} request(s) in flight",
                    flight.requests
                ));
                last = Some(state);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            progress.tick(|| format!("still waiting for {old} to finish its requests"));
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Prints a "still waiting" line every [`PROGRESS_EVERY`], so a CI log shows the step is alive.
struct Progress {
    next: tokio::time::Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            next: tokio::time::Instant::now() + PROGRESS_EVERY,
        }
    }

    fn tick(&mut self, line: impl FnOnce() -> String) {
        if tokio::time::Instant::now() >= self.next {
            say(&line());
            self.next += PROGRESS_EVERY;
        }
    }
}

/// One progress line on stdout, flushed at once (CI logs are pipes).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "replace: {line}");
    let _ = out.flush();
}

/// The failure line on stderr.
fn fail(line: &str) {
    eprintln!("replace: FAILED: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(old: &str, new: &str, timeout: u64, settle: u64) -> Replace {
        Replace {
            pool: PoolKind::Production,
            old: ServerAddr::parse(old).expect("valid"),
            new: ServerAddr::parse(new).expect("valid"),
            weight: None,
            timeout: Duration::from_secs(timeout),
            settle: Duration::from_secs(settle),
            strict: false,
        }
    }

    #[test]
    fn bad_plans_are_refused() {
        assert!(plan("10.0.0.1:80", "10.0.0.2:80", 60, 5).validate().is_ok());
        let same = plan("10.0.0.1:80", "10.0.0.1:80", 60, 5).validate();
        assert!(same.unwrap_err().to_string().contains("same server"));
        let settle = plan("10.0.0.1:80", "10.0.0.2:80", 5, 5).validate();
        assert!(settle.unwrap_err().to_string().contains("--settle"));
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(Outcome::Done.exit_code(), 0);
        assert_eq!(Outcome::NewNeverServed.exit_code(), 2);
        assert_eq!(Outcome::OldStillBusy.exit_code(), 3);
    }
}
