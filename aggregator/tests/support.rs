//! The aggregator's own part of the test kit: its real binary, which only this crate's tests can
//! name (`CARGO_BIN_EXE_*`). Everything else is the workspace's kit, `hitcount-test-support`.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

pub use hitcount_test_support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Flags that put an aggregator on the Cosmos DB test server's database `database` (its key
/// written to a file in `directory`).
pub fn cosmos_flags(server: &CosmosServer, directory: &Path, database: &str) -> Vec<String> {
    let key_file = directory.join("cosmos.key");
    std::fs::write(&key_file, COSMOS_TEST_KEY).expect("the key file is written");
    flags_of(hitcount_aggregator::config::CosmosConfig {
        endpoint: server.endpoint.clone(),
        key_file,
        database: database.to_owned(),
    })
}

/// The command-line form of a Cosmos DB configuration.
fn flags_of(cosmos: hitcount_aggregator::config::CosmosConfig) -> Vec<String> {
    vec![
        "--cosmos-endpoint".to_owned(),
        cosmos.endpoint,
        "--cosmos-key-file".to_owned(),
        cosmos.key_file.display().to_string(),
        "--cosmos-database".to_owned(),
        cosmos.database,
    ]
}

/// The flags of the store `HITCOUNT_TEST_STORE` names for `data_dir` (none for the embedded one).
fn store_flags(data_dir: &Path) -> Vec<String> {
    if let Some(url) = database_url_for(data_dir) {
        return vec!["--database-url".to_owned(), url];
    }
    cosmos_config_for(data_dir)
        .map(flags_of)
        .unwrap_or_default()
}

/// The real `hitcount-aggregator` binary, for tests that kill it.
pub struct BinaryServer {
    pub child: tokio::process::Child,
    pub base: String,
}

impl BinaryServer {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_environment(data_dir, extra, &[]).await
    }

    /// [`Self::start`] with these environment variables set too.
    pub async fn start_with_environment(
        data_dir: &Path,
        extra: &[&str],
        environment: &[(&str, &str)],
    ) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hitcount-aggregator"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--admin-token")
            .arg(ADMIN_TOKEN)
            .arg("--edge-key")
            .arg(format!("{EDGE_ID}={EDGE_SECRET}"))
            .arg("--rate-limit-ip-per-second")
            .arg("0")
            .arg("--rate-limit-token-per-second")
            .arg("0")
            // A test that names its database itself (several servers on one), or another store,
            // keeps it.
            .args(
                if extra.contains(&"--database-url") || extra.contains(&"--cosmos-endpoint") {
                    Vec::new()
                } else {
                    store_flags(data_dir)
                },
            )
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the aggregator binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                if let Some(rest) = line.split("address=").nth(1) {
                    return rest.trim().to_owned();
                }
            }
            panic!("the aggregator exited before listening");
        })
        .await
        .expect("the aggregator listens within 30 s");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            base: format!("http://{address}"),
        }
    }

    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("pid").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill -TERM");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of SIGTERM")
            .expect("wait");
        assert!(exit.success(), "graceful shutdown exits 0, got {exit}");
    }

    /// A [`Server`] handle for the JSON helpers (no in-process task behind it).
    pub fn handle(&self) -> Server {
        Server::at(&self.base)
    }
}

/// Runs the aggregator binary with `--migrate-only` and `store_flags` on `data_dir`, and checks
/// that it exits 0 within 30 s without ever serving.
pub async fn migrate_only(store_flags: &[String], data_dir: &Path) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hitcount-aggregator"))
        .arg("--migrate-only")
        .args(store_flags)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "info")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("exits within 30 s")
        .expect("the binary runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(!log.contains("listening"), "it never serves: {log}");
}
