//! `canary-lb ctl rollout`: start, follow and steer a progressive rollout.
//!
//! Two ways to reach it, same commands and output:
//! - Redis (the default; the proxies follow Redis): through [`RolloutStore`], the store every
//!   replica's engine reads. A command reads the rollout, computes the next state with the
//!   contract's pure [`RolloutState::start`] / [`RolloutState::command`], and writes it with a
//!   compare-and-set on id and version; when the leader wrote in between, it re-reads and
//!   tries again (a few times), so `abort` wins against a judged window instead of failing.
//! - `--admin URL`: one proxy's admin endpoint (`GET /rollout`, `POST /rollout/<cmd>`), for the
//!   file provider, where the rollout lives inside that proxy ([`http`]).
//!
//! A start over Redis freezes the salt the proxies route with (the store's `salt`, else
//! `--config`'s `routing.salt`) and refuses, writing nothing, when it knows neither: any other
//! salt would reshuffle users. Every output shows the salt only as its fingerprint, through
//! [`crate::rollout::view`].
//!
//! Flags are validated before anything is connected. `status --wait` is the pipeline gate:
//! exit 0 succeeded, 2 rolled back or aborted, 3 paused, 1 error.

mod http;
// `canary-lb reload` reads the admin port's `/status` with it.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{resolve_target, CtlError, REDIS_TIMEOUT};
use crate::cli::{RolloutArgs, RolloutCommand};

use crate::config::Config;
use crate::model::Percent;
use crate::rollout::view::StateView;
use crate::rollout::{Command, Coordinator, HistoryEntry, Phase, RolloutSettings, RolloutState};
use crate::routing::salt_fingerprint;
use crate::store::{self, RolloutStore, Store};

/// Verdicts `status` shows.
const STATUS_VERDICTS: usize = 5;
/// How often `--watch` and `--wait` read the rollout.
const POLL: Duration = Duration::from_secs(1);
/// `--wait` rides out a Redis (or proxy) that does not answer for this long, then exits 1.
const WAIT_UNREACHABLE: Duration = Duration::from_secs(30);
/// Writes retried when the leader wrote in between.
const WRITE_ATTEMPTS: usize = 5;

/// `ctl rollout start` flags as given, `(key of rollout:, text)`; checked before connecting
/// and again over the config's section, by the parser the config and the admin endpoint use.
#[derive(Debug, Default, Clone, PartialEq)]
struct StartFlags {
    keys: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Start(StartFlags),
    Status {
        watch: bool,
        wait: bool,
        timeout: Option<Duration>,
        json: bool,
    },
    Command(Command),
    History {
        n: usize,
        json: bool,
    },
}

/// What `status` shows: the admin endpoint's `GET /rollout` body, and the same read from
/// Redis; the salt only as its fingerprint, whichever way it was read.
pub use crate::rollout::view::RolloutView as View;

/// `canary-lb ctl rollout ...`: validate, then run against Redis or the admin endpoint.
pub(super) fn run(
    args: RolloutArgs,
    redis: Option<String>,
    config: Option<PathBuf>,
    namespace: Option<String>,
) -> Result<(), CtlError> {
    let action = parse_action(args.command)?;
    let runtime = super::runtime()?;
    let backend = match args.admin {
        Some(url) => {
            if redis.is_some() {
                return Err(flag("admin", "give --admin or --redis, not both"));
            }
            let token = args
                .admin_token_file
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map(|t| t.trim().to_string())
                        .map_err(|e| flag("admin-token-file", format!("{}: {e}", p.display())))
                })
                .transpose()?;
            Backend::Admin(http::Admin::new(&url, token, REDIS_TIMEOUT)?)
        }
        None => {
            let defaults = config
                .as_ref()
                .map(|p| Config::load(p))
                .transpose()?
                .map(|c| (c.rollout.settings(), c.routing.salt));
            let target = resolve_target(redis, config, namespace)?;
            let client = super::open_client(&target.url)?;
            let coord =
                RolloutStore::new(target.store.clone(), client.clone()).with_timeout(REDIS_TIMEOUT);
            Backend::Redis(Box::new(RedisBackend {
                coord,
                client,
                url: target.url,
                store: target.store,
                defaults,
            }))
        }
    };
    runtime.block_on(backend.execute(action))
}

fn flag(flag: &str, problem: impl ToString) -> CtlError {
    CtlError::BadFlag {
        flag: flag.to_string(),
        problem: problem.to_string(),
    }
}

fn parse_action(command: RolloutCommand) -> Result<Action, CtlError> {
    Ok(match command {
        RolloutCommand::Start(args) => {
            let flags = StartFlags { keys: args.keys() };
            // The flags alone must make sense; merged with the config they are checked again.
            apply_flags(RolloutSettings::default(), &flags)?;
            Action::Start(flags)
        }
        RolloutCommand::Status {
            watch,
            wait,
            timeout,
            json,
        } => Action::Status {
            watch,
            wait,
            timeout,
            json,
        },
        RolloutCommand::Pause => Action::Command(Command::Pause),
        RolloutCommand::Resume => Action::Command(Command::Resume),
        RolloutCommand::Abort => Action::Command(Command::Abort),
        RolloutCommand::Promote => Action::Command(Command::Promote),
        RolloutCommand::History { n, json } => {
            if n == 0 || n > 1000 {
                return Err(CtlError::BadArg(format!(
                    "-n/--last: must be 1..=1000, got {n}"
                )));
            }
            Action::History { n, json }
        }
    })
}

/// The settings a rollout freezes: `base` (the config's `rollout:`) with the flags over it,
/// checked as the config is; an error names the flag (`--windows-per-step`).
fn apply_flags(base: RolloutSettings, flags: &StartFlags) -> Result<RolloutSettings, CtlError> {
    base.with_keys(flags.keys.iter().map(|(k, v)| (*k, v.as_str())))
        .map_err(|e| {
            let problem = match &e.value {
                Some(v) => format!("`{v}` {}", e.problem),
                None => e.problem.clone(),
            };
            flag(&e.key.replace('_', "-"), problem)
        })
}

enum Backend {
    Redis(Box<RedisBackend>),
    Admin(http::Admin),
}

struct RedisBackend {
    coord: RolloutStore,
    client: redis::Client,
    url: String,
    store: Store,
    /// The `rollout:` section and routing salt of `--config`, when given.
    defaults: Option<(RolloutSettings, String)>,
}

impl Backend {
    async fn execute(&self, action: Action) -> Result<(), CtlError> {
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
        let mut conn = super::connect(&self.client, &self.url, REDIS_TIMEOUT).await?;
        let status = tokio::time::timeout(REDIS_TIMEOUT, self.store.read_status(&mut conn))
            .await
            .map_err(|_| CtlError::Timeout(REDIS_TIMEOUT))??;
        match (status.salt, config_salt) {
            (Some(stored), config) => {
                if let Some(config) = config.filter(|c| *c != stored) {
                    eprintln!(
                        "note: {} holds a salt (fingerprint {}) that overrides routing.salt of \
                         --config (fingerprint {}) in every proxy: the rollout uses the stored one",
                        self.store.routing_key(),
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
                self.store.marker_key()
            ))),
            (None, None) => Err(no_salt(&self.store)),
        }
    }
}

/// The refusal of a start whose salt ctl cannot know, saying what to pass.
fn no_salt(store: &Store) -> CtlError {
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

fn changed_meanwhile() -> CtlError {
    CtlError::Rollout(format!(
        "the rollout kept changing while writing ({WRITE_ATTEMPTS} attempts); nothing written, \
         run the command again"
    ))
}

fn print_view(view: &View, json: bool) {
    if json {
        println!("{}", serde_json::to_string(view).unwrap_or_default());
    } else {
        print!("{}", format_view(view, store::now_ms()));
    }
}

fn steps_text(steps: &[Percent]) -> String {
    steps
        .iter()
        .map(|p| p.as_f64().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A figure as an operator reads it: integers bare, others with at most 3 decimals.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One history line: `2026-12-07T10:40:00Z  window 3  fail  10 %  reasons  (numbers)`, the
/// time in UTC.
fn entry_line(e: &HistoryEntry) -> String {
    let what = match e.window {
        Some(w) => format!("window {w}"),
        None => "command".to_string(),
    };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms);
    let mut line = format!(
        "{}  {what:<10} {:<12} {:>6} %  {}",
        humantime::format_rfc3339_seconds(at),
        e.verdict,
        e.weight.as_f64(),
        e.reasons.join("; ")
    );
    if !e.numbers.is_empty() {
        let nums: Vec<String> = e
            .numbers
            .iter()
            .map(|(k, v)| format!("{k}={}", number(*v)))
            .collect();
        let _ = write!(line, "  ({})", nums.join(" "));
    }
    line
}

/// The text of `ctl rollout status`.
fn format_view(view: &View, now_ms: u64) -> String {
    let mut out = String::new();
    let Some(s) = &view.state else {
        out.push_str("no rollout was started (ctl rollout start)\n");
        return out;
    };
    let n = s.settings.steps.len();
    let _ = writeln!(out, "rollout {}: {} ({})", s.id, s.phase.as_str(), s.reason);
    let _ = writeln!(
        out,
        "weight:   {} %  step {}/{} of [{}]",
        s.weight.as_f64(),
        (s.step + 1).min(n),
        n,
        steps_text(&s.settings.steps)
    );
    let _ = writeln!(
        out,
        "salt:     fingerprint {}",
        if s.salt_fingerprint.is_empty() {
            "not sent (an older proxy)"
        } else {
            &s.salt_fingerprint
        }
    );
    let _ = writeln!(
        out,
        "checks:   failed {}/{}, passing in step {}/{}, inconclusive in a row {}/{}",
        s.failed,
        s.settings.threshold,
        s.passes_in_step,
        s.settings.windows_per_step,
        s.inconclusive_run,
        s.settings.max_inconclusive
    );
    let age = Duration::from_millis(now_ms.saturating_sub(s.started_ms) / 1000 * 1000);
    let _ = writeln!(
        out,
        "windows:  interval {}, next to judge {}, started {} ago",
        humantime::format_duration(s.settings.interval),
        s.next_window,
        humantime::format_duration(age)
    );
    let _ = writeln!(
        out,
        "leader:   {}{}",
        view.leader.as_deref().unwrap_or("none"),
        view.replica
            .as_deref()
            .map(|r| format!(" (answered by {r})"))
            .unwrap_or_default()
    );
    let verdicts: Vec<&HistoryEntry> = view
        .history
        .iter()
        .filter(|e| e.rollout_id == s.id)
        .collect();
    if verdicts.is_empty() {
        out.push_str("last verdicts: none yet\n");
    } else {
        out.push_str("last verdicts:\n");
        for e in verdicts {
            let _ = writeln!(out, "  {}", entry_line(e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(keys: &[(&'static str, &str)]) -> StartFlags {
        StartFlags {
            keys: keys.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    #[test]
    fn steps_are_validated_naming_the_value() {
        let s = apply_flags(
            RolloutSettings::default(),
            &flags(&[("steps", "5, 10,25%,100")]),
        )
        .expect("valid");
        assert_eq!(
            s.steps,
            [5, 10, 25, 100]
                .map(|p| Percent::from_basis_points(p * 100))
                .to_vec()
        );
        for (bad, named) in [
            ("5,150", "150"),
            ("10,5", "5"),
            ("5,5", "5"),
            ("5,,10", "``"),
            ("five", "five"),
        ] {
            let e = apply_flags(RolloutSettings::default(), &flags(&[("steps", bad)]))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("--steps") && e.contains(named), "{bad}: {e}");
        }
        let many: Vec<String> = (0..=crate::config::MAX_ROLLOUT_STEPS)
            .map(|i| format!("{}", i as f64 / 2.0 + 0.5))
            .collect();
        let e = apply_flags(
            RolloutSettings::default(),
            &flags(&[("steps", &many.join(","))]),
        )
        .expect_err("too many");
        assert!(e.to_string().contains("--steps"), "{e}");
    }

    #[test]
    fn start_flags_override_the_config_and_are_bounded() {
        let base = RolloutSettings {
            threshold: 7,
            ..RolloutSettings::default()
        };
        let s = apply_flags(
            base,
            &flags(&[
                ("steps", "10"),
                ("interval", "2s"),
                ("windows_per_step", "2"),
                ("min_requests", "9"),
                ("max_inconclusive", "4"),
                ("hard_fail_errors", "3"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.steps, vec![Percent::from_basis_points(1000)]);
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.windows_per_step, 2);
        assert_eq!(s.threshold, 7, "unset flags keep the config's value");
        assert_eq!(
            (s.min_requests, s.max_inconclusive, s.hard_fail_errors),
            (9, 4, 3)
        );

        for (key, value, named) in [
            ("interval", "10ms", "--interval: must be at least 100ms"),
            ("interval", "30", "--interval: `30` has no unit"),
            ("threshold", "0", "--threshold: must be 1..=10000, got 0"),
            (
                "windows_per_step",
                "10001",
                "--windows-per-step: must be 1..=10000",
            ),
            (
                "max_inconclusive",
                "x",
                "--max-inconclusive: `x` is not a whole number",
            ),
            (
                "hard_fail_errors",
                "0",
                "--hard-fail-errors: must be at least 1",
            ),
            ("steps", "", "--steps"),
        ] {
            let e = apply_flags(RolloutSettings::default(), &flags(&[(key, value)]))
                .expect_err(named)
                .to_string();
            assert!(e.contains(named), "{e}");
        }
    }

    /// Every key the admin endpoint's start takes is a `ctl rollout start` flag.
    #[test]
    fn ctl_start_has_a_flag_for_every_admin_key() {
        use clap::{CommandFactory, Parser};
        let names = crate::rollout::start_key_names();
        let cli = crate::cli::Cli::command();
        let start = cli
            .find_subcommand("ctl")
            .and_then(|c| c.find_subcommand("rollout"))
            .and_then(|c| c.find_subcommand("start"))
            .expect("ctl rollout start");
        for key in &names {
            let long = key.replace('_', "-");
            assert!(
                start.get_arguments().any(|a| a.get_long() == Some(&long)),
                "no --{long}"
            );
        }
        let mut argv = vec!["canary-lb".to_string(), "ctl".into(), "rollout".into()];
        argv.push("start".into());
        for key in names.iter().rev() {
            argv.push(format!("--{}", key.replace('_', "-")));
            argv.push("1".into());
        }
        let cli = crate::cli::Cli::try_parse_from(argv).expect("every flag");
        let crate::cli::Command::Ctl(ctl) = cli.command else {
            panic!("not ctl");
        };
        let crate::cli::CtlCommand::Rollout(rollout) = ctl.command else {
            panic!("not rollout");
        };
        let RolloutCommand::Start(all) = rollout.command else {
            panic!("not start");
        };
        let keys: Vec<&str> = all.keys().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, names);
    }

    const SALT: &str = "unit-test-distinctive-salt";

    fn view() -> View {
        let mut state = RolloutState::start(
            "r-1".into(),
            RolloutSettings::default(),
            SALT.into(),
            1_000,
            None,
        )
        .expect("start");
        state.step = 1;
        state.weight = Percent::from_basis_points(1000);
        state.failed = 1;
        state.next_window = 4;
        let entry = HistoryEntry {
            rollout_id: "r-1".into(),
            window: Some(3),
            at_ms: 91_000,
            verdict: "fail".into(),
            reasons: vec!["canary error rate 4.1 % > 1 %".into()],
            numbers: vec![
                ("canary_requests".into(), 120.0),
                ("canary_error_percent".into(), 4.1666),
            ],
            phase: Phase::Progressing,
            step: 1,
            weight: state.weight,
        };
        let mut old = entry.clone();
        old.rollout_id = "r-0".into();
        View::new(
            Some(&state),
            vec![old, entry],
            Some("host-1-ab12".into()),
            None,
        )
    }

    #[test]
    fn status_shows_phase_weight_step_checks_leader_and_verdicts() {
        let text = format_view(&view(), 121_500);
        for needle in [
            "rollout r-1: progressing (started)",
            "weight:   10 %  step 2/5 of [5, 10, 25, 50, 100]",
            "failed 1/3",
            "interval 30s, next to judge 4, started 2m ago",
            "leader:   host-1-ab12",
            "window 3",
            "fail",
            "canary error rate 4.1 % > 1 %",
            "canary_requests=120 canary_error_percent=4.167",
            "1970-01-01T00:01:31Z  window 3",
            &format!("salt:     fingerprint {}", salt_fingerprint(SALT)),
        ] {
            assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
        }
        assert!(!text.contains(SALT), "the salt in clear:\n{text}");
        let json = serde_json::to_string(&view()).expect("json");
        assert!(!json.contains(SALT), "the salt in clear: {json}");
        assert_eq!(
            text.matches("window 3").count(),
            1,
            "only this rollout's verdicts:\n{text}"
        );
        let none = format_view(
            &View {
                state: None,
                history: Vec::new(),
                leader: None,
                replica: None,
            },
            0,
        );
        assert!(none.contains("no rollout"), "{none}");
    }

    #[test]
    fn the_view_reads_the_admin_endpoints_json() {
        let v = view();
        let json = serde_json::to_string(&View {
            replica: Some("me".into()),
            ..v.clone()
        })
        .expect("json");
        let back: View = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.state, v.state);
        assert_eq!(back.replica.as_deref(), Some("me"));
        let minimal: View =
            serde_json::from_str(r#"{"state": null, "history": [], "leader": null}"#)
                .expect("parse");
        assert!(minimal.state.is_none());
    }
}
