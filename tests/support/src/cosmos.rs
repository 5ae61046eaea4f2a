//! A Cosmos DB for NoSQL server for tests: `tests/cosmos-server` (`@vercel/cosmosdb-server`, an
//! independent implementation of the protocol, behind a small launcher), one process and one
//! empty in-memory account per [`CosmosServer`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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
        match Self::start(false) {
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

    /// `for_process`: the server stops when this process ends (its launcher exits when its
    /// standard input closes), for the one server a whole test process shares.
    fn start(for_process: bool) -> Result<Self, String> {
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
        let mut launch = Command::new("node");
        launch.args(["launch.mjs", "0"]);
        if for_process {
            launch.arg("--exit-with-stdin").stdin(Stdio::piped());
        }
        let mut child = launch
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
    /// Requests to the account's databases so far (each retry counted).
    pub requests: u64,
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
            requests: body["requests"].as_u64().unwrap_or_default(),
        }
    }
}

/// The Cosmos DB configuration of a test server's data directory with
/// `HITCOUNT_TEST_STORE=cosmos` (`.ci/run` runs the aggregator's suite that way too), else
/// `None`: one test server for the whole test process (started at first use, gone with the
/// process) and a database per data directory, named after it, so a restart on the same
/// directory finds the same data.
pub fn cosmos_config_for(data_dir: &Path) -> Option<hitcount_aggregator::config::CosmosConfig> {
    if std::env::var("HITCOUNT_TEST_STORE").as_deref() != Ok("cosmos") {
        return None;
    }
    static SHARED: std::sync::OnceLock<(CosmosServer, PathBuf)> = std::sync::OnceLock::new();
    let (server, key_file) = SHARED.get_or_init(|| {
        let server = CosmosServer::start(true)
            .unwrap_or_else(|reason| panic!("HITCOUNT_TEST_STORE=cosmos, but: {reason}"));
        let key_file =
            std::env::temp_dir().join(format!("hitcount-cosmos-{}.key", std::process::id()));
        std::fs::write(&key_file, COSMOS_TEST_KEY).expect("the key file is written");
        (server, key_file)
    });
    Some(hitcount_aggregator::config::CosmosConfig {
        endpoint: server.endpoint.clone(),
        key_file: key_file.clone(),
        database: format!("agg-{}", crate::postgres::directory_suffix(data_dir)),
    })
}
