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
//!
//! The files: this one `run` (flags, then the backend), `args.rs` the subcommands' arguments
//! and the start flags over the settings, `backend.rs` the two backends executing them,
//! `render.rs` the text of `status` and `history`, `http.rs` the admin endpoint's client.

mod args;
mod backend;
mod http;
// `canary-lb reload` reads the admin port's `/status` with it.

mod render;
#[cfg(test)]
mod tests;

use super::{CtlError, Where, REDIS_TIMEOUT};
use crate::cli::RolloutArgs;
use crate::config::Config;
use crate::store::RolloutStore;

use args::{flag, parse_action, StartFlags};
use backend::{Backend, RedisBackend};

/// What `status` shows: the admin endpoint's `GET /rollout` body, and the same read from
/// Redis; the salt only as its fingerprint, whichever way it was read.
pub use crate::rollout::view::RolloutView as View;

/// `canary-lb ctl rollout ...`: validate, then run against Redis or the admin endpoint.
pub(super) fn run(args: RolloutArgs, at: Where) -> Result<(), CtlError> {
    let action = parse_action(args.command)?;
    let runtime = super::runtime()?;
    let backend = match args.admin {
        Some(url) => {
            if at.redis.is_some() {
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
            let defaults = at
                .config
                .as_ref()
                .map(|p| Config::load(p))
                .transpose()?
                .map(|c| (c.rollout.settings(), c.routing.salt));
            let target = at.resolve()?;
            let coord = RolloutStore::with_endpoint(target.store.clone(), target.redis.endpoint()?)
                .with_timeout(REDIS_TIMEOUT);
            Backend::Redis(Box::new(RedisBackend {
                coord,
                redis: target.redis,
                store: target.store,
                defaults,
            }))
        }
    };
    runtime.block_on(backend.execute(action))
}
