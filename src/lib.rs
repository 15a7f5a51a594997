//! canary-lb: an edge proxy on Pingora that splits traffic between a `production` and a
//! `canary` pool. The binary (`main.rs`) only parses the command line and calls in here.

pub mod admin;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod discovery;
pub mod edge;
pub mod failure;
pub mod health;
pub mod healthz;
pub mod metrics;
pub mod proxy;
pub mod redis_source;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
