//! The Spin component: concurrent hits, each in a fresh instance, counted exactly; closed
//! windows delivered by the next request; a flush whose answer was lost, and an aggregator that
//! was down, counted once; bad input refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hitcount_edge_spin::window::Keys;
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{
    BROWSER, EDGE_KEY, Server, aggregator, count, create_resources, delete_edge_keys,
    keys_matching, metric, redis_connection, redis_or_skip, spin, variables,
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
    let left = keys_matching(&mut redis, &format!("hitcount:{edge_id}:w:*")).await;
    assert!(left.is_empty(), "{left:?}");

    delete_edge_keys(&redis_url, &edge_id).await;
    edge.stop().await;
    aggregator.stop().await;
}

/// The body of a chunked HTTP/1.1 message (sizes in hex, each chunk followed by CRLF).
fn dechunk(mut chunks: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = chunks.windows(2).position(|two| two == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&chunks[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        let start = line_end + 2;
        body.extend_from_slice(&chunks[start..start + size]);
        chunks = &chunks[start + size + 2..];
    }
}

/// A front for the aggregator that, while `lose` is set, forwards each delta request and then
/// closes the connection without answering: to the edge, a delivery whose answer was lost after
/// the aggregator applied it, which is what a flushing instance that dies after sending leaves.
/// Otherwise it passes the aggregator's answer back. Raw TCP, so nothing answers on its behalf.
async fn answer_losing_front(target: String, lose: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let client = Client::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let client = client.clone();
            let target = target.clone();
            let lose = Arc::clone(&lose);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 8_192];
                let head_end = loop {
                    let read = socket.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    if let Some(end) = request.windows(4).position(|four| four == b"\r\n\r\n") {
                        break end + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .unwrap_or_default()
                    .split(' ')
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|line| line.split_once(':'))
                    .map(|(name, value)| {
                        (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                    })
                    .collect();
                let chunked = headers
                    .iter()
                    .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
                let length: usize = headers
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .and_then(|(_, value)| value.parse().ok())
                    .unwrap_or(0);
                // The whole body: `length` bytes, or chunks up to the last, empty one.
                let complete = |request: &[u8]| {
                    if chunked {
                        request[head_end..]
                            .windows(5)
                            .any(|five| five == b"0\r\n\r\n")
                    } else {
                        request.len() >= head_end + length
                    }
                };
                while !complete(&request) {
                    let read = socket.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                }
                let body = if chunked {
                    dechunk(&request[head_end..])
                } else {
                    request[head_end..head_end + length].to_vec()
                };
                let mut forwarded = client.post(format!("{target}{path}")).body(body);
                for (name, value) in &headers {
                    if name.starts_with("x-hitcount") || name == "content-type" {
                        forwarded = forwarded.header(name, value);
                    }
                }
                let response = forwarded.send().await.unwrap();
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap();
                if lose.load(Ordering::SeqCst) {
                    // Applied at the aggregator; the edge never hears of it.
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_whose_answer_was_lost_is_resent_and_counted_once() {
    let Some(redis_url) = redis_or_skip().await else {
        return;
    };
    let edge_id = unique_edge_id("lost");
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, &edge_id).await;
    create_resources(&aggregator.url(""), 1).await;
    let lose = Arc::new(AtomicBool::new(true));
    let front = answer_losing_front(aggregator.url(""), Arc::clone(&lose)).await;
    let mut settings = variables(&edge_id, &aggregator, &redis_url);
    settings.insert("aggregator_url".to_owned(), format!("http://{front}"));
    let edge = spin(settings, &redis_url).await;
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

    // The flush sends the closed windows; the aggregator applies them, the answers are lost.
    let flushed = client.post(edge.url("/flush")).send().await.unwrap();
    assert_eq!(flushed.status(), StatusCode::BAD_GATEWAY);
    let body: Value = flushed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "delivery_failed");
    // Each flush stops at its first lost answer; what it sent up to then is applied. (Hits
    // after a window's end flush too, through the same front.)
    let applied = count(&aggregator.url(""), "r0").await.0;
    assert!((1..=100).contains(&applied), "{applied} applied");
    let keys = Keys::new(&edge_id);
    let mut redis = redis_connection(&redis_url).await;
    let windows: Vec<u64> = redis::cmd("ZRANGE")
        .arg(keys.windows())
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!windows.is_empty(), "unacknowledged windows stay in Redis");

    // The next flush sends the same windows again: the same bytes under the same keys, so the
    // aggregator answers duplicate, not conflict, and counts nothing twice.
    let duplicates_before = metric(&aggregator, "hitcount_deltas_duplicate_total").await;
    lose.store(false, Ordering::SeqCst);
    // (A flush delivers at most 16 windows; flush until all are in.)
    flush_until(&edge, &aggregator, 1, 100).await;
    assert_eq!(count(&aggregator.url(""), "r0").await.0, 100);
    let left: Vec<u64> = redis::cmd("ZRANGE")
        .arg(keys.windows())
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "delivered windows leave Redis: {left:?}");
    // At least the window whose answer was lost went again, and was a duplicate.
    assert!(metric(&aggregator, "hitcount_deltas_duplicate_total").await > duplicates_before);
    assert_eq!(
        metric(&aggregator, "hitcount_deltas_conflict_total").await,
        0
    );

    delete_edge_keys(&redis_url, &edge_id).await;
    edge.stop().await;
    aggregator.stop().await;
}

/// Without `/flush`: a request after a window has ended delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_are_delivered_by_the_next_request() {
    let Some(redis_url) = redis_or_skip().await else {
        return;
    };
    let edge_id = unique_edge_id("next");
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, &edge_id).await;
    create_resources(&aggregator.url(""), 1).await;
    let edge = spin(variables(&edge_id, &aggregator, &redis_url), &redis_url).await;
    let client = Client::new();
    for visitor in 0..10 {
        assert_eq!(
            post_hit(&client, &edge.url(""), "r0", visitor)
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    // The windows end (200 ms). Hits in later windows delivered earlier ones; the last window
    // waits for a request: nothing else delivers it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let before = count(&aggregator.url(""), "r0").await.0;
    assert!(
        before < 10,
        "{before}: the last window was delivered without a request"
    );
    assert_eq!(
        post_hit(&client, &edge.url(""), "r0", 10).await.status(),
        StatusCode::NO_CONTENT
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&aggregator.url(""), "r0").await.0 < 10 {
        assert!(
            Instant::now() < deadline,
            "the next request delivered nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last hit's window is still open; it is not in the aggregator yet.
    assert_eq!(count(&aggregator.url(""), "r0").await.0, 10);
    flush_until(&edge, &aggregator, 1, 11).await;
    assert_eq!(count(&aggregator.url(""), "r0").await.0, 11);

    delete_edge_keys(&redis_url, &edge_id).await;
    edge.stop().await;
    aggregator.stop().await;
}

/// With the aggregator down, hits are answered 204 and kept in Redis; a flush says it could not
/// deliver; once the aggregator is up at the same address, every hit arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_aggregator_down_hits_wait_in_redis_and_arrive_once_it_is_back() {
    let Some(redis_url) = redis_or_skip().await else {
        return;
    };
    let edge_id = unique_edge_id("down");
    let directory = TempDir::new().unwrap();
    // The aggregator's data first (its resource), then the aggregator gone.
    let first = aggregator(&directory, &edge_id).await;
    create_resources(&first.url(""), 1).await;
    let address = first.address;
    let mut settings = variables(&edge_id, &first, &redis_url);
    first.stop().await;
    settings.insert("aggregator_url".to_owned(), format!("http://{address}"));
    let edge = spin(settings, &redis_url).await;
    let client = Client::new();
    for visitor in 0..30 {
        assert_eq!(
            post_hit(&client, &edge.url(""), "r0", visitor)
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        // Spread over several windows, so later hits try (and fail) to deliver earlier ones.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let flushed = client.post(edge.url("/flush")).send().await.unwrap();
    assert_eq!(flushed.status(), StatusCode::BAD_GATEWAY);

    let back =
        hitcount_test_support::aggregator(directory.path(), Some(address), &[(&edge_id, EDGE_KEY)])
            .await;
    flush_until(&edge, &back, 1, 30).await;
    let (hits, uniques) = count(&back.url(""), "r0").await;
    assert_eq!(hits, 30);
    // Thirty visitors: exact, or one low where two share a sketch register.
    assert!((29..=30).contains(&uniques), "{uniques}");

    delete_edge_keys(&redis_url, &edge_id).await;
    edge.stop().await;
    back.stop().await;
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
    assert_eq!(
        refused.headers()["x-hitcount-result"],
        "invalid_resource_id"
    );
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
