//! The edge's bounds over HTTP: with the aggregator unreachable, a beacon that would need a
//! counter the window and the pending map have no room for, or a spool past `--spool-bytes-max`,
//! gets 503 `full` with `Retry-After`; nothing counted is dropped, and once the aggregator is back
//! the same beacon is counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use tempfile::TempDir;

use crate::support::{
    BROWSER, aggregator, count, create_resources, edge, edge_config, free_address,
};

/// Sends one beacon for `resource_id`; the status and the `x-hitcount-result` header.
async fn beacon(
    client: &Client,
    edge: &crate::support::Server,
    resource_id: &str,
) -> (StatusCode, String) {
    let response = client
        .post(edge.url("/hit"))
        .header("content-type", "text/plain")
        .header("user-agent", BROWSER)
        .body(format!("{{\"resource_id\":\"{resource_id}\"}}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let result = response.headers()["x-hitcount-result"]
        .to_str()
        .unwrap()
        .to_owned();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert_eq!(response.headers()["retry-after"], "1");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "full", "{body}");
    }
    (status, result)
}

/// An aggregator's data with `resources` resources, for an aggregator started later: the edge
/// must find them when it first delivers.
async fn prepared_data(resources: usize) -> TempDir {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    create_resources(&aggregator, resources).await;
    aggregator.stop().await;
    directory
}

/// Resends a refused beacon the way a page would (after Retry-After) until it is counted.
async fn beacon_until_counted(client: &Client, edge: &crate::support::Server, resource_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match beacon(client, edge, resource_id).await {
            (StatusCode::NO_CONTENT, _) => return,
            (StatusCode::SERVICE_UNAVAILABLE, _) => {
                assert!(Instant::now() < deadline, "{resource_id} never counted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{resource_id}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_and_pending_map_answer_503_full_and_lose_nothing() {
    const ENTRIES_MAX: u32 = 2;
    let directory = prepared_data(20).await;
    let aggregator_address = free_address();
    let mut config = edge_config(&format!("http://{aggregator_address}"));
    config.window_entries_max = ENTRIES_MAX;
    config.pending_entries_max = ENTRIES_MAX;
    config.instances = 1;
    let edge = edge(config).await;
    let client = Client::new();

    // Distinct resources while the aggregator is down: the window, then the pending map fill.
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused = None;
    for index in 0..20 {
        let resource_id = format!("r{index}");
        match beacon(&client, &edge, &resource_id).await {
            (StatusCode::NO_CONTENT, result) => {
                assert_eq!(result, "counted");
                *counted.entry(resource_id).or_default() += 1;
            }
            (StatusCode::SERVICE_UNAVAILABLE, result) => {
                assert_eq!(result, "full");
                refused = Some(resource_id);
                break;
            }
            other => panic!("{resource_id}: {other:?}"),
        }
    }
    let refused = refused.expect("a beacon was refused as full");
    // The window and the pending map hold ENTRIES_MAX counters each, and one batch may be
    // waiting for its first attempt: no more.
    assert!(
        counted.len() as u32 <= 3 * ENTRIES_MAX,
        "{} counters held with bounds of {ENTRIES_MAX}",
        counted.len()
    );
    // A counter the edge already holds still counts.
    let held = counted.keys().next_back().unwrap().clone();
    assert_eq!(
        beacon(&client, &edge, &held).await.0,
        StatusCode::NO_CONTENT
    );
    *counted.get_mut(&held).unwrap() += 1;

    // The aggregator comes up where the edge looks for it; the refused beacon, resent, counts.
    let aggregator = aggregator(&directory, Some(aggregator_address)).await;
    beacon_until_counted(&client, &edge, &refused).await;
    *counted.entry(refused).or_default() += 1;
    edge.stop().await;
    for index in 0..20 {
        let resource_id = format!("r{index}");
        let expected = counted.get(&resource_id).copied().unwrap_or(0);
        assert_eq!(
            count(&aggregator, &resource_id).await.0,
            expected,
            "{resource_id}"
        );
    }
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_past_its_bound_answers_503_full_until_deliveries_shrink_it() {
    // A few windows of journal records and batch files; an outage fills it in a second or two.
    // (Below one window's journal the bound could never be left: the file that holds the last
    // records is retired by the next window's commit, which needs another hit.)
    const SPOOL_BYTES_MAX: u64 = 512;
    let directory = prepared_data(1).await;
    let spool = TempDir::new().unwrap();
    let aggregator_address = free_address();
    let mut config = edge_config(&format!("http://{aggregator_address}"));
    config.spool_dir = Some(spool.path().to_path_buf());
    config.spool_bytes_max = SPOOL_BYTES_MAX;
    let edge = edge(config).await;
    let client = Client::new();

    let mut counted = 0;
    let full = loop {
        let (status, result) = beacon(&client, &edge, "r0").await;
        match status {
            StatusCode::NO_CONTENT => counted += 1,
            StatusCode::SERVICE_UNAVAILABLE => break result,
            other => panic!("{other}"),
        }
        assert!(counted < 1_000, "the spool never filled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(full, "full");
    assert!(counted > 0);

    let aggregator = aggregator(&directory, Some(aggregator_address)).await;
    beacon_until_counted(&client, &edge, "r0").await;
    counted += 1;
    edge.stop().await;
    assert_eq!(count(&aggregator, "r0").await.0, counted);
    aggregator.stop().await;
}
