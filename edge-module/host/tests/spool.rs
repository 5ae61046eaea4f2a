//! The spool: the edge process killed with SIGKILL mid-run, while the aggregator is down, and
//! started again on the same spool loses no hit it answered and counts none twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Client;
use tempfile::TempDir;

use crate::support::{
    BROWSER, EDGE_ID, EDGE_KEY, aggregator, count, create_resources, free_address,
};

const RESOURCES: u64 = 50;
const VISITORS: u64 = 2_500;
const CONNECTIONS: u64 = 4;

fn start_edge(address: SocketAddr, aggregator: SocketAddr, spool: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hitcount-edge"))
        .args([
            "--listen",
            &address.to_string(),
            "--aggregator",
            &format!("http://{aggregator}"),
            "--edge-id",
            EDGE_ID,
            "--edge-key",
            EDGE_KEY,
            "--visitor-secret",
            "deployment-visitor-secret",
            "--window-ms",
            "200",
            "--trust-forwarded-for",
            "--spool-dir",
        ])
        .arg(spool)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_until_listening(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://{address}/healthz"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the edge did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per resource: hits the edge answered `counted`, and hits whose request failed (sent while the
/// process died: counted or not, the client cannot know).
#[derive(Debug, Default)]
struct Outcomes {
    counted: BTreeMap<u64, u64>,
    unknown: BTreeMap<u64, u64>,
}

/// Sends hits `range` over `CONNECTIONS` clients; a client stops at its first failed request.
async fn send(edge: SocketAddr, range: std::ops::Range<u64>, progress: Arc<AtomicU64>) -> Outcomes {
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let progress = Arc::clone(&progress);
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::new();
            let mut outcomes = Outcomes::default();
            let mut index = range.start + connection;
            while index < range.end {
                let visitor = index % VISITORS;
                let resource = index % RESOURCES;
                let response = client
                    .post(format!("http://{edge}/hit"))
                    .header("user-agent", BROWSER)
                    .header(
                        "x-forwarded-for",
                        format!("10.0.{}.{}", visitor >> 8, visitor & 255),
                    )
                    .body(format!("{{\"resource_id\":\"r{resource}\"}}"))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 204 => {
                        assert_eq!(response.headers()["x-hitcount-result"], "counted");
                        *outcomes.counted.entry(resource).or_default() += 1;
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(response) => panic!("hit {index}: {}", response.status()),
                    Err(_) => {
                        *outcomes.unknown.entry(resource).or_default() += 1;
                        break;
                    }
                }
                index += CONNECTIONS;
            }
            outcomes
        }));
    }
    let mut all = Outcomes::default();
    for task in tasks {
        let outcomes = task.await.unwrap();
        for (resource, hits) in outcomes.counted {
            *all.counted.entry(resource).or_default() += hits;
        }
        for (resource, hits) in outcomes.unknown {
            *all.unknown.entry(resource).or_default() += hits;
        }
    }
    all
}

fn spool_files(directory: &std::path::Path, suffix: &str) -> Vec<(String, u64)> {
    std::fs::read_dir(directory)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.metadata().unwrap().len(),
            )
        })
        .filter(|(name, _)| name.ends_with(suffix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_killed_mid_run_with_a_spool_loses_and_doubles_nothing() {
    let data = TempDir::new().unwrap();
    let spool = TempDir::new().unwrap();
    let first_aggregator = aggregator(&data, None).await;
    let aggregator_address = first_aggregator.address;
    create_resources(&first_aggregator, RESOURCES as usize).await;
    let edge_address = free_address();
    let mut first_edge = start_edge(edge_address, aggregator_address, spool.path());
    wait_until_listening(edge_address).await;

    // Phase one, aggregator up: windows are delivered.
    let progress = Arc::new(AtomicU64::new(0));
    let phase_one = send(edge_address, 0..4_000, Arc::clone(&progress)).await;
    assert!(phase_one.unknown.is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Phase two: the aggregator goes down, hits keep coming, and the edge is killed mid-run
    // with a batch committed but unacknowledged, a pending map and an open window.
    first_aggregator.stop().await;
    progress.store(0, Ordering::SeqCst);
    let sender = tokio::spawn(send(edge_address, 4_000..1_000_000, Arc::clone(&progress)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::SeqCst) < 6_000 {
        assert!(Instant::now() < deadline, "phase two made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first_edge.kill().unwrap();
    first_edge.wait().unwrap();
    let phase_two = sender.await.unwrap();
    assert!(
        !spool_files(spool.path(), ".batch").is_empty(),
        "a committed batch was waiting for the aggregator"
    );
    assert!(
        spool_files(spool.path(), ".journal")
            .iter()
            .any(|(_, size)| *size > 0),
        "journal records were waiting"
    );

    // Phase three: aggregator and edge back on the same data and spool; more hits; SIGTERM.
    let second_aggregator = aggregator(&data, Some(aggregator_address)).await;
    let second_edge = start_edge(edge_address, aggregator_address, spool.path());
    wait_until_listening(edge_address).await;
    let phase_three = send(
        edge_address,
        2_000_000..2_004_000,
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    assert!(phase_three.unknown.is_empty());
    let status = Command::new("kill")
        .args(["-TERM", &second_edge.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut second_edge = second_edge;
    assert!(second_edge.wait().unwrap().success());

    let mut total_unknown = 0;
    let mut uniques_total = 0;
    for resource in 0..RESOURCES {
        let counted = [&phase_one, &phase_two, &phase_three]
            .iter()
            .map(|outcomes| outcomes.counted.get(&resource).copied().unwrap_or(0))
            .sum::<u64>();
        let unknown = phase_two.unknown.get(&resource).copied().unwrap_or(0);
        let (hits, uniques) = count(&second_aggregator, &format!("r{resource}")).await;
        // 50 distinct visitors per resource; replayed records keep their visitor hashes, so the
        // estimate is 50, or one or two low where visitors share a sketch register, never more.
        assert!(
            (47..=50).contains(&uniques),
            "r{resource}: {uniques} uniques for 50"
        );
        uniques_total += uniques;
        // Every answered hit exactly once; a request cut off by the kill counts at most once.
        assert!(
            (counted..=counted + unknown).contains(&hits),
            "r{resource}: {hits} counted at the aggregator, {counted} answered, {unknown} cut off"
        );
        total_unknown += unknown;
    }
    assert!(
        total_unknown <= CONNECTIONS,
        "{total_unknown} requests cut off"
    );
    hitcount_test_support::assert_uniques_near(uniques_total, 50 * RESOURCES);
    // Delivered and acknowledged: the spool holds no batch and no journal record any more, as
    // the edge's own recovery reads it.
    assert!(spool_files(spool.path(), ".batch").is_empty());
    let left = hitcount_edge::spool::recover(spool.path()).unwrap();
    assert!(
        left.batches.is_empty(),
        "{} batches left",
        left.batches.len()
    );
    assert_eq!(left.journal_records, 0, "journal records left in the spool");
    second_aggregator.stop().await;
}
