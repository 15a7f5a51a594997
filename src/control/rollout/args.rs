//! What `ctl rollout` was asked: the subcommand as an action, the start flags over the settings.

use std::time::Duration;

use super::super::CtlError;
use crate::cli::RolloutCommand;
use crate::rollout::{Command, RolloutSettings};

/// `ctl rollout start` flags as given, `(key of rollout:, text)`; checked before connecting
/// and again over the config's section, by the parser the config and the admin endpoint use.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct StartFlags {
    pub(super) keys: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
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

pub(super) fn flag(flag: &str, problem: impl ToString) -> CtlError {
    CtlError::BadFlag {
        flag: flag.to_string(),
        problem: problem.to_string(),
    }
}

pub(super) fn parse_action(command: RolloutCommand) -> Result<Action, CtlError> {
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
pub(super) fn apply_flags(
    base: RolloutSettings,
    flags: &StartFlags,
) -> Result<RolloutSettings, CtlError> {
    base.with_keys(flags.keys.iter().map(|(k, v)| (*k, v.as_str())))
        .map_err(|e| {
            let problem = match &e.value {
                Some(v) => format!("`{v}` {}", e.problem),
                None => e.problem.clone(),
            };
            flag(&e.key.replace('_', "-"), problem)
        })
}
