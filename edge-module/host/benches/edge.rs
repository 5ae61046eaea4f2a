//! The edge benchmark, every figure beside a baseline from the same run:
//!
//! 1. Hits/s recorded in the component (one call per hit, and `record-batch` of 256) beside the
//!    same core called natively.
//! 2. Hits/s through `hitcount-edge` under wrk (`POST /hit`) beside a hello-world axum server
//!    answering 204, and the aggregator requests this caused per hit.
//! 3. Delta bytes per distinct counter for a typical window.
//!
//! Needs `wrk` (Debian package). Run: `cargo bench -p hitcount-edge --bench edge`.
//! `HITCOUNT_BENCH_SECONDS` sets each timed run (default 10); `HITCOUNT_BENCH_ONLY=module` or
//! `HITCOUNT_BENCH_ONLY=http` runs one part.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Instant;

use axum::http::StatusCode;
use axum::routing::post;
use hitcount_bench_support::{WrkReport, run_wrk};
use hitcount_edge::Edge;
use hitcount_edge::config::Config as EdgeConfig;
use hitcount_edge::module::{Hit, InstanceSettings, Instances};
use hitcount_edge_core::{EdgeCounter, HitRequest};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const EDGE_KEY: &str = "bench-edge-secret-0123456789";
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const BATCH: usize = 256;

fn seconds() -> u64 {
    std::env::var("HITCOUNT_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10)
}

/// Browsers' user agents: 100 common ones (four families, 25 versions each), and one hit in 16
/// with a user agent never seen before, so the edge's remembered bot verdicts miss as they would.
fn user_agent(index: u64) -> String {
    if index.is_multiple_of(16) {
        return format!(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.{}.0 Safari/537.36",
            100 + index % 50,
            index
        );
    }
    let version = 110 + (index / 16) % 25;
    match (index / 7) % 4 {
        0 => format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{version}.0.0.0 Safari/537.36"
        ),
        1 => format!(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            version % 10
        ),
        2 => format!(
            "Mozilla/5.0 (X11; Linux x86_64; rv:{version}.0) Gecko/20100101 Firefox/{version}.0"
        ),
        _ => format!(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{version}.0.0.0 Safari/537.36 Edg/{version}.0.0.0"
        ),
    }
}

fn hit(index: u64) -> Hit {
    Hit {
        resource_id: format!("page-{}", index % 100),
        site: "example.com".to_owned(),
        client_address: format!("10.0.{}.{}", (index >> 8) & 255, index & 255),
        user_agent: user_agent(index),
        prefetch: false,
        timestamp_ms: None,
    }
}

fn settings() -> InstanceSettings {
    InstanceSettings {
        edge_id: "bench".to_owned(),
        visitor_secret: b"bench-visitor-secret".to_vec(),
        window_entries_max: 16_384,
        pending_entries_max: 16_384,
        journal: false,
        count_http_clients: false,
    }
}

/// Hits per pass: a window of 100 pages, each pass with new visitors and new rare user agents.
const PASS_HITS: u64 = 4_096;

/// Hits/s of `record_pass` over passes of fresh hits, timing the recording only (making the hits
/// is not the edge's work).
fn timed_passes(duration: std::time::Duration, mut record_pass: impl FnMut(&[Hit])) -> f64 {
    let mut timed = std::time::Duration::ZERO;
    let mut recorded = 0u64;
    let mut pass = 0u64;
    while timed < duration {
        let hits: Vec<Hit> = (pass * PASS_HITS..(pass + 1) * PASS_HITS)
            .map(hit)
            .collect();
        pass += 1;
        let started = Instant::now();
        record_pass(&hits);
        timed += started.elapsed();
        recorded += PASS_HITS;
    }
    recorded as f64 / timed.as_secs_f64()
}

fn module_rates(duration_s: u64) {
    println!("\n## Recording in the component (one instance, one core)\n");
    println!("| path | hits/s | vs native core |");
    println!("|---|---|---|");
    let now = hitcount_process::now_ms();
    let duration = std::time::Duration::from_secs(duration_s);

    // Baseline: the same core, called natively.
    let mut counter = EdgeCounter::new(b"bench-visitor-secret", 16_384);
    let native_rate = timed_passes(duration, |hits| {
        for hit in hits {
            let request = HitRequest {
                resource_id: &hit.resource_id,
                site: &hit.site,
                client_address: &hit.client_address,
                user_agent: &hit.user_agent,
                prefetch: false,
                timestamp_ms: None,
            };
            counter.record(&request, now);
        }
        counter.flush(now);
    });
    println!("| hitcount-edge-core natively (baseline) | {native_rate:.0} | 100% |");

    let instances = Instances::new(None, 1, settings(), now).unwrap();
    let single_rate = timed_passes(duration, |hits| {
        for hit in hits {
            instances.record(0, hit, now).unwrap();
        }
        instances.flush_and_take(0, now).unwrap();
    });
    println!(
        "| component `record` (one call per hit) | {single_rate:.0} | {:.0}% |",
        100.0 * single_rate / native_rate
    );

    let batch_rate = timed_passes(duration, |hits| {
        for chunk in hits.chunks(BATCH) {
            instances.record_batch(0, chunk, now).unwrap();
        }
        instances.flush_and_take(0, now).unwrap();
    });
    println!(
        "| component `record-batch` of {BATCH} | {batch_rate:.0} | {:.0}% |",
        100.0 * batch_rate / native_rate
    );

    println!("\n## Delta size (one window: 1,000 pages, 1 to 5 visitors each)\n");
    let mut index = 0u64;
    for page in 0..1_000u64 {
        for _ in 0..(1 + page % 5) {
            index += 1;
            let mut one = hit(index);
            one.resource_id = format!("page-{page:04}");
            instances.record(0, &one, now).unwrap();
        }
    }
    let batch = instances.flush_and_take(0, now).unwrap().unwrap();
    println!("| counters | hits | batch bytes | bytes per counter |");
    println!("|---|---|---|---|");
    println!(
        "| 1000 | {} | {} | {:.1} |",
        batch.hits,
        batch.bytes.len(),
        batch.bytes.len() as f64 / 1_000.0
    );
}

/// wrk against `address`'s `POST /hit`: a sendBeacon-style body for one of 100 resources.
fn wrk(address: SocketAddr, duration_s: u64) -> WrkReport {
    let script = format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain"
wrk.headers["User-Agent"] = "{BROWSER}"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/hit", nil, '{{"resource_id":"r' .. (counter % 100) .. '"}}')
end
"#
    );
    run_wrk(&format!("http://{address}/hit"), &script, 64, duration_s)
}

/// How many times the baseline and the edge are each measured, alternately: the box's rate moves
/// by up to a fifth between runs, so one pair of runs can land on either side of a target.
const HTTP_ROUNDS: usize = 3;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn http_rates(duration_s: u64) {
    println!(
        "\n## POST /hit under wrk (-t1 -c64, sharing the cores with the servers), {HTTP_ROUNDS} alternating rounds\n"
    );
    let hello = axum::Router::new().route("/hit", post(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello_address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hello).await.unwrap() });

    let directory = tempfile::TempDir::new().unwrap();
    let mut config =
        hitcount_aggregator::config::Config::for_data_dir(directory.path().to_path_buf());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.edge_keys = vec![hitcount_aggregator::config::EdgeKey {
        edge_id: "bench".to_owned(),
        secret: EDGE_KEY.as_bytes().to_vec(),
    }];
    config.rate_limit_ip_per_second = 0;
    config.rate_limit_token_per_second = 0;
    let aggregator = hitcount_aggregator::Aggregator::start(config)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let aggregator_address = listener.local_addr().unwrap();
    tokio::spawn(hitcount_aggregator::serve(
        listener,
        aggregator,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    for index in 0..100 {
        let response = client
            .post(format!("http://{aggregator_address}/resources"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"name": format!("r{index}"), "resource_id": format!("r{index}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }

    let mut edge_config =
        EdgeConfig::new(&format!("http://{aggregator_address}"), "bench", EDGE_KEY);
    edge_config.visitor_secret = b"bench-visitor-secret".to_vec();
    edge_config.instances = 2;
    let edge = Edge::start(edge_config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_address = listener.local_addr().unwrap();
    tokio::spawn(hitcount_edge::serve(listener, edge, std::future::pending()));

    println!(
        "| round | hello-world axum answering 204 (baseline), req/s | p99 ms | CPU µs per request | hitcount-edge (2 instances, window 1 s), req/s | p99 ms | CPU µs per request | vs hello-world |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let mut edge_requests = 0u64;
    let mut ratios = Vec::new();
    for round in 1..=HTTP_ROUNDS {
        let baseline = tokio::task::spawn_blocking(move || wrk(hello_address, duration_s))
            .await
            .unwrap();
        let result = tokio::task::spawn_blocking(move || wrk(edge_address, duration_s))
            .await
            .unwrap();
        edge_requests += result.requests;
        let ratio = result.requests_per_second / baseline.requests_per_second;
        ratios.push(ratio);
        println!(
            "| {round} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0}% |",
            baseline.requests_per_second,
            baseline.p99_ms,
            baseline.server_cpu_us_per_request,
            result.requests_per_second,
            result.p99_ms,
            result.server_cpu_us_per_request,
            100.0 * ratio
        );
    }
    println!(
        "\nMedian of the rounds' ratios: {:.0}% of hello-world.",
        100.0 * median(&mut ratios)
    );
    let elapsed_s = started.elapsed().as_secs_f64();
    // Let the last windows ship, then read what the aggregator received.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let metrics = reqwest::get(format!("http://{aggregator_address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let applied: f64 = metrics
        .lines()
        .find(|line| line.starts_with("hitcount_deltas_applied_total"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0);
    let windows = (elapsed_s + 2.5).ceil() * 2.0;
    println!(
        "\nAggregator requests: {applied:.0} delta POSTs for {} hits ({:.6} per hit); at most one per instance per window would be {windows:.0}.",
        edge_requests,
        applied / edge_requests.max(1) as f64
    );
}

fn main() {
    let duration_s = seconds();
    println!("# hitcount edge benchmark");
    println!(
        "machine: {} cores; each timed run {duration_s} s",
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(0)
    );
    // `HITCOUNT_BENCH_ONLY=module` or `=http` runs one part.
    let only = std::env::var("HITCOUNT_BENCH_ONLY").unwrap_or_default();
    if only != "http" {
        module_rates(duration_s);
    }
    if only != "module" {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(http_rates(duration_s));
    }
}
