//! Exact totals at the aggregator through the edge: plain, with every delivery duplicated, and
//! with the aggregator down and back mid-run.

use std::sync::atomic::Ordering;

use tempfile::TempDir;

use crate::support::{
    aggregator, count, create_resources, duplicating_proxy, edge, edge_config, send_hits,
};

const RESOURCES: u64 = 100;
const VISITORS: u64 = 5_000;
const HITS: u64 = 20_000;
const CONNECTIONS: u64 = 16;

async fn assert_exact(aggregator: &crate::support::Server) {
    assert_exact_for(aggregator, HITS, RESOURCES).await;
}

async fn assert_exact_for(aggregator: &crate::support::Server, hits_sent: u64, resources: u64) {
    // Hit i went to resource i % resources from visitor i % visitors; the sizes here give every
    // resource exactly 50 distinct visitors.
    let mut uniques_total = 0;
    for resource in 0..resources {
        let (hits, uniques) = count(aggregator, &format!("r{resource}")).await;
        assert_eq!(hits, hits_sent / resources, "resource r{resource}");
        // With 50 visitors, register collisions (about one resource in thirteen has one) make a
        // single estimate a few low; the visitor hash changes daily, so which resource varies.
        assert!(
            (40..=55).contains(&uniques),
            "resource r{resource}: {uniques} uniques for 50"
        );
        uniques_total += uniques;
    }
    // Summed over resources the estimates must be within three standard errors (0.81% each).
    let truth = 50 * resources;
    let error = (uniques_total as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error <= 3.0 * hitcount_wire::SKETCH_STANDARD_ERROR,
        "{uniques_total} uniques summed over resources for {truth}"
    );
}

/// The scale: 100,000 hits over HTTP across 1,000 resources and 50,000 visitors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_through_the_edge_arrive_exactly_once() {
    const FULL_HITS: u64 = 100_000;
    const FULL_RESOURCES: u64 = 1_000;
    const FULL_VISITORS: u64 = 50_000;
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    create_resources(&aggregator, FULL_RESOURCES as usize).await;
    let edge = edge(edge_config(&format!("http://{}", aggregator.address))).await;
    send_hits(&edge, FULL_HITS, FULL_RESOURCES, FULL_VISITORS, CONNECTIONS).await;
    // A graceful stop closes the windows and delivers them.
    edge.stop().await;
    assert_exact_for(&aggregator, FULL_HITS, FULL_RESOURCES).await;
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_delivery_duplicated_still_counts_once() {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    create_resources(&aggregator, RESOURCES as usize).await;
    let proxy = duplicating_proxy(&aggregator).await;
    let edge = edge(edge_config(&format!("http://{}", proxy.server.address))).await;
    send_hits(&edge, HITS, RESOURCES, VISITORS, CONNECTIONS).await;
    edge.stop().await;
    assert!(
        proxy.duplicates.load(Ordering::SeqCst) > 0,
        "the proxy delivered duplicates"
    );
    assert_exact(&aggregator).await;
    proxy.server.stop().await;
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aggregator_outage_mid_run_loses_and_doubles_nothing() {
    let directory = TempDir::new().unwrap();
    let first = aggregator(&directory, None).await;
    let address = first.address;
    create_resources(&first, RESOURCES as usize).await;
    let edge = edge(edge_config(&format!("http://{address}"))).await;
    send_hits(&edge, HITS / 2, RESOURCES, VISITORS, CONNECTIONS).await;
    first.stop().await;
    // While the aggregator is down the edge keeps counting and retrying.
    send_hits_offset(&edge).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let second = aggregator(&directory, Some(address)).await;
    edge.stop().await;
    assert_exact(&second).await;
    second.stop().await;
}

/// The second half of the hits (indexes HITS/2 .. HITS), so the totals match `assert_exact`.
async fn send_hits_offset(edge: &crate::support::Server) {
    let client = reqwest::Client::new();
    for index in HITS / 2..HITS {
        let visitor = index % VISITORS;
        let response = client
            .post(edge.url("/hit"))
            .header("user-agent", crate::support::BROWSER)
            .header(
                "x-forwarded-for",
                format!(
                    "10.{}.{}.{}",
                    visitor >> 16,
                    (visitor >> 8) & 255,
                    visitor & 255
                ),
            )
            .body(format!("{{\"resource_id\":\"r{}\"}}", index % RESOURCES))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
}
