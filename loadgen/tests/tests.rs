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
    assert!(report.ack_p99_ms.is_some() && report.last_30s_min_ack_ratio.is_some());

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
