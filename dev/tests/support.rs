//! What the dev tests share: a `hitcount-dev` process started by any command line, its banner
//! read from its output, the banner's commands, and shell commands run exactly as written.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The workspace root (this crate is `dev/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the workspace, built beside this test binary (`cargo test --workspace` builds
/// every binary into the directory above `deps/`).
pub fn binary_beside_tests(name: &str) -> PathBuf {
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join(name);
    assert!(
        binary.exists(),
        "{name} is built beside this test (cargo test --workspace builds it)"
    );
    binary
}

pub fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("README.md")).unwrap()
}

/// A `hitcount-dev` started through a shell command, in its own process group so that Ctrl-C
/// (SIGINT to the group, as a terminal sends it) reaches cargo and the server alike.
pub struct DevProcess {
    child: Child,
    pub banner: Vec<String>,
}

/// Lines that end the banner.
const BANNER_LAST_LINE: &str = "Ctrl-C stops both and delivers the last window first.)";

impl DevProcess {
    /// Runs `command` through `bash -c` in `directory` with `environment`, and waits up to
    /// `start_timeout` for the whole banner.
    pub fn start(
        command: &str,
        directory: &Path,
        environment: &[(&str, &str)],
        start_timeout: Duration,
    ) -> Self {
        let mut shell = Command::new("bash");
        shell
            .arg("-c")
            .arg(command)
            .current_dir(directory)
            .envs(environment.iter().copied())
            .stdout(Stdio::piped())
            .process_group(0);
        let mut child = shell.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_sender, lines) = mpsc::channel();
        // Keep the pipe drained for the process's whole life: a closed one would make its next
        // print fail.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Once nobody listens any more, the lines are only drained.
                let _ = lines_sender.send(line);
            }
        });
        let mut banner = Vec::new();
        let deadline = std::time::Instant::now() + start_timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let last = line.trim() == BANNER_LAST_LINE;
                    if line.starts_with("hitcount dev:") || !banner.is_empty() {
                        banner.push(line);
                    }
                    if last {
                        break;
                    }
                }
                Err(error) => {
                    let _ = child.kill();
                    panic!("no banner from `{command}` within {start_timeout:?}: {error}");
                }
            }
        }
        Self { child, banner }
    }

    /// The banner's commands, in order, exactly as printed: every line whose text after its
    /// label starts with `curl `.
    pub fn commands(&self) -> Vec<String> {
        self.banner
            .iter()
            .filter_map(|line| line.split_once(':').map(|(_, rest)| rest.trim()))
            .filter(|command| command.starts_with("curl "))
            .map(str::to_owned)
            .collect()
    }

    /// The banner command that `matches`.
    pub fn command(&self, matches: &str) -> String {
        self.commands()
            .into_iter()
            .find(|command| command.contains(matches))
            .unwrap_or_else(|| panic!("no banner command with {matches:?}: {:?}", self.banner))
    }

    /// Ctrl-C as a terminal sends it: SIGINT to the whole process group. Waits for a clean exit.
    pub fn interrupt(mut self) {
        let group = format!("-{}", self.child.id());
        let status = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "the dev process exited with {exit}");
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        // A failed test must not leave a server holding its ports.
        if let Ok(None) = self.child.try_wait() {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` through `bash -c`, exactly as written; returns its standard output. Fails the
/// test if it exits non-zero.
pub fn run_shell(command: &str) -> String {
    let output = Command::new("bash")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`{command}` failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The banner's whole session, as the README tells a newcomer: send a hit, read it back at
/// once, list the resources, send another, Ctrl-C, start again, and find both delivered.
pub fn exercise_banner(mut start: impl FnMut() -> DevProcess) {
    let first = start();
    let send = first.command("/hit ");
    let read = first.command("/hits/home");
    let rest = first.command("Authorization");
    assert_eq!(run_shell(&send), "", "a counted hit answers 204, no body");
    let count: Value = serde_json::from_str(&run_shell(&read)).unwrap();
    assert_eq!(count["count"], 1, "the first hit shows at once: {count}");
    let resources: Value = serde_json::from_str(&run_shell(&rest)).unwrap();
    let listed = resources.to_string();
    assert!(listed.contains("\"home\""), "{listed}");
    // The second hit is in the open window when Ctrl-C comes.
    assert_eq!(run_shell(&send), "");
    first.interrupt();

    let second = start();
    let count: Value = serde_json::from_str(&run_shell(&second.command("/hits/home"))).unwrap();
    assert_eq!(
        count["count"], 2,
        "Ctrl-C delivered the last window, and the restart kept it: {count}"
    );
    second.interrupt();
}
