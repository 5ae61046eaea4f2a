//! The OpenAPI document is the contract: it states the limits the handlers enforce (from the same
//! constants), and every refusal, axum's own included, is the JSON error.

use hitcount_aggregator::api::{
    HITS_BODY_BYTES_MAX, HITS_PER_REQUEST_MAX, JSON_BODY_BYTES_MAX, LIST_PAGE_MAX, NAME_CHARS_MAX,
    RETENTION_DAYS_MAX, VISITOR_ID_CHARS_MAX,
};
use hitcount_wire::{EDGE_ID_BYTES_MAX, RESOURCE_ID_BYTES_MAX};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Api, Server, body, documented_statuses, error_code, openapi_document};

fn as_usize(value: &Value) -> usize {
    usize::try_from(
        value
            .as_u64()
            .unwrap_or_else(|| panic!("not a number: {value}")),
    )
    .unwrap()
}

#[tokio::test]
async fn the_document_states_the_limits_from_their_constants() {
    let server = Server::start().await;
    let document = openapi_document(&server).await;
    let schemas = &document["components"]["schemas"];

    for schema in ["CreateResourceRequest", "CreateTokenRequest"] {
        let name = &schemas[schema]["properties"]["name"];
        assert_eq!(as_usize(&name["maxLength"]), NAME_CHARS_MAX, "{schema}");
        assert_eq!(as_usize(&name["minLength"]), 1, "{schema}");
    }
    let resource = &schemas["CreateResourceRequest"]["properties"];
    assert_eq!(
        as_usize(&resource["resource_id"]["maxLength"]),
        RESOURCE_ID_BYTES_MAX
    );
    assert_eq!(
        as_usize(&resource["retention_days"]["maximum"]),
        usize::try_from(RETENTION_DAYS_MAX).unwrap()
    );
    assert_eq!(
        as_usize(&schemas["CreateEdgeKeyRequest"]["properties"]["edge_id"]["maxLength"]),
        EDGE_ID_BYTES_MAX
    );
    assert_eq!(
        as_usize(&schemas["CreateTokenRequest"]["properties"]["scopes"]["minItems"]),
        1
    );
    let hits = &schemas["HitBatch"]["properties"]["hits"];
    assert_eq!(as_usize(&hits["maxItems"]), HITS_PER_REQUEST_MAX);
    assert_eq!(as_usize(&hits["minItems"]), 1);
    assert_eq!(
        as_usize(&schemas["HitInput"]["properties"]["visitor_id"]["maxLength"]),
        VISITOR_ID_CHARS_MAX
    );
    // The two shapes of `POST /hits`.
    assert_eq!(
        schemas["HitsBody"]["oneOf"].as_array().map(Vec::len),
        Some(2)
    );

    let list = document["paths"]["/resources"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = list
        .iter()
        .find(|parameter| parameter["name"] == "limit")
        .expect("a limit parameter");
    assert_eq!(as_usize(&limit["schema"]["minimum"]), 1);
    assert_eq!(as_usize(&limit["schema"]["maximum"]), LIST_PAGE_MAX);

    // Every JSON route answers 413 and 415; every route that reads the store, 503.
    for path in ["/resources", "/hits", "/tokens", "/edge-keys"] {
        let statuses = documented_statuses(&document, path, "post");
        for status in [400, 401, 403, 413, 415, 429, 503] {
            assert!(statuses.contains(&status), "POST {path} lacks {status}");
        }
    }
    // Links from each create to the routes that use its id, for the stateful fuzzer; spelled as
    // OpenAPI spells them.
    let links = &document["paths"]["/resources"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["GetResource"]["operationId"], "get_one");
    server.stop().await;
}

#[tokio::test]
async fn refusals_are_json_and_name_the_route_limit() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;

    // axum's query and path rejections, which were text/plain, and the window's exclusivity.
    for path in [
        "/resources?limit=-1",
        "/resources?limit=abc",
        "/resources/%FF",
        "/hits/home?window=1h&start_time=0&end_time=1",
        "/hits/home?unknown=1",
    ] {
        let response = server
            .client
            .get(server.url(path))
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let (status, value) = body(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {value}");
        assert_eq!(content_type, "application/json", "{path}");
        error_code(&value);
    }
    let (status, value) = api.get("/resources?limit=1001").await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_limit")
    );

    // A 413 names the limit of the route that refused the body.
    let big_name = "n".repeat(JSON_BODY_BYTES_MAX);
    let (status, value) = api.post("/resources", json!({ "name": big_name })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 KiB"),
        "{value}"
    );
    // /hits takes more than 64 KiB, and names its own limit past 1 MiB.
    let many = |count: usize| {
        let hits: Vec<Value> = (0..count)
            .map(|index| json!({"resource_id": "home", "visitor_id": format!("{index:0>200}")}))
            .collect();
        json!({ "hits": hits })
    };
    let (status, value) = api.post("/hits", many(400)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "over 64 KiB is fine here: {value}"
    );
    let (status, value) = api.post("/hits", many(HITS_BODY_BYTES_MAX / 200)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 MiB"),
        "{value}"
    );
    // A body that is not JSON is refused for its type before it is read, however long it is.
    let long = "x".repeat(2 * HITS_BODY_BYTES_MAX);
    let (status, value) = api.post_raw("/hits", "text/plain", long).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        "{value}"
    );

    // Integers written with a zero fraction are integers to JSON Schema, so to the API too.
    let (status, value) = api
        .post(
            "/resources",
            json!({"name": "whole", "resource_id": "whole", "retention_days": 30.0}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    // Times relative to the clock are not in the schema: 422, not 400.
    let (status, value) = api
        .post("/hits", json!({"resource_id": "whole", "timestamp": 0}))
        .await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "timestamp_out_of_range")
    );
    server.stop().await;
}
