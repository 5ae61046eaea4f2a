//! Builds the counting component (`edge-module/component`) for `wasm32-wasip2` so that
//! `cargo build` leaves a `hitcount-edge` with its module embedded: no manual wasm step.
//!
//! A nested cargo with its own target directory (cargo's lock on the outer one is held while this
//! script runs), offline (the outer cargo already resolved and fetched everything), and with the
//! outer build's compiler flags and wrappers removed (they are for the host, not for wasm).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    for watched in [
        "edge-module/component",
        "edge-module/core/src",
        "edge-module/wire/src",
        "edge-module/wit",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let outer_target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let target_dir = outer_target.join("edge-component");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "hitcount-edge-component",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // Small and fast: no debug info, whole-program optimisation.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the edge component failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
    let built = target_dir.join("wasm32-wasip2/release/hitcount_edge_component.wasm");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("hitcount_edge_component.wasm");
    std::fs::copy(&built, &out).expect("copy the component into OUT_DIR");
}
