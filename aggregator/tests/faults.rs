//! Faults of the PostgreSQL tier, on a PostgreSQL of the test's own (initdb + pg_ctl into a
//! temporary directory, on a spare port) so that stopping it leaves the machine's server running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::support::{Api, Server, batch, metric, post_delta, test_config, wait_for_metric};

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
    config.cosmos = None;
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
    let server = Server::start_with(server_config(directory.path(), &postgres)).await;
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

/// PostgreSQL stopped with the hot tier in front (the seed's "graceful degradation by serving
/// stale cache"): a minute read whose window reaches into the hot tier's hour still answers,
/// from Redis alone, marked `stale`, with every hit acknowledged in that hour, and so do the
/// reads across resources (for at most `STALE_READ_RESOURCES_MAX` of them; a period inside the
/// hour is whole, not stale); a granularity Redis does not hold gets 503, as ingest does; when PostgreSQL returns, answers are whole
/// again and every acknowledged hit is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_reads_answer_from_the_hot_tier_marked_stale() {
    let Some(postgres) = OwnPostgres::start() else {
        return;
    };
    let Some(redis) = OwnRedis::start(None) else {
        return;
    };
    let directory = TempDir::new().unwrap();
    let mut config = server_config(directory.path(), &postgres);
    config.redis_url = Some(format!("redis://127.0.0.1:{}", redis.port));
    let server = Server::start_with(config).await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    wait_for_metric(
        &server,
        "hitcount_hot_tier_rebuilds_total",
        1,
        Duration::from_secs(30),
    )
    .await;
    let first = batch(0, &[("home", 5, &["a", "b"])]);
    assert_eq!(post_delta(&server, &first).await.0, StatusCode::OK);
    let (status, whole) = api.get("/hits/home?window=24h&granularity=minute").await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(
        (whole["count"].as_u64(), whole.get("stale")),
        (Some(5), None)
    );

    postgres.stop();
    // The first read to find the database down, a ranking summed from bucket summaries, waits
    // for the pool, opens the breaker and answers from the hot tier.
    let (status, value) = api.get("/stats/top?window=1h&granularity=minute").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["stale"], true, "{value}");
    assert_eq!(value["total"]["count"], 5, "{value}");
    let second = batch(1, &[("home", 7, &["c"])]);
    let (status, value) = post_delta(&server, &second).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    // The breaker is open: no stale read waits for the pool's timeout. The reads
    // across resources answer the same way: the ranking of every resource (summed from bucket
    // summaries when the database answers), one under a prefix, and a series.
    for path in [
        "/hits/home?window=1h&granularity=minute",
        "/hits/home?window=24h&granularity=minute",
        "/stats/top?window=1h&granularity=minute&series=true",
        "/stats/top?window=24h&granularity=minute&prefix=ho",
        "/stats/series?window=1h&granularity=minute",
    ] {
        let started = Instant::now();
        let (status, value) = api.get(path).await;
        let waited = started.elapsed();
        assert!(
            waited.as_millis()
                < u128::from(hitcount_aggregator::store::POOL_ACQUIRE_TIMEOUT_MS / 2),
            "{path}: a stale read waited {waited:?}"
        );
        assert_eq!(status, StatusCode::OK, "{path}: {value}");
        assert_eq!(value["stale"], true, "{path}: {value}");
        let total = value.get("total").unwrap_or(&value);
        assert_eq!(
            (&total["count"], &total["uniques"]),
            (&json!(5), &json!(2)),
            "{path}: {value}"
        );
    }
    let (status, value) = api.get("/hits/home?window=24h&granularity=hour").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert_eq!(value["error"]["code"], "unavailable");
    assert_eq!(
        metric(
            &server,
            "hitcount_hot_tier_reads_total{served=\"redis_only\""
        )
        .await,
        7,
        "each stale answer is counted, per resource: the first ranking's, the two /hits, the \
         ranking's read and its series' read, the prefix's, the series'"
    );
    assert_eq!(
        metric(&server, "hitcount_database_breaker_opened_total").await,
        1,
        "the breaker opened once for the whole outage"
    );
    let (status, value) = api.get("/stats/top?window=24h").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert_eq!(value["error"]["code"], "unavailable");
    // A period wholly inside the hot tier's hour is whole from Redis: not stale.
    let start_ms = hitcount_aggregator::now_ms() - 30 * 60_000;
    let (status, value) = api
        .get(&format!(
            "/stats/series?start_time={start_ms}&end_time={}&granularity=minute",
            hitcount_aggregator::now_ms()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(
        (&value["count"], value.get("stale")),
        (&json!(5), None),
        "{value}"
    );

    postgres.run();
    let deadline = Instant::now() + Duration::from_secs(30);
    while post_delta(&server, &second).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, value) = api.get("/hits/home?window=24h&granularity=minute").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(
        (value["count"].as_u64(), value.get("stale")),
        (Some(12), None)
    );
    let (status, value) = api.get("/stats/top?window=1h&granularity=minute").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(
        (value["total"]["count"].as_u64(), value.get("stale")),
        (Some(12), None)
    );

    // The hot tier answers a read across resources one read per resource, so for at most
    // STALE_READ_RESOURCES_MAX of them: a ranking of more is 503 saying so, a prefix selecting
    // few enough answers. (In this test, not one of its own: the metrics above are the process's.)
    let limit = hitcount_aggregator::store::STALE_READ_RESOURCES_MAX;
    for index in 0..limit {
        api.create_resource(&format!("r{index:04}")).await;
    }
    let third = batch(2, &[("r0007", 3, &["d"])]);
    assert_eq!(post_delta(&server, &third).await.0, StatusCode::OK);
    postgres.stop();
    let fourth = batch(3, &[("r0007", 1, &["e"])]);
    assert_eq!(
        post_delta(&server, &fourth).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Every resource: `home` and the thousand.
    let (status, value) = api.get("/stats/top?window=1h&granularity=minute").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert_eq!(value["error"]["code"], "stale_read_too_wide");
    let message = value["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "at most {limit} of them, and this one selects {}",
            limit + 1
        )) && message.contains("narrow it with a prefix"),
        "{value}"
    );
    // Hours are never the hot tier's: the number of resources is not what stops that read.
    let (status, value) = api.get("/stats/top?window=24h&granularity=hour").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert_eq!(value["error"]["code"], "unavailable");
    let (status, value) = api
        .get("/stats/top?window=1h&granularity=minute&prefix=r")
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["stale"], true, "{value}");
    assert_eq!(value["total"]["count"], 3, "{value}");
    assert_eq!(value["resources"][0]["resource_id"], "r0007", "{value}");
    drop(api);
    server.stop().await;
}

/// A redis-server of the test's own on a spare port, so that stopping or pausing it leaves the
/// machine's Redis alone.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: Option<u16>) -> Option<Self> {
        let port = port.unwrap_or_else(spare_port);
        Self::spawn(port, &["--port", &port.to_string()])
    }

    /// Serving TLS only, with a certificate for 127.0.0.1 that openssl makes in `directory`;
    /// returns the certificate's path too (the CA a client must trust).
    fn start_tls(directory: &std::path::Path) -> Option<(Self, std::path::PathBuf)> {
        let (certificate, key) = (directory.join("redis.crt"), directory.join("redis.key"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                // A server's certificate, not a CA's: rustls refuses a CA's as the peer's.
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&certificate)
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "{made:?}");
        let port = spare_port();
        let (certificate_text, key_text) =
            (certificate.display().to_string(), key.display().to_string());
        let redis = Self::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &certificate_text,
                "--tls-key-file",
                &key_text,
                "--tls-ca-cert-file",
                &certificate_text,
                "--tls-auth-clients",
                "no",
            ],
        )?;
        Some((redis, certificate))
    }

    fn spawn(port: u16, listen: &[&str]) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "redis-server cannot start and CI=true: {error}"
                );
                eprintln!("SKIPPED: redis-server cannot start ({error})");
                return None;
            }
        };
        let redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn stop(mut self) -> u16 {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.port
    }
}

fn spare_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the README lets a rebuild take once Redis answers again: the maintenance task looks
/// every second, then the rebuild reads and writes the last hour.
const REBUILD_BUDGET: Duration = Duration::from_millis(2_500);

/// The last 24 hours at minute granularity, as a dashboard asks for it: the last hour comes from
/// Redis, the rest from PostgreSQL.
async fn minute_answer(server: &Server) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    let (status, value) = Api::admin(server)
        .get("/hits/home?window=24h&granularity=minute")
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    (value, started.elapsed())
}

/// The minute answer of `server` for the period `answer` covers: a second `window=24h` read may
/// begin in the next minute and cover another period (the test failed so once, its two answers'
/// `end_time`s a minute apart).
async fn answer_for_period_of(server: &Server, answer: &serde_json::Value) -> serde_json::Value {
    let period = &answer["period"];
    let (start, end) = (period["start_time"].as_str(), period["end_time"].as_str());
    let (Some(start), Some(end)) = (start, end) else {
        panic!("an answer without its period: {answer}");
    };
    let (status, value) = Api::admin(server)
        .get(&format!(
            "/hits/home?start_time={start}&end_time={end}&granularity=minute"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value
}

/// The minute answer once the hot tier serves it, within the rebuild budget: a late failure of a
/// call that timed out while Redis was away may ask for one more rebuild first.
async fn answer_served_by_redis(server: &Server) -> serde_json::Value {
    let deadline = Instant::now() + REBUILD_BUDGET;
    loop {
        let served_before = metric(server, "hitcount_hot_tier_reads_total{served=\"redis\"").await;
        let (answer, _) = minute_answer(server).await;
        if metric(server, "hitcount_hot_tier_reads_total{served=\"redis\"").await > served_before {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the hot tier did not serve again within {REBUILD_BUDGET:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a rebuild after the `rebuilds` counted before a fault, within the README's budget.
async fn wait_for_rebuild_after(server: &Server, rebuilds: u64) {
    let name = "hitcount_hot_tier_rebuilds_total";
    wait_for_metric(server, name, rebuilds + 1, REBUILD_BUDGET).await;
}

/// The hot tier answers exactly what PostgreSQL answers; with Redis paused or stopped, ingest
/// goes on and queries fall back to PostgreSQL within the latency budget; when Redis returns
/// (even empty) the tier is rebuilt from PostgreSQL and serves again, still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_tier_matches_postgres_and_survives_redis_faults() {
    if !crate::support::postgres_or_skip() {
        return;
    }
    let directory = TempDir::new().unwrap();
    let database = crate::support::postgres_database(directory.path());
    let mut config = test_config(directory.path());
    config.database_url = Some(database.clone());
    config.cosmos = None;
    // The aggregator starts while Redis is still down, and works on PostgreSQL alone.
    let redis_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    config.redis_url = Some(format!("redis://127.0.0.1:{redis_port}"));
    let hot = Server::start_with(config).await;
    let api = Api::admin(&hot);
    api.create_resource("home").await;
    let (status, value) = api.get("/hits/home?window=1h&granularity=minute").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let Some(redis) = OwnRedis::start(Some(redis_port)) else {
        return;
    };
    // The same database without Redis (started after the resource exists, since servers load
    // resources at start): what every answer must equal.
    let mut plain_config = test_config(directory.path());
    plain_config.database_url = Some(database);
    plain_config.cosmos = None;
    let plain = Server::start_with(plain_config).await;
    wait_for_metric(
        &hot,
        "hitcount_hot_tier_rebuilds_total",
        1,
        Duration::from_secs(30),
    )
    .await;

    let mut acknowledged = 0;
    let mut sequence = 0;
    // A batch of `count` hits by `visitor`, `hours_ago` before now.
    let mut send_at = async |count: u64, visitor: &str, hours_ago: u64| {
        let mut delta = batch(sequence, &[("home", count, &[visitor])]);
        sequence += 1;
        delta.header.window_start_ms -= hours_ago * 3_600_000;
        delta.header.window_end_ms -= hours_ago * 3_600_000;
        delta.entries[0].minute = delta.header.window_start_ms / hitcount_wire::MINUTE_MS;
        let started = Instant::now();
        assert_eq!(post_delta(&hot, &delta).await.0, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "ingest waited for Redis"
        );
        count
    };
    acknowledged += send_at(5, "a", 0).await;
    acknowledged += send_at(3, "b", 0).await;
    // Hits two and five hours ago: outside the hot tier's hour, so every answer below is part
    // Redis, part PostgreSQL.
    acknowledged += send_at(4, "old-a", 2).await;
    acknowledged += send_at(6, "old-b", 5).await;
    let from_redis = answer_served_by_redis(&hot).await;
    hot.fold_inbox().await;
    assert_eq!(from_redis, answer_for_period_of(&plain, &from_redis).await);
    assert_eq!(from_redis["count"], acknowledged);

    // Paused: writes and reads time out, ingest goes on, queries answer from PostgreSQL.
    redis.signal("-STOP");
    // Counted from here: a rebuild cannot finish while Redis is paused, and an earlier phase may
    // have rebuilt more than once (a timed-out call failing late asks for another).
    let rebuilds = metric(&hot, "hitcount_hot_tier_rebuilds_total").await;
    acknowledged += send_at(7, "c", 0).await;
    let (paused, latency) = minute_answer(&hot).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    hot.fold_inbox().await;
    assert_eq!(paused, answer_for_period_of(&plain, &paused).await);
    assert_eq!(paused["count"], acknowledged);
    redis.signal("-CONT");
    wait_for_rebuild_after(&hot, rebuilds).await;
    let (repaired, _) = minute_answer(&hot).await;
    hot.fold_inbox().await;
    assert_eq!(repaired, answer_for_period_of(&plain, &repaired).await);

    // Stopped, then back empty on the same port: rebuilt from PostgreSQL.
    let port = redis.stop();
    let rebuilds = metric(&hot, "hitcount_hot_tier_rebuilds_total").await;
    acknowledged += send_at(11, "d", 0).await;
    let (stopped, latency) = minute_answer(&hot).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert_eq!(stopped["count"], acknowledged);
    let _redis = OwnRedis::start(Some(port)).unwrap();
    wait_for_rebuild_after(&hot, rebuilds).await;
    acknowledged += send_at(13, "e", 0).await;
    let after = answer_served_by_redis(&hot).await;
    hot.fold_inbox().await;
    assert_eq!(after, answer_for_period_of(&plain, &after).await);
    // Exactly what was acknowledged; seven visitors, two of them in PostgreSQL's part only.
    assert_eq!(after["count"], acknowledged);
    assert_eq!(after["uniques"], 7);
    drop(api);
    hot.stop().await;
    plain.stop().await;
}

/// Two aggregators on one PostgreSQL database: a resource created or deleted through one is
/// known to the other within a few seconds (each reloads its resource cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_sharing_a_database_see_each_others_resources() {
    if !crate::support::postgres_or_skip() {
        return;
    }
    let directory = TempDir::new().unwrap();
    let database = crate::support::postgres_database(directory.path());
    let start = || {
        let mut config = test_config(directory.path());
        config.database_url = Some(database.clone());
        config.cosmos = None;
        Server::start_with(config)
    };
    let first = start().await;
    let second = start().await;
    Api::admin(&first).create_resource("shared").await;
    let wait_for = async |expected: StatusCode| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, _) = Api::admin(&second).get("/resources/shared").await;
            if status == expected {
                return;
            }
            assert!(Instant::now() < deadline, "still {status}, not {expected}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_for(StatusCode::OK).await;
    let (status, _) = Api::admin(&first).delete("/resources/shared").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    wait_for(StatusCode::NOT_FOUND).await;
    first.stop().await;
    second.stop().await;
}

/// Redis over TLS (`rediss://`: Azure Cache for Redis serves TLS only), its certificate checked
/// against the system's roots, which `SSL_CERT_FILE` points at the test's own CA: the hot tier is
/// built and answers.
#[tokio::test]
async fn the_hot_tier_reaches_redis_over_tls() {
    if !crate::support::postgres_or_skip() {
        return;
    }
    let directory = tempfile::TempDir::new().unwrap();
    let Some((redis, certificate)) = OwnRedis::start_tls(directory.path()) else {
        return;
    };
    let database = crate::support::postgres_database(directory.path());
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let certificate = certificate.display().to_string();
    let aggregator = crate::support::BinaryServer::start_with_environment(
        directory.path(),
        &["--database-url", &database, "--redis-url", &url],
        &[("SSL_CERT_FILE", &certificate)],
    )
    .await;
    let server = aggregator.handle();
    crate::support::wait_for_metric(
        &server,
        "hitcount_hot_tier_rebuilds_total",
        1,
        Duration::from_secs(30),
    )
    .await;
    Api::admin(&server).create_resource("home").await;
    let reads = "hitcount_hot_tier_reads_total{served=\"redis\"";
    let before = crate::support::metric(&server, reads).await;
    let (status, _) = Api::admin(&server)
        .get("/hits/home?window=1h&granularity=minute")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        crate::support::metric(&server, reads).await > before,
        "Redis over TLS answered the minutes"
    );
    aggregator.terminate().await;
    drop(redis);
}
