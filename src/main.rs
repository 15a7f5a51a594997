//! canary-lb: an edge proxy on Pingora that splits traffic between a `production` and a
//! `canary` pool. This file only wires the modules together; each concern lives in its own.

mod admin;
mod cli;
mod config;
mod ctl;
mod demo;
mod discovery;
mod health;
mod metrics;
mod proxy;
mod redis_source;
mod routing;
mod server;
mod state;
mod store;

use std::process::ExitCode;

use clap::Parser;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => server::serve(args),
        cli::Command::Check { config } => server::check(&config),
        cli::Command::Demo(args) => demo::run(args),
        cli::Command::App(args) => demo::run_app(args),
        cli::Command::Ctl(args) => ctl::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canary-lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
