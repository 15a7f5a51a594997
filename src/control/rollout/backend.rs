//! The two ways to run an action: Redis (`RolloutStore`, retried when the leader wrote) or admin.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::super::{CtlError, REDIS_TIMEOUT};

use crate::rollout::view::StateView;
use crate::rollout::{Command, Coordinator, HistoryEntry, Phase, RolloutSettings, RolloutState};
use crate::routing::salt_fingerprint;
use crate::store::{self, RolloutStore, Store};

use super::args::{apply_flags, Action, StartFlags};
use super::http;
use super::render::{entry_line, print_view, steps_text};
use super::View;

/// Verdicts `status` shows.
pub(super) const STATUS_VERDICTS: usize = 5;
/// How often `--watch` and `--wait` read the rollout.
pub(super) const POLL: Duration = Duration::from_secs(1);
/// `--wait` rides out a Redis (or proxy) that does not answer for this long, then exits 1.
pub(super) const WAIT_UNREACHABLE: Duration = Duration::from_secs(30);
/// Writes retried when the leader wrote in between.
pub(super) const WRITE_ATTEMPTS: usize = 5;

pub(super) enum Backend {
    Redis(Box<RedisBackend>),
    Admin(http::Admin),
}

pub(super) struct RedisBackend {
    pub(super) coord: RolloutStore,
    pub(super) redis: super::super::RedisAt,
    pub(super) store: Store,
    /// The `rollout:` section and routing salt of `--config`, when given.
    pub(super) defaults: Option<(RolloutSettings, String)>,
}

impl Backend {
    pub(super) async fn execute(&self, action: Action) -> Result<(), CtlError> {
        match action {
            Action::Start(flags) => {
                let state = self.start(&flags).await?;
                println!(
                    "rollout {} started at {} % (steps {}; interval {}; {} passing window(s) a \
                     step; rollback after {} failed)",
                    state.id,
                    state.weight.as_f64(),
                    steps_text(&state.settings.steps),
                    humantime::format_duration(state.settings.interval),
                    state.settings.windows_per_step,
                    state.settings.threshold
                );
                // An older proxy (over --admin) sends no fingerprint.
                if !state.salt_fingerprint.is_empty() {
                    println!(
                        "routing salt fingerprint {}: the salt the proxies route with, so \
                         users only move production -> canary",
                        state.salt_fingerprint
                    );
                }
            }
            Action::Command(cmd) => {
                let Some(state) = self.command(cmd).await? else {
                    return Ok(());
                };
                println!(
                    "rollout {}: {} ({}); canary_percent {} %",
                    state.id,
                    state.phase.as_str(),
                    state.reason,
                    state.weight.as_f64()
                );
            }
            Action::History { n, json } => {
                let history = self.view(n).await?.history;
                for e in &history {
                    if json {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    } else {
                        println!("{}", entry_line(e));
                    }
                }
                if history.is_empty() && !json {
                    println!("no rollout history");
                }
            }
            Action::Status {
                watch,
                wait,
                timeout,
                json,
            } => {
                if watch || wait {
                    return self.follow(watch, wait, timeout, json).await;
                }
                let view = self.view(STATUS_VERDICTS).await?;
                print_view(&view, json);
            }
        }
        Ok(())
    }

    async fn view(&self, n: usize) -> Result<View, CtlError> {
        match self {
            Backend::Redis(r) => Ok(View::new(
                r.coord.state().await?.as_ref(),
                r.coord.history(n).await?,
                r.coord.leader().await?,
                None,
            )),
            Backend::Admin(a) => {
                let mut view = a.view()?;
                let skip = view.history.len().saturating_sub(n);
                view.history.drain(..skip);
                Ok(view)
            }
        }
    }

    /// Start a rollout; over Redis it freezes the salt the proxies route with
    /// ([`RedisBackend::rollout_salt`]), over `--admin` the proxy takes its own.
    async fn start(&self, flags: &StartFlags) -> Result<StateView, CtlError> {
        match self {
            Backend::Admin(a) => a.start(flags)?.state.ok_or_else(|| {
                CtlError::Rollout("the proxy answered without a rollout".to_string())
            }),
            Backend::Redis(r) => {
                let (base, config_salt) = match r.defaults.clone() {
                    Some((base, salt)) => (base, Some(salt)),
                    None => (RolloutSettings::default(), None),
                };
                let settings = apply_flags(base, flags)?;
                let salt = r.rollout_salt(config_salt).await?;
                for _ in 0..WRITE_ATTEMPTS {
                    let previous = r.coord.state().await?;
                    let now = store::now_ms();
                    let next = RolloutState::start(
                        format!("r-{now}"),
                        settings.clone(),
                        salt.clone(),
                        now,
                        previous.as_ref(),
                    )
                    .map_err(|e| CtlError::Rollout(e.0))?;
                    let entry = HistoryEntry {
                        rollout_id: next.id.clone(),
                        window: None,
                        at_ms: now,
                        verdict: "start".into(),
                        reasons: vec![next.reason.clone()],
                        numbers: Vec::new(),
                        phase: next.phase,
                        step: next.step,
                        weight: next.weight,
                    };
                    if r.coord.command(previous.as_ref(), &next, &entry).await? {
                        return Ok(StateView::from(&next));
                    }
                }
                Err(changed_meanwhile())
            }
        }
    }

    /// Run an operator's command; `None` when there was nothing to do (an `abort` of a
    /// rollout that already ended at 0 %: it said so).
    async fn command(&self, cmd: Command) -> Result<Option<StateView>, CtlError> {
        let result = self.command_once(cmd).await;
        match result {
            Err(CtlError::Rollout(refused)) if cmd == Command::Abort => {
                let state = self.view(1).await?.state;
                match state {
                    Some(s) if matches!(s.phase, Phase::Aborted | Phase::RolledBack) => {
                        println!(
                            "rollout {} already ended: {} ({}); canary_percent {} %; nothing \
                             to abort",
                            s.id,
                            s.phase.as_str(),
                            s.reason,
                            s.weight.as_f64()
                        );
                        Ok(None)
                    }
                    _ => Err(CtlError::Rollout(refused)),
                }
            }
            other => other.map(Some),
        }
    }

    async fn command_once(&self, cmd: Command) -> Result<StateView, CtlError> {
        match self {
            Backend::Admin(a) => a.command(cmd)?.state.ok_or_else(|| {
                CtlError::Rollout("the proxy answered without a rollout".to_string())
            }),
            Backend::Redis(r) => {
                for _ in 0..WRITE_ATTEMPTS {
                    let Some(current) = r.coord.state().await? else {
                        return Err(CtlError::Rollout(format!(
                            "no rollout to {}: start one with `ctl rollout start`",
                            cmd.as_str()
                        )));
                    };
                    let (next, entry) = current
                        .command(cmd, store::now_ms())
                        .map_err(|e| CtlError::Rollout(e.0))?;
                    if r.coord.command(Some(&current), &next, &entry).await? {
                        return Ok(StateView::from(&next));
                    }
                }
                Err(changed_meanwhile())
            }
        }
    }

    /// `status --watch` / `--wait`: read every [`POLL`] until the rollout ends, or (`--wait`)
    /// pauses; with `--wait` the end decides the exit code.
    async fn follow(
        &self,
        watch: bool,
        wait: bool,
        timeout: Option<Duration>,
        json: bool,
    ) -> Result<(), CtlError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut unreachable_since: Option<Instant> = None;
        let clear = watch && !json && std::io::stdout().is_terminal();
        let mut first = true;
        loop {
            match self.view(STATUS_VERDICTS).await {
                Ok(view) => {
                    unreachable_since = None;
                    let phase = view.state.as_ref().map(|s| s.phase);
                    if watch {
                        if clear {
                            print!("\x1b[2J\x1b[H");
                        } else if !json && !first {
                            println!();
                        }
                        print_view(&view, json);
                        first = false;
                    }
                    match phase {
                        None | Some(Phase::Idle) => {
                            return Err(CtlError::Rollout("no rollout was started".into()))
                        }
                        Some(Phase::Progressing) => {}
                        Some(Phase::Paused) if !wait => {}
                        Some(phase) => {
                            if !watch {
                                print_view(&view, json);
                            }
                            return match phase {
                                Phase::Succeeded => Ok(()),
                                _ if wait => Err(CtlError::RolloutEnded(phase)),
                                _ => Ok(()),
                            };
                        }
                    }
                }
                Err(e) => {
                    if unreachable_since.is_none() {
                        eprintln!(
                            "warning: {e}; trying again for up to {}",
                            humantime::format_duration(WAIT_UNREACHABLE)
                        );
                    }
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= WAIT_UNREACHABLE {
                        return Err(e);
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(CtlError::Rollout(format!(
                    "the rollout did not end within {}",
                    humantime::format_duration(timeout.unwrap_or_default())
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}

impl RedisBackend {
    /// The salt a rollout starting now freezes: the one the proxies route with, or an error
    /// when `ctl` cannot know it. A rollout with any other salt would move users between the
    /// pools at its first step and again when it ends, so there is no fallback (an empty salt
    /// once did exactly that).
    ///
    /// The proxies route with the store's `salt` while it is set and valid, else with their
    /// config's `routing.salt`; `config_salt` is `--config`'s, which ctl takes to be theirs.
    async fn rollout_salt(&self, config_salt: Option<String>) -> Result<String, CtlError> {
        let mut endpoint = self.redis.endpoint()?;
        let mut conn = super::super::connect(&mut endpoint, REDIS_TIMEOUT).await?;
        let status = tokio::time::timeout(REDIS_TIMEOUT, self.store.read_status(&mut conn))
            .await
            .map_err(|_| CtlError::Timeout(REDIS_TIMEOUT))??;
        // Messages name the keys of the layout the store is in (legacy until migrated).
        let store = tokio::time::timeout(REDIS_TIMEOUT, self.store.in_layout_in_force(&mut conn))
            .await
            .map_err(|_| CtlError::Timeout(REDIS_TIMEOUT))??;
        match (status.salt, config_salt) {
            (Some(stored), config) => {
                if let Some(config) = config.filter(|c| *c != stored) {
                    eprintln!(
                        "note: {} holds a salt (fingerprint {}) that overrides routing.salt of \
                         --config (fingerprint {}) in every proxy: the rollout uses the stored one",
                        store.routing_key(),
                        salt_fingerprint(&stored),
                        salt_fingerprint(&config)
                    );
                }
                Ok(stored)
            }
            (None, Some(config)) => Ok(config),
            // A lost store loses its salt too: say what is really wrong.
            (None, None) if status.marker.is_none() => Err(CtlError::Rollout(format!(
                "{} is missing (a new store, or Redis lost its data): a rollout would make \
                 every proxy follow a store without its servers; register the servers again \
                 first. Nothing written",
                store.marker_key()
            ))),
            (None, None) => Err(no_salt(&store)),
        }
    }
}

/// The refusal of a start whose salt ctl cannot know, saying what to pass.
pub(super) fn no_salt(store: &Store) -> CtlError {
    let routing = store.routing_key();
    CtlError::Rollout(format!(
        "cannot tell which salt the proxies route with: {routing} has no valid `salt` and no \
         --config was given, and a rollout with another salt would move users between the \
         pools. Pass --config <the proxies' config file> (its routing.salt is theirs), or store \
         their salt in Redis first: `redis-cli HSET {routing} salt '<their routing.salt>'` and \
         `redis-cli PUBLISH {} routing`. Nothing written",
        store.events_channel()
    ))
}

pub(super) fn changed_meanwhile() -> CtlError {
    CtlError::Rollout(format!(
        "the rollout kept changing while writing ({WRITE_ATTEMPTS} attempts); nothing written, \
         run the command again"
    ))
}
