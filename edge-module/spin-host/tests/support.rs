//! The Spin host on port 0, its variables, and cleanup of its Redis keys; the aggregator and
//! the REST helpers come from `hitcount-test-support`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use hitcount_spin_host::SpinHost;
pub use hitcount_test_support::{
    BROWSER, Server, count, create_resources, metric, redis_connection, redis_or_skip,
};
use tempfile::TempDir;
use tokio::sync::oneshot;

pub const EDGE_KEY: &str = "spin-edge-secret-0123456789";

/// Keys the cursor asks for per `SCAN` call.
const SCAN_COUNT: usize = 1_000;

/// Every key matching `pattern`, by `SCAN` rather than `KEYS`: the machine's Redis is shared,
/// and `KEYS` blocks it for a walk over every key of every user (a benchmark's millions of hot
/// tier keys made it time out).
pub async fn keys_matching(
    redis: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(redis)
            .await
            .unwrap();
        keys.extend(page);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Deletes every key of one edge (its windows live under `hitcount:{edge id}`).
pub async fn delete_edge_keys(url: &str, edge_id: &str) {
    let mut redis = redis_connection(url).await;
    let keys = keys_matching(&mut redis, &format!("hitcount:{edge_id}:*")).await;
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

pub async fn aggregator(directory: &TempDir, edge_id: &str) -> Server {
    hitcount_test_support::aggregator(directory.path(), None, &[(edge_id, EDGE_KEY)]).await
}

pub fn variables(edge_id: &str, aggregator: &Server, redis_url: &str) -> BTreeMap<String, String> {
    [
        ("edge_id", edge_id.to_owned()),
        ("edge_key", EDGE_KEY.to_owned()),
        ("visitor_secret", "deployment-visitor-secret".to_owned()),
        ("aggregator_url", aggregator.url("")),
        ("redis_address", redis_url.to_owned()),
        ("window_ms", "200".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

pub async fn spin(variables: BTreeMap<String, String>, redis_url: &str) -> Server {
    let host = Arc::new(SpinHost::new(None, variables, redis_url).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(hitcount_spin_host::serve(listener, host, async move {
        let _ = stopped.await;
    }));
    Server::new(address, stop, task)
}
