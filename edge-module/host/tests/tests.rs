//! The edge host end to end: the real component in wasmtime, real HTTP to a real aggregator.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

mod beacons;
mod delivery;
mod limits;
mod proxy;
mod spool;
mod tls;
