//! Several aggregators on one PostgreSQL (or one Cosmos DB database) and one Redis key prefix:
//! concurrent ingest through all of them is exact, and so is every answer their shared hot tier
//! gives, through a SIGKILL of one of them mid-run and its restart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hitcount_aggregator::now_ms;
use reqwest::StatusCode;
use tempfile::TempDir;
use tokio::sync::RwLock;

use serde_json::Value;

use crate::support::{
    Api, BinaryServer, CosmosServer, EDGE_ID, EDGE_SECRET, batch_from, cosmos_flags, metric,
    postgres_database, postgres_or_skip, signed_delta,
};

const SENDERS: u64 = 3;
const BATCHES_PER_SENDER: u64 = 200;

/// The base URLs of the running aggregators; a restart replaces one.
type Servers = Arc<RwLock<Vec<String>>>;

/// Posts a signed batch; `None` when the aggregator is not there or does not answer in time.
async fn try_post(
    client: &reqwest::Client,
    base: &str,
    bytes: &[u8],
) -> Option<(StatusCode, Value)> {
    let response = signed_delta(client, base, EDGE_ID, EDGE_SECRET, now_ms(), bytes.to_vec())
        .await
        .ok()?;
    let status = response.status();
    Some((status, response.json().await.ok()?))
}

/// One edge (its own boot epoch): sends its batches in turn, each resent with the same bytes to
/// the next aggregator until acknowledged, some sent twice on purpose. Returns the hits and
/// visitors of every acknowledged batch.
async fn send(servers: Servers, sender: u64) -> (u64, BTreeSet<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut acknowledged_hits = 0;
    let mut visitors = BTreeSet::new();
    let mut target = sender as usize;
    for sequence in 0..BATCHES_PER_SENDER {
        let hits = 1 + (sequence * 7 + sender) % 5;
        let visitor = format!("visitor-{}", (sequence * 13 + sender) % 40);
        let batch = batch_from(
            EDGE_ID,
            1_000 + sender,
            sequence,
            &[("home", hits, &[visitor.as_str()])],
        );
        let bytes = batch.encode().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "batch {sequence} of sender {sender} never acknowledged"
            );
            let base = {
                let servers = servers.read().await;
                servers[target % servers.len()].clone()
            };
            match try_post(&client, &base, &bytes).await {
                Some((StatusCode::OK, value)) => {
                    let status = value["status"].as_str().unwrap().to_owned();
                    assert!(status == "applied" || status == "duplicate", "{value}");
                    acknowledged_hits += hits;
                    visitors.insert(visitor.clone());
                    break;
                }
                // A stopped or restarting aggregator: the next one takes the same bytes.
                _ => {
                    target += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        if sequence % 4 == 0 {
            // A duplicate delivery through another aggregator changes nothing.
            let base = {
                let servers = servers.read().await;
                servers[(target + 1) % servers.len()].clone()
            };
            if let Some((StatusCode::OK, value)) = try_post(&client, &base, &bytes).await {
                assert_eq!(value["status"], "duplicate", "{value}");
            }
        }
        target += 1;
    }
    (acknowledged_hits, visitors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_aggregators_share_one_hot_tier_exactly_through_a_kill() {
    if !postgres_or_skip() {
        return;
    }
    let directory = TempDir::new().unwrap();
    let database = postgres_database(directory.path());
    three_aggregators_through_a_kill(&directory, &["--database-url", &database]).await;
}

/// The same in front of Cosmos DB, where the tier names each batch by its inbox document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_aggregators_share_one_hot_tier_on_cosmos_db_exactly_through_a_kill() {
    let Some(cosmos) = CosmosServer::start_or_skip() else {
        return;
    };
    let directory = TempDir::new().unwrap();
    let flags = cosmos_flags(&cosmos, directory.path(), "shared-hot-tier");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    three_aggregators_through_a_kill(&directory, &flags).await;
}

/// Three aggregators on the store `store_flags` name, sharing one hot tier: the tier is lost
/// twice and one aggregator is killed and restarted while three edges send; then every one
/// answers exactly from Redis.
async fn three_aggregators_through_a_kill(directory: &TempDir, store_flags: &[&str]) {
    let Some(redis_url) = hitcount_test_support::redis_or_skip().await else {
        return;
    };
    let prefix = format!("hitcount-shared-{}", now_ms());
    let mut flags = store_flags.to_vec();
    flags.extend([
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        &prefix,
        "--merge-interval-ms",
        "20",
    ]);
    let data_dirs: Vec<_> = (0..3)
        .map(|index| directory.path().join(format!("a{index}")))
        .collect();
    let first = BinaryServer::start(&data_dirs[0], &flags).await;
    // Created before the others start, so that every one knows the resource from its start.
    Api::admin(&first.handle()).create_resource("home").await;
    let mut processes = vec![first];
    for data_dir in &data_dirs[1..] {
        processes.push(BinaryServer::start(data_dir, &flags).await);
    }
    let servers: Servers = Arc::new(RwLock::new(
        processes
            .iter()
            .map(|process| process.base.clone())
            .collect(),
    ));
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| tokio::spawn(send(Arc::clone(&servers), sender)))
        .collect();
    // Mid-run, the tier is lost twice (its epoch deleted, as a flush or a Redis restart
    // would), so every aggregator has writes refused while others rebuild; and the second
    // aggregator is killed (no shutdown of any kind) and started again.
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        redis::cmd("DEL")
            // The braces are the key's hash tag (see store/hot.rs).
            .arg(format!("{{{prefix}}}:epoch"))
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = processes.remove(1);
    killed.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = BinaryServer::start(&data_dirs[1], &flags).await;
    servers.write().await[1] = restarted.base.clone();
    processes.insert(1, restarted);
    let mut expected_hits = 0;
    let mut expected_visitors = BTreeSet::new();
    for sender in senders {
        let (hits, visitors) = sender.await.unwrap();
        expected_hits += hits;
        expected_visitors.extend(visitors);
    }
    assert!(expected_hits > 0);
    // Every aggregator answers exactly, from its hot tier, within a few seconds of the run.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answers: HashMap<usize, (u64, u64)> = HashMap::new();
    for (index, process) in processes.iter().enumerate() {
        let server = process.handle();
        loop {
            let served_before =
                metric(&server, "hitcount_hot_tier_reads_total{served=\"redis\"").await;
            let (status, value) = Api::admin(&server)
                .get("/hits/home?window=1h&granularity=minute")
                .await;
            assert_eq!(status, StatusCode::OK, "{value}");
            let answer = (
                value["count"].as_u64().unwrap(),
                value["uniques"].as_u64().unwrap(),
            );
            let from_redis = metric(&server, "hitcount_hot_tier_reads_total{served=\"redis\"")
                .await
                > served_before;
            if from_redis && answer.0 == expected_hits {
                answers.insert(index, answer);
                break;
            }
            // A count above the truth is a double count: never acceptable, even briefly.
            assert!(
                answer.0 <= expected_hits,
                "aggregator {index} counts {answer:?}, truth {expected_hits}"
            );
            assert!(
                Instant::now() < deadline,
                "aggregator {index} answered {answer:?} (from Redis: {from_redis}), truth {expected_hits}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (index, (count, uniques)) in answers {
        assert_eq!(count, expected_hits, "aggregator {index}");
        assert_eq!(
            uniques,
            expected_visitors.len() as u64,
            "aggregator {index}"
        );
    }
}

/// Waits until `check` holds, or fails naming `what` after 10 s (two reload periods).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_edge_keys_set_through_one_aggregator_work_through_the_others() {
    if !postgres_or_skip() {
        return;
    }
    let directory = TempDir::new().unwrap();
    let database = postgres_database(directory.path());
    let flags = ["--database-url", database.as_str()];
    let first = BinaryServer::start(&directory.path().join("a"), &flags).await;
    let second = BinaryServer::start(&directory.path().join("b"), &flags).await;
    let (through_first, through_second) = (first.handle(), second.handle());
    let admin = Api::admin(&through_first);
    admin.create_resource("home").await;
    let (status, created) = admin
        .post(
            "/tokens",
            serde_json::json!({"name": "reader", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let (status, key) = admin
        .post(
            "/edge-keys",
            serde_json::json!({"edge_id": "edge-new", "secret": "edge-new-secret-0123456789"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let client = reqwest::Client::new();
    let bytes = batch_from("edge-new", 1, 0, &[("home", 2, &["v"])])
        .encode()
        .unwrap();
    let signed_post = |bytes: Vec<u8>| {
        let client = client.clone();
        let base = through_second.base.clone();
        async move {
            signed_delta(
                &client,
                &base,
                "edge-new",
                "edge-new-secret-0123456789",
                now_ms(),
                bytes,
            )
            .await
            .unwrap()
            .status()
        }
    };
    eventually("the token works through the second aggregator", || async {
        Api::with_token(&through_second, &token)
            .get("/hits/home?window=1h")
            .await
            .0
            == StatusCode::OK
    })
    .await;
    eventually("the edge key works through the second aggregator", || {
        let post = signed_post(bytes.clone());
        async move { post.await == StatusCode::OK }
    })
    .await;
    let token_id = created["id"].as_str().unwrap();
    assert_eq!(
        admin.delete(&format!("/tokens/{token_id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        admin.delete("/edge-keys/edge-new").await.0,
        StatusCode::NO_CONTENT
    );
    eventually(
        "the revoked token is refused by the second aggregator",
        || async {
            Api::with_token(&through_second, &token)
                .get("/hits/home?window=1h")
                .await
                .0
                == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    eventually(
        "the revoked edge key is refused by the second aggregator",
        || {
            let post = signed_post(bytes.clone());
            async move { post.await == StatusCode::UNAUTHORIZED }
        },
    )
    .await;
}
