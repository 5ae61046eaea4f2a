//! `GET /stats/top` across many resources with a year of history, on the embedded store and on
//! PostgreSQL, beside the baseline of `GET /hits/{id}` (one resource over the same window) on the
//! same server in the same run.
//!
//! Issue 14's target: the top 10 over 24 hours and over 30 days across 10,000 resources, p99
//! under 50 ms. The history is written straight into the store's tables (a year of it through
//! the merge would take most of an hour); the rows are what merges leave: 1,000 hot resources hit
//! every hour (by a Zipf law) and 9,000 once a day, day cells for a year, hour cells for the hour
//! tier's 90 days, minute cells for the minute tier's 48 hours. Each row's first request sums
//! and keeps the closed buckets' summaries (its max); the others read them.
//!
//! Run: `cargo bench -p hitcount-aggregator --bench stats` (PostgreSQL at 127.0.0.1:5432 and
//! `psql`; `HITCOUNT_BENCH_DATABASE_SERVER` names another server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use hitcount_aggregator::config::Config;
use hitcount_aggregator::store::{DAY_MS, HOUR_MS, Store, Tier};
use hitcount_aggregator::{Aggregator, now_ms};
use hitcount_bench_support::{bench_database, percentile};
use hitcount_wire::Sketch;
use reqwest::StatusCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const RESOURCES: u64 = 10_000;
const HOT_RESOURCES: u64 = 1_000;
const HISTORY_DAYS: u64 = 365;
const HOUR_TIER_DAYS: u64 = 90;
const MINUTE_TIER_HOURS: u64 = 48;
const REQUESTS: usize = 100;
/// How long the aggregator runs before the first request, in ms.
const SETTLE_MS: u64 = 10_000;

/// What the seed writes: the same cells for both stores.
struct Seed {
    day0_ms: u64,
    hour0_ms: u64,
    sketches: Vec<Vec<u8>>,
}

impl Seed {
    fn new(now_ms: u64) -> Self {
        // Four sketches of a few visitors each, as most cells of a site hold.
        let sketches = (0..4u64)
            .map(|salt| {
                let mut sketch = Sketch::new();
                for visitor in 0..5u64 {
                    sketch.insert(&[salt, visitor].map(u64::to_le_bytes).concat());
                }
                sketch.to_bytes()
            })
            .collect();
        Self {
            day0_ms: now_ms / DAY_MS * DAY_MS,
            hour0_ms: now_ms / HOUR_MS * HOUR_MS,
            sketches,
        }
    }

    /// Every cell, as (resource, tier, bucket, hits).
    fn cells(&self) -> impl Iterator<Item = (u64, Tier, u64, u64)> + '_ {
        (0..RESOURCES).flat_map(move |resource| {
            let hot = resource < HOT_RESOURCES;
            // Hot resources by a Zipf law, as pages of a site are: the 1st gets 1,000 hits an
            // hour, the 10th 100, the 500th to 1,000th 1 or 2 (equal counts tie at the cut, and
            // a real site's top 10 does not tie).
            let hourly = if hot {
                (1_000 / (resource + 1)).max(1)
            } else {
                3
            };
            // Each day cell holds its hours' hits, as the merge writes them: today's hot ones
            // the hours so far; a cold resource's hour of today is still ahead.
            let hours_today = (self.hour0_ms - self.day0_ms) / HOUR_MS + 1;
            let days = (0..HISTORY_DAYS).filter_map(move |day| {
                let hits = match (hot, day) {
                    (true, 0) => hours_today * hourly,
                    (true, _) => 24 * hourly,
                    (false, 0) => return None,
                    (false, _) => 3,
                };
                Some((resource, Tier::Day, self.day0_ms - day * DAY_MS, hits))
            });
            // A cold resource's one hour a day, in yesterday and before (never ahead of now).
            let cold_hour =
                |day: u64| self.day0_ms - (day + 1) * DAY_MS + (resource % 24) * HOUR_MS;
            let (hours, minutes): (Vec<u64>, Vec<u64>) = if hot {
                (
                    (0..HOUR_TIER_DAYS * 24)
                        .map(|hour| self.hour0_ms - hour * HOUR_MS)
                        .collect(),
                    (0..MINUTE_TIER_HOURS)
                        .map(|hour| self.hour0_ms - hour * HOUR_MS)
                        .collect(),
                )
            } else {
                (
                    (0..HOUR_TIER_DAYS).map(cold_hour).collect(),
                    (0..MINUTE_TIER_HOURS / 24).map(cold_hour).collect(),
                )
            };
            // Three hits in each minute cell a resource has.
            days.chain(
                hours
                    .into_iter()
                    .map(move |bucket| (resource, Tier::Hour, bucket, hourly)),
            )
            .chain(
                minutes
                    .into_iter()
                    .map(move |bucket| (resource, Tier::Minute, bucket, 3)),
            )
        })
    }
}

fn resource_id(resource: u64) -> String {
    format!("r{resource:05}")
}

fn tier_code(tier: Tier) -> i64 {
    match tier {
        Tier::Minute => 0,
        Tier::Hour => 1,
        Tier::Day => 2,
    }
}

fn seed_embedded(directory: &std::path::Path, seed: &Seed, now_ms: u64) -> u64 {
    drop(Store::open_embedded(directory).unwrap());
    let mut connection = rusqlite::Connection::open(directory.join("hitcount.sqlite3")).unwrap();
    let transaction = connection.transaction().unwrap();
    let mut rows = 0;
    {
        let mut resource = transaction
            .prepare("INSERT INTO resources (id, name, retention_days, created_at_ms) VALUES (?1, ?1, NULL, ?2)")
            .unwrap();
        for index in 0..RESOURCES {
            resource
                .execute(rusqlite::params![resource_id(index), now_ms as i64])
                .unwrap();
        }
        let mut cell = transaction
            .prepare("INSERT INTO counts (resource_id, tier, bucket_ms, hits, sketch) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for (index, tier, bucket_ms, hits) in seed.cells() {
            let sketch = &seed.sketches[(index % 4) as usize];
            cell.execute(rusqlite::params![
                resource_id(index),
                tier_code(tier),
                bucket_ms as i64,
                hits as i64,
                sketch
            ])
            .unwrap();
            rows += 1;
        }
    }
    transaction.commit().unwrap();
    rows
}

async fn seed_postgres(url: &str, seed: &Seed, now_ms: u64) -> u64 {
    drop(Store::open_postgres(url).await.unwrap());
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let ids: Vec<String> = (0..RESOURCES).map(resource_id).collect();
    sqlx::query("INSERT INTO resources (id, name, retention_days, created_at_ms) SELECT id, id, NULL, $2 FROM unnest($1::text[]) AS id")
        .bind(&ids)
        .bind(now_ms as i64)
        .execute(&pool)
        .await
        .unwrap();
    let cells: Vec<_> = seed.cells().collect();
    for chunk in cells.chunks(50_000) {
        let resources: Vec<String> = chunk.iter().map(|cell| resource_id(cell.0)).collect();
        let tiers: Vec<i16> = chunk.iter().map(|cell| tier_code(cell.1) as i16).collect();
        let buckets: Vec<i64> = chunk.iter().map(|cell| cell.2 as i64).collect();
        let hits: Vec<i64> = chunk.iter().map(|cell| cell.3 as i64).collect();
        let sketches: Vec<Vec<u8>> = chunk
            .iter()
            .map(|cell| seed.sketches[(cell.0 % 4) as usize].clone())
            .collect();
        sqlx::query(
            "INSERT INTO hit_counts (resource_id, tier, bucket_ms, hit_count, sketch)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[], $5::bytea[])",
        )
        .bind(&resources)
        .bind(&tiers)
        .bind(&buckets)
        .bind(&hits)
        .bind(&sketches)
        .execute(&pool)
        .await
        .unwrap();
    }
    // As a database that has been running is: vacuumed (so autovacuum does not start on the
    // fresh rows in the middle of a measurement) and analysed.
    sqlx::query("VACUUM (ANALYZE)")
        .execute(&pool)
        .await
        .unwrap();
    cells.len() as u64
}

/// p50, p99 and max of `REQUESTS` sequential GETs of `path`, in milliseconds.
async fn latency(client: &reqwest::Client, base: &str, path: &str) -> (f64, f64, f64) {
    let mut latencies = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let _ = response.bytes().await.unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    latencies.sort_by(f64::total_cmp);
    (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    )
}

async fn measure(store: &str, config: Config) {
    let aggregator = Aggregator::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(hitcount_aggregator::serve(
        listener,
        aggregator,
        std::future::pending(),
    ));
    // A running aggregator is measured: its start-up work (the first retention pass over the
    // seeded rows, compaction, the catalog's reloads) is left to finish first.
    tokio::time::sleep(std::time::Duration::from_millis(SETTLE_MS)).await;
    let client = reqwest::Client::new();
    for (label, path) in [
        ("top 10, 24 h", "/stats/top?window=24h&limit=10"),
        ("baseline: one resource, 24 h", "/hits/r00000?window=24h"),
        ("top 10, 30 d", "/stats/top?window=30d&limit=10"),
        ("baseline: one resource, 30 d", "/hits/r00000?window=30d"),
    ] {
        let (p50, p99, max) = latency(&client, &base, path).await;
        println!("| {store} | {label} | {p50:.1} | {p99:.1} | {max:.1} |");
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("# GET /stats/top across {RESOURCES} resources with {HISTORY_DAYS} days of history");
    println!(
        "machine: {} cores; {REQUESTS} sequential requests per row, the client on the same cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    runtime.block_on(async {
        let now = now_ms();
        let seed = Seed::new(now);
        println!("\n| store | request | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|");
        let directory = tempfile::TempDir::new().unwrap();
        let started = Instant::now();
        let rows = seed_embedded(directory.path(), &seed, now);
        eprintln!(
            "embedded: {rows} rows seeded in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let mut config = Config::for_data_dir(directory.path().to_path_buf());
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        config.rate_limit_ip_per_second = 0;
        config.rate_limit_token_per_second = 0;
        measure("embedded", config.clone()).await;

        let database = bench_database("hitcount_bench_stats");
        let started = Instant::now();
        let rows = seed_postgres(&database, &seed, now).await;
        eprintln!(
            "postgres: {rows} rows seeded in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let postgres_directory = tempfile::TempDir::new().unwrap();
        config.data_dir = postgres_directory.path().to_path_buf();
        config.database_url = Some(database);
        measure("postgres", config).await;
    });
}
