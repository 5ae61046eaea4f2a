//! The built `hitcount-dev` on port-0 listeners: its banner's commands work as printed, and the
//! README shows them as the banner prints them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::support::{DevProcess, exercise_banner, readme, workspace_root};

/// The longest window: the second hit is still in the open window when Ctrl-C comes, so only the
/// shutdown's delivery can bring it to the aggregator.
#[test]
fn the_banner_commands_count_show_and_keep_a_hit() {
    let directory = TempDir::new().unwrap();
    let command = format!(
        "exec '{}' --listen 127.0.0.1:0 --aggregator-listen 127.0.0.1:0 --window-ms 10000 --data-dir '{}'",
        env!("CARGO_BIN_EXE_hitcount-dev"),
        directory.path().display()
    );
    exercise_banner(|| {
        DevProcess::start(
            &command,
            &workspace_root(),
            &[("RUST_LOG", "warn")],
            Duration::from_secs(60),
        )
    });
}

#[test]
fn the_readme_shows_the_banner_commands_as_printed() {
    let banner = hitcount_dev::banner(
        "127.0.0.1:8081".parse::<SocketAddr>().unwrap(),
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
        Path::new("./data"),
        "hct_session",
    );
    let readme = readme();
    let mut shown = 0;
    for line in banner.lines() {
        let Some((_, command)) = line.split_once(':') else {
            continue;
        };
        let command = command.trim();
        if !command.starts_with("curl ") || command.contains("Bearer") {
            continue;
        }
        assert!(
            readme.lines().any(|line| line.starts_with(command)),
            "README.md does not show the banner's command `{command}`"
        );
        shown += 1;
    }
    assert_eq!(shown, 2, "the banner's send and read commands");
}
