//! The `canary-lb` binary: parse the command line, run the chosen command, and turn its error
//! into a message and an exit code. The only place that ends the process.
//!
//! Exit codes: 0 success; 1 any failure (bad config or input, Redis unreachable, unhealthy);
//! `ctl replace` adds 2 (NEW never served) and 3 (`--strict`: OLD still busy), carried by
//! [`control::CtlError::exit_code`]; clap's own 2 for a command line it cannot parse.

use std::process::ExitCode;

use canary_lb::{cli, control, demo, runtime};
use clap::Parser;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's built-in options (the `_RJEM_MALLOC_CONF` environment variable still overrides
/// them). Pingora allocates a 64 KiB body buffer for every upstream response; jemalloc's thread
/// cache keeps blocks only up to 32 KiB by default, so each buffer went through the arena's
/// extent code and back, 1,900-2,800 instructions a request (BENCHMARKS.md). Caching blocks up
/// to 64 KiB makes it a cache hit, for at most a few 64 KiB blocks held per thread.
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: Option<&u8> = Some(&JEMALLOC_CONF_TEXT[0]);
#[cfg(not(target_env = "msvc"))]
static JEMALLOC_CONF_TEXT: [u8; 17] = *b"tcache_max:65536\0";

/// The log filter without `RUST_LOG`: canary-lb's own lines from info, Pingora's from warn
/// (its info lines narrate its start and stop service by service). `RUST_LOG=info` shows them.
const DEFAULT_LOG: &str = "info,pingora=warn,pingora_core=warn,pingora_proxy=warn,\
                           pingora_load_balancing=warn,pingora_pool=warn";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG)).init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => {
            runtime::serve::serve(args, exit_drained).map_err(Failure::from)
        }
        cli::Command::Check { config, strict } => {
            runtime::check::run(&config, strict).map_err(Failure::from)
        }
        cli::Command::Health(args) => control::probe::run(args).map_err(Failure::from),
        cli::Command::Demo(args) => demo::run(args, exit_drained).map_err(Failure::from),
        cli::Command::App(args) => demo::run_app(args).map_err(Failure::from),
        cli::Command::Ctl(args) => control::run(args).map_err(Failure::from),
        cli::Command::Reload(args) => control::signal::reload(args).map_err(Failure::from),
        cli::Command::ReopenLogs(args) => control::signal::reopen_logs(args).map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(e) = failure.message {
                eprintln!("canary-lb: {e:#}");
            }
            ExitCode::from(failure.code)
        }
    }
}

/// The SIGTERM drain watchdog's way out once nothing is in flight: Pingora is still sleeping
/// out the grace period on the main thread, so returning is not possible (see
/// `runtime::serve::Assembled::run`).
fn exit_drained() -> ! {
    std::process::exit(0)
}

/// A command that failed: its exit code, and what to print (nothing when the command
/// already said why).
struct Failure {
    code: u8,
    message: Option<anyhow::Error>,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 1,
            message: Some(e),
        }
    }
}

impl From<control::probe::HealthError> for Failure {
    fn from(e: control::probe::HealthError) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<control::CtlError> for Failure {
    fn from(e: control::CtlError) -> Self {
        Failure {
            code: e.exit_code(),
            message: (!e.is_reported()).then(|| e.into()),
        }
    }
}
