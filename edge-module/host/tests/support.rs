//! An aggregator and an edge, both in this process on port-0 listeners, and a proxy between them
//! that can deliver every request twice.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hitcount_edge::Edge;
use hitcount_edge::config::Config as EdgeConfig;
use reqwest::Client;
use tempfile::TempDir;
use tokio::sync::oneshot;

pub use hitcount_test_support::{ADMIN_TOKEN, BROWSER, Server};
pub const EDGE_ID: &str = "edge-e2e";
pub const EDGE_KEY: &str = "edge-e2e-secret-0123456789";

pub async fn aggregator(directory: &TempDir, address: Option<SocketAddr>) -> Server {
    aggregator_in(directory.path(), address).await
}

pub async fn aggregator_in(directory: &std::path::Path, address: Option<SocketAddr>) -> Server {
    hitcount_test_support::aggregator(directory, address, &[(EDGE_ID, EDGE_KEY)]).await
}

/// An address nothing listens on now: bound to port 0, then released for a child process.
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub fn edge_config(aggregator: &str) -> EdgeConfig {
    let mut config = EdgeConfig::new(aggregator, EDGE_ID, EDGE_KEY);
    config.visitor_secret = b"deployment-visitor-secret".to_vec();
    config.aggregator_token = Some(ADMIN_TOKEN.to_owned());
    config.trust_forwarded_for = true;
    config.window_ms = 200;
    config
}

pub async fn edge(config: EdgeConfig) -> Server {
    let edge = Edge::start(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(hitcount_edge::serve(listener, edge, async move {
        let _ = stopped.await;
    }));
    Server::new(address, stop, task)
}

pub async fn create_resources(aggregator: &Server, count: usize) {
    create_resources_at(&aggregator.url(""), count).await;
}

pub async fn create_resources_at(aggregator: &str, count: usize) {
    hitcount_test_support::create_resources(aggregator, count).await;
}

pub async fn count(server: &Server, resource_id: &str) -> (u64, u64) {
    count_at(&server.url(""), resource_id).await
}

pub async fn count_at(server: &str, resource_id: &str) -> (u64, u64) {
    hitcount_test_support::count(server, resource_id).await
}

/// Sends `hits` beacons over `connections` concurrent clients: hit `i` goes to resource
/// `i % resources` from visitor `i % visitors` (its own address).
pub async fn send_hits(edge: &Server, hits: u64, resources: u64, visitors: u64, connections: u64) {
    send_hits_to(&edge.url(""), hits, resources, visitors, connections).await;
}

pub async fn send_hits_to(edge: &str, hits: u64, resources: u64, visitors: u64, connections: u64) {
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let url = format!("{edge}/hit");
        tasks.push(tokio::spawn(async move {
            let client = Client::new();
            let mut index = connection;
            while index < hits {
                let visitor = index % visitors;
                let address = format!(
                    "10.{}.{}.{}",
                    visitor >> 16,
                    (visitor >> 8) & 255,
                    visitor & 255
                );
                let response = client
                    .post(&url)
                    .header("content-type", "text/plain")
                    .header("user-agent", BROWSER)
                    .header("x-forwarded-for", address)
                    .body(format!("{{\"resource_id\":\"r{}\"}}", index % resources))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::NO_CONTENT);
                assert_eq!(response.headers()["x-hitcount-result"], "counted");
                index += connections;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A proxy in front of the aggregator's `/v1/deltas` that sends every request twice, as a
/// network that duplicates deliveries would. Counts what the aggregator answered.
pub struct DuplicatingProxy {
    pub server: Server,
    pub duplicates: Arc<AtomicU64>,
}

#[derive(Clone)]
struct ProxyState {
    target: String,
    client: Client,
    duplicates: Arc<AtomicU64>,
}

async fn forward_twice(
    State(state): State<ProxyState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut last = (StatusCode::BAD_GATEWAY, String::new());
    for _ in 0..2 {
        let mut request = state
            .client
            .post(format!("{}/v1/deltas", state.target))
            .body(body.clone());
        for (name, value) in &headers {
            if name.as_str().starts_with("x-hitcount") || name == "content-type" {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap();
        if text.contains("\"duplicate\"") {
            state.duplicates.fetch_add(1, Ordering::SeqCst);
        }
        last = (status, text);
    }
    last
}

pub async fn duplicating_proxy(target: &Server) -> DuplicatingProxy {
    let duplicates = Arc::new(AtomicU64::new(0));
    let state = ProxyState {
        target: format!("http://{}", target.address),
        client: Client::new(),
        duplicates: Arc::clone(&duplicates),
    };
    let router = axum::Router::new()
        .route("/v1/deltas", post(forward_twice))
        .with_state(state);
    DuplicatingProxy {
        server: hitcount_test_support::serve_router(router).await,
        duplicates,
    }
}
