//! Where the servers of each pool come from.

pub mod redis;
