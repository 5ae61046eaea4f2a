//! Restarts, crashes and retention: counts and dedupe state survive, exactly.

use std::time::Duration;

use hitcount_aggregator::now_ms;
use hitcount_aggregator::store::{DAY_MS, HOUR_MS, Tier};
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

use crate::support::{Api, BinaryServer, TestServer, batch, post_delta, test_config};

#[tokio::test]
async fn counts_tokens_and_dedupe_state_survive_a_restart() {
    let directory = TempDir::new().unwrap();
    let server = TestServer::start_with(test_config(directory.path())).await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let reader = api.token_with(&["read"]).await;
    let delta = batch(0, &[("home", 7, &["a", "b"])]);
    assert_eq!(post_delta(&server, &delta).await.0, StatusCode::OK);
    api.post("/hits", json!({"resource_id": "home", "visitor_id": "c"}))
        .await;
    drop(api);
    server.stop().await;

    let server = TestServer::start_with(test_config(directory.path())).await;
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
/// replaying every delta after the restart changes nothing.
#[tokio::test]
async fn kill_nine_loses_no_acknowledged_hit() {
    kill_nine_scenario(&[]).await;
}

/// The same with the durable inbox, folded only every minute: at the kill every acknowledged
/// hit is in unfolded inbox rows (read until then through the overlay), and the restarted
/// process folds them before it serves.
#[tokio::test]
async fn kill_nine_loses_no_acknowledged_hit_with_the_inbox() {
    kill_nine_scenario(&["--fold-interval-ms", "60000"]).await;
}

async fn kill_nine_scenario(extra: &[&str]) {
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

/// In fast mode 202 comes before commit; SIGTERM still commits everything queued.
#[tokio::test]
async fn graceful_shutdown_flushes_fast_mode_hits() {
    let directory = TempDir::new().unwrap();
    let binary = BinaryServer::start(directory.path(), &["--ack", "fast"]).await;
    let handle = binary.handle();
    let api = Api::admin(&handle);
    api.create_resource("home").await;
    let mut sent = 0;
    for index in 0..200 {
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

#[tokio::test]
async fn retention_keeps_coarse_tiers_and_honours_resource_retention() {
    let server = TestServer::start().await;
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
    // With the durable inbox the server's rows wait for a fold; retention prunes the counters.
    store.fold_inbox(now).await.unwrap();
    let pruned = store.prune(later).await.unwrap();
    assert!(pruned.count_rows >= 4, "{pruned:?}");
    let minute_cells = store
        .cells("home".to_owned(), Tier::Minute, 0, u64::MAX / 2)
        .await
        .unwrap();
    assert!(minute_cells.is_empty());
    let hour_cells = store
        .cells("home".to_owned(), Tier::Hour, 0, u64::MAX / 2)
        .await
        .unwrap();
    assert_eq!(hour_cells.iter().map(|cell| cell.hits).sum::<u64>(), 2);
    let day_cells = store
        .cells("short".to_owned(), Tier::Day, 0, u64::MAX / 2)
        .await
        .unwrap();
    assert!(day_cells.is_empty(), "the one-day resource was purged");
    server.stop().await;
}

/// Compaction folds pending sketches into cells without changing any answer.
#[tokio::test]
async fn sketch_compaction_changes_no_answer() {
    let server = TestServer::start().await;
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
