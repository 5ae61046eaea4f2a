//! Resource patterns: unknown ids under a registered prefix are created on first sight, up to
//! the pattern's bound; what is refused is visible in `/unknown-resources`, the pattern's
//! `refused_hits` and `/metrics`.

use hitcount_aggregator::patterns::{PATTERN_RESOURCES_DEFAULT, PATTERN_RESOURCES_MAX};
use hitcount_aggregator::store::ResourceRecord;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Api, Server, batch, batch_from, error_code, metric, open_store, post_delta, test_config,
};

const PATTERN_FULL_METRIC: &str = "hitcount_resources_refused_total{reason=\"pattern_full\"}";

/// The unknown-resources entry for `id`, if listed.
async fn unknown_entry(api: &Api<'_>, id: &str) -> Option<Value> {
    let (status, value) = api.get("/unknown-resources").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value["unknown_resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["resource_id"] == id)
        .cloned()
}

async fn pattern(api: &Api<'_>, pattern: &str) -> Value {
    let (status, value) = api.get(&format!("/patterns/{pattern}")).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value
}

#[tokio::test]
async fn a_pattern_creates_resources_on_first_sight_and_counts_them_once() {
    let server = Server::start().await;
    let api = Api::admin(&server);

    let (status, created) = api
        .post(
            "/patterns",
            json!({"pattern": "blog.*", "retention_days": 400}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["pattern"], "blog.*");
    assert_eq!(created["resources_max"], PATTERN_RESOURCES_DEFAULT);
    assert_eq!(created["retention_days"], 400);
    assert_eq!(
        (
            created["resources"].as_u64(),
            created["refused_hits"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let (status, value) = api.post("/patterns", json!({"pattern": "blog.*"})).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "pattern_exists")
    );

    let first = batch(
        0,
        &[
            ("blog.my-post", 3, &["a", "b"]),
            ("blog.other", 2, &["c"]),
            ("news.today", 5, &[]),
        ],
    );
    let (status, value) = post_delta(&server, &first).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["status"], "applied");
    assert_eq!(
        (value["entries"].as_u64(), value["hits"].as_u64()),
        (Some(2), Some(5))
    );
    assert_eq!(value["unknown_resource_entries"], 1);
    assert_eq!(api.count("blog.my-post", "5m").await, (3, 2));
    assert_eq!(api.count("blog.other", "5m").await, (2, 1));
    let (status, resource) = api.get("/resources/blog.my-post").await;
    assert_eq!(status, StatusCode::OK, "{resource}");
    assert_eq!(
        (
            resource["name"].as_str(),
            resource["retention_days"].as_u64()
        ),
        (Some("blog.my-post"), Some(400))
    );
    let (status, _) = api.get("/resources/news.today").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "outside every pattern: not created"
    );
    let refused = unknown_entry(&api, "news.today").await.expect("listed");
    assert_eq!(
        (refused["reason"].as_str(), refused["refused_hits"].as_u64()),
        (Some("no_pattern"), Some(5))
    );
    assert!(refused["last_refused_at"].as_str().unwrap().ends_with('Z'));

    // A replay (a lost acknowledgement) counts nothing twice and refuses nothing twice.
    let (status, value) = post_delta(&server, &first).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    assert_eq!(api.count("blog.my-post", "5m").await, (3, 2));
    assert_eq!(
        unknown_entry(&api, "news.today").await.unwrap()["refused_hits"],
        5
    );
    // Created resources are ordinary ones: the next batch merges into them.
    let (status, _) = post_delta(&server, &batch(1, &[("blog.my-post", 1, &["d"])])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.count("blog.my-post", "5m").await, (4, 3));

    // Explicit creation keeps working, under the prefix too, and counts toward it.
    api.create_resource("blog.explicit").await;
    let (status, value) = api
        .post(
            "/resources",
            json!({"name": "x", "resource_id": "blog.other"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "resource_id_taken")
    );
    assert_eq!(pattern(&api, "blog.*").await["resources"], 3);
    let (status, listed) = api.get("/patterns").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["patterns"].as_array().unwrap().len(), 1);

    // Deleting the pattern keeps what it created; new ids under it are refused again.
    let (status, _) = api.delete("/patterns/blog.*").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.get("/patterns/blog.*").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.delete("/patterns/blog.*").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.count("blog.my-post", "5m").await, (4, 3));
    let (status, value) = post_delta(&server, &batch(2, &[("blog.later", 1, &[])])).await;
    assert_eq!(
        (status, value["unknown_resource_entries"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (status, _) = api.get("/resources/blog.later").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn a_full_pattern_refuses_new_ids_until_resources_are_deleted() {
    let directory = tempfile::TempDir::new().unwrap();
    let server = Server::start_with(test_config(directory.path())).await;
    let api = Api::admin(&server);
    let (status, value) = api
        .post(
            "/patterns",
            json!({"pattern": "shop.*", "resources_max": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    api.create_resource("shop.a").await;
    let refused_before = metric(&server, PATTERN_FULL_METRIC).await;

    // One exists; two more fit; the fourth id is refused.
    let (status, value) = post_delta(
        &server,
        &batch(
            0,
            &[("shop.b", 1, &[]), ("shop.c", 2, &[]), ("shop.d", 4, &[])],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(
        (
            value["hits"].as_u64(),
            value["unknown_resource_entries"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(api.count("shop.c", "5m").await.0, 2);
    let (status, _) = api.get("/resources/shop.d").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let shop = pattern(&api, "shop.*").await;
    assert_eq!(
        (shop["resources"].as_u64(), shop["refused_hits"].as_u64()),
        (Some(3), Some(4))
    );
    let refused = unknown_entry(&api, "shop.d").await.expect("listed");
    assert_eq!(
        (
            refused["reason"].as_str(),
            refused["pattern"].as_str(),
            refused["refused_hits"].as_u64()
        ),
        (Some("pattern_full"), Some("shop.*"), Some(4))
    );
    assert_eq!(
        metric(&server, PATTERN_FULL_METRIC).await - refused_before,
        4
    );

    // A direct hit for a new id gets a clear refusal, and nothing is created or counted.
    let (status, value) = api
        .post(
            "/hits",
            json!({"hits": [{"resource_id": "shop.a"}, {"resource_id": "shop.e"}]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "pattern_full"),
        "{value}"
    );
    assert_eq!(api.count("shop.a", "5m").await.0, 0);
    assert_eq!(pattern(&api, "shop.*").await["refused_hits"], 5);
    assert_eq!(
        metric(&server, PATTERN_FULL_METRIC).await - refused_before,
        5
    );

    // Deleting a resource under the prefix frees its place at once.
    let (status, _) = api.delete("/resources/shop.a").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(pattern(&api, "shop.*").await["resources"], 2);
    let (status, value) = api.post("/hits", json!({"resource_id": "shop.e"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    assert_eq!(api.count("shop.e", "5m").await.0, 1);
    let (status, value) = post_delta(&server, &batch(1, &[("shop.f", 1, &[])])).await;
    assert_eq!(
        (status, value["unknown_resource_entries"].as_u64()),
        (StatusCode::OK, Some(1))
    );

    // Refused hits are stored (flushed about once a second, and at shutdown): a restart keeps them.
    let directory_kept = server.stop().await;
    assert!(directory_kept.is_none(), "the test owns the directory");
    let server = Server::start_with(test_config(directory.path())).await;
    let api = Api::admin(&server);
    let shop = pattern(&api, "shop.*").await;
    assert_eq!(
        (shop["resources"].as_u64(), shop["refused_hits"].as_u64()),
        (Some(3), Some(6))
    );
    server.stop().await;
}

#[tokio::test]
async fn direct_hits_create_resources_under_a_pattern_all_or_nothing() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    let (status, _) = api
        .post(
            "/patterns",
            json!({"pattern": "app.*", "retention_days": 30}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let ingest = api.token_with(&["ingest"]).await;
    let client = Api::with_token(&server, &ingest);

    let (status, value) = client
        .post(
            "/hits",
            json!({"hits": [
                {"resource_id": "app.x", "visitor_id": "one"},
                {"resource_id": "app.x", "visitor_id": "two"},
                {"resource_id": "app.y"}
            ]}),
        )
        .await;
    assert_eq!(
        (status, value["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(3)),
        "{value}"
    );
    assert_eq!(api.count("app.x", "5m").await, (2, 2));
    assert_eq!(api.count("app.y", "5m").await.0, 1);
    let (_, resource) = api.get("/resources/app.x").await;
    assert_eq!(resource["retention_days"], 30);

    // No pattern: 404 as before; a new id under the pattern in the same request is not created.
    let (status, value) = client
        .post(
            "/hits",
            json!({"hits": [{"resource_id": "app.z"}, {"resource_id": "elsewhere"}]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _) = api.get("/resources/app.z").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown_entry(&api, "elsewhere").await.unwrap()["reason"],
        "no_pattern"
    );
    // A request refused for its content creates nothing either.
    let (status, value) = client
        .post(
            "/hits",
            json!({"resource_id": "app.w", "timestamp": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "timestamp_out_of_range")
    );
    let (status, _) = api.get("/resources/app.w").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(pattern(&api, "app.*").await["resources"], 2);

    // `*` matches every id; the longest matching prefix decides (here `app.*`'s retention).
    let (status, _) = api.post("/patterns", json!({"pattern": "*"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = client
        .post(
            "/hits",
            json!({"hits": [{"resource_id": "app.v"}, {"resource_id": "elsewhere"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, resource) = api.get("/resources/app.v").await;
    assert_eq!(resource["retention_days"], 30);
    let (_, resource) = api.get("/resources/elsewhere").await;
    assert_eq!(resource["retention_days"], Value::Null);
    assert_eq!(pattern(&api, "*").await["resources"], 4);
    assert_eq!(pattern(&api, "app.*").await["resources"], 3);

    // Reading patterns needs the admin scope; the unknown list needs read.
    let (status, _) = client.get("/patterns").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = client.get("/unknown-resources").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let reader = api.token_with(&["read"]).await;
    let (status, _) = Api::with_token(&server, &reader)
        .get("/unknown-resources")
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn bad_patterns_are_refused_with_json_errors() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    let too_long = format!("{}*", "a".repeat(hitcount_wire::RESOURCE_ID_BYTES_MAX));
    let longest = format!("{}*", "a".repeat(hitcount_wire::RESOURCE_ID_BYTES_MAX - 1));
    let cases = [
        (json!({"pattern": "blog"}), "invalid_pattern"),
        (json!({"pattern": ""}), "invalid_pattern"),
        (json!({"pattern": "blog/*"}), "invalid_pattern"),
        (json!({"pattern": "bl og.*"}), "invalid_pattern"),
        (json!({"pattern": "blog.*.x"}), "invalid_pattern"),
        (json!({"pattern": "b*g.*"}), "invalid_pattern"),
        (json!({"pattern": too_long}), "invalid_pattern"),
        (
            json!({"pattern": "a.*", "resources_max": 0}),
            "invalid_resources_max",
        ),
        (
            json!({"pattern": "a.*", "resources_max": PATTERN_RESOURCES_MAX + 1}),
            "invalid_resources_max",
        ),
        (
            json!({"pattern": "a.*", "resources_max": -1}),
            "invalid_request",
        ),
        (
            json!({"pattern": "a.*", "retention_days": 0}),
            "invalid_retention",
        ),
        (json!({"pattern": "a.*", "unknown": 1}), "invalid_request"),
        (json!({"resources_max": 5}), "invalid_request"),
    ];
    for (payload, code) in cases {
        let (status, value) = api.post("/patterns", payload.clone()).await;
        assert_eq!(
            (status, error_code(&value).as_str()),
            (StatusCode::BAD_REQUEST, code),
            "{payload}"
        );
    }
    let (status, value) = api.get("/patterns").await;
    assert_eq!(
        value["patterns"],
        json!([]),
        "nothing refused was stored ({status})"
    );

    let (status, value) = api
        .post(
            "/patterns",
            json!({"pattern": longest, "resources_max": PATTERN_RESOURCES_MAX}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let response = server
        .client
        .post(server.url("/patterns"))
        .bearer_auth(&api.token)
        .body("{\"pattern\":\"x.*\"}")
        .send()
        .await
        .unwrap();
    let (status, value) = crate::support::body(response).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let ingest = api.token_with(&["read"]).await;
    let (status, value) = Api::with_token(&server, &ingest)
        .post("/patterns", json!({"pattern": "x.*"}))
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, value) = Api::with_token(&server, "nobody-has-this-token")
        .get("/patterns")
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    server.stop().await;
}

#[tokio::test]
async fn openapi_limits_match_the_constants() {
    let server = Server::start().await;
    let (status, document) = Api::admin(&server).get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let request = &document["components"]["schemas"]["CreatePatternRequest"]["properties"];
    assert_eq!(request["resources_max"]["maximum"], PATTERN_RESOURCES_MAX);
    assert_eq!(
        request["resources_max"]["default"],
        PATTERN_RESOURCES_DEFAULT
    );
    assert_eq!(
        request["pattern"]["maxLength"],
        hitcount_wire::RESOURCE_ID_BYTES_MAX
    );
    assert_eq!(
        request["pattern"]["pattern"],
        format!(
            "^[A-Za-z0-9._-]{{0,{}}}\\*$",
            hitcount_aggregator::patterns::PATTERN_PREFIX_BYTES_MAX
        )
    );
    // The resources' RETENTION_DAYS_MAX, which patterns share.
    assert_eq!(request["retention_days"]["maximum"], 36_500);
    let promised: &[(&str, &str, &[u16])] = &[
        (
            "/patterns",
            "post",
            &[201, 400, 401, 403, 409, 413, 415, 429, 503],
        ),
        ("/patterns", "get", &[200, 401, 403, 429]),
        ("/patterns/{pattern}", "get", &[200, 401, 403, 404, 429]),
        (
            "/patterns/{pattern}",
            "delete",
            &[204, 401, 403, 404, 429, 503],
        ),
        ("/unknown-resources", "get", &[200, 401, 403, 429]),
        ("/hits", "post", &[409]),
    ];
    crate::support::assert_documented(&document, promised);
    server.stop().await;
}

/// Two aggregators on one database create the same new ids at once: one resource each, every
/// hit counted once, no error.
#[tokio::test]
async fn concurrent_creation_through_two_aggregators_is_idempotent() {
    let directory = tempfile::TempDir::new().unwrap();
    let first = Server::start_with(test_config(directory.path())).await;
    let (status, _) = Api::admin(&first)
        .post("/patterns", json!({"pattern": "docs.*"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Started after the pattern exists, so it loads it at start.
    let second = Server::start_with(test_config(directory.path())).await;
    let ids: Vec<String> = (0..50)
        .map(|index| format!("docs.page-{index:02}"))
        .collect();
    let entries: Vec<(&str, u64, &[&str])> =
        ids.iter().map(|id| (id.as_str(), 1, &[][..])).collect();
    let batches = [
        batch_from(crate::support::EDGE_ID, 7, 0, &entries),
        batch_from(crate::support::EDGE_ID, 7, 1, &entries),
    ];
    let (one, two) = tokio::join!(
        post_delta(&first, &batches[0]),
        post_delta(&second, &batches[1]),
    );
    for (status, value) in [one, two] {
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(
            (
                value["hits"].as_u64(),
                value["unknown_resource_entries"].as_u64()
            ),
            (Some(50), Some(0))
        );
    }
    let api = Api::admin(&first);
    // The second's deltas reach the first's answers once folded (with the durable inbox).
    second.fold_inbox().await;
    for id in [&ids[0], &ids[49]] {
        assert_eq!(api.count(id, "5m").await.0, 2);
    }
    let store = open_store(directory.path()).await;
    let stored = store.resources().await.unwrap();
    assert_eq!(
        stored
            .iter()
            .filter(|record| record.id.starts_with("docs."))
            .count(),
        50
    );
    second.stop().await;
    first.stop().await;
}

/// The store's side of creation on first sight: idempotent, and a name another resource has
/// taken does not stop the id from being created.
#[tokio::test]
async fn stores_create_resources_if_absent_idempotently() {
    let directory = tempfile::TempDir::new().unwrap();
    let store = open_store(directory.path()).await;
    let record = |id: &str, name: &str| ResourceRecord {
        id: id.to_owned(),
        name: name.to_owned(),
        retention_days: Some(7),
        created_at_ms: hitcount_aggregator::now_ms(),
    };
    store
        .create_resource(record("other", "blog.taken"))
        .await
        .unwrap();
    let wanted = vec![
        record("blog.a", "blog.a"),
        record("blog.taken", "blog.taken"),
    ];
    let (one, two) = tokio::join!(
        store.create_resources_if_absent(wanted.clone()),
        store.create_resources_if_absent(wanted.clone()),
    );
    for created in [one.unwrap(), two.unwrap()] {
        let ids: Vec<&str> = created.iter().map(|record| record.id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{created:?}");
        assert!(ids.contains(&"blog.a") && ids.contains(&"blog.taken"));
    }
    let stored = store.resources().await.unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    let renamed = stored
        .iter()
        .find(|record| record.id == "blog.taken")
        .unwrap();
    assert!(renamed.name.starts_with("blog.taken ("), "{renamed:?}");
    let again = store
        .create_resources_if_absent(vec![record("blog.a", "blog.a")])
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // Resources just created are what a cache reloaded seconds ago may lack.
    let current = store
        .resources_current(
            vec!["other".to_owned()],
            Some(hitcount_aggregator::now_ms() - 60_000),
        )
        .await
        .unwrap();
    assert_eq!(current.len(), 3);
    let asked = store
        .resources_current(vec!["other".to_owned(), "never".to_owned()], None)
        .await
        .unwrap();
    assert_eq!(asked.len(), 1);
}

/// A bound holds across aggregators on one database at once, not only after the 5 s reload:
/// before creating, each reads the resources created lately through any of them.
#[tokio::test]
async fn a_second_aggregator_respects_the_bound_before_its_reload() {
    let directory = tempfile::TempDir::new().unwrap();
    let first = Server::start_with(test_config(directory.path())).await;
    let (status, _) = Api::admin(&first)
        .post(
            "/patterns",
            json!({"pattern": "shop.*", "resources_max": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let second = Server::start_with(test_config(directory.path())).await;
    let (status, value) = post_delta(
        &first,
        &batch_from(
            crate::support::EDGE_ID,
            9,
            0,
            &[("shop.a", 1, &[]), ("shop.b", 1, &[])],
        ),
    )
    .await;
    assert_eq!((status, value["hits"].as_u64()), (StatusCode::OK, Some(2)));
    // The second aggregator's cache has neither yet; the pattern is full all the same.
    let (status, value) = post_delta(
        &second,
        &batch_from(crate::support::EDGE_ID, 9, 1, &[("shop.c", 1, &[])]),
    )
    .await;
    assert_eq!(
        (status, value["unknown_resource_entries"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{value}"
    );
    let api = Api::admin(&second);
    assert_eq!(pattern(&api, "shop.*").await["resources"], 2);
    let (status, _) = api.get("/resources/shop.c").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    second.stop().await;
    first.stop().await;
}
