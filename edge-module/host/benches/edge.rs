//! The edge benchmark, every figure beside a baseline from the same run:
//!
//! 1. Hits/s recorded in the component (one call per hit, and `record-batch` of 256) beside the
//!    same core called natively.
//! 2. Hits/s through `hitcount-edge` under wrk (`POST /hit`) beside a hello-world axum server
//!    answering 204, and the aggregator requests this caused per hit.
//! 3. Delta bytes per distinct counter for a typical window.
//!
//! Needs `wrk` (Debian package). Run: `cargo bench -p hitcount-edge --bench edge`.
//! `HITCOUNT_BENCH_SECONDS` sets each timed run (default 10).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use axum::http::StatusCode;
use axum::routing::post;
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

fn hit(index: u64) -> Hit {
    Hit {
        resource_id: format!("page-{}", index % 100),
        site: "example.com".to_owned(),
        client_address: format!("10.0.{}.{}", (index >> 8) & 255, index & 255),
        user_agent: BROWSER.to_owned(),
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
    }
}

fn module_rates(duration_s: u64) {
    println!("\n## Recording in the component (one instance, one core)\n");
    println!("| path | hits/s | vs native core |");
    println!("|---|---|---|");
    let now = hitcount_edge::now_ms();
    let hits: Vec<Hit> = (0..4_096).map(hit).collect();

    // Baseline: the same core, called natively.
    let mut counter = EdgeCounter::new(b"bench-visitor-secret", 16_384);
    let started = Instant::now();
    let mut native = 0u64;
    while started.elapsed().as_secs() < duration_s {
        for hit in &hits {
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
        native += hits.len() as u64;
        if counter.len() > 8_000 {
            counter.flush(now);
        }
    }
    let native_rate = native as f64 / started.elapsed().as_secs_f64();
    println!("| hitcount-edge-core natively (baseline) | {native_rate:.0} | 100% |");

    let instances = Instances::new(None, 1, settings(), now).unwrap();
    let started = Instant::now();
    let mut single = 0u64;
    while started.elapsed().as_secs() < duration_s {
        for hit in &hits[..1_024] {
            instances.record(0, hit, now).unwrap();
        }
        single += 1_024;
        instances.flush_and_take(0, now).unwrap();
    }
    let single_rate = single as f64 / started.elapsed().as_secs_f64();
    println!(
        "| component `record` (one call per hit) | {single_rate:.0} | {:.0}% |",
        100.0 * single_rate / native_rate
    );

    let started = Instant::now();
    let mut batched = 0u64;
    while started.elapsed().as_secs() < duration_s {
        for chunk in hits.chunks(BATCH) {
            instances.record_batch(0, chunk, now).unwrap();
            batched += chunk.len() as u64;
        }
        instances.flush_and_take(0, now).unwrap();
    }
    let batch_rate = batched as f64 / started.elapsed().as_secs_f64();
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

struct Wrk {
    requests_per_second: f64,
    p99_ms: f64,
    requests: u64,
}

fn wrk(address: SocketAddr, duration_s: u64) -> Wrk {
    let script =
        std::env::temp_dir().join(format!("hitcount-edge-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain"
wrk.headers["User-Agent"] = "{BROWSER}"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/hit", nil, '{{"resource_id":"r' .. (counter % 100) .. '"}}')
end
"#
        ),
    )
    .unwrap();
    let output = Command::new("wrk")
        .args([
            "-t1",
            "-c64",
            &format!("-d{duration_s}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{address}/hit"))
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|line| line.trim_start().starts_with(prefix))
            .and_then(|line| line.split_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_default()
    };
    let latency = field("99%");
    let (number, unit) = latency.split_at(
        latency
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(latency.len()),
    );
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    let p99_ms = match unit {
        "us" => value / 1_000.0,
        "s" => value * 1_000.0,
        _ => value,
    };
    let requests = text
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    Wrk {
        requests_per_second: field("Requests/sec:").parse().unwrap_or(0.0),
        p99_ms,
        requests,
    }
}

async fn http_rates(duration_s: u64) {
    println!("\n## POST /hit under wrk (-t1 -c64, sharing the cores with the servers)\n");
    println!("| server | requests/s | p99 ms | vs hello-world |");
    println!("|---|---|---|---|");
    let hello = axum::Router::new().route("/hit", post(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello_address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hello).await.unwrap() });
    let baseline = tokio::task::spawn_blocking(move || wrk(hello_address, duration_s))
        .await
        .unwrap();
    println!(
        "| hello-world axum, answers 204 (baseline) | {:.0} | {:.2} | 100% |",
        baseline.requests_per_second, baseline.p99_ms
    );

    let directory = tempfile::TempDir::new().unwrap();
    let mut config =
        hitcount_aggregator::config::Config::for_data_dir(directory.path().to_path_buf());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.edge_keys = vec![hitcount_aggregator::config::EdgeKey {
        edge_id: "bench".to_owned(),
        secret: EDGE_KEY.as_bytes().to_vec(),
    }];
    config.rate_limit_ip = 0;
    config.rate_limit_token = 0;
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
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || wrk(edge_address, duration_s))
        .await
        .unwrap();
    let elapsed_s = started.elapsed().as_secs_f64();
    println!(
        "| hitcount-edge (2 instances, window 1 s) | {:.0} | {:.2} | {:.0}% |",
        result.requests_per_second,
        result.p99_ms,
        100.0 * result.requests_per_second / baseline.requests_per_second
    );
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
        result.requests,
        applied / result.requests.max(1) as f64
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
    module_rates(duration_s);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(http_rates(duration_s));
}
