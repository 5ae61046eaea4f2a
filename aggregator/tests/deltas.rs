//! Signed, idempotent delta batches from edges.

use hitcount_aggregator::now_ms;
use hitcount_wire::{DeltaBatch, MINUTE_MS};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{
    Api, EDGE_ID, EDGE_SECRET, Server, batch, batch_from, error_code, post_delta, post_delta_bytes,
};

#[tokio::test]
async fn deltas_apply_once_and_replays_change_nothing() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    api.create_resource("blog").await;

    let first = batch(0, &[("home", 10, &["a", "b", "c"]), ("blog", 4, &["a"])]);
    let (status, value) = post_delta(&server, &first).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["status"], "applied");
    assert_eq!(value["hits"], 14);
    assert_eq!(api.count("home", "5m").await, (10, 3));

    // The same batch again, e.g. a retry after a lost response: a duplicate, nothing changes.
    for _ in 0..3 {
        let (status, value) = post_delta(&server, &first).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value["status"], "duplicate");
    }
    assert_eq!(api.count("home", "5m").await, (10, 3));

    // The same key with a different body is a conflict, and changes nothing either.
    let forged = batch(0, &[("home", 999, &[])]);
    let (status, value) = post_delta(&server, &forged).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "sequence_conflict")
    );
    assert_eq!(api.count("home", "5m").await, (10, 3));

    // The next sequence number, and a new boot epoch restarting at 0, both apply.
    let (status, _) = post_delta(&server, &batch(1, &[("home", 5, &["c", "d"])])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, value) =
        post_delta(&server, &batch_from(EDGE_ID, 2, 0, &[("home", 1, &["e"])])).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("applied"))
    );
    assert_eq!(api.count("home", "5m").await, (16, 5));

    // Entries for unknown resources are reported, not counted, and do not block the batch.
    let (status, value) =
        post_delta(&server, &batch(2, &[("gone", 3, &[]), ("home", 1, &[])])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value["unknown_resource_entries"], 1);
    assert_eq!(value["hits"], 1);
    assert_eq!(api.count("home", "5m").await.0, 17);
    server.stop().await;
}

#[tokio::test]
async fn uniques_merge_across_edges_and_with_direct_hits() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let (status, key) = api.post("/edge-keys", json!({"edge_id": "edge-two"})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let second_secret = key["secret"].as_str().unwrap().to_owned();

    let visitors: Vec<String> = (0..3_000).map(|index| format!("visitor-{index}")).collect();
    let refs: Vec<&str> = visitors.iter().map(String::as_str).collect();
    // Edge one saw visitors 0..2000, edge two 1000..3000, direct hits 2500..3000 again.
    let (status, _) = post_delta(&server, &batch(0, &[("home", 2_000, &refs[..2_000])])).await;
    assert_eq!(status, StatusCode::OK);
    let two = batch_from("edge-two", 1, 0, &[("home", 2_000, &refs[1_000..])]);
    let (status, value) = post_delta_bytes(
        &server,
        "edge-two",
        &second_secret,
        now_ms(),
        two.encode().unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let hits: Vec<_> = refs[2_500..]
        .iter()
        .map(|visitor| json!({"resource_id": "home", "visitor_id": visitor}))
        .collect();
    let (status, _) = api.post("/hits", json!({"hits": hits})).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (count, uniques) = api.count("home", "5m").await;
    assert_eq!(count, 4_500);
    let error = (uniques as f64 - 3_000.0).abs() / 3_000.0;
    assert!(
        error <= 3.0 * hitcount_wire::SKETCH_STANDARD_ERROR,
        "{uniques} uniques for 3000 visitors"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_deltas_are_refused() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let good = batch(0, &[("home", 1, &[])]).encode().unwrap();
    let now = now_ms();
    // A boot epoch of 2^64 - 1, past what the stores keep (signed 64-bit): the largest one
    // allowed, 2^63 - 1 (eight 0xff bytes and 0x7f as a varint), made one bit longer.
    let mut at_bound = batch(0, &[("home", 1, &[])]);
    at_bound.header.boot_epoch = hitcount_wire::KEY_NUMBER_MAX;
    let at_bound = at_bound.encode().unwrap();
    let bound_varint = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    let at = at_bound
        .windows(bound_varint.len())
        .position(|bytes| bytes == bound_varint)
        .unwrap();
    let mut epoch_too_large = at_bound[..at].to_vec();
    epoch_too_large.extend([0xff; 9]);
    epoch_too_large.push(0x01);
    epoch_too_large.extend(&at_bound[at + bound_varint.len()..]);

    // Tampered body: the signature was made over different bytes.
    let signature = hitcount_wire::auth::sign(EDGE_SECRET.as_bytes(), EDGE_ID, now, &good);
    let mut tampered = good.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let response = server
        .client
        .post(server.url("/v1/deltas"))
        .header("content-type", hitcount_wire::auth::DELTA_CONTENT_TYPE)
        .header(hitcount_wire::auth::EDGE_HEADER, EDGE_ID)
        .header(hitcount_wire::auth::TIMESTAMP_HEADER, now.to_string())
        .header(hitcount_wire::auth::SIGNATURE_HEADER, signature)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let cases = [
        (
            "wrong secret",
            EDGE_ID,
            "not-the-secret-at-all",
            now,
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "unknown edge",
            "edge-nobody",
            EDGE_SECRET,
            now,
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "stale signature",
            EDGE_ID,
            EDGE_SECRET,
            now - 10 * 60_000,
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "not a batch",
            EDGE_ID,
            EDGE_SECRET,
            now,
            b"hello".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_magic",
        ),
        (
            "truncated",
            EDGE_ID,
            EDGE_SECRET,
            now,
            good[..good.len() - 3].to_vec(),
            StatusCode::BAD_REQUEST,
            "truncated",
        ),
        (
            "a boot epoch no store can keep",
            EDGE_ID,
            EDGE_SECRET,
            now,
            epoch_too_large,
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
        ),
    ];
    for (name, edge, secret, timestamp, bytes, status, code) in cases {
        let (got, value) = post_delta_bytes(&server, edge, secret, timestamp, bytes).await;
        assert_eq!((got, error_code(&value).as_str()), (status, code), "{name}");
    }

    // Missing signature headers.
    let response = server
        .client
        .post(server.url("/v1/deltas"))
        .header("content-type", hitcount_wire::auth::DELTA_CONTENT_TYPE)
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Wrong content type.
    let response = server
        .client
        .post(server.url("/v1/deltas"))
        .header("content-type", "application/json")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Over the batch size limit.
    let oversized = vec![0u8; hitcount_wire::BATCH_BYTES_MAX + 1];
    let (status, value) = post_delta_bytes(&server, EDGE_ID, EDGE_SECRET, now, oversized).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    // A key for edge-test cannot speak for another edge.
    let impostor = batch_from("edge-other", 1, 0, &[("home", 1, &[])])
        .encode()
        .unwrap();
    let (status, _) = post_delta_bytes(&server, EDGE_ID, EDGE_SECRET, now, impostor).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Too old to deduplicate, and from the future.
    let mut old: DeltaBatch = batch(5, &[("home", 1, &[])]);
    old.header.window_start_ms = now - 9 * 86_400_000;
    old.header.window_end_ms = old.header.window_start_ms + 1_000;
    old.entries[0].minute = old.header.window_start_ms / MINUTE_MS;
    let (status, value) =
        post_delta_bytes(&server, EDGE_ID, EDGE_SECRET, now, old.encode().unwrap()).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "window_too_old")
    );
    let mut future = batch(6, &[("home", 1, &[])]);
    future.header.window_start_ms = now + 3_600_000;
    future.header.window_end_ms = future.header.window_start_ms + 1_000;
    future.entries[0].minute = future.header.window_start_ms / MINUTE_MS;
    let (status, value) =
        post_delta_bytes(&server, EDGE_ID, EDGE_SECRET, now, future.encode().unwrap()).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "window_in_future")
    );

    assert_eq!(
        api.count("home", "1h").await,
        (0, 0),
        "nothing refused was counted"
    );
    server.stop().await;
}

#[tokio::test]
async fn edge_keys_are_managed_by_admins() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;

    let (status, created) = api
        .post(
            "/edge-keys",
            json!({"edge_id": "edge-paris", "secret": "paris-secret-0123456789"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, listed) = api.get("/edge-keys").await;
    assert_eq!(status, StatusCode::OK);
    let keys = listed["edge_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .any(|key| key["edge_id"] == EDGE_ID && key["source"] == "flag")
    );
    assert!(keys.iter().all(|key| key.get("secret").is_none()));

    let paris = batch_from("edge-paris", 1, 0, &[("home", 2, &[])]);
    let (status, _) = post_delta_bytes(
        &server,
        "edge-paris",
        "paris-secret-0123456789",
        now_ms(),
        paris.encode().unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    for payload in [
        json!({"edge_id": "bad id"}),
        json!({"edge_id": "ok", "secret": "short"}),
    ] {
        let (status, _) = api.post("/edge-keys", payload).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, value) = api.post("/edge-keys", json!({"edge_id": EDGE_ID})).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "edge_key_configured")
    );
    let (status, _) = api.delete(&format!("/edge-keys/{EDGE_ID}")).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, _) = api.delete("/edge-keys/edge-paris").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let next = batch_from("edge-paris", 1, 1, &[("home", 2, &[])]);
    let (status, _) = post_delta_bytes(
        &server,
        "edge-paris",
        "paris-secret-0123456789",
        now_ms(),
        next.encode().unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked key is refused at once"
    );
    let (status, _) = api.delete("/edge-keys/edge-paris").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.count("home", "5m").await.0, 2);

    let reader = api.token_with(&["read"]).await;
    let (status, _) = Api::with_token(&server, &reader).get("/edge-keys").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

/// The skew window is five minutes either way of the aggregator's clock, and only that: a batch
/// signed just inside it, in the past or the future, counts; just outside it, either way, is 401.
#[tokio::test]
async fn signatures_count_within_five_minutes_of_the_clock_either_way() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let skew = hitcount_wire::CLOCK_SKEW_MS_MAX;
    let margin_ms = 2_000;
    let now = now_ms();
    let cases = [
        ("just inside, past", now - skew + margin_ms, StatusCode::OK),
        (
            "just inside, future",
            now + skew - margin_ms,
            StatusCode::OK,
        ),
        (
            "just outside, past",
            now - skew - margin_ms,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "just outside, future",
            now + skew + margin_ms,
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (sequence, (name, timestamp, expected)) in cases.into_iter().enumerate() {
        let bytes = batch(sequence as u64, &[("home", 1, &[])])
            .encode()
            .unwrap();
        let (status, value) =
            post_delta_bytes(&server, EDGE_ID, EDGE_SECRET, timestamp, bytes).await;
        assert_eq!(status, expected, "{name}: {value}");
        if expected == StatusCode::UNAUTHORIZED {
            assert_eq!(error_code(&value), "unauthorized", "{name}");
        }
    }
    assert_eq!(
        api.count("home", "1h").await.0,
        2,
        "the two inside the window"
    );
    server.stop().await;
}
