//! The aggregator's benchmark. Every figure is printed beside a baseline measured in the same
//! run on the same machine, so ratios survive a noisy or different box:
//!
//! 1. `POST /hits` requests/s and p99 under wrk (durable and fast acknowledgement) beside a
//!    hello-world axum server answering the same requests with 202, and each server's CPU time
//!    per request (this process's, where the servers run; wrk runs apart).
//! 2. Delta batches/s and counter cells/s merged into the embedded store beside the raw rate of
//!    the same SQLite upserts issued directly (the physical limit).
//! 3. `GET /hits` latency for a 24 h window at minute granularity beside a hello-world GET.
//! 4. Cells/s merged into PostgreSQL and through the Redis hot tier beside the raw upsert and the
//!    raw pipelined INCRBY; `GET /hits` latency from PostgreSQL alone and with the hot tier.
//!    Needs the machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379).
//!
//! Needs `wrk` on PATH (Debian package `wrk`). Run: `cargo bench -p hitcount-aggregator`.
//! `HITCOUNT_BENCH_SECONDS` sets each wrk run's length (default 10); `HITCOUNT_BENCH_ONLY=http`
//! runs section 1 alone, `=stores` section 4 alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hitcount_aggregator::config::{AckMode, Config};
use hitcount_aggregator::store::{BatchKey, Store};
use hitcount_aggregator::{Aggregator, now_ms};
use hitcount_bench_support::{WrkReport, bench_database, percentile, run_wrk};
use hitcount_wire::{DeltaEntry, MINUTE_MS, Sketch};
use rusqlite::params;

// The same allocator as the hitcount-aggregator binary, for both servers measured here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const RESOURCES: u64 = 100;
const WRK_CONNECTIONS: u32 = 64;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let seconds: u64 = std::env::var("HITCOUNT_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10);
    println!("# hitcount aggregator benchmark");
    println!(
        "machine: {}; wrk -t1 -c{WRK_CONNECTIONS} -d{seconds}s sharing the cores with the server",
        hitcount_bench_support::machine()
    );
    // HITCOUNT_BENCH_ONLY=stores runs only the PostgreSQL and Redis sections; =http only the
    // POST /hits section.
    let only = std::env::var("HITCOUNT_BENCH_ONLY").unwrap_or_default();
    if only == "http" {
        runtime.block_on(http_ingest(seconds));
        return;
    }
    let only_stores = only == "stores";
    runtime.block_on(async {
        if !only_stores {
            http_ingest(seconds).await;
            store_merge().await;
            query_latency().await;
        }
        postgres_and_redis_merge().await;
        tiered_query_latency().await;
    });
}

const REDIS_URL: &str = "redis://127.0.0.1:6379";

async fn create_bench_resources(store: &Store, count: u64) {
    for resource in 0..count {
        store
            .create_resource(hitcount_aggregator::store::ResourceRecord {
                id: format!("r{resource:03}"),
                name: format!("r{resource:03}"),
                retention_days: None,
                created_at_ms: now_ms(),
            })
            .await
            .unwrap();
    }
}

/// Merges `batches` through `store`, one transaction each with a dedupe record; cells/s.
async fn merge_rate(store: &Store, batches: Vec<Vec<DeltaEntry>>, cells: u64) -> f64 {
    let started = Instant::now();
    for (sequence, batch) in batches.into_iter().enumerate() {
        let key = BatchKey {
            edge_id: "bench".to_owned(),
            boot_epoch: 2,
            sequence: sequence as u64,
            body_sha256: [sequence as u8; 32],
        };
        store.apply(batch, Some(key), now_ms()).await.unwrap();
    }
    cells as f64 / started.elapsed().as_secs_f64()
}

async fn postgres_and_redis_merge() {
    const BATCHES: u64 = 200;
    const RESOURCES_PER_BATCH: u64 = 100;
    const MINUTES_PER_BATCH: u64 = 2;
    println!(
        "\n## Merging delta batches into PostgreSQL and Redis (machine's servers, fsync on)\n"
    );
    let first_minute = now_ms() / MINUTE_MS - 30;
    let make_batches = || -> Vec<Vec<DeltaEntry>> {
        (0..BATCHES)
            .map(|batch| {
                entries(
                    RESOURCES_PER_BATCH,
                    MINUTES_PER_BATCH,
                    first_minute + (batch % 25),
                    3,
                    batch,
                )
            })
            .collect()
    };
    let cells = BATCHES * RESOURCES_PER_BATCH * MINUTES_PER_BATCH;

    // Baseline 1: the same three-tier upsert issued directly, one statement and one
    // transaction per batch, no dedupe, sketches or resource checks.
    let raw_url = bench_database("hitcount_bench_raw");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&raw_url)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE hit_counts (resource_id text, tier int2, bucket_ms int8, hit_count int8,
         sketch bytea, PRIMARY KEY (resource_id, tier, bucket_ms))",
    )
    .execute(&pool)
    .await
    .unwrap();
    let started = Instant::now();
    for batch in 0..BATCHES {
        let mut columns: (Vec<String>, Vec<i16>, Vec<i64>) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = std::collections::BTreeSet::new();
        for resource in 0..RESOURCES_PER_BATCH {
            for minute in 0..MINUTES_PER_BATCH {
                let bucket = (first_minute + batch % 25 + minute) * MINUTE_MS;
                for (tier, resolution) in [(0i16, MINUTE_MS), (1, 3_600_000), (2, 86_400_000)] {
                    let key = (resource, tier, (bucket / resolution * resolution) as i64);
                    if seen.insert(key) {
                        columns.0.push(format!("r{resource:03}"));
                        columns.1.push(tier);
                        columns.2.push(key.2);
                    }
                }
            }
        }
        let mut transaction = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO hit_counts SELECT r, t, b, 7, '\\x00' FROM unnest($1::text[], $2::int2[], $3::int8[]) AS u(r, t, b)
             ON CONFLICT (resource_id, tier, bucket_ms) DO UPDATE SET hit_count = hit_counts.hit_count + excluded.hit_count",
        )
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .execute(&mut *transaction)
        .await
        .unwrap();
        transaction.commit().await.unwrap();
    }
    let raw_postgres = cells as f64 / started.elapsed().as_secs_f64();
    pool.close().await;

    // Baseline 2: pipelined INCRBY of the same minute cells straight into Redis, one round trip
    // per batch.
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let started = Instant::now();
    for batch in 0..BATCHES {
        let mut pipeline = redis::pipe();
        for resource in 0..RESOURCES_PER_BATCH {
            for minute in 0..MINUTES_PER_BATCH {
                let key = format!(
                    "hitcount-bench-raw:{resource}:{}",
                    first_minute + batch % 25 + minute
                );
                pipeline.incr(&key, 7).ignore().expire(&key, 600).ignore();
            }
        }
        pipeline.query_async::<()>(&mut connection).await.unwrap();
    }
    let raw_redis = cells as f64 / started.elapsed().as_secs_f64();

    let postgres_only = Store::open_postgres(&bench_database("hitcount_bench_pg"))
        .await
        .unwrap();
    create_bench_resources(&postgres_only, RESOURCES_PER_BATCH).await;
    let through_postgres = merge_rate(&postgres_only, make_batches(), cells).await;

    let tiered = Store::open_postgres(&bench_database("hitcount_bench_tiered"))
        .await
        .unwrap()
        .with_hot_tier(
            hitcount_aggregator::store::hot::HotTier::connect(REDIS_URL, "hitcount-bench")
                .await
                .unwrap(),
        );
    create_bench_resources(&tiered, RESOURCES_PER_BATCH).await;
    assert!(
        tiered.repair_hot_tier(now_ms()).await.unwrap(),
        "the hot tier starts"
    );
    let through_both = merge_rate(&tiered, make_batches(), cells).await;
    assert!(
        tiered.hot_tier().unwrap().is_healthy(),
        "no Redis write failed"
    );

    println!("| path | counter cells/s | vs its raw baseline |");
    println!("|---|---|---|");
    println!(
        "| raw PostgreSQL upsert, 3 tiers, one statement per batch (baseline) | {raw_postgres:.0} | 100% |"
    );
    println!(
        "| Store::apply into PostgreSQL (dedupe record, sketches, resource check) | {through_postgres:.0} | {:.0}% |",
        100.0 * through_postgres / raw_postgres
    );
    println!(
        "| raw pipelined INCRBY into Redis, one round trip per batch (baseline) | {raw_redis:.0} | 100% |"
    );
    println!(
        "| Store::apply into PostgreSQL then Redis (hot tier) | {through_both:.0} | {:.0}% of PostgreSQL alone |",
        100.0 * through_both / through_postgres
    );
}

/// GET /hits for 24 h at minute granularity: the last hour from Redis beside all of it from
/// PostgreSQL, same data.
async fn tiered_query_latency() {
    const REQUESTS: usize = 1_000;
    println!(
        "\n## GET /hits/{{id}}?window=24h&granularity=minute from PostgreSQL and with the hot tier ({REQUESTS} sequential requests)\n"
    );
    let database = bench_database("hitcount_bench_query");
    let store = Store::open_postgres(&database).await.unwrap();
    create_bench_resources(&store, 2).await;
    let first_minute = now_ms() / MINUTE_MS - 1_439;
    let mut day: Vec<DeltaEntry> = entries(1, 1_440, first_minute, 20, 99);
    for entry in &mut day {
        entry.resource_id = "r001".to_owned();
    }
    store.apply(day, None, now_ms()).await.unwrap();
    store.compact().await.unwrap();
    println!("| served by | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for redis in [false, true] {
        let directory = tempfile::TempDir::new().unwrap();
        let mut config = bench_config(directory.path());
        config.database_url = Some(database.clone());
        if redis {
            config.redis_url = Some(REDIS_URL.to_owned());
            config.redis_prefix = "hitcount-bench-query".to_owned();
        }
        let aggregator = Aggregator::start(config).await.unwrap();
        if redis {
            // The maintenance task rebuilds the tier within its first ticks; wait for it.
            let hot = aggregator.state().store.hot_tier().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !hot.is_healthy() {
                assert!(
                    Instant::now() < deadline,
                    "the hot tier never became usable"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(hitcount_aggregator::serve(
            listener,
            aggregator,
            std::future::pending(),
        ));
        let client = reqwest::Client::new();
        let url = format!("http://{address}/hits/r001?window=24h&granularity=minute");
        let mut latencies = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let started = Instant::now();
            let response = client
                .get(&url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let _ = response.bytes().await.unwrap();
            latencies.push(started.elapsed().as_secs_f64() * 1_000.0);
        }
        latencies.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.3} | {:.3} | {:.3} |",
            if redis {
                "last hour from Redis, the rest from PostgreSQL"
            } else {
                "PostgreSQL alone"
            },
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1]
        );
    }
}

async fn hello_world() -> SocketAddr {
    let router = Router::new()
        .route(
            "/hits",
            post(|| async { (StatusCode::ACCEPTED, "{\"accepted\":1}") }),
        )
        .route("/hits/{id}", get(|| async { "{\"count\":0}" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

/// An aggregator configuration with the bench token and no rate limits.
fn bench_config(directory: &std::path::Path) -> Config {
    let mut config = Config::for_data_dir(directory.to_path_buf());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.rate_limit_ip_per_second = 0;
    config.rate_limit_token_per_second = 0;
    config
}

async fn aggregator(ack: AckMode) -> (SocketAddr, tempfile::TempDir) {
    let directory = tempfile::TempDir::new().unwrap();
    let mut config = bench_config(directory.path());
    config.ack = ack;
    let aggregator = Aggregator::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(hitcount_aggregator::serve(
        listener,
        aggregator,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    for index in 0..RESOURCES {
        let response = client
            .post(format!("http://{address}/resources"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"name": format!("r{index}"), "resource_id": format!("r{index}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    (address, directory)
}

/// wrk against `address`'s `POST /hits`: one hit per request, a new visitor each, 100 resources.
fn wrk(address: SocketAddr, seconds: u64) -> WrkReport {
    let script = format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {ADMIN_TOKEN}"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/hits", nil, '{{"resource_id":"r' .. (counter % {RESOURCES}) .. '","visitor_id":"v' .. counter .. '"}}')
end
"#
    );
    run_wrk(
        &format!("http://{address}/hits"),
        &script,
        WRK_CONNECTIONS,
        seconds,
    )
}

/// Rounds of the hello-world baseline and `--ack fast`, run alternately: the box's rate moves by
/// up to a fifth between runs, so the figure is the median of the rounds' ratios.
const HTTP_ROUNDS: usize = 3;
/// Pause before each baseline round, well past `--ack fast`'s 100 ms commit interval.
const SETTLE: Duration = Duration::from_millis(500);

async fn wrk_round(address: SocketAddr, seconds: u64) -> WrkReport {
    tokio::task::spawn_blocking(move || wrk(address, seconds))
        .await
        .unwrap()
}

async fn http_ingest(seconds: u64) {
    println!("\n## POST /hits under wrk ({WRK_CONNECTIONS} connections, one hit per request)\n");
    println!(
        "| round | server | requests/s | p50 ms | p99 ms | non-2xx | server CPU µs per request | vs the round's hello-world |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |round: &str, name: &str, result: &WrkReport, baseline: &WrkReport| {
        let ratio = result.requests_per_second / baseline.requests_per_second;
        println!(
            "| {round} | {name} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.0}% |",
            result.requests_per_second,
            result.p50_ms,
            result.p99_ms,
            result.non_2xx,
            result.server_cpu_us_per_request,
            100.0 * ratio
        );
        ratio
    };
    let hello = hello_world().await;
    let (fast, _fast_directory) = aggregator(AckMode::Fast).await;
    let mut ratios = Vec::new();
    let mut baseline = None;
    for round in 1..=HTTP_ROUNDS {
        // The last round's hits commit within the fast mode's interval: let them, so the
        // baseline shares the cores with nothing of the aggregator's.
        tokio::time::sleep(SETTLE).await;
        let round = round.to_string();
        let hello_report = wrk_round(hello, seconds).await;
        row(
            &round,
            "hello-world axum (202, no work)",
            &hello_report,
            &hello_report,
        );
        let fast_report = wrk_round(fast, seconds).await;
        ratios.push(row(
            &round,
            "hitcount, --ack fast",
            &fast_report,
            &hello_report,
        ));
        baseline = Some(hello_report);
    }
    let baseline = baseline.expect("at least one round");
    let (durable, _durable_directory) = aggregator(AckMode::Durable).await;
    let durable_report = wrk_round(durable, seconds).await;
    row(
        "after the rounds, against the last baseline",
        "hitcount, --ack durable (default)",
        &durable_report,
        &baseline,
    );
    ratios.sort_by(f64::total_cmp);
    println!(
        "\n`--ack fast` against hello-world, median of {HTTP_ROUNDS} rounds: {:.0}%",
        100.0 * ratios[ratios.len() / 2]
    );
}

fn entries(
    resources: u64,
    minutes: u64,
    first_minute: u64,
    visitors_per_entry: u64,
    salt: u64,
) -> Vec<DeltaEntry> {
    let mut list = Vec::new();
    for resource in 0..resources {
        for minute in 0..minutes {
            let mut sketch = Sketch::new();
            for visitor in 0..visitors_per_entry {
                sketch.insert_hash(hitcount_wire::visitor_hash(
                    &[salt, resource, minute, visitor]
                        .map(u64::to_le_bytes)
                        .concat(),
                ));
            }
            list.push(DeltaEntry {
                resource_id: format!("r{resource:03}"),
                minute: first_minute + minute,
                hits: 1 + visitors_per_entry * 2,
                visitors: sketch,
            });
        }
    }
    list.sort_by(|a, b| {
        (a.resource_id.as_str(), a.minute).cmp(&(b.resource_id.as_str(), b.minute))
    });
    list
}

async fn store_merge() {
    const BATCHES: u64 = 200;
    const RESOURCES_PER_BATCH: u64 = 100;
    const MINUTES_PER_BATCH: u64 = 2;
    println!(
        "\n## Merging delta batches into the embedded store (SQLite, WAL, synchronous=FULL)\n"
    );
    let directory = tempfile::TempDir::new().unwrap();
    let store = Store::open_embedded(directory.path()).unwrap();
    create_bench_resources(&store, RESOURCES_PER_BATCH).await;
    let first_minute = now_ms() / MINUTE_MS - 60;
    let batches: Vec<Vec<DeltaEntry>> = (0..BATCHES)
        .map(|batch| {
            entries(
                RESOURCES_PER_BATCH,
                MINUTES_PER_BATCH,
                first_minute + (batch % 30),
                3,
                batch,
            )
        })
        .collect();
    let cells = BATCHES * RESOURCES_PER_BATCH * MINUTES_PER_BATCH;
    let merged_rate = merge_rate(&store, batches, cells).await;

    // The baseline: the same number of upserts (three tiers per cell) into an identical table,
    // one transaction per batch, with no sketch merging, dedupe or resource checks.
    let raw_directory = tempfile::TempDir::new().unwrap();
    let raw_rate = tokio::task::spawn_blocking(move || {
        let mut connection = rusqlite::Connection::open(raw_directory.path().join("raw.sqlite3")).unwrap();
        connection.pragma_update(None, "journal_mode", "WAL").unwrap();
        connection.pragma_update(None, "synchronous", "FULL").unwrap();
        connection
            .execute_batch(
                "CREATE TABLE counts (resource_id TEXT, tier INTEGER, bucket_ms INTEGER, hits INTEGER, sketch BLOB,
                 PRIMARY KEY (resource_id, tier, bucket_ms)) WITHOUT ROWID",
            )
            .unwrap();
        let started = Instant::now();
        for batch in 0..BATCHES {
            let transaction = connection.transaction().unwrap();
            {
                let mut upsert = transaction
                    .prepare_cached(
                        "INSERT INTO counts VALUES (?1, ?2, ?3, ?4, x'00') ON CONFLICT DO UPDATE SET hits = hits + excluded.hits",
                    )
                    .unwrap();
                for resource in 0..RESOURCES_PER_BATCH {
                    for minute in 0..MINUTES_PER_BATCH {
                        let bucket = (first_minute + batch % 30 + minute) * MINUTE_MS;
                        for (tier, resolution) in [(0, MINUTE_MS), (1, 3_600_000), (2, 86_400_000)] {
                            upsert
                                .execute(params![format!("r{resource:03}"), tier, (bucket / resolution * resolution) as i64, 7])
                                .unwrap();
                        }
                    }
                }
            }
            transaction.commit().unwrap();
        }
        cells as f64 / started.elapsed().as_secs_f64()
    })
    .await
    .unwrap();
    println!("| path | delta batches/s | counter cells/s | vs raw upserts |");
    println!("|---|---|---|---|");
    println!(
        "| raw SQLite upserts, 3 tiers, no sketches (baseline) | {:.0} | {raw_rate:.0} | 100% |",
        raw_rate / (RESOURCES_PER_BATCH * MINUTES_PER_BATCH) as f64
    );
    println!(
        "| Store::apply ({} cells/batch, 3 visitors each, dedupe record) | {:.0} | {merged_rate:.0} | {:.0}% |",
        RESOURCES_PER_BATCH * MINUTES_PER_BATCH,
        merged_rate / (RESOURCES_PER_BATCH * MINUTES_PER_BATCH) as f64,
        100.0 * merged_rate / raw_rate
    );
}

async fn query_latency() {
    const REQUESTS: usize = 2_000;
    println!(
        "\n## GET /hits/{{id}}?window=24h&granularity=minute ({REQUESTS} sequential requests, keep-alive)\n"
    );
    let (address, directory) = aggregator(AckMode::Durable).await;
    // Fill one resource with a full day of minutes, 20 visitors each, through the store.
    let store = Store::open_embedded(directory.path()).unwrap();
    let first_minute = now_ms() / MINUTE_MS - 1_439;
    let mut day: Vec<DeltaEntry> = entries(1, 1_440, first_minute, 20, 99);
    for entry in &mut day {
        entry.resource_id = "r1".to_owned();
    }
    store.apply(day, None, now_ms()).await.unwrap();
    let hello = hello_world().await;
    let client = reqwest::Client::new();
    println!("| endpoint | p50 ms | p99 ms | max ms | vs hello-world p99 |");
    println!("|---|---|---|---|---|");
    let mut baseline_p99 = 0.0;
    for (name, url, token) in [
        (
            "hello-world GET (baseline)",
            format!("http://{hello}/hits/r1"),
            None,
        ),
        (
            "hitcount, 1440 minute cells",
            format!("http://{address}/hits/r1?window=24h&granularity=minute"),
            Some(ADMIN_TOKEN),
        ),
    ] {
        let mut latencies = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let started = Instant::now();
            let mut request = client.get(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let _ = response.bytes().await.unwrap();
            latencies.push(started.elapsed().as_secs_f64() * 1_000.0);
        }
        latencies.sort_by(f64::total_cmp);
        let p99 = percentile(&latencies, 0.99);
        if token.is_none() {
            baseline_p99 = p99;
        }
        println!(
            "| {name} | {:.3} | {p99:.3} | {:.3} | {:.1}x |",
            percentile(&latencies, 0.5),
            latencies[latencies.len() - 1],
            p99 / baseline_p99
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
