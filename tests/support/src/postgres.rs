//! The machine's PostgreSQL for tests: a database per data directory, or a skip (a failure
//! under `CI=true`).

use std::path::Path;

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
    let name = format!("hitcount_agg_{}", directory_suffix(data_dir));
    let exists = psql(
        &server,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
    );
    if exists.trim().is_empty() {
        psql(&server, &format!("CREATE DATABASE {name}"));
    }
    format!("{server}/{name}")
}

/// A data directory's name as lowercase letters and digits: what names its database (on
/// PostgreSQL, and on Cosmos DB with `HITCOUNT_TEST_STORE=cosmos`).
pub(crate) fn directory_suffix(data_dir: &Path) -> String {
    data_dir
        .file_name()
        .map(|name| name.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// Runs one SQL command with psql against the `postgres` database of `server`; PostgreSQL being
/// unreachable fails the test (it was asked for explicitly).
pub fn psql(server: &str, sql: &str) -> String {
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
