//! The hitcount edge as a Spin component (spin-sdk 7, `wasi:http/handler@0.3.0`).
//!
//! Spin gives every request a fresh instance, so nothing can live in guest memory between hits.
//! The window map lives in Redis instead (Spin's Redis interface), and every hit is one atomic
//! Lua script there: no lost updates however many instances run at once. Closed windows are
//! flushed by whichever request comes next, under a Redis lock, as a batch whose identity is
//! deterministic (boot epoch = window length, sequence = window index): a flush that crashed
//! after sending is resent with the same key and the same bytes, and the aggregator counts it
//! once.
//!
//! [`window`] is that logic, plain Rust tested natively; the HTTP service around it exists only
//! for wasm targets.

pub mod window;

#[cfg(target_family = "wasm")]
mod service;
