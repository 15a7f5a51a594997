//! canary-lb: an edge proxy on Pingora that splits traffic between a `production` and a
//! `canary` pool. The binary (`main.rs`) only parses the command line and calls in here.
//! `docs/architecture.md` says what each module is for and which may use which.

pub mod accesslog;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod drain;
pub mod flags;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod proxy;
pub mod rollout;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod store;
pub mod tls;
