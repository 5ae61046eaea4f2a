//! The aggregator on Azure Cosmos DB for NoSQL (the test server, `tests/cosmos-server`): the
//! real binary started with `--cosmos-endpoint`, through restarts, a SIGKILL and a second
//! aggregator on the same database.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tempfile::TempDir;

use crate::support::{Api, BinaryServer, CosmosServer, batch, cosmos_flags, post_delta};

/// Waits until `resource_id` counts `expected` hits on `server`, failing after 10 s (many fold
/// intervals); a count above it fails at once.
async fn counts_eventually(server: &BinaryServer, resource_id: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (count, _) = Api::admin(&server.handle()).count(resource_id, "1h").await;
        assert!(count <= expected, "{count} counted, {expected} sent");
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} counted, {expected} sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two aggregators on one Cosmos DB database: a batch is applied once whichever receives it
/// (the second delivery, to the other one, is a duplicate), each counts its own batches at once
/// and the other's once folded, and a restart resumes its fold stream.
#[tokio::test]
async fn two_aggregators_on_one_cosmos_db_count_each_batch_once() {
    let Some(cosmos) = CosmosServer::start_or_skip() else {
        return;
    };
    let directory = TempDir::new().unwrap();
    let flags = cosmos_flags(&cosmos, directory.path(), "two-aggregators");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (first_dir, second_dir) = (directory.path().join("a"), directory.path().join("b"));
    let first = BinaryServer::start(&first_dir, &flags).await;
    Api::admin(&first.handle()).create_resource("home").await;
    let second = BinaryServer::start(&second_dir, &flags).await;

    let one = batch(0, &[("home", 3, &["v1"])]);
    let (status, value) = post_delta(&first.handle(), &one).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("applied"))
    );
    let (status, value) = post_delta(&second.handle(), &one).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    // Read after write on the aggregator that took it; the other once it is folded.
    assert_eq!(Api::admin(&first.handle()).count("home", "1h").await.0, 3);
    counts_eventually(&second, "home", 3).await;

    let two = batch(1, &[("home", 4, &["v2"])]);
    let (status, value) = post_delta(&second.handle(), &two).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("applied"))
    );
    assert_eq!(Api::admin(&second.handle()).count("home", "1h").await.0, 7);
    counts_eventually(&first, "home", 7).await;

    first.terminate().await;
    let first = BinaryServer::start(&first_dir, &flags).await;
    assert_eq!(
        Api::admin(&first.handle()).count("home", "1h").await,
        (7, 2)
    );
    let (status, value) = post_delta(&first.handle(), &two).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    second.terminate().await;
    first.terminate().await;
}

/// Every acknowledged hit and delta survives a SIGKILL mid-ingest on Cosmos DB: the restarted
/// process resumes its fold stream (named in its data directory) and folds what the killed one
/// left before it serves (the scenario of `durability.rs`).
#[tokio::test]
async fn kill_nine_loses_no_acknowledged_hit_on_cosmos_db() {
    let Some(cosmos) = CosmosServer::start_or_skip() else {
        return;
    };
    let directory = TempDir::new().unwrap();
    let flags = cosmos_flags(&cosmos, directory.path(), "kill-nine");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    crate::durability::kill_nine_scenario(&flags).await;
}

/// `--migrate-only` on Cosmos DB (the deployment's migration Job): creates the database and its
/// three containers and exits 0 without serving, and takes no fold stream (a Job that ran once
/// must leave no stream for the aggregators to take over).
#[tokio::test]
async fn migrate_only_creates_the_containers_and_exits_without_serving() {
    let Some(server) = CosmosServer::start_or_skip() else {
        return;
    };
    let directory = TempDir::new().unwrap();
    let settings = hitcount_aggregator::store::CosmosSettings {
        endpoint: server.endpoint.clone(),
        key: hitcount_test_support::COSMOS_TEST_KEY.to_owned(),
        database: "migrated".to_owned(),
        stream: None,
    };
    let client = hitcount_aggregator::store::cosmos_client(&settings)
        .await
        .unwrap();
    let database = client.database_client("migrated");
    assert!(database.read(None).await.is_err(), "no database yet");
    let flags = cosmos_flags(&server, directory.path(), "migrated");
    crate::support::migrate_only(&flags, directory.path()).await;
    for container in ["counts", "inbox", "catalog"] {
        // The client resolves the container's metadata: an error says it does not exist.
        let found = database.container_client(container, None).await;
        assert!(found.is_ok(), "{container} created: {:?}", found.err());
    }
    assert!(
        !directory.path().join("cosmos-stream").exists(),
        "no fold stream taken"
    );
}
