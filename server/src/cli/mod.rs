//! The `armfleet` command line's parts that talk to a running server.

pub mod bisect;
pub mod client;
