//! The aggregator's integration tests: real HTTP on real sockets against a real embedded store.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

mod api;
mod contract;
mod cosmos;
mod deltas;
mod deltas_fuzz;
mod durability;
mod export;
mod faults;
mod import;
mod oidc;
mod patterns;
mod redis_cluster;
mod secrets;
mod shared_hot_tier;
mod stats;
