//! `POST /import`: the lossless export taken back, once, all or nothing.

use hitcount_aggregator::now_ms;
use hitcount_wire::{DAY_MS, HOUR_MS, MINUTE_MS};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Api, Server, body, error_code};

async fn export(server: &Server, query: &str) -> String {
    let response = server
        .client
        .get(server.url(&format!("/export?{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

async fn import(server: &Server, token: &str, file: &str) -> (StatusCode, Value) {
    send_import(server, token, "/import", file).await
}

async fn send_import(server: &Server, token: &str, path: &str, file: &str) -> (StatusCode, Value) {
    let response = server
        .client
        .post(server.url(path))
        .bearer_auth(token)
        .body(file.to_owned())
        .send()
        .await
        .unwrap();
    body(response).await
}

/// The answer refuses the file for its line `line`, saying `problem`.
fn assert_refused_at((status, value): (StatusCode, Value), line: usize, problem: &str) {
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_line"),
        "{value}"
    );
    let message = value["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("line {line}: ")) && message.contains(problem),
        "{message}"
    );
}

/// Hits three days, an hour and two minutes ago, so every tier has cells and the minute tier
/// has some in the hot tier's hour.
async fn seed(api: &Api<'_>) {
    for id in ["blog.a", "blog.b", "home"] {
        api.create_resource(id).await;
    }
    let now = now_ms();
    let hits: Vec<Value> = [
        ("blog.a", "x", now - 3 * DAY_MS),
        ("blog.a", "y", now - HOUR_MS),
        ("blog.a", "x", now - 2 * MINUTE_MS),
        ("blog.b", "x", now - 2 * MINUTE_MS),
        ("home", "z", now - HOUR_MS),
    ]
    .iter()
    .map(|(id, visitor, at)| json!({"resource_id": id, "visitor_id": visitor, "timestamp": at}))
    .collect();
    let (status, value) = api.post("/hits", json!({ "hits": hits })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
}

/// Every answer a reader compares: each resource's series at each granularity over fixed
/// periods, and the site's top list.
async fn answers(api: &Api<'_>, now: u64) -> Vec<Value> {
    let end = (now / DAY_MS + 1) * DAY_MS;
    let mut answers = Vec::new();
    for id in ["blog.a", "blog.b", "home"] {
        for (granularity, start) in [
            ("minute", end - 2 * DAY_MS),
            ("hour", end - 7 * DAY_MS),
            ("day", end - 30 * DAY_MS),
        ] {
            let (status, value) = api
                .get(&format!(
                    "/hits/{id}?start_time={start}&end_time={end}&granularity={granularity}"
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{value}");
            answers.push(value);
        }
    }
    let (status, value) = api
        .get(&format!(
            "/stats/top?start_time={}&end_time={end}",
            end - 30 * DAY_MS
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    answers.push(value);
    answers
}

#[tokio::test]
async fn an_export_imported_elsewhere_answers_the_same_and_only_once() {
    let source = Server::start().await;
    seed(&Api::admin(&source)).await;
    let file = export(&source, "window=30d&format=ndjson").await;
    let target = Server::start().await;
    let (status, report) = import(&target, ADMIN_TOKEN, &file).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "imported");
    assert_eq!(report["resources_created"], 3);
    assert_eq!(report["expired_cells"], 0);
    // Five hits in each of the three tiers, except the minute tier's hit of three days ago.
    assert_eq!(report["hits"], 14, "{report}");
    let now = now_ms();
    let expected = answers(&Api::admin(&source), now).await;
    assert_eq!(answers(&Api::admin(&target), now).await, expected);
    assert_eq!(expected.last().unwrap()["total"]["count"], 5);
    let (status, again) = import(&target, ADMIN_TOKEN, &file).await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("duplicate"))
    );
    assert_eq!(answers(&Api::admin(&target), now).await, expected);
    // The moved resources take new hits like any other.
    let (status, _) = Api::admin(&target)
        .post(
            "/hits",
            json!({"hits": [{"resource_id": "home", "visitor_id": "w"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(Api::admin(&target).count("home", "24h").await, (2, 2));
    target.stop().await;
    source.stop().await;
}

#[tokio::test]
async fn a_bad_line_is_reported_by_number_and_nothing_is_imported() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("taken").await;
    let hour = (now_ms() / HOUR_MS - 2) * HOUR_MS;
    let time = |ms: u64| hitcount_aggregator::query::format_time(ms);
    let resource = r#"{"type":"resource","resource_id":"fresh","name":"Fresh","retention_days":null,"created_at":"2026-01-01T00:00:00Z"}"#;
    let empty_sketch = "AA==";
    let cell = |id: &str, start: &str, count: u64, sketch: &str| {
        format!(
            r#"{{"type":"cell","resource_id":"{id}","granularity":"hour","start_time":"{start}","count":{count},"uniques":0,"sketch":"{sketch}"}}"#
        )
    };
    let good = cell("fresh", &time(hour), 4, empty_sketch);
    for (bad, problem) in [
        ("{not json".to_owned(), "not a line of the lossless export"),
        (
            cell("fresh", &time(hour + MINUTE_MS), 1, empty_sketch),
            "not the start of a hour bucket",
        ),
        (
            cell("ghost", &time(hour), 1, empty_sketch),
            "\"ghost\" does not exist",
        ),
        (
            // Two hours ahead at least: the next hour's start is within the allowed clock skew
            // during an hour's last minutes.
            cell("fresh", &time(hour + 5 * HOUR_MS), 1, empty_sketch),
            "in the future",
        ),
        (
            cell("fresh", "yesterday", 1, empty_sketch),
            "start_time is not an RFC 3339 time",
        ),
        (
            cell("fresh", &time(hour - HOUR_MS), 0, empty_sketch),
            "count must be at least 1",
        ),
        (cell("fresh", &time(hour - HOUR_MS), 1, "!!"), "not base64"),
        (
            cell("fresh", &time(hour - HOUR_MS), 1, "/w=="),
            "does not decode",
        ),
        (
            good.clone(),
            "a second line for this cell (the first is line 2)",
        ),
    ] {
        let file = format!("{resource}\n{good}\n{bad}\n");
        assert_refused_at(import(&server, ADMIN_TOKEN, &file).await, 3, problem);
    }
    let (status, _) = api.get("/resources/fresh").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing of a refused file was imported"
    );
    let (status, value) = import(&server, ADMIN_TOKEN, "\n\n").await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "empty_file")
    );
    // A resource whose name another resource holds cannot be created: nothing is imported.
    let clash = r#"{"type":"resource","resource_id":"other","name":"taken","retention_days":null,"created_at":"2026-01-01T00:00:00Z"}"#;
    let file = format!("{clash}\n{}\n", cell("other", &time(hour), 1, empty_sketch));
    let (status, value) = import(&server, ADMIN_TOKEN, &file).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::CONFLICT, "resource_not_created"),
        "{value}"
    );
    let (status, _) = api.get("/resources/fresh").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Imports take the admin scope.
    let reader = api.token_with(&["read"]).await;
    let (status, _) = import(&server, &reader, &format!("{resource}\n{good}\n")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, value) = import(&server, ADMIN_TOKEN, &format!("{resource}\n{good}\n")).await;
    assert_eq!(
        (status, &value["hits"]),
        (StatusCode::OK, &json!(4)),
        "{value}"
    );
    assert_eq!(api.count("fresh", "7d").await.0, 4);
    server.stop().await;
}

/// With the Redis hot tier, an import of recent minutes has the tier rebuilt: the minutes it
/// serves include the imported ones at once. A process of its own, since the tier's metrics are
/// the process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_of_recent_minutes_shows_through_the_hot_tier() {
    if !crate::support::postgres_or_skip() {
        return;
    }
    let directory = tempfile::TempDir::new().unwrap();
    let database = crate::support::postgres_database(directory.path());
    import_through_the_hot_tier(&directory, &["--database-url", &database]).await;
}

/// The same in front of Cosmos DB, where the rebuild reads the import's recent minutes from the
/// inbox, which the import wrote them to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_of_recent_minutes_shows_through_the_hot_tier_on_cosmos_db() {
    let Some(cosmos) = crate::support::CosmosServer::start_or_skip() else {
        return;
    };
    let directory = tempfile::TempDir::new().unwrap();
    let flags = crate::support::cosmos_flags(&cosmos, directory.path(), "import-hot-tier");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    import_through_the_hot_tier(&directory, &flags).await;
}

async fn import_through_the_hot_tier(directory: &tempfile::TempDir, store_flags: &[&str]) {
    let Some(redis_url) = crate::support::redis_or_skip().await else {
        return;
    };
    let prefix = format!("hitcount-import-{}", now_ms());
    let mut flags = store_flags.to_vec();
    flags.extend(["--redis-url", &redis_url, "--redis-prefix", &prefix]);
    let binary = crate::support::BinaryServer::start(directory.path(), &flags).await;
    let server = binary.handle();
    let budget = std::time::Duration::from_secs(30);
    crate::support::wait_for_metric(&server, "hitcount_hot_tier_rebuilds_total", 1, budget).await;
    let minute = (now_ms() / MINUTE_MS - 2) * MINUTE_MS;
    let start = hitcount_aggregator::query::format_time(minute);
    let file = format!(
        "{}\n{}\n",
        r#"{"type":"resource","resource_id":"recent","name":"recent","retention_days":null,"created_at":"2026-01-01T00:00:00Z"}"#,
        format_args!(
            r#"{{"type":"cell","resource_id":"recent","granularity":"minute","start_time":"{start}","count":3,"uniques":0,"sketch":"AA=="}}"#
        ),
    );
    let (status, value) = import(&server, ADMIN_TOKEN, &file).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let reads = "hitcount_hot_tier_reads_total{served=\"redis\"";
    let served_before = crate::support::metric(&server, reads).await;
    let (status, value) = Api::admin(&server)
        .get("/hits/recent?window=1h&granularity=minute")
        .await;
    assert_eq!(
        (status, &value["count"]),
        (StatusCode::OK, &json!(3)),
        "{value}"
    );
    assert!(
        crate::support::metric(&server, reads).await > served_before,
        "Redis answered the minutes"
    );
    assert_eq!(
        crate::support::metric(&server, "hitcount_hot_tier_rebuilds_total").await,
        2,
        "the import rebuilt the tier"
    );
    binary.terminate().await;
}

async fn import_as(server: &Server, format: &str, file: &str) -> (StatusCode, Value) {
    send_import(
        server,
        ADMIN_TOKEN,
        &format!("/import?format={format}"),
        file,
    )
    .await
}

const GOATCOUNTER_HEADER: &str = "2Path,Title,Event,UserAgent,Browser,System,Session,Bot,Referrer,Referrer scheme,Screen size,Location,FirstVisit,Date";

/// A row as GoatCounter writes it (Go's encoding/csv: quotes where needed).
fn goatcounter_row(
    path: &str,
    title: &str,
    event: bool,
    session: &str,
    bot: u8,
    at_ms: u64,
) -> String {
    let date = hitcount_aggregator::query::format_time(at_ms);
    format!(
        "{path},{title},{event},Mozilla/5.0,Firefox 133,Linux,{session},{bot},https://example.com,h,\"1920,1080,1\",NL,true,{date}"
    )
}

#[tokio::test]
async fn a_goatcounter_export_becomes_hits_per_path_and_hour() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    let now = now_ms();
    let rows = [
        goatcounter_row(
            "/blog/post-1.html",
            "\"Post, one\"",
            false,
            "s1",
            0,
            now - 2 * HOUR_MS,
        ),
        goatcounter_row(
            "/blog/post-1.html",
            "\"Two\nlines\"",
            false,
            "s2",
            0,
            now - 2 * HOUR_MS,
        ),
        goatcounter_row(
            "/blog/post-1.html",
            "Post",
            false,
            "s1",
            0,
            now - 3 * DAY_MS,
        ),
        goatcounter_row("/", "Home", false, "s3", 0, now - HOUR_MS),
        goatcounter_row("signup-click", "", true, "s3", 0, now - HOUR_MS),
        goatcounter_row("/", "Home", false, "s9", 3, now - HOUR_MS),
    ];
    let file = format!("{GOATCOUNTER_HEADER}\r\n{}\r\n", rows.join("\r\n"));
    let (status, report) = import_as(&server, "goatcounter", &file).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (
            &report["resources_created"],
            &report["skipped_rows"],
            &report["hits"]
        ),
        (&json!(2), &json!(2), &json!(8)),
        "four pageviews in the hour and the day tiers; the event and the bot left out: {report}"
    );
    assert_eq!(api.count("blog.post-1.html", "7d").await, (3, 2));
    assert_eq!(api.count("blog.post-1.html", "24h").await, (2, 2));
    assert_eq!(api.count("home", "24h").await, (1, 1));
    let (_, resource) = api.get("/resources/blog.post-1.html").await;
    assert_eq!(resource["name"], "/blog/post-1.html");
    let (status, again) = import_as(&server, "goatcounter", &file).await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("duplicate"))
    );
    assert_eq!(api.count("blog.post-1.html", "7d").await, (3, 2));

    for (bad, line, problem) in [
        (
            format!("1Path,Title\n{}\n", rows[0]),
            1,
            "not the header of a GoatCounter export of version 2",
        ),
        (
            format!(
                "{GOATCOUNTER_HEADER}\n{}\n{}\n",
                rows[3],
                rows[3].replace("Z", "X")
            ),
            3,
            "Date is not an RFC 3339 time",
        ),
        (
            format!("{GOATCOUNTER_HEADER}\n{}\n/a,b,c\n", rows[3]),
            3,
            "not a CSV record",
        ),
        (
            format!(
                "{GOATCOUNTER_HEADER}\n{}\n",
                goatcounter_row("/", "", false, "s", 0, now + DAY_MS)
            ),
            2,
            "in the future",
        ),
    ] {
        assert_refused_at(import_as(&server, "goatcounter", &bad).await, line, problem);
    }
    assert_eq!(
        api.count("home", "24h").await,
        (1, 1),
        "nothing of a refused file was imported"
    );
    let (status, value) = import_as(&server, "umami", &file).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::BAD_REQUEST, "invalid_query"),
        "{value}"
    );
    server.stop().await;
}
