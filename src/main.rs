//! The `canary-lb` binary: parse the command line and run the chosen command.

use std::process::ExitCode;

use canary_lb::{cli, control, demo, runtime};
use clap::Parser;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => runtime::serve::serve(args),
        cli::Command::Check { config } => runtime::serve::check(&config),
        cli::Command::Health(args) => control::probe::run(args),
        cli::Command::Demo(args) => demo::run(args),
        cli::Command::App(args) => demo::run_app(args),
        cli::Command::Ctl(args) => control::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canary-lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
