//! Shared by the integration tests of `hitcount-edge`, `hitcount-spin-host` and the store tests:
//! an aggregator in the test process on a real port-0 socket, the REST calls tests make, and the
//! machine's Redis (or a skip with the reason, or a failure under `CI=true`); and, for the
//! benchmarks, a wrk runner.

// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used)]

pub mod wrk;

use std::net::SocketAddr;
use std::path::Path;

use hitcount_aggregator::Aggregator;
use hitcount_aggregator::config::{Config as AggregatorConfig, EdgeKey};
use reqwest::Client;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "test-support-admin-token-0123";
pub const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// A server running in this process until [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub fn new(
        address: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops gracefully and waits; the server's own error fails the test.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Serves `router` on a port-0 listener until [`Server::stop`] (origins, proxies, stubs).
pub async fn serve_router(router: axum::Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .map_err(anyhow::Error::from)
    });
    Server::new(address, stop, task)
}

/// An aggregator on `directory` (its embedded store), listening on `address` or port 0, with
/// the admin token [`ADMIN_TOKEN`], the given edge keys and no rate limits.
pub async fn aggregator(
    directory: &Path,
    address: Option<SocketAddr>,
    edge_keys: &[(&str, &str)],
) -> Server {
    let mut config = AggregatorConfig::for_data_dir(directory.to_path_buf());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.edge_keys = edge_keys
        .iter()
        .map(|(edge_id, secret)| EdgeKey {
            edge_id: (*edge_id).to_owned(),
            secret: secret.as_bytes().to_vec(),
        })
        .collect();
    config.rate_limit_ip_per_second = 0;
    config.rate_limit_token_per_second = 0;
    let aggregator = Aggregator::start(config).await.unwrap();
    let listener =
        tokio::net::TcpListener::bind(address.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(hitcount_aggregator::serve(
        listener,
        aggregator,
        async move {
            let _ = stopped.await;
        },
    ));
    Server::new(address, stop, task)
}

/// Creates resources `r0` .. `r{count-1}` at the aggregator at `base` (`http://host:port`).
pub async fn create_resources(base: &str, count: usize) {
    for index in 0..count {
        create_resource(base, &format!("r{index}")).await;
    }
}

pub async fn create_resource(base: &str, resource_id: &str) {
    let response = Client::new()
        .post(format!("{base}/resources"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": resource_id, "resource_id": resource_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "creating {resource_id}");
}

/// (hits, uniques) of a resource over the last hour.
pub async fn count(base: &str, resource_id: &str) -> (u64, u64) {
    let value: Value = Client::new()
        .get(format!("{base}/hits/{resource_id}?window=1h"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        value["count"].as_u64().unwrap(),
        value["uniques"].as_u64().unwrap(),
    )
}

/// The sum over label sets of a Prometheus counter at `base/metrics`.
pub async fn metric(base: &str, name: &str) -> u64 {
    let text = Client::new()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
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
