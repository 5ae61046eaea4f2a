//! The Spin build end to end: the real `.wasm` in a host implementing Spin's interfaces, real
//! Redis, a real aggregator over real sockets.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

mod manifest;
mod spin;
