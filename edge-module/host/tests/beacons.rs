//! Beacon endpoints: what is counted, what is refused and how, and read-your-writes.

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{BROWSER, aggregator, count, create_resources, edge, edge_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_beacons_are_refused_and_nothing_is_counted() {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    create_resources(&aggregator, 1).await;
    let edge = edge(edge_config(&format!("http://{}", aggregator.address))).await;
    let client = Client::new();
    hitcount_test_support::assert_bad_beacons_refused(&edge.url("")).await;
    let prefetch = client
        .post(edge.url("/hit"))
        .header("user-agent", BROWSER)
        .header("sec-purpose", "prefetch;prerender")
        .body("{\"resource_id\":\"r0\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(prefetch.headers()["x-hitcount-result"], "prefetch");
    let oversized = client
        .post(edge.url("/hit"))
        .header("user-agent", BROWSER)
        .body(format!(
            "{{\"resource_id\":\"r0\",\"pad\":\"{}\"}}",
            "x".repeat(5_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let refusal: serde_json::Value = oversized.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "body_too_large", "{refusal}");

    // The pixel always answers a 43-byte GIF; the header says what happened.
    for (query, result) in [
        ("", "invalid_resource_id"),
        ("?r=bad%20id", "invalid_resource_id"),
        ("?r=r0", "bot"),
    ] {
        let response = client
            .get(edge.url(&format!("/hit.gif{query}")))
            .header("user-agent", "curl/8")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "image/gif");
        assert_eq!(response.headers()["x-hitcount-result"], result, "{query}");
        assert_eq!(response.bytes().await.unwrap().len(), 43);
    }

    // CORS preflight for beacons from any site.
    let preflight = client
        .request(reqwest::Method::OPTIONS, edge.url("/hit"))
        .header("origin", "https://blog.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    edge.stop().await;
    assert_eq!(
        count(&aggregator, "r0").await,
        (0, 0),
        "nothing refused was counted"
    );
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pixel_counts_and_reads_include_unflushed_hits() {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    create_resources(&aggregator, 1).await;
    let mut config = edge_config(&format!("http://{}", aggregator.address));
    // A long window, so the hits below are still at the edge when read.
    config.window_ms = 10_000;
    let edge = edge(config).await;
    let client = Client::new();
    for visitor in 0..3 {
        let response = client
            .get(edge.url("/hit.gif?r=r0"))
            .header("user-agent", BROWSER)
            .header("x-forwarded-for", format!("192.0.2.{visitor}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-hitcount-result"], "counted");
    }
    let read: Value = client
        .get(edge.url("/hits/r0?window=5m"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["count"], 3, "{read}");
    assert_eq!(read["unacknowledged"], 3);
    assert_eq!(count(&aggregator, "r0").await.0, 0, "not shipped yet");
    edge.stop().await;
    assert_eq!(count(&aggregator, "r0").await, (3, 3));
    aggregator.stop().await;
}
