//! A real `hitcount-aggregator` process on a free port with the embedded store in a temporary
//! directory (its warnings go to the test's stderr), and the few REST calls the tests make.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use hitcount_loadgen::Config;
use serde_json::Value;
use tempfile::TempDir;

pub const ADMIN_TOKEN: &str = "loadgen-test-admin-token-0123";

/// The aggregator binary: `HITCOUNT_AGGREGATOR_BIN`, or the one cargo built beside this test
/// (`cargo test --workspace` builds it; `cargo build -p hitcount-aggregator` otherwise).
fn aggregator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HITCOUNT_AGGREGATOR_BIN") {
        return PathBuf::from(path);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|test| Some(test.parent()?.parent()?.join("hitcount-aggregator")))
        .expect("the test binary is in <target>/<profile>/deps");
    assert!(
        beside.exists(),
        "{} is missing: run `cargo build -p hitcount-aggregator --bin hitcount-aggregator` \
         (with the same profile and target directory) or set HITCOUNT_AGGREGATOR_BIN",
        beside.display()
    );
    beside
}

/// Starts the aggregator binary on `port` with its data in `data_dir` (and `extra` flags), and
/// waits until it answers `/readyz`.
pub async fn spawn_ready(
    port: u16,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> tokio::process::Child {
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(aggregator_binary())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--admin-token")
        .arg(ADMIN_TOKEN)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the aggregator binary starts");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|response| response.status().is_success()) {
            return child;
        }
        if let Ok(Some(exit)) = child.try_wait() {
            panic!("the aggregator exited before it was ready: {exit}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the aggregator is not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Aggregator {
    pub base: String,
    client: reqwest::Client,
    _child: tokio::process::Child,
    _data: TempDir,
}

impl Aggregator {
    /// Starts the binary on a free port with its default rate limits, and waits until it
    /// answers `/readyz`.
    pub async fn start() -> Self {
        let data = TempDir::new().expect("temporary directory");
        let port = hitcount_test_support::spare_port();
        let child = spawn_ready(port, data.path(), &[]).await;
        Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            _child: child,
            _data: data,
        }
    }

    /// A loadgen configuration against this aggregator: its defaults, then `extra`.
    pub fn config(&self, extra: &[&str]) -> Config {
        let mut args = vec![
            "hitcount-loadgen",
            "--aggregator",
            &self.base,
            "--admin-token",
            ADMIN_TOKEN,
        ];
        args.extend_from_slice(extra);
        Config::parse_from(args)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
