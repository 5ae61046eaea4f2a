//! Restarts, crashes and retention: counts and dedupe state survive, exactly.

use std::time::Duration;

use hitcount_aggregator::now_ms;
use hitcount_aggregator::store::{DAY_MS, HOUR_MS, Tier};
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::support::{Api, BinaryServer, Server, batch, post_delta, test_config};

#[tokio::test]
async fn counts_tokens_and_dedupe_state_survive_a_restart() {
    let directory = TempDir::new().unwrap();
    let server = Server::start_with(test_config(directory.path())).await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let reader = api.token_with(&["read"]).await;
    let delta = batch(0, &[("home", 7, &["a", "b"])]);
    assert_eq!(post_delta(&server, &delta).await.0, StatusCode::OK);
    api.post("/hits", json!({"resource_id": "home", "visitor_id": "c"}))
        .await;
    drop(api);
    server.stop().await;

    let server = Server::start_with(test_config(directory.path())).await;
    let api = Api::with_token(&server, &reader);
    assert_eq!(api.count("home", "5m").await, (8, 3));
    let (status, value) = post_delta(&server, &delta).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    assert_eq!(api.count("home", "5m").await, (8, 3));
    drop(api);
    server.stop().await;
}

/// Hits answered 202 in durable mode and deltas answered 200 survive SIGKILL at any moment;
/// replaying every delta after the restart changes nothing. In the direct shape (the binary's
/// default is the inbox, below).
#[tokio::test]
async fn kill_nine_loses_no_acknowledged_hit() {
    kill_nine_scenario(&["--fold-interval-ms", "0"]).await;
}

/// The same with the durable inbox, folded only every minute: at the kill every acknowledged
/// hit is in unfolded inbox rows (read until then through the overlay), and the restarted
/// process folds them before it serves.
#[tokio::test]
async fn kill_nine_loses_no_acknowledged_hit_with_the_inbox() {
    kill_nine_scenario(&["--fold-interval-ms", "60000"]).await;
}

pub(crate) async fn kill_nine_scenario(extra: &[&str]) {
    let directory = TempDir::new().unwrap();
    let binary = BinaryServer::start(directory.path(), extra).await;
    let handle = binary.handle();
    let api = Api::admin(&handle);
    api.create_resource("home").await;

    // Hammer the aggregator from several tasks and kill it mid-stream.
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let client = handle.client.clone();
        let url = handle.url("/hits");
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for index in 0..10_000u64 {
                let hits: Vec<_> = (0..10)
                    .map(|hit| json!({"resource_id": "home", "visitor_id": format!("{writer}-{index}-{hit}")}))
                    .collect();
                let response = client
                    .post(&url)
                    .bearer_auth(crate::support::ADMIN_TOKEN)
                    .json(&json!({"hits": hits}))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == StatusCode::ACCEPTED => {
                        acknowledged.fetch_add(10, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    let mut deltas = Vec::new();
    let mut delta_hits = 0;
    for sequence in 0..20 {
        let delta = batch(sequence, &[("home", 3, &["edge-visitor"])]);
        let (status, _) = post_delta(&handle, &delta).await;
        assert_eq!(status, StatusCode::OK);
        delta_hits += 3;
        deltas.push(delta);
    }
    // Read-after-write: every acknowledged delta is counted at once (with the inbox, through
    // the overlay of unfolded rows).
    let (count_before_kill, _) = Api::admin(&handle).count("home", "1h").await;
    assert!(
        count_before_kill >= delta_hits,
        "{count_before_kill} counted"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    binary.kill().await;
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        acknowledged > 0,
        "some hits were acknowledged before the kill"
    );

    let binary = BinaryServer::start(directory.path(), extra).await;
    let handle = binary.handle();
    let api = Api::admin(&handle);
    let (count, _) = api.count("home", "1h").await;
    // Hits in flight at the kill may or may not have been committed (their clients saw no 202),
    // but every acknowledged one must be there, and nothing beyond what was sent.
    assert!(
        count >= acknowledged + delta_hits,
        "{count} counted, {acknowledged} + {delta_hits} acknowledged"
    );
    assert!(
        count <= acknowledged + delta_hits + 8 * 10,
        "{count} counted: more than was ever sent"
    );
    for delta in &deltas {
        let (status, value) = post_delta(&handle, delta).await;
        assert_eq!(
            (status, value["status"].as_str()),
            (StatusCode::OK, Some("duplicate"))
        );
    }
    assert_eq!(api.count("home", "1h").await.0, count);
    binary.terminate().await;
}

/// In fast mode 202 comes before commit; SIGTERM still commits everything queued. The flush
/// interval is the longest allowed, so the hits sent just before SIGTERM reach the database only
/// through the shutdown flush.
#[tokio::test]
async fn graceful_shutdown_flushes_fast_mode_hits() {
    let directory = TempDir::new().unwrap();
    let interval = hitcount_aggregator::config::FLUSH_INTERVAL_MS_MAX.to_string();
    let binary = BinaryServer::start(
        directory.path(),
        &["--ack", "fast", "--flush-interval-ms", &interval],
    )
    .await;
    let handle = binary.handle();
    let api = Api::admin(&handle);
    api.create_resource("home").await;
    let mut sent = 0;
    for index in 0..20 {
        let hits: Vec<_> = (0..50)
            .map(|hit| json!({"resource_id": "home", "visitor_id": format!("{index}-{hit}")}))
            .collect();
        let (status, _) = api.post("/hits", json!({"hits": hits})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        sent += 50;
    }
    binary.terminate().await;

    let binary = BinaryServer::start(directory.path(), &[]).await;
    let handle = binary.handle();
    assert_eq!(Api::admin(&handle).count("home", "1h").await.0, sent);
    binary.terminate().await;
}

/// The README's bound for `--ack fast`: a crash loses at most the hits of one flush interval plus
/// one commit. Hits go in for two seconds, the process is killed with SIGKILL, and every hit
/// answered 202 earlier than the bound before the kill is counted after a restart.
#[tokio::test]
async fn fast_mode_loses_at_most_one_flush_interval_in_a_crash() {
    const FLUSH_INTERVAL_MS: u64 = 200;
    // One commit of a few hundred hits on this machine takes well under this.
    const COMMIT_ALLOWANCE_MS: u64 = 300;
    let directory = TempDir::new().unwrap();
    let interval = FLUSH_INTERVAL_MS.to_string();
    let binary = BinaryServer::start(
        directory.path(),
        &["--ack", "fast", "--flush-interval-ms", &interval],
    )
    .await;
    let handle = binary.handle();
    let api = Api::admin(&handle);
    api.create_resource("home").await;
    // (answered at, hits) for every 202.
    let mut answered: Vec<(std::time::Instant, u64)> = Vec::new();
    let started = std::time::Instant::now();
    let mut index = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let hits: Vec<_> = (0..20)
            .map(|hit| json!({"resource_id": "home", "visitor_id": format!("{index}-{hit}")}))
            .collect();
        let (status, _) = api.post("/hits", json!({"hits": hits})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        answered.push((std::time::Instant::now(), 20));
        index += 1;
    }
    let killed_at = std::time::Instant::now();
    binary.kill().await;
    let sent: u64 = answered.iter().map(|(_, hits)| hits).sum();
    let bound = Duration::from_millis(FLUSH_INTERVAL_MS + COMMIT_ALLOWANCE_MS);
    let safe: u64 = answered
        .iter()
        .filter(|(at, _)| killed_at.duration_since(*at) > bound)
        .map(|(_, hits)| hits)
        .sum();
    assert!(safe > 0, "hits were answered long enough before the kill");

    let binary = BinaryServer::start(directory.path(), &[]).await;
    let handle = binary.handle();
    let counted = Api::admin(&handle).count("home", "1h").await.0;
    assert!(
        (safe..=sent).contains(&counted),
        "{counted} counted after the crash; {safe} were answered more than {bound:?} before it, \
         {sent} in all"
    );
    binary.terminate().await;
}

#[tokio::test]
async fn retention_keeps_coarse_tiers_and_honours_resource_retention() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let (status, _) = api
        .post(
            "/resources",
            json!({"name": "Short", "resource_id": "short", "retention_days": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let three_days_ago = now_ms() - 3 * DAY_MS;
    let hits = json!({"hits": [
        {"resource_id": "home", "visitor_id": "a"},
        {"resource_id": "home", "timestamp": three_days_ago, "visitor_id": "b"},
        {"resource_id": "short", "visitor_id": "a"},
    ]});
    let (status, value) = api.post("/hits", hits).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    // A hit older than its resource's retention is refused rather than silently dropped: 422,
    // since the retention is no part of the request's schema.
    let (status, _) = api
        .post(
            "/hits",
            json!({"resource_id": "short", "timestamp": three_days_ago}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The three-day-old hit skipped the minute tier (already past its 48 h) but is in the others.
    let (_, value) = api.get("/hits/home?window=7d&granularity=hour").await;
    assert_eq!(value["count"], 2);
    assert_eq!(value["uniques"], 2);

    // Run retention as if two days had passed: minute rows go, hour and day rows stay, and the
    // one-day resource loses everything.
    let store = crate::support::open_store(&server.data_dir).await;
    let now = now_ms();
    let later = now + 2 * DAY_MS + HOUR_MS;
    // With the durable inbox the server's rows wait for a fold (by the server itself: on Cosmos
    // DB each aggregator folds its own rows); retention prunes the counters.
    server.fold_inbox().await;
    // Two days on, the maintenance job would have rolled the hours and days up: retention keeps
    // the minutes of an hour that is not.
    store.roll_up(later).await.unwrap();
    let pruned = store.prune(later).await.unwrap();
    // Two minute rows (home's and short's hit now), short's hour and day rows; nothing else.
    assert_eq!(pruned.count_rows, 4, "{pruned:?}");
    let minute_cells = store
        .cells("home".to_owned(), Tier::Minute, 0, u64::MAX / 2, now_ms())
        .await
        .unwrap();
    assert!(minute_cells.is_empty());
    let hour_cells = store
        .cells("home".to_owned(), Tier::Hour, 0, u64::MAX / 2, now_ms())
        .await
        .unwrap();
    assert_eq!(hour_cells.iter().map(|cell| cell.hits).sum::<u64>(), 2);
    let day_cells = store
        .cells("short".to_owned(), Tier::Day, 0, u64::MAX / 2, now_ms())
        .await
        .unwrap();
    assert!(day_cells.is_empty(), "the one-day resource was purged");

    // Hour rows are kept 90 days: at 86 days the older (three days before now) is 89 days old.
    assert_eq!(store.prune(now + 86 * DAY_MS).await.unwrap().count_rows, 0);
    // At 91 days both hour rows are past it; day rows stay.
    assert_eq!(store.prune(now + 91 * DAY_MS).await.unwrap().count_rows, 2);
    let hours_left = store
        .cells("home".to_owned(), Tier::Hour, 0, u64::MAX / 2, now_ms())
        .await
        .unwrap();
    assert!(hours_left.is_empty(), "{hours_left:?}");
    // Day rows of a resource without retention_days are kept forever.
    assert_eq!(
        store.prune(now + 3_650 * DAY_MS).await.unwrap().count_rows,
        0
    );
    let days = store
        .cells("home".to_owned(), Tier::Day, 0, u64::MAX / 2, now_ms())
        .await
        .unwrap();
    assert_eq!(days.iter().map(|cell| cell.hits).sum::<u64>(), 2);
    server.stop().await;
}

/// Rows per tier (minute, hour, day) of one resource.
async fn tier_rows(store: &hitcount_aggregator::store::Store, resource_id: &str) -> [usize; 3] {
    let mut rows = [0; 3];
    for (index, tier) in [Tier::Minute, Tier::Hour, Tier::Day]
        .into_iter()
        .enumerate()
    {
        rows[index] = store
            .cells(resource_id.to_owned(), tier, 0, u64::MAX / 2, now_ms())
            .await
            .unwrap()
            .len();
    }
    rows
}

/// The aggregator's own retention task (not a direct call) deletes what is past retention: rows
/// written as if three and a hundred days ago go within a few seconds of start.
#[tokio::test]
async fn the_retention_task_prunes_by_itself() {
    let directory = TempDir::new().unwrap();
    let server = Server::start_with(test_config(directory.path())).await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let (status, _) = api
        .post(
            "/resources",
            json!({"name": "Short", "resource_id": "short", "retention_days": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    drop(api);
    server.stop().await;

    // Rows from earlier runs: each applied with the clock of its day, so every tier holds them.
    let store = crate::support::open_store(directory.path()).await;
    let now = now_ms();
    for (resource_id, days_ago) in [
        ("home", 0),
        ("home", 3),
        ("home", 100),
        ("short", 0),
        ("short", 3),
    ] {
        let then = now - days_ago * DAY_MS;
        let mut visitors = hitcount_wire::Sketch::new();
        visitors.insert(b"visitor");
        let entry = hitcount_wire::DeltaEntry {
            resource_id: resource_id.to_owned(),
            minute: then / hitcount_wire::MINUTE_MS,
            hits: 1,
            visitors,
        };
        store.apply(vec![entry], None, then).await.unwrap();
        // With the durable inbox, folded on its day too (a fold applies retention as of its
        // own clock).
        store.fold_inbox(then).await.unwrap();
    }
    assert_eq!(tier_rows(&store, "home").await, [3, 3, 3]);
    assert_eq!(tier_rows(&store, "short").await, [2, 2, 2]);

    let mut config = test_config(directory.path());
    config.retention_interval_s = 1;
    let server = Server::start_with(config).await;
    // home loses the minute rows of 3 and 100 days ago and the hour row of 100 days ago; short
    // its minute, hour and day rows of 3 days ago. (Read from the store, not from the metric:
    // every server in this test process adds to the same one.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows = (
            tier_rows(&store, "home").await,
            tier_rows(&store, "short").await,
        );
        if rows == ([1, 2, 3], [1, 1, 1]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the task did not prune: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = Api::admin(&server);
    let (_, value) = api.get("/hits/home?window=365d&granularity=day").await;
    assert_eq!(value["count"], 3, "day rows of home are kept forever");
    let (_, value) = api.get("/hits/home?window=7d&granularity=hour").await;
    assert_eq!(value["count"], 2);
    let (_, value) = api.get("/hits/home?window=48h&granularity=minute").await;
    assert_eq!(value["count"], 1);
    let (_, value) = api.get("/hits/short?window=30d&granularity=day").await;
    assert_eq!(value["count"], 1, "short keeps only today's hit");
    drop(api);
    server.stop().await;
}

/// Compaction folds pending sketches into cells without changing any answer.
#[tokio::test]
async fn sketch_compaction_changes_no_answer() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    for round in 0..5 {
        let hits: Vec<_> = (0..200)
            .map(|index| json!({"resource_id": "home", "visitor_id": format!("v{}", (round * 150 + index) % 700)}))
            .collect();
        let (status, _) = api.post("/hits", json!({"hits": hits})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let before = api.count("home", "5m").await;
    let (_, before_series) = api.get("/hits/home?window=24h&granularity=hour").await;
    let store = crate::support::open_store(&server.data_dir).await;
    // The server's own maintenance task may have folded some rows already; after this call none
    // are left, and a second call has nothing to do.
    store.compact().await.unwrap();
    assert_eq!(store.compact().await.unwrap(), 0);
    assert_eq!(api.count("home", "5m").await, before);
    assert_eq!(before.0, 1_000);
    assert!((before.1 as i64 - 700).abs() <= 17, "{before:?}");
    let (_, after_series) = api.get("/hits/home?window=24h&granularity=hour").await;
    assert_eq!(before_series["series"], after_series["series"]);
    server.stop().await;
}

/// `--migrate-only` (what a deployment's migration job runs before a release takes traffic)
/// brings PostgreSQL's schema up to date and exits 0 without serving.
#[tokio::test]
async fn migrate_only_migrates_the_store_and_exits_without_serving() {
    if !crate::support::postgres_or_skip() {
        return;
    }
    let directory = TempDir::new().unwrap();
    let database = crate::support::postgres_database(directory.path());
    let tables = || {
        let output = std::process::Command::new("psql")
            .arg(&database)
            .args([
                "-At",
                "-c",
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_name IN ('resources', 'hit_counts', 'imports')",
            ])
            .output()
            .expect("psql runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(tables(), "0", "a new database");
    let flags = ["--database-url".to_owned(), database.clone()];
    crate::support::migrate_only(&flags, directory.path()).await;
    assert_eq!(tables(), "3", "migrated");
}

/// PostgreSQL over TLS with the server's certificate checked (`sslmode=verify-full` and a CA
/// file, as Azure Database for PostgreSQL asks for): the aggregator connects and serves, and its
/// connections are encrypted. The machine's PostgreSQL serves TLS with Debian's self-signed
/// certificate for `localhost`, which the test names as the CA.
#[tokio::test]
async fn postgres_is_reached_over_tls_with_its_certificate_checked() {
    if !crate::support::postgres_or_skip() {
        return;
    }
    let server = "postgres://root@127.0.0.1:5432";
    let settings = crate::support::psql(server, "SHOW ssl; SHOW ssl_cert_file");
    let (ssl, certificate) = settings
        .trim()
        .split_once('\n')
        .unwrap_or((settings.trim(), ""));
    if ssl != "on" {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the machine's PostgreSQL serves no TLS and CI=true"
        );
        eprintln!("SKIPPED: the machine's PostgreSQL serves no TLS");
        return;
    }
    let directory = TempDir::new().unwrap();
    let database = crate::support::postgres_database(directory.path());
    let name = database.rsplit('/').next().unwrap().to_owned();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={certificate}",
        database.replace("@127.0.0.1:", "@localhost:")
    );
    let aggregator = BinaryServer::start(directory.path(), &["--database-url", &url]).await;
    Api::admin(&aggregator.handle())
        .create_resource("home")
        .await;
    let encrypted = crate::support::psql(
        server,
        &format!(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE datname = '{name}' AND ssl"
        ),
    );
    assert_ne!(
        encrypted.trim(),
        "0",
        "the aggregator's connections use TLS"
    );
    aggregator.terminate().await;
    // The name is checked: the certificate is for `localhost`, not for 127.0.0.1.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_hitcount-aggregator"))
        .arg("--data-dir")
        .arg(directory.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--database-url")
        .arg(format!("{database}?sslmode=verify-full"))
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("exits within 30 s")
        .expect("the binary runs");
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && log.contains("certificate not valid for name"),
        "{log}"
    );
}
