//! `cargo bench -p hitcount-aggregator --bench cosmos`: `GET /hits/{id}?window=24h&granularity=minute`
//! with the aggregator on Cosmos DB (the test server, `tests/cosmos-server`, an independent
//! implementation of the protocol in Node.js), beside that server's own rates measured in the
//! same run through Microsoft's SDK: a point read of one count document (the cheapest request
//! there is), the single-partition query of the day's 24 or 25 minute pages (each an hour of
//! minute cells) that a first read makes, and the query of their ETags alone that a read whose
//! pages are held in memory makes (its floor).
//!
//! Needs Node.js (the test server installs itself with `npm ci`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use axum::http::StatusCode;
use futures::TryStreamExt;
use hitcount_aggregator::config::{COSMOS_FOLD_INTERVAL_MS_DEFAULT, Config, CosmosConfig};
use hitcount_aggregator::store::{
    BatchKey, CatalogStore, CosmosSettings, CosmosStore, DurableStore, MergeBatch, ResourceRecord,
    Tier, cosmos_client,
};
use hitcount_aggregator::{Aggregator, now_ms};
use hitcount_bench_support::percentile;
use hitcount_test_support::{COSMOS_TEST_KEY, CosmosServer};
use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};

// The same allocator as the hitcount-aggregator binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const DATABASE: &str = "bench";
const RESOURCE: &str = "r1";
const MINUTES: u64 = 1_440;
const VISITORS_PER_MINUTE: u64 = 20;
const POINT_READS: usize = 2_000;
const QUERIES: usize = 300;
const REQUESTS: usize = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("# hitcount on Cosmos DB (the test server)");
    println!(
        "machine: {}; the test server (Node.js), the aggregator and this client share it",
        hitcount_bench_support::machine()
    );
    runtime.block_on(run());
}

/// Latencies in ms, sorted.
struct Latencies(Vec<f64>);

impl Latencies {
    fn row(&self, name: &str, baseline_p99: f64) -> String {
        let p99 = percentile(&self.0, 0.99);
        format!(
            "| {name} | {:.3} | {p99:.3} | {:.3} | {:.0} | {:.1}x |",
            percentile(&self.0, 0.5),
            self.0[self.0.len() - 1],
            1_000.0 / (self.0.iter().sum::<f64>() / self.0.len() as f64),
            p99 / baseline_p99
        )
    }
}

async fn timed<F, Fut>(count: usize, mut call: F) -> Latencies
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        call().await;
        latencies.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Latencies(latencies)
}

async fn run() {
    let server = CosmosServer::start_or_skip().expect("the Cosmos DB test server starts");
    let directory = tempfile::TempDir::new().unwrap();
    let settings = CosmosSettings {
        endpoint: server.endpoint.clone(),
        key: COSMOS_TEST_KEY.to_owned(),
        database: DATABASE.to_owned(),
        stream: None,
    };
    // A day of minutes of one resource, 20 visitors each, written and folded by a store of its
    // own: 24 or 25 minute pages (an hour of minutes each), as many hour documents, one or two
    // day documents.
    let store = CosmosStore::connect(&settings).await.unwrap();
    store
        .create_resource(ResourceRecord {
            id: RESOURCE.to_owned(),
            name: "Bench".to_owned(),
            retention_days: None,
            created_at_ms: now_ms(),
        })
        .await
        .unwrap();
    let first_minute = now_ms() / MINUTE_MS - (MINUTES - 1);
    let entries: Vec<DeltaEntry> = (0..MINUTES)
        .map(|offset| {
            let mut visitors = Sketch::new();
            for visitor in 0..VISITORS_PER_MINUTE {
                visitors.insert(format!("visitor-{offset}-{visitor}").as_bytes());
            }
            DeltaEntry {
                resource_id: RESOURCE.to_owned(),
                minute: first_minute + offset,
                hits: 3,
                visitors,
            }
        })
        .collect();
    let filled = Instant::now();
    store
        .apply_group(MergeBatch::alone(entries, None), now_ms())
        .await
        .unwrap();
    store.fold_inbox(now_ms()).await.unwrap();
    println!(
        "\nfilled {MINUTES} minutes in {:.1} s (one inbox row, one fold)",
        filled.elapsed().as_secs_f64(),
    );

    // Requests each operation makes, counted by the test server before anything else talks to
    // it: what the request units of the real service follow from.
    let mut costs = Vec::new();
    let batch: Vec<DeltaEntry> = (0..10)
        .map(|offset| {
            let mut visitors = Sketch::new();
            visitors.insert(format!("new-visitor-{offset}").as_bytes());
            DeltaEntry {
                resource_id: RESOURCE.to_owned(),
                minute: first_minute + MINUTES - 10 + offset,
                hits: 1,
                visitors,
            }
        })
        .collect();
    let key = BatchKey {
        edge_id: "edge-bench".to_owned(),
        boot_epoch: 1,
        sequence: 1,
        body_sha256: [1; 32],
    };
    let before = server.faults().await.requests;
    store
        .apply_group(
            MergeBatch::alone(batch.clone(), Some(key.clone())),
            now_ms(),
        )
        .await
        .unwrap();
    costs.push(("a delta batch of 10 cells (one resource)", before));
    let before = server.faults().await.requests;
    store
        .apply_group(MergeBatch::alone(batch, Some(key)), now_ms())
        .await
        .unwrap();
    costs.push(("the same batch again (a duplicate)", before));
    let before = server.faults().await.requests;
    store.fold_inbox(now_ms()).await.unwrap();
    costs.push((
        "the fold of that batch: 1 or 2 minute pages, 1 or 2 hour documents, 1 day document",
        before,
    ));
    for read in [
        "the store's first read of 24 h of minutes (what GET /hits does): the pages' ETags, then the pages",
        "the same read again, no page written since: the ETags only",
    ] {
        let before = server.faults().await.requests;
        let day = store
            .cells(
                RESOURCE.to_owned(),
                Tier::Minute,
                first_minute * MINUTE_MS,
                now_ms(),
                now_ms(),
            )
            .await
            .unwrap();
        assert_eq!(day.len() as u64, MINUTES);
        costs.push((read, before));
    }
    let mut counted = Vec::new();
    for (index, (name, before)) in costs.iter().enumerate() {
        let after = match costs.get(index + 1) {
            Some((_, next)) => *next,
            None => server.faults().await.requests,
        };
        counted.push((*name, after - before));
    }
    println!("\n| operation | requests to the server |");
    println!("|---|---|");
    for (name, requests) in counted {
        println!("| {name} | {requests} |");
    }

    let key_file = directory.path().join("cosmos.key");
    std::fs::write(&key_file, COSMOS_TEST_KEY).unwrap();
    let mut config = Config::for_data_dir(directory.path().join("data"));
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.rate_limit_ip_per_second = 0;
    config.rate_limit_token_per_second = 0;
    config.fold_interval_ms = COSMOS_FOLD_INTERVAL_MS_DEFAULT;
    config.cosmos = Some(CosmosConfig {
        endpoint: server.endpoint.clone(),
        key_file,
        database: DATABASE.to_owned(),
    });
    let aggregator = Aggregator::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(hitcount_aggregator::serve(
        listener,
        aggregator,
        std::future::pending(),
    ));

    let client = cosmos_client(&settings).await.unwrap();
    let counts = client
        .database_client(DATABASE)
        .container_client("counts", None)
        .await
        .unwrap();
    let hour_ms = 60 * MINUTE_MS;
    let document = format!("minute.{}", first_minute * MINUTE_MS / hour_ms * hour_ms);
    let point_reads = timed(POINT_READS, || async {
        let response = counts
            .read_item(RESOURCE.to_owned(), &document, None)
            .await
            .unwrap();
        let _: serde_json::Value = response.into_model().unwrap();
    })
    .await;
    // One single-partition query of the day's minute pages, selecting `select`.
    let query_pages = |select: &'static str| {
        let counts = &counts;
        async move {
            let query = azure_data_cosmos::Query::from(format!(
                "{select} FROM c WHERE c.resource_id = @resource AND c.tier = 'minute' \
                 AND c.page_ms >= @start"
            ))
            .with_parameter("@resource", RESOURCE)
            .unwrap()
            .with_parameter("@start", first_minute * MINUTE_MS / hour_ms * hour_ms)
            .unwrap();
            let documents: Vec<serde_json::Value> = counts
                .query_items(
                    query,
                    azure_data_cosmos::FeedScope::partition(RESOURCE.to_owned()),
                    None,
                )
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert!((24..=25).contains(&documents.len()), "{}", documents.len());
        }
    };
    let queries = timed(QUERIES, || query_pages("SELECT *")).await;
    let versions = timed(QUERIES, || query_pages("SELECT c.page_ms, c._etag")).await;
    let http = reqwest::Client::new();
    let url = format!("http://{address}/hits/{RESOURCE}?window=24h&granularity=minute");
    let hits = timed(REQUESTS, || async {
        let response = http
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let value: serde_json::Value = response.json().await.unwrap();
        assert_eq!(value["count"].as_u64(), Some(3 * MINUTES + 10));
    })
    .await;

    let baseline = percentile(&point_reads.0, 0.99);
    println!(
        "\n| request | p50 ms | p99 ms | max ms | per second (sequential) | p99 vs point read |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        point_reads.row(
            "the test server's point read of one count document, SDK (baseline)",
            baseline
        )
    );
    println!(
        "{}",
        queries.row(
            "the test server's query of the day's minute pages (24-25 documents of 60 cells), one partition, SDK",
            baseline
        )
    );
    println!(
        "{}",
        versions.row(
            "the test server's query of the same pages' ETags only (what a read whose pages are held makes), SDK",
            baseline
        )
    );
    println!(
        "{}",
        hits.row(
            "`GET /hits/r1?window=24h&granularity=minute` through the aggregator",
            baseline
        )
    );
}
