//! Shared by the build scripts of `hitcount-edge` and `hitcount-spin-host`: builds one of the
//! workspace's wasm components for `wasm32-wasip2` and copies it into `OUT_DIR`, so that a plain
//! `cargo build` needs no manual wasm step.
//!
//! A nested cargo with its own target directory (cargo's lock on the outer one is held while a
//! build script runs), held to the workspace's lock file (it downloads only what a fresh machine
//! lacks: wasm-only dependencies such as spin-sdk are not fetched by a host build), and with the
//! outer build's compiler flags and wrappers removed (they are for the host, not wasm).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Builds `package` and copies `{artifact}.wasm` to `OUT_DIR`. `watched` are paths relative to
/// the workspace root whose changes must rebuild it.
pub fn build_component(package: &str, artifact: &str, watched: &[&str]) {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    for path in watched
        .iter()
        .chain(&["Cargo.lock", "edge-module/build_component.rs"])
    {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
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
            "--locked",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
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
        "building {package} failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
    let file = format!("{artifact}.wasm");
    let built = target_dir.join("wasm32-wasip2/release").join(&file);
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(&file);
    std::fs::copy(&built, &out).expect("copy the component into OUT_DIR");
}
