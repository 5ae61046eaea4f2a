//! Reads across resources: `GET /stats/top`.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use hitcount_aggregator::now_ms;
use hitcount_aggregator::store::Tier;

use crate::support::{Api, Server, error_code};

const HOUR_MS: u64 = 3_600_000;

/// Posts hits of `resource_id`, one per visitor of `visitors`, at `timestamp_ms`.
async fn hits(api: &Api<'_>, resource_id: &str, visitors: &[&str], timestamp_ms: u64) {
    let hits: Vec<Value> = visitors
        .iter()
        .map(|visitor| json!({"resource_id": resource_id, "visitor_id": visitor, "timestamp": timestamp_ms}))
        .collect();
    let (status, value) = api.post("/hits", json!({ "hits": hits })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
}

/// The listed resources as (id, count, uniques).
fn listed(value: &Value) -> Vec<(String, u64, u64)> {
    value["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|item| {
            (
                item["resource_id"].as_str().expect("id").to_owned(),
                item["count"].as_u64().expect("count"),
                item["uniques"].as_u64().expect("uniques"),
            )
        })
        .collect()
}

fn total(value: &Value) -> (u64, u64) {
    let total = &value["total"];
    (
        total["count"].as_u64().expect("count"),
        total["uniques"].as_u64().expect("uniques"),
    )
}

#[tokio::test]
async fn top_ranks_resources_and_unions_their_visitors() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    for id in ["blog.a", "blog.b", "blog.c", "shop.x", "quiet"] {
        api.create_resource(id).await;
    }
    let now = now_ms();
    // Visitors shared between resources: the total's uniques is their union, not the sum.
    hits(&api, "blog.a", &["v1", "v2", "v3", "v1", "v1"], now).await;
    hits(&api, "blog.b", &["v1", "v4", "v5", "v6"], now - HOUR_MS).await;
    hits(&api, "blog.c", &["v7", "v7", "v7"], now).await;
    hits(&api, "shop.x", &["v1", "v8"], now).await;
    // Two days ago: in a week's top, not in a day's.
    hits(
        &api,
        "blog.c",
        &["v9", "v10", "v11", "v12", "v13"],
        now - 48 * HOUR_MS,
    )
    .await;

    let (status, day) = api.get("/stats/top?window=24h").await;
    assert_eq!(status, StatusCode::OK, "{day}");
    assert_eq!(
        listed(&day),
        [
            ("blog.a".to_owned(), 5, 3),
            ("blog.b".to_owned(), 4, 4),
            ("blog.c".to_owned(), 3, 1),
            ("shop.x".to_owned(), 2, 2),
        ],
        "best first; resources without hits are not listed"
    );
    assert_eq!(total(&day), (14, 8), "v1..v8: eight visitors, not ten");
    assert!(day["period"]["start_time"].is_string());
    // Each listed number is what the resource's own query answers.
    for (id, count, uniques) in listed(&day) {
        assert_eq!(api.count(&id, "24h").await, (count, uniques), "{id}");
    }

    let (_, by_uniques) = api.get("/stats/top?window=24h&order=uniques").await;
    let order: Vec<String> = listed(&by_uniques).into_iter().map(|(id, ..)| id).collect();
    assert_eq!(order, ["blog.b", "blog.a", "shop.x", "blog.c"]);

    let (status, blog) = api.get("/stats/top?window=24h&prefix=blog.&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{blog}");
    let ids: Vec<String> = listed(&blog).into_iter().map(|(id, ..)| id).collect();
    assert_eq!(ids, ["blog.a", "blog.b"]);
    assert_eq!(
        total(&blog),
        (12, 7),
        "the total covers every resource under the prefix"
    );

    let (_, week) = api.get("/stats/top?window=7d&prefix=blog.c").await;
    assert_eq!(listed(&week), [("blog.c".to_owned(), 8, 6)]);
    let (_, none) = api.get("/stats/top?prefix=nothing.here").await;
    assert_eq!((listed(&none).len(), total(&none)), (0, (0, 0)));

    let start = now - 3 * HOUR_MS;
    let (status, range) = api
        .get(&format!(
            "/stats/top?start_time={start}&end_time={}",
            now + 60_000
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{range}");
    assert_eq!(total(&range), (14, 8));
    assert!(
        range["resources"][0].get("series").is_none(),
        "series only when asked"
    );

    // With series=true each listed resource carries the series its own query answers, at the
    // granularity asked for (or chosen from the period), in the same request.
    let period = format!("start_time={start}&end_time={}", now + 60_000);
    for (granularity, chosen) in [("", "minute"), ("&granularity=hour", "hour")] {
        let (status, top) = api
            .get(&format!("/stats/top?{period}&series=true{granularity}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{top}");
        for item in top["resources"].as_array().unwrap() {
            let id = item["resource_id"].as_str().unwrap();
            let own = format!(
                "/hits/{id}?{period}&granularity={}",
                top["granularity"].as_str().unwrap()
            );
            let (_, hits) = api.get(&own).await;
            assert_eq!(item["series"], hits["series"], "{id}{granularity}");
        }
        assert_eq!(top["granularity"], chosen, "{top}");
        assert!(top["resources"][0]["series"].as_array().unwrap().len() > 1);
    }
    server.stop().await;
}

/// The top over every resource is summed from bucket summaries once its hours close; late hits
/// and a deleted resource still change it at once, as reading every resource's cells would.
#[tokio::test]
async fn top_over_every_resource_follows_late_hits_and_deletions() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    for id in ["a", "b", "c"] {
        api.create_resource(id).await;
    }
    let now = now_ms();
    let old = now - 5 * HOUR_MS;
    hits(&api, "a", &["v1", "v2", "v3"], old).await;
    hits(&api, "b", &["v1", "v4"], old).await;
    hits(&api, "c", &["v5"], now).await;
    // With the durable inbox, the fold of late hits drops what was kept before it.
    server.fold_inbox().await;
    // Over a day of hours, and over 30 days (today summed from its hours).
    let top = || async {
        let mut answers = Vec::new();
        for window in ["24h", "30d"] {
            let (status, value) = api.get(&format!("/stats/top?window={window}")).await;
            assert_eq!(status, StatusCode::OK, "{value}");
            answers.push((listed(&value), total(&value)));
        }
        assert_eq!(answers[0], answers[1], "the day's hits are the month's");
        answers.swap_remove(0)
    };
    let own = |id: &str, count: u64| (id.to_owned(), count, count);
    assert_eq!(
        top().await,
        (vec![own("a", 3), own("b", 2), own("c", 1)], (6, 5))
    );

    let store = server.store().expect("the test runs the aggregator");
    if store.keeps_bucket_summaries() {
        let old_hour = old / HOUR_MS * HOUR_MS;
        let kept = store
            .kept_summaries(Tier::Hour, old_hour, old_hour + HOUR_MS)
            .await
            .expect("summaries read");
        assert!(
            kept.summaries.contains_key(&old_hour),
            "the closed hour's summary is kept: {kept:?}"
        );
    }
    assert_eq!(
        top().await,
        (vec![own("a", 3), own("b", 2), own("c", 1)], (6, 5))
    );

    // Late hits into the kept hour.
    hits(&api, "b", &["v6", "v7"], old).await;
    assert_eq!(
        top().await,
        (vec![own("b", 4), own("a", 3), own("c", 1)], (8, 7))
    );

    // A deleted resource leaves the ranking and the total.
    let (status, value) = api.delete("/resources/a").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{value}");
    assert_eq!(top().await, (vec![own("b", 4), own("c", 1)], (5, 5)));
    // Read resource by resource, a series over every resource says the same.
    let (_, series) = api.get("/stats/series?window=24h").await;
    assert_eq!(
        (series["count"].as_u64(), series["uniques"].as_u64()),
        (Some(5), Some(5))
    );
}

#[tokio::test]
async fn top_refuses_bad_queries_and_callers() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    for (query, status, code) in [
        ("limit=0", StatusCode::BAD_REQUEST, "invalid_limit"),
        ("limit=1001", StatusCode::BAD_REQUEST, "invalid_limit"),
        ("prefix=a%20b", StatusCode::BAD_REQUEST, "invalid_prefix"),
        ("order=visits", StatusCode::BAD_REQUEST, "invalid_query"),
        ("colour=red", StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "window=1h&start_time=0",
            StatusCode::BAD_REQUEST,
            "invalid_time_range",
        ),
        (
            "start_time=2000&end_time=1000",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_time_range",
        ),
        (
            "window=1500w",
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_points",
        ),
    ] {
        let (got, value) = api.get(&format!("/stats/top?{query}")).await;
        assert_eq!(
            (got, error_code(&value).as_str()),
            (status, code),
            "{query}: {value}"
        );
    }
    let ingest_only = api.token_with(&["ingest"]).await;
    let (status, _) = Api::with_token(&server, &ingest_only)
        .get("/stats/top")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = Api::with_token(&server, "wrong").get("/stats/top").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let statuses: BTreeSet<u16> = crate::support::documented_statuses(
        &crate::support::openapi_document(&server).await,
        "/stats/top",
        "get",
    )
    .into_iter()
    .collect();
    for status in [200, 400, 401, 403, 422, 429, 503] {
        assert!(statuses.contains(&status), "/stats/top documents {status}");
    }
    server.stop().await;
}

/// A series' points as (count, uniques).
fn points(value: &Value) -> Vec<(u64, u64)> {
    value["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|point| {
            (
                point["count"].as_u64().expect("count"),
                point["uniques"].as_u64().expect("uniques"),
            )
        })
        .collect()
}

#[tokio::test]
async fn series_sums_hits_and_unions_visitors_over_resources() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    for id in ["blog.a", "blog.b", "shop.x"] {
        api.create_resource(id).await;
    }
    let now = now_ms();
    hits(&api, "blog.a", &["v1", "v2", "v2"], now).await;
    hits(&api, "blog.b", &["v1", "v3"], now - HOUR_MS).await;
    hits(&api, "shop.x", &["v1"], now).await;

    let query = "window=3h&granularity=hour";
    let (status, blog) = api
        .get(&format!("/stats/series?{query}&prefix=blog."))
        .await;
    assert_eq!(status, StatusCode::OK, "{blog}");
    assert_eq!(blog["resources"], 2);
    assert_eq!(
        (blog["count"].as_u64(), blog["uniques"].as_u64()),
        (Some(5), Some(3))
    );
    assert_eq!(blog["granularity"], "hour");
    // Point by point: the resources' own series, hits added.
    let (_, a) = api.get(&format!("/hits/blog.a?{query}")).await;
    let (_, b) = api.get(&format!("/hits/blog.b?{query}")).await;
    assert_eq!(blog["period"], a["period"]);
    let summed: Vec<u64> = points(&a)
        .iter()
        .zip(points(&b))
        .map(|((a, _), (b, _))| a + b)
        .collect();
    let counts: Vec<u64> = points(&blog).iter().map(|(count, _)| *count).collect();
    assert_eq!(counts, summed);
    assert_eq!(
        counts.iter().filter(|count| **count > 0).count(),
        2,
        "{blog}"
    );

    let (_, listed) = api
        .get(&format!("/stats/series?{query}&resource_ids=blog.a,shop.x"))
        .await;
    assert_eq!(
        (
            listed["resources"].as_u64(),
            listed["count"].as_u64(),
            listed["uniques"].as_u64()
        ),
        (Some(2), Some(4), Some(2))
    );
    let (_, both) = api
        .get(&format!(
            "/stats/series?{query}&resource_ids=blog.a,shop.x&prefix=blog."
        ))
        .await;
    assert_eq!(
        (both["resources"].as_u64(), both["count"].as_u64()),
        (Some(1), Some(3))
    );
    let (_, every) = api.get("/stats/series?window=3h").await;
    assert_eq!(
        (
            every["resources"].as_u64(),
            every["count"].as_u64(),
            every["uniques"].as_u64()
        ),
        (Some(3), Some(6), Some(3))
    );
    assert_eq!(every["granularity"], "minute");

    let too_many = (0..101)
        .map(|index| format!("r{index}"))
        .collect::<Vec<_>>()
        .join(",");
    for (query, status, code) in [
        (
            "resource_ids=blog.a,nope".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "resource_ids=a%20b".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_resource_ids",
        ),
        (
            format!("resource_ids={too_many}"),
            StatusCode::BAD_REQUEST,
            "invalid_resource_ids",
        ),
        (
            "prefix=a%2Fb".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_prefix",
        ),
        (
            "window=3d&granularity=minute".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "granularity_not_kept",
        ),
        (
            "limit=5".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ] {
        let (got, value) = api.get(&format!("/stats/series?{query}")).await;
        assert_eq!(
            (got, error_code(&value).as_str()),
            (status, code),
            "{query}: {value}"
        );
    }
    server.stop().await;
}
