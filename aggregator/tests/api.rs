//! Every endpoint's success path and its listed errors, over real HTTP.

use std::time::Duration;

use hitcount_aggregator::now_ms;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Api, Server, body, error_code, openapi_document, test_config};

#[tokio::test]
async fn resources_lifecycle() {
    let server = Server::start().await;
    let api = Api::admin(&server);

    let (status, created) = api
        .post(
            "/resources",
            json!({"name": "Home page", "retention_days": 30}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let generated = created["resource_id"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 16);
    assert_eq!(created["name"], "Home page");
    assert_eq!(created["retention_days"], 30);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let (status, chosen) = api
        .post(
            "/resources",
            json!({"name": "Pricing", "resource_id": "pricing"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{chosen}");
    assert_eq!(chosen["resource_id"], "pricing");

    let (status, value) = api.post("/resources", json!({"name": "Home page"})).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "name_taken")
    );
    let (status, value) = api
        .post(
            "/resources",
            json!({"name": "Other", "resource_id": "pricing"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "resource_id_taken")
    );

    for (payload, code) in [
        (json!({"name": ""}), "invalid_name"),
        (json!({"name": "x".repeat(201)}), "invalid_name"),
        (json!({"name": " \t "}), "invalid_name"),
        // PostgreSQL's text cannot hold NUL: this one was a 500 there (found by .ci/api-fuzz).
        (json!({"name": "nul\u{0}"}), "invalid_name"),
        (
            json!({"name": "a", "retention_days": 0}),
            "invalid_retention",
        ),
        (
            json!({"name": "a", "retention_days": 40_000}),
            "invalid_retention",
        ),
        (
            json!({"name": "a", "resource_id": "has space"}),
            "invalid_resource_id",
        ),
        (json!({"name": "a", "colour": "red"}), "invalid_request"),
        (json!({"nom": "a"}), "invalid_request"),
    ] {
        let (status, value) = api.post("/resources", payload.clone()).await;
        assert_eq!(
            (status, error_code(&value).as_str()),
            (StatusCode::BAD_REQUEST, code),
            "{payload}"
        );
    }

    let (status, one) = api.get("/resources/pricing").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["name"], "Pricing");
    let (status, value) = api.get("/resources/nope").await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let (status, page) = api.get("/resources?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["resources"].as_array().unwrap().len(), 1);
    let after = page["next_after"].as_str().unwrap().to_owned();
    let (_, next) = api.get(&format!("/resources?limit=1&after={after}")).await;
    assert_eq!(next["resources"].as_array().unwrap().len(), 1);
    assert!(next["next_after"].is_null());
    let (status, value) = api.get("/resources?limit=0").await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_limit")
    );

    // Deleting purges counts and makes later hits 404.
    let (status, _) = api.post("/hits", json!({"resource_id": "pricing"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = api.delete("/resources/pricing").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, value) = api.post("/hits", json!({"resource_id": "pricing"})).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _) = api.get("/hits/pricing?window=1h").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.delete("/resources/pricing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.create_resource("pricing").await;
    assert_eq!(
        api.count("pricing", "1h").await,
        (0, 0),
        "counts were purged"
    );
    server.stop().await;
}

#[tokio::test]
async fn tokens_and_scopes() {
    let server = Server::start().await;
    let admin = Api::admin(&server);
    admin.create_resource("home").await;

    // No token, a malformed header, an unknown token.
    let response = server
        .client
        .get(server.url("/resources"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("www-authenticate").is_some());
    let (status, value) = body(response).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let response = server
        .client
        .get(server.url("/resources"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = Api::with_token(&server, "hct_wrong")
        .get("/resources")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let read = admin.token_with(&["read"]).await;
    let ingest = admin.token_with(&["ingest"]).await;
    let reader = Api::with_token(&server, &read);
    let writer = Api::with_token(&server, &ingest);

    let (status, value) = reader.post("/resources", json!({"name": "x"})).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, _) = reader.post("/hits", json!({"resource_id": "home"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = writer.post("/hits", json!({"resource_id": "home"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = writer.get("/hits/home").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(reader.count("home", "1h").await.0, 1);
    let (status, _) = reader.get("/tokens").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, listed) = admin.get("/tokens").await;
    assert_eq!(status, StatusCode::OK);
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(
        tokens.iter().all(|token| token.get("token").is_none()),
        "secrets are never listed"
    );
    let reader_id = tokens
        .iter()
        .find(|token| token["scopes"] == json!(["read"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for payload in [
        json!({"name": "x", "scopes": []}),
        json!({"name": "x", "scopes": ["root"]}),
    ] {
        let (status, _) = admin.post("/tokens", payload).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    // An admin token made through the API can do what the bootstrap token does: manage
    // resources, tokens and edge keys, and read and ingest. Its own revocation ends it.
    let (status, made) = admin
        .post("/tokens", json!({"name": "deputy", "scopes": ["admin"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let second_admin = made["token"].as_str().unwrap().to_owned();
    let deputy_id = made["id"].as_str().unwrap().to_owned();
    let deputy = Api::with_token(&server, &second_admin);
    let (status, value) = deputy
        .post(
            "/resources",
            json!({"name": "Deputy", "resource_id": "deputy"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let (status, value) = deputy
        .post(
            "/tokens",
            json!({"name": "made by the deputy", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let (status, value) = deputy
        .post(
            "/edge-keys",
            json!({"edge_id": "edge-deputy", "secret": "deputy-edge-secret-0123456789"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let (status, _) = deputy.post("/hits", json!({"resource_id": "deputy"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(deputy.count("deputy", "1h").await.0, 1);
    let (status, listed) = deputy.get("/tokens").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|token| token["id"] == deputy_id.as_str())
    );
    let (status, _) = admin.delete(&format!("/tokens/{deputy_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = deputy.get("/tokens").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = admin.delete(&format!("/tokens/{reader_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = reader.get("/resources").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked token stops working at once"
    );
    let (status, _) = admin.delete(&format!("/tokens/{reader_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The flag's token cannot be revoked through the API: the next start would restore it.
    let (status, value) = admin.delete("/tokens/bootstrap-admin").await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "admin_token_configured"),
        "{value}"
    );
    let (status, _) = admin.get("/tokens").await;
    assert_eq!(status, StatusCode::OK, "and it still works");
    server.stop().await;
}

#[tokio::test]
async fn hits_are_counted_exactly_and_visible_at_once() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    api.create_resource("blog").await;

    let (status, value) = api
        .post(
            "/hits",
            json!({"resource_id": "home", "visitor_id": "alice"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(value["accepted"], 1);
    // Read-after-write: a 202 in durable mode means committed, so the very next read sees it.
    assert_eq!(api.count("home", "5m").await, (1, 1));

    let hits: Vec<Value> = (0..500)
        .map(|index| json!({"resource_id": if index % 5 == 0 { "blog" } else { "home" }, "visitor_id": format!("v{}", index % 50)}))
        .collect();
    let (status, value) = api.post("/hits", json!({"hits": hits})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    assert_eq!(value["accepted"], 500);
    assert_eq!(api.count("home", "5m").await, (401, 41));
    assert_eq!(api.count("blog", "5m").await, (100, 10));

    // Concurrent requests are group-committed; none is lost or counted twice.
    let mut tasks = Vec::new();
    for index in 0..200 {
        let client = server.client.clone();
        let url = server.url("/hits");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(crate::support::ADMIN_TOKEN)
                .json(&json!({"resource_id": "blog", "visitor_id": format!("c{index}")}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::ACCEPTED);
    }
    assert_eq!(api.count("blog", "5m").await, (300, 210));

    // Timestamps: RFC 3339 and Unix ms, placed in their own minute.
    let two_hours_ago = now_ms() - 2 * 3_600_000;
    let (status, _) = api
        .post(
            "/hits",
            json!({"resource_id": "home", "timestamp": two_hours_ago}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, value) = api
        .post(
            "/hits",
            json!({"resource_id": "home", "timestamp": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "timestamp_out_of_range")
    );
    assert_eq!(api.count("home", "5m").await.0, 401);
    assert_eq!(api.count("home", "3h").await.0, 402);
    server.stop().await;
}

#[tokio::test]
async fn bad_hits_are_refused_and_nothing_is_counted() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;

    for (payload, status, code) in [
        (
            json!({"hits": [{"resource_id": "home"}, {"resource_id": "missing"}]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"resource_id": "bad id"}),
            StatusCode::BAD_REQUEST,
            "invalid_resource_id",
        ),
        (
            json!({"hits": []}),
            StatusCode::BAD_REQUEST,
            "invalid_hit_count",
        ),
        (
            json!({"hits": vec![json!({"resource_id": "home"}); 1001]}),
            StatusCode::BAD_REQUEST,
            "invalid_hit_count",
        ),
        (
            json!({"resource_id": "home", "hits": [{"resource_id": "home"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (json!({}), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            json!({"resource_id": "home", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"resource_id": "home", "visitor_id": "v".repeat(257)}),
            StatusCode::BAD_REQUEST,
            "invalid_visitor_id",
        ),
        (
            json!({"resource_id": "home", "timestamp": now_ms() + 3_600_000}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "timestamp_out_of_range",
        ),
        (
            json!({"resource_id": "home", "timestamp": "yesterday"}),
            StatusCode::BAD_REQUEST,
            "invalid_time",
        ),
        (
            json!({"resource_id": 7}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (got, value) = api.post("/hits", payload.clone()).await;
        assert_eq!(
            (got, error_code(&value).as_str()),
            (status, code),
            "{payload}"
        );
    }

    let (status, value) = api
        .post_raw("/hits", "application/json", "{\"resource_id\": ")
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let (status, value) = api
        .post_raw("/hits", "text/plain", "{\"resource_id\": \"home\"}")
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    let oversized = format!(
        "{{\"resource_id\": \"home\", \"visitor_id\": \"{}\"}}",
        "x".repeat(1_100_000)
    );
    let (status, value) = api.post_raw("/hits", "application/json", oversized).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    assert_eq!(
        api.count("home", "1h").await,
        (0, 0),
        "no rejected request counted anything"
    );
    server.stop().await;
}

#[tokio::test]
async fn queries_validate_windows_and_shape_series() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let (status, _) = api
        .post("/hits", json!({"resource_id": "home", "visitor_id": "a"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (status, value) = api.get("/hits/home?window=24h&granularity=minute").await;
    assert_eq!(status, StatusCode::OK);
    let series = value["series"].as_array().unwrap();
    assert!(
        series.len() == 1_440 || series.len() == 1_441,
        "{}",
        series.len()
    );
    assert_eq!(
        series
            .iter()
            .map(|point| point["count"].as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    assert_eq!(value["granularity"], "minute");

    let (_, value) = api.get("/hits/home?window=7d").await;
    assert_eq!(value["granularity"], "hour");
    assert_eq!(value["count"], 1);
    let (_, value) = api.get("/hits/home?window=365d").await;
    assert_eq!(value["granularity"], "day");
    assert_eq!(value["count"], 1);
    assert_eq!(value["uniques"], 1);
    let (_, value) = api.get("/hits/home").await;
    assert_eq!(value["count"], 1, "the default window is the last 24 hours");
    // The boundaries the README gives: minute up to 6 h, hour up to 14 days, day beyond.
    for (window, granularity) in [
        ("6h", "minute"),
        ("21601s", "hour"),
        ("14d", "hour"),
        ("1209601s", "day"),
    ] {
        let (status, value) = api.get(&format!("/hits/home?window={window}")).await;
        assert_eq!(status, StatusCode::OK, "{window}: {value}");
        assert_eq!(value["granularity"], granularity, "{window}");
        assert_eq!(value["count"], 1, "{window}");
    }

    let now = now_ms();
    let (status, value) = api
        .get(&format!(
            "/hits/home?start_time={}&end_time={}",
            now - 60_000,
            now + 60_000
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value["count"], 1);
    let (status, value) = api
        .get("/hits/home?start_time=2026-01-01T00:00:00Z&end_time=2026-01-01T01:00:00Z&granularity=day")
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["period"]["start_time"], "2026-01-01T00:00:00Z");
    assert_eq!(value["period"]["end_time"], "2026-01-02T00:00:00Z");

    // Malformed (400), and well-formed but unprocessable (422: relations the schema cannot state).
    let malformed = StatusCode::BAD_REQUEST;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for (query, expected, code) in [
        (
            format!("start_time={now}&end_time={now}"),
            unprocessable,
            "invalid_time_range",
        ),
        (
            format!("start_time={}&end_time={}", now, now - 1),
            unprocessable,
            "invalid_time_range",
        ),
        (format!("start_time={now}"), malformed, "invalid_time_range"),
        (
            "start_time=soon&end_time=later".to_owned(),
            malformed,
            "invalid_time",
        ),
        ("window=forever".to_owned(), malformed, "invalid_window"),
        (
            "window=1h&start_time=1".to_owned(),
            malformed,
            "invalid_time_range",
        ),
        (
            "window=30d&granularity=minute".to_owned(),
            unprocessable,
            "granularity_not_kept",
        ),
        (
            "window=5000w&granularity=day".to_owned(),
            unprocessable,
            "too_many_points",
        ),
        ("granularity=second".to_owned(), malformed, "invalid_query"),
        ("window=1h&cache=1".to_owned(), malformed, "invalid_query"),
    ] {
        let (status, value) = api.get(&format!("/hits/home?{query}")).await;
        assert_eq!(
            (status, error_code(&value).as_str()),
            (expected, code),
            "{query}"
        );
    }
    let (status, _) = api.get("/hits/missing?window=1h").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let directory = tempfile::TempDir::new().unwrap();
    let mut config = test_config(directory.path());
    config.rate_limit_token_per_second = 1;
    let server = Server::start_with(config).await;
    let api = Api::admin(&server);
    // The bucket holds two seconds' worth, so the third immediate request is refused, and so is
    // every later one until a second has passed: Retry-After says exactly that.
    let mut statuses = Vec::new();
    let mut retry_after_s = Vec::new();
    for _ in 0..4 {
        let response = server
            .client
            .get(server.url("/resources"))
            .bearer_auth(crate::support::ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after_s.push(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
            let (_, value) = body(response).await;
            assert_eq!(error_code(&value), "rate_limited");
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // One request a second refills in at most a second: the answer is the wait rounded up.
    assert_eq!(retry_after_s, [1, 1]);
    tokio::time::sleep(Duration::from_millis(1_000 * retry_after_s[1] + 50)).await;
    let (status, _) = api.get("/resources").await;
    assert_eq!(status, StatusCode::OK, "the bucket refills by Retry-After");
    let (status, _) = api.get("/resources").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "by one request a second"
    );
    drop(api);
    server.stop().await;

    let directory = tempfile::TempDir::new().unwrap();
    let mut config = test_config(directory.path());
    config.rate_limit_ip_per_second = 1;
    let server = Server::start_with(config).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        // Unauthenticated requests count against the address, so token guessing is limited too.
        let response = server
            .client
            .get(server.url("/resources"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "health checks are never rate limited"
    );
    server.stop().await;
}

#[tokio::test]
async fn operations_endpoints_and_openapi() {
    let server = Server::start().await;
    for path in ["/healthz", "/readyz"] {
        let (status, value) = body(server.client.get(server.url(path)).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(value["status"].is_string());
    }
    let api = Api::admin(&server);
    api.create_resource("home").await;
    api.post("/hits", json!({"resource_id": "home"})).await;
    let metrics = crate::support::metrics_text(&server).await;
    assert!(
        metrics.contains("hitcount_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("hitcount_hits_accepted_total"));
    // Every request is counted and timed, also once its labels' handles are kept per thread
    // (`api/request_metrics.rs`). Other tests share the process's recorder: at least, not exactly.
    let counted = r#"hitcount_http_requests_total{method="POST",route="/hits",status="202"}"#;
    let timed = r#"hitcount_http_request_duration_seconds_count{method="POST",route="/hits"}"#;
    let accepted = "hitcount_hits_accepted_total";
    let before = (
        crate::support::metric(&server, counted).await,
        crate::support::metric(&server, timed).await,
        crate::support::metric(&server, accepted).await,
    );
    for _ in 0..5 {
        api.post("/hits", json!({"resource_id": "home"})).await;
    }
    let after = (
        crate::support::metric(&server, counted).await,
        crate::support::metric(&server, timed).await,
        crate::support::metric(&server, accepted).await,
    );
    assert!(
        after.0 >= before.0 + 5 && after.1 >= before.1 + 5 && after.2 >= before.2 + 5,
        "{before:?} -> {after:?}"
    );

    let (status, value) = body(
        server
            .client
            .get(server.url("/no/such/route"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, value) = body(
        server
            .client
            .put(server.url("/resources"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );

    let document = openapi_document(&server).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    // Every status code the API promises is in the document, so clients can rely on it.
    let promised: &[(&str, &str, &[u16])] = &[
        ("/resources", "post", &[201, 400, 401, 403, 409]),
        ("/resources", "get", &[200, 401]),
        ("/resources/{resource_id}", "get", &[200, 401, 404]),
        ("/resources/{resource_id}", "delete", &[204, 401, 404]),
        ("/hits", "post", &[202, 400, 401, 404, 413, 415, 429]),
        ("/hits/{resource_id}", "get", &[200, 400, 401, 404]),
        ("/v1/deltas", "post", &[200, 400, 401, 409, 413, 422]),
        ("/tokens", "post", &[201, 400, 401, 403]),
        ("/tokens", "get", &[200, 401, 403]),
        ("/tokens/{token_id}", "delete", &[204, 401, 404, 409]),
        ("/edge-keys", "post", &[201, 400, 401, 409]),
        ("/edge-keys", "get", &[200, 401]),
        ("/edge-keys/{edge_id}", "delete", &[204, 404, 409]),
        ("/healthz", "get", &[200]),
        ("/readyz", "get", &[200]),
        ("/metrics", "get", &[200]),
        ("/openapi.json", "get", &[200]),
    ];
    crate::support::assert_documented(&document, promised);
    server.stop().await;
}

/// In fast mode 202 comes before commit; the hit is still visible to queries within a second.
#[tokio::test]
async fn fast_mode_hits_are_visible_within_a_second() {
    let directory = tempfile::TempDir::new().unwrap();
    let mut config = test_config(directory.path());
    config.ack = hitcount_aggregator::config::AckMode::Fast;
    let server = Server::start_with(config).await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    let started = std::time::Instant::now();
    let (status, _) = api.post("/hits", json!({"resource_id": "home"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    while api.count("home", "5m").await.0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not visible within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}

/// The dashboard's three files, embedded in the binary, with the types and the policy that keeps
/// the token it holds to this origin.
#[tokio::test]
async fn the_dashboard_is_served_with_its_policy() {
    let server = Server::start().await;
    for (path, content_type, contains) in [
        ("/", "text/html", "/dashboard/app.js"),
        ("/dashboard/app.js", "text/javascript", "/stats/top"),
        ("/dashboard/app.css", "text/css", ".figure"),
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let policy = header("content-security-policy");
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert!(
            policy.contains("connect-src 'self';"),
            "no other origin without --oidc-client-id: {policy}"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains(contains), "{path} holds {contains}");
    }
    let (status, config) = Api::admin(&server).get("/dashboard/config.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config, serde_json::json!({"oidc": null}), "API tokens only");
    server.stop().await;
}
