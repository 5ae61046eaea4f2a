//! Faults of the PostgreSQL tier, on a PostgreSQL of the test's own (initdb + pg_ctl into a
//! temporary directory, on a spare port) so that stopping it leaves the machine's server running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::support::{Api, TestServer, batch, post_delta, test_config};

/// A PostgreSQL cluster owned by this test, run as the `postgres` user (initdb refuses root).
struct OwnPostgres {
    _directory: TempDir,
    data: PathBuf,
    port: u16,
}

/// Where Debian keeps the server binaries.
fn pg_binary(name: &str) -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin").join(name))
                .filter(|path| path.exists())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    versions
        .into_iter()
        .max()
        .unwrap_or_else(|| PathBuf::from(name))
}

fn as_postgres(binary: &str, arguments: &[&str]) -> std::process::Output {
    let mut command = if nix_is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(pg_binary(binary));
        command
    } else {
        Command::new(pg_binary(binary))
    };
    command
        .args(arguments)
        .output()
        .expect("the PostgreSQL tools run")
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

impl OwnPostgres {
    /// `None` (with the reason printed) where PostgreSQL's tools are missing, unless `CI=true`.
    fn start() -> Option<Self> {
        if !pg_binary("initdb").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL's initdb is missing and CI=true"
            );
            eprintln!("SKIPPED: PostgreSQL server binaries not found under /usr/lib/postgresql");
            return None;
        }
        let directory = TempDir::new().unwrap();
        let data = directory.path().join("cluster");
        // The postgres user must own the cluster and reach it through the temporary directory.
        let chmod = Command::new("chmod")
            .args(["755"])
            .arg(directory.path())
            .status()
            .unwrap();
        assert!(chmod.success());
        if nix_is_root() {
            std::fs::create_dir(&data).unwrap();
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&data)
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let data_text = data.to_string_lossy().into_owned();
        let initdb = as_postgres(
            "initdb",
            &[
                "-D",
                &data_text,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let postgres = Self {
            _directory: directory,
            data,
            port,
        };
        postgres.run();
        Some(postgres)
    }

    fn run(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.display()
        );
        let started = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-l",
            ]
            .iter()
            .copied()
            .chain([self.log().as_str(), "start"])
            .collect::<Vec<_>>(),
        );
        assert!(
            started.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }

    fn log(&self) -> String {
        self.data.join("server.log").to_string_lossy().into_owned()
    }

    fn stop(&self) {
        let stopped = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            stopped.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

fn server_config(directory: &Path, postgres: &OwnPostgres) -> hitcount_aggregator::config::Config {
    let mut config = test_config(directory);
    config.database_url = Some(postgres.url());
    config
}

/// PostgreSQL stopped: deltas and direct hits get 503 with Retry-After and are not applied;
/// when it returns the aggregator recovers by itself, the retried delta is applied once, and the
/// total equals exactly what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_gives_503_and_the_aggregator_recovers_by_itself() {
    let Some(postgres) = OwnPostgres::start() else {
        return;
    };
    let directory = TempDir::new().unwrap();
    let server = TestServer::start_with(server_config(directory.path(), &postgres)).await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let first = batch(0, &[("home", 5, &["a", "b"])]);
    assert_eq!(post_delta(&server, &first).await.0, StatusCode::OK);

    postgres.stop();
    let second = batch(1, &[("home", 7, &["c"])]);
    let (status, value) = post_delta(&server, &second).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert_eq!(value["error"]["code"], "unavailable");
    let hit = api
        .server
        .client
        .post(server.url("/hits"))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .json(&json!({"resource_id": "home", "visitor_id": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(hit.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(hit.headers().contains_key("retry-after"));
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    postgres.run();
    // The edge retries as it would; the pool reconnects on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, value) = post_delta(&server, &second).await;
        if status == StatusCode::OK {
            assert_eq!(value["status"], "applied", "{value}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {status} {value}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly the acknowledged deltas: 5 + 7; the 503 hit was never acknowledged.
    assert_eq!(api.count("home", "5m").await, (12, 3));
    for delta in [&first, &second] {
        let (status, value) = post_delta(&server, delta).await;
        assert_eq!(
            (status, value["status"].as_str()),
            (StatusCode::OK, Some("duplicate"))
        );
    }
    assert_eq!(api.count("home", "5m").await, (12, 3));
    drop(api);
    server.stop().await;
}
