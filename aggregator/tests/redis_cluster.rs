//! The hot tier on a Redis Cluster: three masters the test starts itself on spare ports, the
//! tier's keys in the one slot of its hash tag. Answers stay exact from Redis; with a node that
//! holds other slots stopped nothing changes; with the tier's node stopped ingest goes on and
//! queries are served by PostgreSQL; when it comes back (empty) the tier is rebuilt on it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hitcount_aggregator::now_ms;
use reqwest::StatusCode;
use tempfile::TempDir;

use crate::support::{
    Api, BinaryServer, Server, batch, metric, post_delta, postgres_database, postgres_or_skip,
};

struct Node {
    child: Child,
}

fn start_node(directory: &Path, port: u16) -> std::io::Result<Node> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        // The other nodes keep serving their slots while one is down.
        .args(["--cluster-require-full-coverage", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(directory)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let node = Node { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(node)
}

fn redis_cli(port: u16, arguments: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(arguments)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tier's answer for the last hour, and whether Redis served it.
async fn answer(server: &Server) -> (u64, bool) {
    let served_before = metric(server, "hitcount_hot_tier_reads_total{served=\"redis\"").await;
    let (status, value) = Api::admin(server)
        .get("/hits/home?window=1h&granularity=minute")
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let from_redis =
        metric(server, "hitcount_hot_tier_reads_total{served=\"redis\"").await > served_before;
    (value["count"].as_u64().unwrap(), from_redis)
}

/// Waits until the answer is `truth` and came from Redis (or from PostgreSQL, `from_redis`
/// false); an answer above the truth fails at once.
async fn wait_for(server: &Server, truth: u64, from_redis: bool, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (count, served_by_redis) = answer(server).await;
        assert!(count <= truth, "{phase}: counted {count}, truth {truth}");
        if count == truth && served_by_redis == from_redis {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{phase}: answered {count} (from Redis: {served_by_redis}), truth {truth}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `count` batches of 3 hits, each answered within a second; returns the hits sent.
async fn ingest(server: &Server, first_sequence: u64, count: u64) -> u64 {
    for sequence in first_sequence..first_sequence + count {
        let started = Instant::now();
        let (status, value) = post_delta(server, &batch(sequence, &[("home", 3, &["v"])])).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "ingest waited for Redis"
        );
    }
    3 * count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_tier_runs_on_a_redis_cluster_and_survives_a_node_stopping() {
    if !postgres_or_skip() {
        return;
    }
    let directory = TempDir::new().unwrap();
    let ports: Vec<u16> = (0..3)
        .map(|_| hitcount_test_support::spare_port())
        .collect();
    let mut nodes = Vec::new();
    for port in &ports {
        match start_node(directory.path(), *port) {
            Ok(node) => nodes.push(Some(node)),
            Err(error) => {
                assert!(
                    !hitcount_test_support::under_ci(),
                    "redis-server cannot start and CI=true: {error}"
                );
                eprintln!("SKIPPED: redis-server cannot start ({error})");
                return;
            }
        }
    }
    let addresses: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ports
        .iter()
        .all(|port| redis_cli(*port, &["cluster", "info"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "the cluster never became ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prefix = format!("hitcount-cluster-{}", now_ms());
    // The node that holds the tier's slot answers its keys; the others answer MOVED.
    let tag_key = format!("{{{prefix}}}:epoch");
    let holder = ports
        .iter()
        .position(|port| !redis_cli(*port, &["get", &tag_key]).contains("MOVED"))
        .expect("one node holds the slot");
    let nodes_list = ports
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let data_dir = directory.path().join("aggregator");
    let database = postgres_database(&data_dir);
    let aggregator = BinaryServer::start(
        &data_dir,
        &[
            "--database-url",
            &database,
            "--redis-url",
            &nodes_list,
            "--redis-cluster",
            "--redis-prefix",
            &prefix,
        ],
    )
    .await;
    let server = aggregator.handle();
    Api::admin(&server).create_resource("home").await;
    let mut truth = ingest(&server, 0, 20).await;
    wait_for(&server, truth, true, "on the whole cluster").await;

    // A node holding other slots stops: the tier does not notice.
    let bystander = (holder + 1) % 3;
    nodes[bystander] = None;
    truth += ingest(&server, 100, 20).await;
    wait_for(&server, truth, true, "with another node stopped").await;

    // The tier's node stops: ingest goes on, PostgreSQL answers, exactly.
    nodes[holder] = None;
    truth += ingest(&server, 200, 20).await;
    wait_for(&server, truth, false, "with the tier's node stopped").await;

    // It comes back empty (no persistence): the tier is rebuilt on it and serves again.
    nodes[holder] = Some(start_node(directory.path(), ports[holder]).unwrap());
    truth += ingest(&server, 300, 20).await;
    wait_for(&server, truth, true, "after the tier's node came back").await;
    aggregator.kill().await;
}
