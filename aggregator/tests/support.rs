//! Starting aggregators for tests (in-process on port 0, or as the real binary) and speaking its
//! API: JSON requests with tokens, and signed delta batches.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hitcount_aggregator::config::{Config, EdgeKey};
use hitcount_aggregator::{Aggregator, now_ms};
use hitcount_wire::{DeltaBatch, DeltaEntry, DeltaHeader, MINUTE_MS, Sketch};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One admin token for every test binary of the workspace (the shared kit's).
pub use hitcount_test_support::ADMIN_TOKEN;
pub const EDGE_ID: &str = "edge-test";
pub const EDGE_SECRET: &str = "edge-secret-0123456789";

/// Which store the tests run on: the embedded one, or PostgreSQL with `HITCOUNT_TEST_STORE=postgres`
/// (`.ci/run` runs this test binary both ways). On PostgreSQL each data directory gets its own
/// database, named after it, so a restart on the same directory finds the same data.
pub fn database_url_for(data_dir: &Path) -> Option<String> {
    if std::env::var("HITCOUNT_TEST_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    Some(postgres_database(data_dir))
}

fn database_server() -> String {
    std::env::var("HITCOUNT_TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".to_owned())
}

/// True when the machine's PostgreSQL answers; unreachable, it fails the test under `CI=true`
/// and prints why it skips elsewhere.
pub fn postgres_or_skip() -> bool {
    let server = database_server();
    let answered = std::process::Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-At", "-c", "SELECT 1"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !answered {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL at {server} is unreachable and CI=true"
        );
        eprintln!(
            "SKIPPED: PostgreSQL at {server} is unreachable; set HITCOUNT_TEST_DATABASE_SERVER"
        );
    }
    answered
}

/// A database of its own for `data_dir` on the machine's PostgreSQL (created if missing).
pub fn postgres_database(data_dir: &Path) -> String {
    let server = database_server();
    static CLEANED: std::sync::Once = std::sync::Once::new();
    // Databases of an earlier run go first: a test's database must outlive its server (restart
    // tests reopen it), so each run cleans up after the one before.
    CLEANED.call_once(|| {
        let list = psql(
            &server,
            "SELECT datname FROM pg_database WHERE datname LIKE 'hitcount_agg_%'",
        );
        for name in list.lines().map(str::trim).filter(|name| !name.is_empty()) {
            psql(
                &server,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    });
    let suffix: String = data_dir
        .file_name()
        .map(|name| name.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let name = format!("hitcount_agg_{suffix}");
    let exists = psql(
        &server,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
    );
    if exists.trim().is_empty() {
        psql(&server, &format!("CREATE DATABASE {name}"));
    }
    format!("{server}/{name}")
}

/// Runs one SQL command with psql against the `postgres` database of `server`; PostgreSQL being
/// unreachable fails the test (it was asked for explicitly).
fn psql(server: &str, sql: &str) -> String {
    let output = std::process::Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "PostgreSQL at {server} is unreachable or refused {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The store of a test server's data, opened beside the server (for retention and compaction
/// tests that call the store directly).
pub async fn open_store(data_dir: &Path) -> hitcount_aggregator::store::Store {
    use hitcount_aggregator::store::{DurableStore, EmbeddedStore, PgStore, Store};
    // In the suite's inbox run, with the inbox too, so that `fold_inbox` folds the server's rows.
    let inbox = test_config(data_dir).fold_interval_ms > 0;
    let backend: std::sync::Arc<dyn DurableStore> = match database_url_for(data_dir) {
        Some(url) => {
            let store = PgStore::connect(&url).await.expect("PostgreSQL opens");
            std::sync::Arc::new(if inbox { store.with_inbox() } else { store })
        }
        None => {
            let store = EmbeddedStore::open(data_dir).expect("store opens");
            std::sync::Arc::new(if inbox { store.with_inbox() } else { store })
        }
    };
    Store::new(backend)
}

/// Configuration every test server starts from: a known admin token, one configured edge key,
/// and rate limits high enough not to get in the way.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::for_data_dir(data_dir.to_path_buf());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.edge_keys = vec![EdgeKey {
        edge_id: EDGE_ID.to_owned(),
        secret: EDGE_SECRET.as_bytes().to_vec(),
    }];
    config.rate_limit_ip_per_second = 100_000;
    config.rate_limit_token_per_second = 100_000;
    config.database_url = database_url_for(data_dir);
    // CI runs the suite once more with the durable inbox (the aggregator binaries the tests
    // start read the same variable themselves).
    if let Some(interval) = std::env::var("HITCOUNT_FOLD_INTERVAL_MS")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        config.fold_interval_ms = interval;
    }
    config
}

/// An aggregator running in this process on a port-0 listener.
pub struct TestServer {
    pub base: String,
    pub client: Client,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _temporary: Option<TempDir>,
    /// The running aggregator's store (for folding its inbox on demand).
    store: Option<hitcount_aggregator::store::Store>,
}

impl TestServer {
    pub async fn start() -> Self {
        let directory = TempDir::new().expect("temporary directory");
        let config = test_config(directory.path());
        let mut server = Self::start_with(config).await;
        server._temporary = Some(directory);
        server
    }

    pub async fn start_with(config: Config) -> Self {
        let data_dir = config.data_dir.clone();
        let aggregator = Aggregator::start(config).await.expect("aggregator starts");
        let store = Some(aggregator.state().store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(hitcount_aggregator::serve(
            listener,
            aggregator,
            async move {
                let _ = stop.await;
            },
        ));
        Self {
            base: format!("http://{address}"),
            client: Client::new(),
            data_dir,
            shutdown: Some(shutdown),
            task: Some(task),
            _temporary: None,
            store,
        }
    }

    /// Folds the durable inbox now (nothing without it): what a test does before another
    /// aggregator on the same database, which sees this one's deltas once folded, is asked.
    pub async fn fold_inbox(&self) {
        if let Some(store) = &self.store {
            store
                .fold_inbox(hitcount_aggregator::now_ms())
                .await
                .expect("the inbox folds");
        }
    }

    /// Graceful stop; returns the temporary directory (if this server owns one) so a test can
    /// start again on the same data.
    pub async fn stop(mut self) -> Option<TempDir> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stops cleanly");
        }
        self._temporary.take()
    }

    /// A handle for the JSON helpers on a server at `base` that this process does not run.
    pub fn at(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: Client::new(),
            data_dir: PathBuf::new(),
            shutdown: None,
            task: None,
            _temporary: None,
            store: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// The Prometheus text of a server's `/metrics`.
pub async fn metrics_text(server: &TestServer) -> String {
    server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The sum over label sets of the series whose line starts with `prefix` (the shared kit's
/// reading of `/metrics`).
pub async fn metric(server: &TestServer, prefix: &str) -> u64 {
    hitcount_test_support::metric(&server.base, prefix).await
}

pub async fn body(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, value)
}

/// The served `/openapi.json`.
pub async fn openapi_document(server: &TestServer) -> Value {
    let (status, document) = body(
        server
            .client
            .get(server.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    document
}

/// The statuses the document lists for one operation.
pub fn documented_statuses(document: &Value, path: &str, method: &str) -> Vec<u16> {
    document["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not in the document"))
        .keys()
        .map(|status| status.parse().unwrap())
        .collect()
}

/// Asserts the API's error shape and returns its code.
pub fn error_code(value: &Value) -> String {
    let code = value["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {value}"));
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{value}"
    );
    code.to_owned()
}

/// A thin JSON client bound to one server and one token.
pub struct Api<'a> {
    pub server: &'a TestServer,
    pub token: String,
}

impl<'a> Api<'a> {
    pub fn admin(server: &'a TestServer) -> Self {
        Self {
            server,
            token: ADMIN_TOKEN.to_owned(),
        }
    }

    pub fn with_token(server: &'a TestServer, token: &str) -> Self {
        Self {
            server,
            token: token.to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .server
            .client
            .get(self.server.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        body(response).await
    }

    pub async fn post(&self, path: &str, payload: Value) -> (StatusCode, Value) {
        let response = self
            .server
            .client
            .post(self.server.url(path))
            .bearer_auth(&self.token)
            .json(&payload)
            .send()
            .await
            .expect("request");
        body(response).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .server
            .client
            .delete(self.server.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        body(response).await
    }

    pub async fn create_resource(&self, id: &str) {
        let (status, value) = self
            .post("/resources", json!({"name": id, "resource_id": id}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
    }

    pub async fn token_with(&self, scopes: &[&str]) -> String {
        let (status, value) = self
            .post("/tokens", json!({"name": "test", "scopes": scopes}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
        value["token"].as_str().expect("token").to_owned()
    }

    /// Total count for a resource over the last `window`.
    pub async fn count(&self, resource_id: &str, window: &str) -> (u64, u64) {
        let (status, value) = self
            .get(&format!("/hits/{resource_id}?window={window}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        (
            value["count"].as_u64().expect("count"),
            value["uniques"].as_u64().expect("uniques"),
        )
    }
}

/// A delta batch for `EDGE_ID` in the current minute.
pub fn batch(sequence: u64, entries: &[(&str, u64, &[&str])]) -> DeltaBatch {
    batch_from(EDGE_ID, 1, sequence, entries)
}

pub fn batch_from(
    edge_id: &str,
    boot_epoch: u64,
    sequence: u64,
    entries: &[(&str, u64, &[&str])],
) -> DeltaBatch {
    let now = now_ms();
    let minute = now / MINUTE_MS;
    let mut list: Vec<DeltaEntry> = entries
        .iter()
        .map(|(resource_id, hits, visitors)| {
            let mut sketch = Sketch::new();
            for visitor in *visitors {
                sketch.insert(visitor.as_bytes());
            }
            DeltaEntry {
                resource_id: (*resource_id).to_owned(),
                minute,
                hits: *hits,
                visitors: sketch,
            }
        })
        .collect();
    list.sort_by(|a, b| {
        (a.resource_id.as_str(), a.minute).cmp(&(b.resource_id.as_str(), b.minute))
    });
    DeltaBatch {
        header: DeltaHeader {
            edge_id: edge_id.to_owned(),
            boot_epoch,
            sequence,
            window_start_ms: now - 1_000,
            window_end_ms: now,
        },
        entries: list,
    }
}

/// Posts raw bytes as a delta, signed by `edge_id` with `secret` at `timestamp_ms`.
pub async fn post_delta_bytes(
    server: &TestServer,
    edge_id: &str,
    secret: &str,
    timestamp_ms: u64,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let response = signed_delta(
        &server.client,
        &server.base,
        edge_id,
        secret,
        timestamp_ms,
        bytes,
    )
    .await
    .expect("request");
    body(response).await
}

/// Sends a signed delta to the aggregator at `base`; `Err` when it is not there (tests that stop
/// aggregators on purpose resend elsewhere).
pub async fn signed_delta(
    client: &Client,
    base: &str,
    edge_id: &str,
    secret: &str,
    timestamp_ms: u64,
    bytes: Vec<u8>,
) -> reqwest::Result<Response> {
    let signature = hitcount_wire::auth::sign(secret.as_bytes(), edge_id, timestamp_ms, &bytes);
    client
        .post(format!("{base}/v1/deltas"))
        .header("content-type", hitcount_wire::auth::DELTA_CONTENT_TYPE)
        .header(hitcount_wire::auth::EDGE_HEADER, edge_id)
        .header(
            hitcount_wire::auth::TIMESTAMP_HEADER,
            timestamp_ms.to_string(),
        )
        .header(hitcount_wire::auth::SIGNATURE_HEADER, signature)
        .body(bytes)
        .send()
        .await
}

pub async fn post_delta(server: &TestServer, batch: &DeltaBatch) -> (StatusCode, Value) {
    post_delta_bytes(
        server,
        EDGE_ID,
        EDGE_SECRET,
        now_ms(),
        batch.encode().expect("encodes"),
    )
    .await
}

/// The real `hitcount-aggregator` binary, for tests that kill it.
pub struct BinaryServer {
    pub child: tokio::process::Child,
    pub base: String,
}

impl BinaryServer {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
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
            // A test that names its database itself (several servers on one) keeps it.
            .args(
                database_url_for(data_dir)
                    .filter(|_| !extra.contains(&"--database-url"))
                    .map(|url| vec!["--database-url".to_owned(), url])
                    .unwrap_or_default(),
            )
            .args(extra)
            .env("RUST_LOG", "info")
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

    /// A `TestServer`-shaped handle for the JSON helpers (no in-process task behind it).
    pub fn handle(&self) -> TestServer {
        TestServer::at(&self.base)
    }
}

/// Asserts that the OpenAPI `document` lists every (path, method, statuses) of `promised`.
pub fn assert_documented(document: &Value, promised: &[(&str, &str, &[u16])]) {
    for (path, method, statuses) in promised {
        let responses = &document["paths"][path][method]["responses"];
        assert!(
            responses.is_object(),
            "{method} {path} is missing from the OpenAPI document"
        );
        for status in *statuses {
            assert!(
                responses.get(status.to_string()).is_some(),
                "{method} {path} lacks {status}"
            );
        }
    }
}
