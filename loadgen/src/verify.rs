//! After the run: every resource's total against `GET /hits/{id}` on the first aggregator, and
//! the unique visitors of the sampled resources against the count of the union of the sketches
//! they were offered in: a union is a register-wise maximum, so the answer must equal it exactly,
//! whatever way the aggregator merged the entries. The sketch's own error against the exact
//! distinct count is reported beside it, not checked: it belongs to HyperLogLog, not to us.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use reqwest::Method;
use serde::Serialize;

use crate::http::{call, for_each_concurrently};
use crate::{Config, Expectation, LoadgenError};

/// Mismatches listed in the report (all are counted).
pub const MISMATCH_EXAMPLES_MAX: usize = 10;
/// Query failures listed in the report.
const QUERY_ERROR_EXAMPLES_MAX: usize = 10;

/// A resource's id, acknowledged hits and, if sampled, (unique visitors owed, exact distinct).
type Expected = (String, u64, Option<(u64, u64)>);

/// One resource whose answer differs from what was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub resource_id: String,
    /// `hits` or `uniques`, both exact.
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
    /// The largest relative error of a checked unique-visitor answer against the exact distinct
    /// count: HyperLogLog's own (standard error 0.81%), reported, not checked.
    pub sketch_error_max: f64,
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
    sketch_error_max: f64,
    query_errors: u64,
    error_examples: Vec<String>,
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
    let expected: Arc<Vec<Expected>> = Arc::new(
        expectation
            .hits
            .iter()
            .map(|(id, hits)| {
                let uniques = expectation.uniques.get(id).copied();
                let distinct = expectation.distinct.get(id).copied().unwrap_or(0);
                (id.clone(), *hits, uniques.map(|owed| (owed, distinct)))
            })
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
            if let Some((uniques, exact)) = uniques {
                found.uniques_checked += 1;
                if *exact > 0 {
                    let error = (distinct as f64 - *exact as f64).abs() / *exact as f64;
                    found.sketch_error_max = found.sketch_error_max.max(error);
                }
                if distinct != *uniques {
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
        sketch_error_max: found.sketch_error_max,
        query_errors: found.query_errors,
        query_error_examples: found.error_examples,
        verify_s: started.elapsed().as_secs_f64(),
    })
}
