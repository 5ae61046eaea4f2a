//! Every command block of README.md says what runs it, and the blocks that these tests run are
//! run exactly as the README writes them: read from the file, through `bash`, against real
//! servers on the ports the README names.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use hitcount_test_support::ADMIN_TOKEN;
use tempfile::TempDir;

use crate::support::{readme, workspace_root};

/// The README's examples use the default ports 8080 and 8081: one such test at a time.
static DEFAULT_PORTS: Mutex<()> = Mutex::new(());

const MARKER_START: &str = "<!-- commands: ";

/// A fenced block of shell or SQL commands, with the marker line above it.
struct Block {
    marker: Option<String>,
    first_line: usize,
    text: String,
}

fn command_blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        if line == "```sh" || line == "```sql" {
            let marker = lines[..index]
                .iter()
                .rev()
                .find(|line| !line.trim().is_empty())
                .filter(|line| line.starts_with(MARKER_START))
                .map(|line| (*line).to_owned());
            let end = lines[index + 1..]
                .iter()
                .position(|line| *line == "```")
                .map(|offset| index + 1 + offset)
                .expect("every block is closed");
            blocks.push(Block {
                marker,
                first_line: index + 2,
                text: lines[index + 1..end].join("\n"),
            });
            index = end;
        }
        index += 1;
    }
    blocks
}

/// The block whose marker names `test`.
fn block_run_by(test: &str) -> String {
    let tag = format!("run by dev/tests/readme.rs ({test})");
    let mut found = command_blocks(&readme())
        .into_iter()
        .filter(|block| block.marker.as_deref().is_some_and(|m| m.contains(&tag)));
    let block = found.next().unwrap_or_else(|| panic!("no README block says {tag}"));
    assert!(found.next().is_none(), "two README blocks say {tag}");
    block.text
}

#[test]
fn every_command_block_says_what_runs_it() {
    let this_file =
        std::fs::read_to_string(workspace_root().join("dev/tests/readme.rs")).unwrap();
    let blocks = command_blocks(&readme());
    assert!(blocks.len() >= 5, "the README's command blocks were found");
    for block in blocks {
        let line = block.first_line;
        let marker = block
            .marker
            .unwrap_or_else(|| panic!("README.md line {line}: a command block without a `{MARKER_START}... -->` line above it"));
        let said = marker.trim_start_matches(MARKER_START).trim_end_matches(" -->");
        if said.starts_with("not run by tests: ") {
            continue;
        }
        let named = said
            .strip_prefix("run by ")
            .unwrap_or_else(|| panic!("README.md line {line}: say `run by ...` or `not run by tests: why`"));
        // Each named test file exists; a test of this file is named by its function.
        for part in named.split(" and by ") {
            let path = part.split_whitespace().next().unwrap();
            assert!(
                workspace_root().join(path).exists(),
                "README.md line {line}: {path} does not exist"
            );
            if path == "dev/tests/readme.rs" {
                let test = part
                    .split_once('(')
                    .and_then(|(_, rest)| rest.split_once(')'))
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| panic!("README.md line {line}: name the test"));
                assert!(
                    this_file.contains(&format!("fn {test}()")),
                    "README.md line {line}: no test {test} in dev/tests/readme.rs"
                );
            }
        }
    }
}

/// Runs `script` with `bash -e` in its own process group (so that the servers it starts in the
/// background are stopped with it), in `directory`, with `path_first` before `PATH`.
fn run_script(script: &str, directory: &std::path::Path, environment: &[(&str, &str)]) -> String {
    let binaries = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap();
    for binary in ["hitcount-aggregator", "hitcount-edge"] {
        assert!(
            binaries.join(binary).exists(),
            "{binary} is built beside this test (cargo test --workspace builds it)"
        );
    }
    let path = format!(
        "{}:{}",
        binaries.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", script])
        .current_dir(directory)
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .envs(environment.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = format!("-{}", child.id());
    let output = child.wait_with_output().unwrap();
    // The script's background servers are still in its group.
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the README block failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_the_api() {
    let _ports = DEFAULT_PORTS.lock().unwrap_or_else(|poison| poison.into_inner());
    let directory = TempDir::new().unwrap();
    let aggregator = hitcount_test_support::aggregator(
        directory.path(),
        Some("127.0.0.1:8080".parse().unwrap()),
        &[],
    )
    .await;
    let script = block_run_by("using_the_api");
    let output = tokio::task::spawn_blocking(move || {
        run_script(&script, &workspace_root(), &[("HITCOUNT_TOKEN", ADMIN_TOKEN)])
    })
    .await
    .unwrap();
    assert!(!output.contains("\"error\""), "every command succeeded:\n{output}");
    assert!(output.contains("\"accepted\":1"), "{output}");
    assert!(output.contains("\"accepted\":2"), "{output}");
    assert!(output.contains("\"count\":3"), "the three hits are counted:\n{output}");
    assert!(output.contains("\"edge_id\":\"edge-paris\""), "{output}");
    assert!(output.contains("hitcount_http_requests_total"), "{output}");
    assert!(output.contains("\"openapi\""), "{output}");
    aggregator.stop().await;
}

#[test]
fn running_an_edge() {
    let _ports = DEFAULT_PORTS.lock().unwrap_or_else(|poison| poison.into_inner());
    let directory = TempDir::new().unwrap();
    let output = run_script(
        &block_run_by("running_an_edge"),
        directory.path(),
        &[
            ("HITCOUNT_ADMIN_TOKEN", ADMIN_TOKEN),
            ("HITCOUNT_TOKEN", ADMIN_TOKEN),
        ],
    );
    let lowercase = output.to_lowercase();
    assert!(lowercase.contains("x-hitcount-result: counted"), "{output}");
    assert!(lowercase.contains("content-length: 43"), "the pixel:\n{output}");
    assert!(
        output.trim_end().ends_with('}') && output.contains("\"count\":2"),
        "the beacon and the pixel, read back at once:\n{output}"
    );
}
