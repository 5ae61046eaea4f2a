//! `hitcount-edge --dev`, the README's first command, as a user runs it: the real binary, a hit
//! sent where it says, read back where it says, and still there after a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::BROWSER;

struct DevProcess {
    child: Child,
    edge: String,
    aggregator: String,
    token: String,
}

/// Starts the binary and reads the addresses and token from what it prints.
fn start(data_dir: &std::path::Path) -> DevProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hitcount-edge"))
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--dev-aggregator-listen",
            "127.0.0.1:0",
            "--window-ms",
            "200",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut edge, mut aggregator, mut token) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("hitcount dev: edge on ") {
            let (edge_url, rest) = rest.split_once(", aggregator on ").unwrap();
            let (aggregator_url, _) = rest.split_once(',').unwrap();
            edge = Some(edge_url.to_owned());
            aggregator = Some(aggregator_url.to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("the REST API:") {
            let bearer = rest.split("Bearer ").nth(1).unwrap();
            token = Some(bearer.split('\'').next().unwrap().to_owned());
            break;
        }
    }
    // Keep the pipe open and drained: a closed one would make the child's next print fail.
    std::thread::spawn(move || lines.for_each(drop));
    DevProcess {
        child,
        edge: edge.expect("the edge address was printed"),
        aggregator: aggregator.expect("the aggregator address was printed"),
        token: token.expect("the session token was printed"),
    }
}

impl DevProcess {
    /// SIGTERM, as Ctrl-C would: the edge delivers its window before the process exits.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "the dev process exited with {exit}");
    }
}

async fn aggregator_count(process: &DevProcess, resource_id: &str) -> u64 {
    let body: Value = Client::new()
        .get(format!(
            "{}/hits/{resource_id}?window=1h",
            process.aggregator
        ))
        .bearer_auth(&process.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_command_counts_a_hit_end_to_end_and_keeps_it() {
    let directory = TempDir::new().unwrap();
    let first = start(directory.path());
    let client = Client::new();
    let response = client
        .post(format!("{}/hit", first.edge))
        .header("user-agent", BROWSER)
        .body(r#"{"resource_id":"home"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // Read-your-writes at the edge sees it at once, counted here or at the aggregator.
    let at_edge: Value = client
        .get(format!("{}/hits/home?window=1h", first.edge))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(at_edge["count"], 1, "{at_edge}");
    // Within a few windows the aggregator has it too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while aggregator_count(&first, "home").await < 1 {
        assert!(
            Instant::now() < deadline,
            "the hit never reached the aggregator"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.stop();

    let second = start(directory.path());
    assert_eq!(aggregator_count(&second, "home").await, 1);
    second.stop();
}
