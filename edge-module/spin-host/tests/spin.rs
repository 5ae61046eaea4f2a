//! The Spin component: concurrent hits, each in a fresh instance, counted exactly; a flush that
//! crashed after sending is counted once; bad input refused.

use std::time::{Duration, Instant};

use hitcount_edge_spin::window::{Keys, window_batches};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{
    BROWSER, EDGE_KEY, Server, aggregator, count, create_resources, delete_edge_keys, metric,
    redis_connection, redis_or_skip, spin, variables,
};

/// An edge id no other test run shares, so Redis keys never collide.
fn unique_edge_id(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("spin-{name}-{}", nanos % 1_000_000_000_000)
}

async fn post_hit(client: &Client, edge: &str, resource: &str, visitor: u64) -> reqwest::Response {
    client
        .post(format!("{edge}/hit"))
        .header("content-type", "text/plain")
        // One machine sends every hit, so visitors differ by user agent.
        .header("user-agent", format!("{BROWSER} visitor/{visitor}"))
        .body(format!("{{\"resource_id\":\"{resource}\"}}"))
        .send()
        .await
        .unwrap()
}

/// Flushes until the aggregator has `expected` hits for `resources`, or fails after a while.
async fn flush_until(edge: &Server, aggregator: &Server, resources: u64, expected: u64) {
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The windows the hits went to close one window (200 ms) later.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let flushed = client.post(edge.url("/flush")).send().await.unwrap();
        assert_eq!(
            flushed.status(),
            StatusCode::OK,
            "{:?}",
            flushed.text().await
        );
        let mut total = 0;
        for resource in 0..resources {
            total += count(&aggregator.url(""), &format!("r{resource}")).await.0;
        }
        if total >= expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{total} of {expected} hits delivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_hits_in_fresh_instances_are_counted_exactly() {
    let Some(redis_url) = redis_or_skip().await else {
        return;
    };
    const RESOURCES: u64 = 20;
    const VISITORS: u64 = 500;
    const HITS: u64 = 3_000;
    const CONNECTIONS: u64 = 16;
    let edge_id = unique_edge_id("exact");
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, &edge_id).await;
    create_resources(&aggregator.url(""), RESOURCES as usize).await;
    let edge = spin(variables(&edge_id, &aggregator, &redis_url), &redis_url).await;

    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let url = edge.url("");
        tasks.push(tokio::spawn(async move {
            let client = Client::new();
            let mut index = connection;
            while index < HITS {
                let response = post_hit(
                    &client,
                    &url,
                    &format!("r{}", index % RESOURCES),
                    index % VISITORS,
                )
                .await;
                assert_eq!(response.status(), StatusCode::NO_CONTENT, "{url}");
                assert_eq!(response.headers()["x-hitcount-result"], "counted");
                index += CONNECTIONS;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    flush_until(&edge, &aggregator, RESOURCES, HITS).await;

    // Hit i went to resource i % 20 from visitor i % 500: every resource has 150 hits from 25
    // visitors.
    let mut uniques_total = 0;
    for resource in 0..RESOURCES {
        let (hits, uniques) = count(&aggregator.url(""), &format!("r{resource}")).await;
        assert_eq!(hits, HITS / RESOURCES, "r{resource}");
        assert!(
            (20..=28).contains(&uniques),
            "r{resource}: {uniques} uniques for 25"
        );
        uniques_total += uniques;
    }
    hitcount_test_support::assert_uniques_near(uniques_total, 25 * RESOURCES);
    // Delivered windows leave nothing behind in Redis.
    let mut redis = redis_connection(&redis_url).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("hitcount:{edge_id}:w:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    delete_edge_keys(&redis_url, &edge_id).await;
    edge.stop().await;
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_crashed_after_sending_is_counted_once() {
    let Some(redis_url) = redis_or_skip().await else {
        return;
    };
    let edge_id = unique_edge_id("crash");
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, &edge_id).await;
    create_resources(&aggregator.url(""), 1).await;
    let edge = spin(variables(&edge_id, &aggregator, &redis_url), &redis_url).await;
    let client = Client::new();
    for visitor in 0..100 {
        assert_eq!(
            post_hit(&client, &edge.url(""), "r0", visitor % 40)
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    tokio::time::sleep(Duration::from_millis(450)).await;

    // Do what a flusher does up to its crash: close the windows, read them, send their batches,
    // and stop before deleting anything.
    let keys = Keys::new(&edge_id);
    let mut redis = redis_connection(&redis_url).await;
    let windows: Vec<u64> = redis::cmd("ZRANGE")
        .arg(keys.windows())
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!windows.is_empty());
    let duplicates_before = metric(&aggregator.url(""), "hitcount_deltas_duplicate_total").await;
    for window in &windows {
        let _: i64 = redis::cmd("SADD")
            .arg(keys.closed())
            .arg(window)
            .query_async(&mut redis)
            .await
            .unwrap();
        let counters: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(keys.hits(*window))
            .query_async(&mut redis)
            .await
            .unwrap();
        let visitors: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.visitors(*window))
            .query_async(&mut redis)
            .await
            .unwrap();
        for batch in window_batches(&edge_id, 200, *window, &counters, &visitors).unwrap() {
            let timestamp = hitcount_aggregator::now_ms();
            let signature =
                hitcount_wire::auth::sign(EDGE_KEY.as_bytes(), &edge_id, timestamp, &batch.bytes);
            let response = client
                .post(aggregator.url("/v1/deltas"))
                .header("content-type", hitcount_wire::auth::DELTA_CONTENT_TYPE)
                .header(hitcount_wire::auth::EDGE_HEADER, &edge_id)
                .header(hitcount_wire::auth::TIMESTAMP_HEADER, timestamp.to_string())
                .header(hitcount_wire::auth::SIGNATURE_HEADER, signature)
                .body(batch.bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], "applied");
        }
    }
    assert_eq!(count(&aggregator.url(""), "r0").await.0, 100);

    // The next flush (the retry) sends the same windows again: the same bytes under the same
    // keys, so the aggregator answers duplicate, not conflict, and counts nothing twice.
    let flushed: Value = client
        .post(edge.url("/flush"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flushed["flushed_windows"], windows.len());
    assert_eq!(count(&aggregator.url(""), "r0").await.0, 100);
    assert!(
        metric(&aggregator.url(""), "hitcount_deltas_duplicate_total").await
            >= duplicates_before + windows.len() as u64
    );
    assert_eq!(
        metric(&aggregator.url(""), "hitcount_deltas_conflict_total").await,
        0
    );

    delete_edge_keys(&redis_url, &edge_id).await;
    edge.stop().await;
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_not_counted() {
    let Some(redis_url) = redis_or_skip().await else {
        return;
    };
    let edge_id = unique_edge_id("bad");
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, &edge_id).await;
    create_resources(&aggregator.url(""), 1).await;
    let edge = spin(variables(&edge_id, &aggregator, &redis_url), &redis_url).await;
    let client = Client::new();
    hitcount_test_support::assert_bad_beacons_refused(&edge.url("")).await;
    // The pixel always answers the GIF; a counted one and a refused one.
    let pixel = client
        .get(edge.url("/hit.gif?r=r0"))
        .header("user-agent", BROWSER)
        .send()
        .await
        .unwrap();
    assert_eq!(pixel.headers()["x-hitcount-result"], "counted");
    assert_eq!(pixel.bytes().await.unwrap().len(), 43);
    let refused = client.get(edge.url("/hit.gif")).send().await.unwrap();
    assert_eq!(refused.headers()["x-hitcount-result"], "invalid-resource");
    assert_eq!(
        client
            .get(edge.url("/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    flush_until(&edge, &aggregator, 1, 1).await;
    assert_eq!(
        count(&aggregator.url(""), "r0").await.0,
        1,
        "only the pixel hit counted"
    );

    delete_edge_keys(&redis_url, &edge_id).await;
    edge.stop().await;
    aggregator.stop().await;
}
