//! After the run: every resource's total against `GET /hits/{id}` on the first aggregator, and
//! the unique visitors of the sampled resources against their exact distinct counts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hitcount_wire::SKETCH_STANDARD_ERROR;
use reqwest::Method;
use serde::Serialize;

use crate::http::{call, for_each_concurrently};
use crate::{Config, Expectation, LoadgenError};

/// Mismatches listed in the report (all are counted).
pub const MISMATCH_EXAMPLES_MAX: usize = 10;
/// Query failures listed in the report.
const QUERY_ERROR_EXAMPLES_MAX: usize = 10;
/// A unique-visitor estimate may be off by this many standard errors of the true count.
const UNIQUES_STANDARD_ERRORS_MAX: f64 = 3.0;

/// One resource whose answer differs from what was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub resource_id: String,
    /// `hits` (exact) or `uniques` (outside the sketch's error).
    pub what: &'static str,
    pub expected: u64,
    pub found: u64,
    /// The aggregator answered 404: it does not know the resource (counted as 0).
    pub absent: bool,
}

/// What verification found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Every resource was read and none differed.
    pub verified: bool,
    pub mismatches: u64,
    /// The first mismatches by resource id.
    pub mismatch_examples: Vec<Mismatch>,
    pub resources_checked: u64,
    pub uniques_checked: u64,
    /// Queries answered with something other than 200 or 404.
    pub query_errors: u64,
    pub query_error_examples: Vec<String>,
    pub verify_s: f64,
}

#[derive(Debug, Default)]
struct Found {
    mismatches: Vec<Mismatch>,
    checked: u64,
    uniques_checked: u64,
    query_errors: u64,
    error_examples: Vec<String>,
}

/// Slack beyond the standard errors, in visitors. The API rounds the estimate to a whole number,
/// and below a few hundred visitors the error is whole register collisions (about n^2 / 2m of
/// them, Poisson-distributed, so three in 1% of sets of 123), not a smooth 0.81%.
const UNIQUES_SLACK: f64 = 1.0;

/// Whether an estimate is within the sketch's error of the true count.
fn uniques_agree(expected: u64, found: u64) -> bool {
    let tolerance =
        UNIQUES_STANDARD_ERRORS_MAX * SKETCH_STANDARD_ERROR * expected as f64 + UNIQUES_SLACK;
    (found as f64 - expected as f64).abs() <= tolerance
}

/// Reads every expected resource's count for the expectation's period (minute granularity,
/// whose total is the exact sum of its minutes) with `--verify-concurrency` requests in flight.
/// A resource that does not exist (404) counts 0: under a pattern, a resource nobody hit is
/// never created.
pub async fn verify(
    config: &Config,
    expectation: &Expectation,
) -> Result<Verification, LoadgenError> {
    let started = Instant::now();
    let client = crate::http::client(config.verify_concurrency)?;
    let expected: Arc<Vec<(String, u64, Option<u64>)>> = Arc::new(
        expectation
            .hits
            .iter()
            .map(|(id, hits)| (id.clone(), *hits, expectation.uniques.get(id).copied()))
            .collect(),
    );
    let base = format!(
        "{}/hits",
        config
            .aggregators
            .first()
            .map_or("", |url| url.trim_end_matches('/'))
    );
    let query = format!(
        "start_time={}&end_time={}&granularity=minute",
        expectation.start_ms, expectation.end_ms
    );
    let token = config.admin_token().to_owned();
    let found = Arc::new(Mutex::new(Found::default()));
    let shared_found = Arc::clone(&found);
    let shared_expected = Arc::clone(&expected);
    for_each_concurrently(expected.len(), config.verify_concurrency, move |index| {
        let (client, expected, found, token) = (
            client.clone(),
            Arc::clone(&shared_expected),
            Arc::clone(&shared_found),
            token.clone(),
        );
        let url = format!("{base}/{}?{query}", expected[index].0);
        async move {
            let (resource_id, hits, uniques) = &expected[index];
            let (status, answer) = call(&client, Method::GET, &url, &token, None).await?;
            let counted = match status {
                200 => answer["count"].as_u64().zip(answer["uniques"].as_u64()),
                404 => Some((0, 0)),
                _ => None,
            };
            let mut found = found.lock().unwrap_or_else(PoisonError::into_inner);
            let Some((count, distinct)) = counted else {
                found.query_errors += 1;
                if found.error_examples.len() < QUERY_ERROR_EXAMPLES_MAX {
                    found
                        .error_examples
                        .push(format!("GET {url}: {status} {answer}"));
                }
                return Ok(());
            };
            found.checked += 1;
            if count != *hits {
                found.mismatches.push(Mismatch {
                    resource_id: resource_id.clone(),
                    what: "hits",
                    expected: *hits,
                    found: count,
                    absent: status == 404,
                });
            }
            if let Some(uniques) = uniques {
                found.uniques_checked += 1;
                if !uniques_agree(*uniques, distinct) {
                    found.mismatches.push(Mismatch {
                        resource_id: resource_id.clone(),
                        what: "uniques",
                        expected: *uniques,
                        found: distinct,
                        absent: status == 404,
                    });
                }
            }
            Ok(())
        }
    })
    .await?;
    let mut found = std::mem::take(&mut *found.lock().unwrap_or_else(PoisonError::into_inner));
    found
        .mismatches
        .sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
    let mismatches = found.mismatches.len() as u64;
    found.mismatches.truncate(MISMATCH_EXAMPLES_MAX);
    Ok(Verification {
        verified: mismatches == 0
            && found.query_errors == 0
            && found.checked == expected.len() as u64,
        mismatches,
        mismatch_examples: found.mismatches,
        resources_checked: found.checked,
        uniques_checked: found.uniques_checked,
        query_errors: found.query_errors,
        query_error_examples: found.error_examples,
        verify_s: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniques_agree_within_three_standard_errors_and_one_visitor() {
        assert!(uniques_agree(10, 11));
        assert!(!uniques_agree(10, 12));
        // Three collisions in 123 visitors: 3.0 standard errors, and the rounding.
        assert!(uniques_agree(123, 120));
        assert!(!uniques_agree(123, 119));
        assert!(uniques_agree(100_000, 102_400));
        assert!(!uniques_agree(100_000, 102_500));
        assert!(uniques_agree(0, 0));
    }
}
