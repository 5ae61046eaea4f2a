//! `GET /export`: CSV and the lossless NDJSON, streamed across read chunks.

use base64::Engine;
use hitcount_aggregator::export::EXPORT_RESOURCES_PER_READ_MAX;
use hitcount_aggregator::now_ms;
use hitcount_wire::Sketch;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Api, Server, error_code};

/// The raw answer to `GET path` with the admin token: status, content type, body.
async fn download(server: &Server, path: &str) -> (StatusCode, String, String) {
    let response = server
        .client
        .get(server.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn seed(api: &Api<'_>) {
    for id in ["blog.a", "blog.b", "home"] {
        api.create_resource(id).await;
    }
    let hits: Vec<Value> = [("blog.a", "x"), ("blog.a", "y"), ("blog.a", "x"), ("blog.b", "x"), ("home", "z")]
        .iter()
        .map(|(id, visitor)| json!({"resource_id": id, "visitor_id": visitor, "timestamp": now_ms() - 3_600_000}))
        .collect();
    let (status, value) = api.post("/hits", json!({ "hits": hits })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
}

#[tokio::test]
async fn csv_rows_add_up_to_each_resources_count() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    seed(&api).await;
    let (status, content_type, body) =
        download(&server, "/export?window=24h&granularity=hour").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let mut lines = body.lines();
    assert_eq!(
        lines.next(),
        Some("resource_id,start_time,granularity,count,uniques")
    );
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "one hour of each resource:\n{body}");
    for row in &rows {
        let (count, uniques) = api.count(row[0], "24h").await;
        assert_eq!(
            (
                row[2],
                row[3].parse::<u64>().unwrap(),
                row[4].parse::<u64>().unwrap()
            ),
            ("hour", count, uniques),
            "{row:?}"
        );
    }
    assert_eq!(rows[0][0], "blog.a", "sorted by resource");
    let (_, _, blog) = download(&server, "/export?window=24h&granularity=hour&prefix=blog.").await;
    assert_eq!(
        blog.lines().count(),
        3,
        "the header and blog's two rows:\n{blog}"
    );
    server.stop().await;
}

#[tokio::test]
async fn ndjson_is_lossless_across_every_tier() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    seed(&api).await;
    let (status, content_type, body) = download(&server, "/export?window=24h&format=ndjson").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/x-ndjson");
    let lines: Vec<Value> = body
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let resources: Vec<&str> = lines
        .iter()
        .filter(|line| line["type"] == "resource")
        .map(|line| line["resource_id"].as_str().unwrap())
        .collect();
    assert_eq!(resources, ["blog.a", "blog.b", "home"]);
    for tier in ["minute", "hour", "day"] {
        let cells: Vec<&Value> = lines
            .iter()
            .filter(|line| line["type"] == "cell" && line["granularity"] == tier)
            .collect();
        let total: u64 = cells
            .iter()
            .map(|cell| cell["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 5, "{tier}: every hit once");
        for cell in cells {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(cell["sketch"].as_str().unwrap())
                .unwrap();
            let sketch = Sketch::from_bytes(&bytes).unwrap();
            assert_eq!(sketch.count(), cell["uniques"].as_u64().unwrap(), "{cell}");
        }
    }
    let home = &lines
        .iter()
        .find(|line| line["resource_id"] == "home" && line["type"] == "resource")
        .unwrap();
    assert_eq!(home["name"], "home");
    server.stop().await;
}

#[tokio::test]
async fn an_export_streams_across_chunks_and_refuses_bad_queries() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    let resources = 2 * EXPORT_RESOURCES_PER_READ_MAX + 7;
    let mut hits = Vec::new();
    for index in 0..resources {
        let id = format!("page.{index:04}");
        api.create_resource(&id).await;
        hits.push(json!({"resource_id": id}));
    }
    let (status, _) = api.post("/hits", json!({ "hits": hits })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, body) = download(&server, "/export?window=1h&granularity=minute").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body
        .lines()
        .skip(1)
        .map(|line| line.split(',').next().unwrap())
        .collect();
    let expected: Vec<String> = (0..resources)
        .map(|index| format!("page.{index:04}"))
        .collect();
    assert_eq!(
        ids, expected,
        "every resource once, in order, across three chunks"
    );

    for (query, status, code) in [
        ("format=xml", StatusCode::BAD_REQUEST, "invalid_query"),
        ("prefix=a%20b", StatusCode::BAD_REQUEST, "invalid_prefix"),
        (
            "window=3d&granularity=minute",
            StatusCode::UNPROCESSABLE_ENTITY,
            "granularity_not_kept",
        ),
    ] {
        let (got, value) = api.get(&format!("/export?{query}")).await;
        assert_eq!(
            (got, error_code(&value).as_str()),
            (status, code),
            "{query}: {value}"
        );
    }
    let ingest = api.token_with(&["ingest"]).await;
    let (status, _) = Api::with_token(&server, &ingest).get("/export").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}
