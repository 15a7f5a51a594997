//! The running process: Pingora's server assembled from the proxy, the admin endpoint and
//! the background tasks, and the signals that reload or stop it.

pub mod admin;
pub mod check;
pub mod listeners;
pub mod rollout_api;
pub mod serve;
pub mod signals;
