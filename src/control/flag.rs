//! `canary-lb ctl flag set|off|delete|list`: the feature flags in Redis.
//!
//! Values are validated before connecting; `set` and `off` read the stored flag and write it
//! back only if nobody changed it in between (a Lua compare-and-set), so two operators never
//! overwrite each other's change silently. Every write bumps the marker and publishes `flags`.

use crate::cli::FlagCommand;
use crate::config::{check_flag_name, FlagConfig};
use crate::model::{InvalidValue, Percent};
use crate::store::{FlagWriteError, Store};

use super::{connect, CtlError, Where, REDIS_TIMEOUT};

impl From<FlagWriteError> for CtlError {
    fn from(e: FlagWriteError) -> CtlError {
        match e {
            FlagWriteError::Store(e) => CtlError::Store(e),
            other => CtlError::BadArg(other.to_string()),
        }
    }
}

fn bad(flag: &str, problem: impl ToString) -> CtlError {
    CtlError::BadFlag {
        flag: flag.to_string(),
        problem: problem.to_string(),
    }
}

/// `--percent`, in a flag's words (the model's message speaks of the canary percent).
fn flag_percent(text: &str) -> Result<Percent, CtlError> {
    Percent::parse(text).map_err(|e| {
        let problem = match e {
            InvalidValue::Percent(v) => format!("flag percent must be 0..=100, got {v}"),
            _ => format!("flag percent must be a number 0..=100, got `{text}`"),
        };
        bad("percent", problem)
    })
}

/// Run one `ctl flag` command.
pub(super) fn run(command: FlagCommand, at: Where) -> Result<(), CtlError> {
    // Validate before connecting.
    match &command {
        FlagCommand::Set {
            name,
            percent,
            salt,
            allow,
            deny,
        } => {
            check_flag_name(name).map_err(CtlError::BadArg)?;
            percent.as_deref().map(flag_percent).transpose()?;
            let probe = FlagConfig {
                enabled: true,
                percent: Percent::default(),
                salt: salt.clone(),
                allow: allow.clone().unwrap_or_default(),
                deny: deny.clone().unwrap_or_default(),
            };
            probe.check().map_err(|(k, e)| bad(k, e))?;
        }
        FlagCommand::Off { name } | FlagCommand::Delete { name } => {
            check_flag_name(name).map_err(CtlError::BadArg)?;
        }
        FlagCommand::List => {}
    }
    let target = at.resolve()?;
    let mut endpoint = target.redis.endpoint()?;
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let mut conn = connect(&mut endpoint, REDIS_TIMEOUT).await?;
        tokio::time::timeout(REDIS_TIMEOUT, execute(command, &target.store, &mut conn))
            .await
            .map_err(|_| CtlError::Timeout(REDIS_TIMEOUT))?
    })
}

async fn execute(
    command: FlagCommand,
    store: &Store,
    conn: &mut crate::store::Connection,
) -> Result<(), CtlError> {
    match command {
        FlagCommand::Set {
            name,
            percent,
            salt,
            allow,
            deny,
        } => {
            let stored = store.get_flag_raw(conn, &name).await?;
            let old: Option<FlagConfig> = stored
                .as_deref()
                .and_then(|json| crate::store::decode_flag(json.as_bytes()).ok());
            let old = old.as_ref();
            let flag = FlagConfig {
                enabled: true,
                percent: match percent {
                    Some(p) => flag_percent(&p)?,
                    None => old.map(|o| o.percent).unwrap_or_default(),
                },
                salt: salt.or_else(|| old.and_then(|o| o.salt.clone())),
                allow: allow.unwrap_or_else(|| old.map(|o| o.allow.clone()).unwrap_or_default()),
                deny: deny.unwrap_or_else(|| old.map(|o| o.deny.clone()).unwrap_or_default()),
            };
            store
                .set_flag(conn, &name, &flag, Some(stored.as_deref().unwrap_or("")))
                .await?;
            println!(
                "flag {name}: on for {}% of users (salt {}, {} allowed, {} denied)",
                flag.percent.as_f64(),
                if flag.salt.is_some() { "set" } else { "= name" },
                flag.allow.len(),
                flag.deny.len()
            );
        }
        FlagCommand::Off { name } => {
            let Some(stored) = store.get_flag_raw(conn, &name).await? else {
                return Err(CtlError::BadArg(format!("no flag `{name}` in Redis")));
            };
            // A stored flag that does not parse is replaced by an off flag; fields a newer release
            // added are read leniently (store::decode_flag), so they are not lost by accident.
            let mut flag: FlagConfig =
                crate::store::decode_flag(stored.as_bytes()).unwrap_or(FlagConfig {
                    enabled: false,
                    percent: Percent::default(),
                    salt: None,
                    allow: Vec::new(),
                    deny: Vec::new(),
                });
            flag.enabled = false;
            store.set_flag(conn, &name, &flag, Some(&stored)).await?;
            println!("flag {name}: off");
        }
        FlagCommand::Delete { name } => {
            if store.delete_flag(conn, &name).await? {
                println!("flag {name}: deleted");
            } else {
                println!("flag {name}: no such flag (nothing to delete)");
            }
        }
        FlagCommand::List => {
            let flags = store.read_flags(conn).await?;
            if !flags.present {
                println!("no flags in Redis (the proxies use their config file's flags)");
            }
            for (name, f) in &flags.flags {
                println!(
                    "{name}\t{}\t{}%\tsalt {}\tallow {}\tdeny {}",
                    if f.enabled { "on" } else { "off" },
                    f.percent.as_f64(),
                    if f.salt.is_some() { "set" } else { "= name" },
                    f.allow.len(),
                    f.deny.len()
                );
            }
            for p in &flags.problems {
                println!("skipped by the proxies: {}: {}", p.key, p.detail);
            }
        }
    }
    Ok(())
}
