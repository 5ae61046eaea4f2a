//! `hitcount-dev` as a user meets it: the real binary, the banner's commands run exactly as
//! printed, and (in CI, `--ignored`) the README's first command on a clean clone with a
//! toolchain that lacks the wasm target.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

mod banner;
mod docs;
mod quickstart;
mod readme;
mod traces;
