//! Shared by the build scripts of `hitcount-edge` and `hitcount-spin-host`: builds one of the
//! workspace's wasm components for `wasm32-wasip2` and copies it into `OUT_DIR`, so that a plain
//! `cargo build` needs no manual wasm step.
//!
//! A nested cargo with its own target directory (cargo's lock on the outer one is held while a
//! build script runs), held to the workspace's lock file (it downloads only what a fresh machine
//! lacks: wasm-only dependencies such as spin-sdk are not fetched by a host build), and with the
//! outer build's compiler flags and wrappers removed (they are for the host, not wasm).
//!
//! The `wasm32-wasip2` standard library is installed through rustup when the toolchain lacks it,
//! with a warning saying so. `rust-toolchain.toml` names the target, but rustup adds it only
//! when it installs the toolchain itself, and never with `RUSTUP_AUTO_INSTALL=0`: without this,
//! the README's first command failed after ten minutes of building on a machine with the usual
//! stable toolchain (see ARCHITECTURE.md for why this and not a checked-in component).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the components are built for.
pub const COMPONENT_TARGET: &str = "wasm32-wasip2";

/// The sysroot of the compiler cargo uses for this build.
fn sysroot() -> Option<PathBuf> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn target_installed(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(COMPONENT_TARGET)
        .join("lib")
        .is_dir()
}

/// Installs the component target through rustup if the compiler's sysroot lacks it. A toolchain
/// not managed by rustup (a distribution's rustc) gets the instructions instead.
fn ensure_target() {
    let Some(sysroot) = sysroot() else {
        return;
    };
    if target_installed(&sysroot) {
        return;
    }
    // rustup's proxies tell the build which toolchain they picked; install for that one.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    let mut rustup = Command::new("rustup");
    // Its report goes to the build's log, never to cargo's instruction channel (stdout).
    rustup
        .args(["target", "add", COMPONENT_TARGET])
        .stdout(std::io::stderr());
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let status = rustup.status();
    match status {
        Ok(status) if status.success() && target_installed(&sysroot) => println!(
            "cargo:warning=installed the {COMPONENT_TARGET} target through rustup \
             (`rustup target add {COMPONENT_TARGET}`): the edge's counting component is built for it"
        ),
        _ => panic!(
            "the {COMPONENT_TARGET} target is missing from {} and could not be installed through \
             rustup; install it (`rustup target add {COMPONENT_TARGET}`, or your distribution's \
             rust-std for {COMPONENT_TARGET}) and build again",
            sysroot.display()
        ),
    }
}

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
    // A different toolchain (or rustup home) may lack the target: check again.
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=RUSTUP_HOME");
    ensure_target();
    let outer_target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    // One directory per checkout: two clones sharing a target directory (CI's quickstart test
    // builds a clean clone beside the checkout) would otherwise overwrite each other's `.wasm`,
    // and a fresh nested build does not copy its artifact again.
    let checkout = std::fs::canonicalize(&workspace).unwrap_or_else(|_| workspace.clone());
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&checkout, &mut hasher);
    let target_dir = outer_target
        .join("edge-component")
        .join(format!("{:016x}", std::hash::Hasher::finish(&hasher)));
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            COMPONENT_TARGET,
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
        "building {package} for {COMPONENT_TARGET} failed (see the errors above)"
    );
    let file = format!("{artifact}.wasm");
    let built = target_dir
        .join(COMPONENT_TARGET)
        .join("release")
        .join(&file);
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(&file);
    std::fs::copy(&built, &out).expect("copy the component into OUT_DIR");
}
