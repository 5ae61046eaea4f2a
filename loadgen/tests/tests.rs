//! The load generator against a real `hitcount-aggregator` process: a short run with duplicate
//! copies and reordering is counted exactly, resources created by a pattern are too, and the
//! verification catches a count it did not send.

mod support;

use std::collections::BTreeMap;

use serde_json::json;

use crate::support::Aggregator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_duplicates_and_reordering_is_counted_exactly() {
    let aggregator = Aggregator::start().await;
    let directory = tempfile::TempDir::new().unwrap();
    let expected_path = directory.path().join("expected.json");
    let config = aggregator.config(&[
        "--edges",
        "4",
        "--hits-per-second",
        "2000",
        "--resources",
        "500",
        "--duration-s",
        "5",
        "--duplicate-percent",
        "20",
        "--delay-ms-max",
        "50",
        "--expected-out",
        expected_path.to_str().unwrap(),
    ]);
    let outcome = hitcount_loadgen::run(config).await.unwrap();
    let report = &outcome.report;
    println!("{}", serde_json::to_string(report).unwrap());
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert!(report.verification.verified, "{:?}", report.verification);
    assert_eq!(report.verification.mismatches, 0);
    assert_eq!(report.hits_offered, 5 * 2_000, "five windows of 2000 hits");
    assert_eq!(report.hits_shed, 0);
    assert_eq!(report.hits_acknowledged, report.hits_offered);
    assert_eq!(report.verification.resources_checked, 500);
    assert!(
        report.verification.uniques_checked >= 100,
        "the hottest 100 at least"
    );
    assert!(
        report.sends.duplicate_copies_sent > 0 && report.sends.duplicate_answers > 0,
        "copies were sent and answered `duplicate`"
    );
    assert!(report.ack_p99_ms.is_some());
    assert!(
        report
            .last_30s_min_ack_ratio
            .is_some_and(|ratio| (0.0..=1.0).contains(&ratio)),
        "a share of each second's hits: {:?}",
        report.last_30s_min_ack_ratio
    );

    // --expected-out, read back and compared with the aggregator by this test's own queries.
    let expected: BTreeMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
    assert_eq!(expected.len(), 500);
    assert_eq!(expected.values().sum::<u64>(), report.hits_offered);
    let period = format!(
        "start_time={}&end_time={}&granularity=minute",
        outcome.expectation.start_ms, outcome.expectation.end_ms
    );
    for (resource_id, hits) in &expected {
        let (status, answer) = aggregator
            .get(&format!("/hits/{resource_id}?{period}"))
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["count"].as_u64(), Some(*hits), "{resource_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_a_pattern_creates_on_first_sight_are_counted_exactly() {
    let aggregator = Aggregator::start().await;
    let config = aggregator.config(&[
        "--setup",
        "pattern",
        "--edges",
        "2",
        "--hits-per-second",
        "1000",
        "--resources",
        "300",
        "--duration-s",
        "3",
        "--delay-ms-max",
        "20",
    ]);
    let report = hitcount_loadgen::run(config).await.unwrap().report;
    println!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert!(report.verification.verified, "{:?}", report.verification);
    assert_eq!(report.hits_acknowledged, 3_000);
    let (status, pattern) = aggregator.get("/patterns/load-r*").await;
    assert_eq!(status, 200, "{pattern}");
    assert!(
        pattern["resources"]
            .as_u64()
            .is_some_and(|created| created > 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_catches_a_hit_the_run_did_not_send() {
    let aggregator = Aggregator::start().await;
    let config = aggregator.config(&[
        "--edges",
        "2",
        "--hits-per-second",
        "500",
        "--resources",
        "50",
        "--duration-s",
        "2",
    ]);
    let outcome = hitcount_loadgen::run(config.clone()).await.unwrap();
    assert!(outcome.report.verification.verified, "{:?}", outcome.report);
    let sent = outcome.expectation.hits["load-r000000"];
    assert!(sent > 0);

    // One more hit through the direct API, inside the period verification reads.
    let (status, answer) = aggregator
        .post(
            "/hits",
            json!({"resource_id": "load-r000000", "timestamp": outcome.expectation.start_ms}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let verification = hitcount_loadgen::verify(&config, &outcome.expectation)
        .await
        .unwrap();
    assert!(!verification.verified);
    assert_eq!(
        verification.mismatches, 1,
        "{:?}",
        verification.mismatch_examples
    );
    let mismatch = &verification.mismatch_examples[0];
    assert_eq!(
        (
            mismatch.resource_id.as_str(),
            mismatch.what,
            mismatch.expected,
            mismatch.found,
            mismatch.absent
        ),
        ("load-r000000", "hits", sent, sent + 1, false)
    );
}

/// A database of its own on the machine's PostgreSQL; `None` (a printed skip) when it is
/// unreachable, a failure under `CI=true`.
fn fresh_database() -> Option<String> {
    let server = "postgres://root@127.0.0.1:5432";
    // The tests of this binary run at once: a sequence number keeps two from one millisecond
    // apart (two CREATE DATABASE of one name fail the second).
    static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "hitcount_loadgen_{}_{}_{}",
        std::process::id(),
        hitcount_process::now_ms(),
        CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let created = std::process::Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-c", &format!("CREATE DATABASE {name}")])
        .output()
        .is_ok_and(|output| output.status.success());
    if !created {
        assert!(
            !hitcount_test_support::under_ci(),
            "PostgreSQL at {server} is unreachable and CI=true"
        );
        eprintln!("SKIPPED: PostgreSQL at {server} is unreachable");
        return None;
    }
    Some(format!("{server}/{name}"))
}

/// Edges spread over three aggregators sharing one PostgreSQL and one Redis prefix, with
/// duplicate copies, and one aggregator SIGKILLed mid-run and started again on its port: every
/// hit is counted once, and the answers (recent minutes from the shared hot tier) say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_over_three_aggregators_on_one_store_are_counted_exactly_through_a_kill() {
    three_aggregators_through_a_kill(&[]).await;
}

/// The same with the durable inbox: the killed aggregator's unfolded rows are folded by the
/// others (or by itself at its restart), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_aggregators_with_the_inbox_are_counted_exactly_through_a_kill() {
    three_aggregators_through_a_kill(&["--fold-interval-ms", "500"]).await;
}

#[allow(clippy::unwrap_used)] // a test body, called by the tests above
async fn three_aggregators_through_a_kill(extra: &[&str]) {
    let Some(database) = fresh_database() else {
        return;
    };
    let Some(redis_url) = hitcount_test_support::redis_or_skip().await else {
        return;
    };
    let prefix = format!("hitcount-loadgen-{}", hitcount_process::now_ms());
    let mut flags = vec![
        "--database-url",
        database.as_str(),
        "--redis-url",
        redis_url.as_str(),
        "--redis-prefix",
        prefix.as_str(),
        "--rate-limit-ip-per-second",
        "0",
        "--rate-limit-token-per-second",
        "0",
    ];
    flags.extend_from_slice(extra);
    let directories: Vec<tempfile::TempDir> =
        (0..3).map(|_| tempfile::TempDir::new().unwrap()).collect();
    let ports: Vec<u16> = (0..3)
        .map(|_| hitcount_test_support::spare_port())
        .collect();
    let mut children = Vec::new();
    for (port, directory) in ports.iter().zip(&directories) {
        children.push(support::spawn_ready(*port, directory.path(), &flags).await);
    }
    let mut arguments = vec!["hitcount-loadgen".to_owned()];
    for port in &ports {
        arguments.push("--aggregator".to_owned());
        arguments.push(format!("http://127.0.0.1:{port}"));
    }
    for argument in [
        "--admin-token",
        support::ADMIN_TOKEN,
        "--edges",
        "6",
        "--hits-per-second",
        "3000",
        "--resources",
        "300",
        "--duration-s",
        "8",
        "--duplicate-percent",
        "10",
        "--quiet",
    ] {
        arguments.push(argument.to_owned());
    }
    let config = <hitcount_loadgen::Config as clap::Parser>::parse_from(arguments);
    let run = tokio::spawn(hitcount_loadgen::run(config));
    // Killed once deltas flow through it (setup creates resources and keys first).
    let metrics = format!("http://127.0.0.1:{}/metrics", ports[1]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        let applied = text
            .lines()
            .find_map(|line| line.strip_prefix("hitcount_deltas_applied_total "))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if applied >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delta reached the second aggregator"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    children[1].kill().await.unwrap();
    // Down for more than a window, so its edges' next sends fail and are resent after the
    // restart.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    children[1] = support::spawn_ready(ports[1], directories[1].path(), &flags).await;
    let outcome = run.await.unwrap().unwrap();
    let report = &outcome.report;
    println!("{}", serde_json::to_string(report).unwrap());
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert_eq!(report.hits_acknowledged, report.hits_offered);
    assert!(report.verification.verified, "{:?}", report.verification);
    assert!(
        report.sends.network_errors > 0,
        "the kill was felt by the edges"
    );
}
