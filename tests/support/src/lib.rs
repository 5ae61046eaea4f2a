//! The one test kit of the workspace, shared by the integration tests of `hitcount-aggregator`,
//! `hitcount-edge`, `hitcount-spin-host` and `hitcount-dev`: servers in the test process on real
//! port-0 sockets ([`Server`]: an aggregator on the embedded store or PostgreSQL, or any
//! router), the REST and delta calls tests make, and the machine's PostgreSQL and Redis (or a
//! skip with the reason, or a failure under `CI=true`). The benchmarks'
//! wrk runner is in `hitcount-bench-support`, apart, so tests never build it.

// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use reqwest::Client;
use serde_json::Value;

pub mod api;
pub mod cosmos;
pub mod deltas;
pub mod oidc;
pub mod postgres;
pub mod server;

pub use api::{
    Api, assert_documented, body, documented_statuses, error_code, metric, metrics_text,
    openapi_document, wait_for_metric,
};
pub use cosmos::{COSMOS_TEST_KEY, CosmosServer, cosmos_config_for};
pub use deltas::{batch, batch_from, post_delta, post_delta_bytes, signed_delta};
pub use postgres::{database_url_for, postgres_database, postgres_or_skip, psql};
pub use server::{Server, aggregator, open_store, serve_router, test_config};

/// The admin token of every test server (and of the aggregator binaries tests start).
pub const ADMIN_TOKEN: &str = "test-support-admin-token-0123";
/// The edge key [`test_config`] configures.
pub const EDGE_ID: &str = "edge-test";
pub const EDGE_SECRET: &str = "edge-secret-0123456789";
pub const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// Creates resources `r0` .. `r{count-1}` at the aggregator at `base` (`http://host:port`).
pub async fn create_resources(base: &str, count: usize) {
    for index in 0..count {
        create_resource(base, &format!("r{index}")).await;
    }
}

pub async fn create_resource(base: &str, resource_id: &str) {
    Api::admin(&Server::at(base))
        .create_resource(resource_id)
        .await;
}

/// (hits, uniques) of a resource over the last hour.
pub async fn count(base: &str, resource_id: &str) -> (u64, u64) {
    Api::admin(&Server::at(base)).count(resource_id, "1h").await
}

/// A port the system just handed out and this process let go: free, barring a race with another
/// process binding port 0 in between. For servers a test starts as processes, on a port it must
/// know before they listen (or keep across a restart).
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// True when `CI=true`: a test whose server is unreachable must fail, not skip.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The Redis tests use: `HITCOUNT_TEST_REDIS_URL`, or the machine's on 6379. Unreachable, it
/// fails the test under `CI=true` and skips it elsewhere, printing why.
pub async fn redis_or_skip() -> Option<String> {
    let url = std::env::var("HITCOUNT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let reachable = async {
        let client = redis::Client::open(url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    match reachable.await {
        Ok(_) => Some(url),
        Err(error) if under_ci() => panic!("Redis at {url} is unreachable and CI=true: {error}"),
        Err(error) => {
            eprintln!(
                "SKIPPED: Redis at {url} is unreachable ({error}); start it or set HITCOUNT_TEST_REDIS_URL"
            );
            None
        }
    }
}

pub async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A beacon every edge (the wasmtime host and the Spin build) must refuse or not count.
#[derive(Debug, Clone, Copy)]
pub struct BadBeacon {
    pub body: &'static str,
    pub content_type: &'static str,
    pub user_agent: &'static str,
    pub status: u16,
    /// The `x-hitcount-result` header, where the edge got far enough to set one.
    pub result: Option<&'static str>,
}

pub const BAD_BEACONS: [BadBeacon; 7] = [
    BadBeacon {
        body: "not json",
        content_type: "text/plain",
        user_agent: BROWSER,
        status: 400,
        result: None,
    },
    BadBeacon {
        body: r#"{"resource_id":"r0"}"#,
        content_type: "application/xml",
        user_agent: BROWSER,
        status: 415,
        result: None,
    },
    BadBeacon {
        body: r#"{"resource_id":"has space"}"#,
        content_type: "text/plain",
        user_agent: BROWSER,
        status: 400,
        result: Some("invalid_resource_id"),
    },
    BadBeacon {
        body: r#"{"resource_id":"r0","extra":1}"#,
        content_type: "application/json",
        user_agent: BROWSER,
        status: 400,
        result: None,
    },
    BadBeacon {
        body: r#"{"resource_id":"r0","timestamp":1}"#,
        content_type: "text/plain",
        user_agent: BROWSER,
        status: 400,
        result: Some("invalid_timestamp"),
    },
    BadBeacon {
        body: r#"{"resource_id":"r0"}"#,
        content_type: "text/plain",
        user_agent: "Googlebot/2.1 (+http://www.google.com/bot.html)",
        status: 204,
        result: Some("bot"),
    },
    BadBeacon {
        body: r#"{"resource_id":"r0"}"#,
        content_type: "text/plain",
        user_agent: "",
        status: 204,
        result: Some("bot"),
    },
];

/// Posts every [`BAD_BEACONS`] case to `{edge}/hit` and checks status, result header and the
/// JSON error body of 4xx answers.
pub async fn assert_bad_beacons_refused(edge: &str) {
    let client = Client::new();
    for case in BAD_BEACONS {
        let response = client
            .post(format!("{edge}/hit"))
            .header("content-type", case.content_type)
            .header("user-agent", case.user_agent)
            .body(case.body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{case:?}");
        assert_eq!(
            response
                .headers()
                .get("x-hitcount-result")
                .map(|value| value.to_str().unwrap()),
            case.result,
            "{case:?}"
        );
        if case.status >= 400 {
            let error: Value = response.json().await.unwrap();
            assert!(error["error"]["code"].is_string(), "{case:?}: {error}");
        }
    }
}

/// Unique-visitor estimates summed over resources are within three standard errors of `truth`.
pub fn assert_uniques_near(estimated: u64, truth: u64) {
    let error = (estimated as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error <= 3.0 * hitcount_wire::SKETCH_STANDARD_ERROR,
        "{estimated} uniques summed over resources for {truth}"
    );
}

/// The names of the `hitcount_` counters that `counter!` calls in the Rust files under `roots`
/// increment, sorted and each once: what a binary's list of counters is held to by its tests.
pub fn counters_in_sources(roots: &[std::path::PathBuf]) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut directories = roots.to_vec();
    while let Some(directory) = directories.pop() {
        let entries = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("reading {}: {error}", directory.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                directories.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for call in text.split("counter!(").skip(1) {
                    let call = call.trim_start();
                    if let Some(name) = call
                        .strip_prefix('"')
                        .and_then(|rest| rest.split('"').next())
                        .filter(|name| name.starts_with("hitcount_"))
                    {
                        names.insert(name.to_owned());
                    }
                }
            }
        }
    }
    names.into_iter().collect()
}
