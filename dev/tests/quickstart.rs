//! The README's quickstart on a machine like a newcomer's: a clean clone, a toolchain without
//! the `wasm32-wasip2` target, `RUSTUP_AUTO_INSTALL=0` (as on the CI machines), the README's
//! first command run exactly as the README writes it, and the banner's commands exactly as
//! printed. It builds the release binaries, so it is `#[ignore]`d in `cargo test`; `.ci/run`
//! runs it on its own (`--ignored`).
//!
//! The toolchain is a copy of the one running this test under a rustup home of its own
//! (hard links for the large files; rustup's metadata copied, so changing it leaves the
//! original alone), with the target removed by rustup itself. The build shares CI's target
//! directory (`CARGO_TARGET_DIR`) so that a warm CI stays fast; the build script still checks
//! the new toolchain (it reruns when `RUSTUP_HOME` changes), so the missing target is really met.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{DevProcess, exercise_banner, readme, workspace_root};

const TARGET: &str = "wasm32-wasip2";
/// A cold release build on two cores takes about a quarter of an hour.
const FIRST_START_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// The lines of the first `sh` block under "## Quickstart": the README's two commands.
fn quickstart_commands(readme: &str) -> Vec<String> {
    let quickstart = readme
        .split_once("## Quickstart")
        .expect("README.md has a Quickstart section")
        .1;
    let block = quickstart
        .split_once("```sh\n")
        .expect("the Quickstart has a sh block")
        .1;
    block
        .lines()
        .take_while(|line| *line != "```")
        .map(str::to_owned)
        .collect()
}

/// The block the README marks as run here after the first command.
fn production_build_block(readme: &str) -> String {
    let marker = "<!-- commands: run by dev/tests/quickstart.rs (on the clean clone, after the first command) -->";
    let block = readme
        .split_once(marker)
        .expect("README.md marks its production build block")
        .1
        .split_once("```sh\n")
        .unwrap()
        .1;
    block.split_once("\n```").unwrap().0.to_owned()
}

fn checked(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A rustup home with a copy of the active toolchain, minus the wasm target.
fn toolchain_without_target(home: &Path) -> String {
    let sysroot = PathBuf::from(
        checked(
            Command::new("rustc")
                .args(["--print", "sysroot"])
                .current_dir(workspace_root()),
        )
        .trim(),
    );
    let toolchain = sysroot.file_name().unwrap().to_str().unwrap().to_owned();
    let original_home = sysroot.parent().unwrap().parent().unwrap();
    let copy = home.join("toolchains").join(&toolchain);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    checked(Command::new("cp").arg("-al").arg(&sysroot).arg(&copy));
    // rustup rewrites its metadata when it adds or removes a target: real copies, not links.
    let metadata = copy.join("lib/rustlib");
    for entry in std::fs::read_dir(&metadata).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
    }
    std::fs::copy(
        original_home.join("settings.toml"),
        home.join("settings.toml"),
    )
    .unwrap();
    let installed = rustup_targets(home, &toolchain);
    if installed.lines().any(|line| line == TARGET) {
        checked(
            Command::new("rustup")
                .args(["target", "remove", TARGET, "--toolchain", &toolchain])
                .env("RUSTUP_HOME", home),
        );
    }
    assert!(
        !rustup_targets(home, &toolchain)
            .lines()
            .any(|line| line == TARGET),
        "the copied toolchain still has {TARGET}"
    );
    assert!(
        sysroot.join("lib/rustlib").join(TARGET).exists()
            || !installed.lines().any(|line| line == TARGET),
        "removing the target from the copy must leave the original alone"
    );
    toolchain
}

fn rustup_targets(home: &Path, toolchain: &str) -> String {
    checked(
        Command::new("rustup")
            .args(["target", "list", "--installed", "--toolchain", toolchain])
            .env("RUSTUP_HOME", home),
    )
}

#[test]
#[ignore = "builds release binaries on a clean clone: run by .ci/run with --ignored"]
fn the_readme_quickstart_works_as_written_without_the_wasm_target() {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    // A fixed place, so that a warm CI finds its build again instead of piling up new ones.
    let work = target_dir.join("quickstart");
    if work.exists() {
        std::fs::remove_dir_all(&work).unwrap();
    }
    std::fs::create_dir_all(&work).unwrap();
    let clone = work.join("hitcount");
    checked(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(workspace_root())
            .arg(&clone),
    );
    let home = work.join("rustup");
    let toolchain = toolchain_without_target(&home);
    let home_variable = home.to_str().unwrap().to_owned();

    let commands = quickstart_commands(&readme());
    assert_eq!(
        commands.len(),
        2,
        "the quickstart is two commands: {commands:?}"
    );
    let command = commands[0].clone();
    assert!(
        command.starts_with("cargo run"),
        "the first command: {command}"
    );
    let environment = [
        ("RUSTUP_HOME", home_variable.as_str()),
        ("RUSTUP_AUTO_INSTALL", "0"),
    ];
    let mut first_start = true;
    exercise_banner(|| {
        let timeout = if first_start {
            FIRST_START_TIMEOUT
        } else {
            Duration::from_secs(5 * 60)
        };
        first_start = false;
        let process = DevProcess::start(&command, &clone, &environment, timeout);
        for printed in process.commands() {
            if !printed.contains("Bearer") {
                assert!(
                    readme().lines().any(|line| line.starts_with(&printed)),
                    "the README shows `{printed}` as the banner prints it"
                );
            }
        }
        process
    });
    assert!(
        rustup_targets(&home, &toolchain)
            .lines()
            .any(|line| line == TARGET),
        "the build installed {TARGET} into the toolchain that lacked it"
    );
    // The README's second command is CI's own test command.
    let second = &commands[1];
    assert!(second.starts_with("cargo test --workspace"), "{second}");
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
    let test_command = second.split('#').next().unwrap().trim();
    assert!(
        ci.contains(test_command),
        ".ci/run calls the README's test command `{test_command}`"
    );

    // The production build and `hitcount-dev --help`, as the README writes them.
    let output = Command::new("bash")
        .args([
            "-e",
            "-o",
            "pipefail",
            "-c",
            &production_build_block(&readme()),
        ])
        .current_dir(&clone)
        .envs(environment)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the production build block failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for flag in [
        "--listen",
        "--aggregator-listen",
        "--data-dir",
        "--window-ms",
    ] {
        assert!(
            help.contains(flag),
            "hitcount-dev --help names {flag}: {help}"
        );
    }
    for binary in ["hitcount-aggregator", "hitcount-edge"] {
        assert!(
            target_dir.join("release").join(binary).is_file(),
            "the build left {binary} in the release directory"
        );
    }
}
