//! A Cosmos DB for NoSQL server for tests: `tests/cosmos-server` (`@vercel/cosmosdb-server`, an
//! independent implementation of the protocol, behind a small launcher), one process and one
//! empty in-memory account per [`CosmosServer`].

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::under_ci;

/// The account key tests sign with: the Cosmos DB emulator's published key (the test server
/// checks no signature, the SDK needs a key to sign with).
pub const COSMOS_TEST_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// A running test server; stopped when dropped.
#[derive(Debug)]
pub struct CosmosServer {
    child: Child,
    /// `http://127.0.0.1:PORT/`.
    pub endpoint: String,
}

fn server_directory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cosmos-server")
}

impl CosmosServer {
    /// Starts a server, installing its npm packages first if they are missing (`npm ci`). Where
    /// Node.js is missing it skips the test, printing why; under `CI=true` it fails instead.
    pub fn start_or_skip() -> Option<Self> {
        match Self::start() {
            Ok(server) => Some(server),
            Err(reason) if under_ci() => {
                panic!("the Cosmos DB test server did not start and CI=true: {reason}")
            }
            Err(reason) => {
                eprintln!("SKIPPED: the Cosmos DB test server did not start: {reason}");
                None
            }
        }
    }

    fn start() -> Result<Self, String> {
        let directory = server_directory();
        // Tests run in parallel: one installs, the others wait for it.
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let installing = INSTALL.lock().unwrap_or_else(|poison| poison.into_inner());
        if !directory
            .join("node_modules/@vercel/cosmosdb-server")
            .exists()
        {
            let installed = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&directory)
                .stdout(Stdio::null())
                .status()
                .map_err(|error| format!("npm: {error}"))?;
            if !installed.success() {
                return Err(format!("npm ci in {} failed", directory.display()));
            }
        }
        drop(installing);
        let mut child = Command::new("node")
            .args(["launch.mjs", "0"])
            .current_dir(&directory)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("node: {error}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|error| error.to_string())?;
        let port = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("the launcher said {line:?}"))?;
        Ok(Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for CosmosServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test server's fault injection did (`GET /__faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Requests still to be throttled.
    pub throttle: u64,
    /// Requests answered 429 so far.
    pub throttled: u64,
}

impl CosmosServer {
    /// Answers the next `requests` requests 429 with `x-ms-retry-after-ms: retry_after_ms`.
    pub async fn throttle(&self, requests: u64, retry_after_ms: u64) -> Faults {
        self.fault_control(&format!(
            "__faults/throttle?requests={requests}&retry_after_ms={retry_after_ms}"
        ))
        .await
    }

    /// Serves `after` more requests, then answers the `requests` after them 429: an operation
    /// of several requests fails midway once the store's retries are spent.
    pub async fn throttle_after(&self, after: u64, requests: u64) -> Faults {
        self.fault_control(&format!(
            "__faults/throttle?after={after}&requests={requests}&retry_after_ms=1"
        ))
        .await
    }

    /// What the fault injection did so far.
    pub async fn faults(&self) -> Faults {
        self.fault_control("__faults").await
    }

    async fn fault_control(&self, path: &str) -> Faults {
        let body: serde_json::Value = reqwest::Client::new()
            .post(format!("{}{path}", self.endpoint))
            .send()
            .await
            .expect("the test server answers")
            .json()
            .await
            .expect("JSON");
        Faults {
            throttle: body["throttle"].as_u64().unwrap_or_default(),
            throttled: body["throttled"].as_u64().unwrap_or_default(),
        }
    }
}
