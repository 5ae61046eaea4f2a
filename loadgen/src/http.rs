//! The HTTP client, retry delays, and JSON calls to the REST API that retry what the API says
//! to retry (429 and 503, with `Retry-After`) and network errors.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use crate::LoadgenError;

/// One request may take this long (the edge's `DELIVERY_TIMEOUT_MS`).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// First retry delay without a `Retry-After`; doubles per failure.
pub const RETRY_DELAY_MS_MIN: u64 = 50;
/// Longest retry delay, `Retry-After` included: a load test wants to find out quickly whether
/// the aggregator has recovered (a real edge waits up to 30 s).
pub const RETRY_DELAY_MS_MAX: u64 = 2_000;
/// Attempts of one REST call (setup, verification) before the run gives up.
pub const API_ATTEMPTS_MAX: u32 = 60;
/// Idle keep-alive connections kept per aggregator beyond one per edge.
const IDLE_CONNECTIONS_EXTRA: usize = 64;

/// One client for the whole run: a pool of keep-alive HTTP/1.1 connections per aggregator,
/// as many as there are requests in flight (about one per edge).
pub fn client(edges: usize) -> Result<reqwest::Client, LoadgenError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(edges + IDLE_CONNECTIONS_EXTRA)
        .connect_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()
        .map_err(|source| LoadgenError::Http {
            what: "building the HTTP client".to_owned(),
            source,
        })
}

/// `Retry-After` in seconds (the only form the aggregator sends), as ms.
pub fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|seconds| seconds.saturating_mul(1_000))
}

/// The wait before the next attempt after `failures` failed ones: what `Retry-After` said, or
/// exponential backoff with jitter (between half and all of the delay, so that edges that failed
/// together do not retry together), capped at [`RETRY_DELAY_MS_MAX`] either way.
pub fn retry_delay_ms(failures: u32, retry_after_ms: Option<u64>, rng: &mut impl Rng) -> u64 {
    if let Some(wait) = retry_after_ms {
        return wait.min(RETRY_DELAY_MS_MAX);
    }
    let delay = RETRY_DELAY_MS_MIN
        .saturating_mul(1 << failures.min(16))
        .min(RETRY_DELAY_MS_MAX);
    rng.random_range(delay / 2..=delay)
}

/// A JSON call with the admin token; retries 429, 503 and network errors. Returns the final
/// status and body (`Null` when empty or not JSON) for the caller to judge.
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), LoadgenError> {
    let mut failures = 0;
    loop {
        let mut request = client
            .request(method.clone(), url)
            .bearer_auth(token)
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        if let Some(body) = body {
            request = request.json(body);
        }
        let retry_after = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after_ms(response.headers());
                let text = response.text().await.unwrap_or_default();
                if !matches!(status, 429 | 503) {
                    return Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)));
                }
                if failures + 1 >= API_ATTEMPTS_MAX {
                    return Err(LoadgenError::Refused {
                        what: format!("{method} {url}, {API_ATTEMPTS_MAX} times"),
                        status,
                        body: text,
                    });
                }
                retry_after
            }
            Err(source) if failures + 1 >= API_ATTEMPTS_MAX => {
                return Err(LoadgenError::Http {
                    what: format!("{method} {url}, {API_ATTEMPTS_MAX} times"),
                    source,
                });
            }
            Err(_) => None,
        };
        let delay = retry_delay_ms(failures, retry_after, &mut rand::rng());
        failures += 1;
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

/// Runs `work(0..count)` with at most `concurrency` calls in flight; the first error ends it.
pub async fn for_each_concurrently<F, Fut>(
    count: usize,
    concurrency: usize,
    work: F,
) -> Result<(), LoadgenError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), LoadgenError>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let next = Arc::clone(&next);
        let work = Arc::clone(&work);
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok(());
                }
                work(index).await?;
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|error| LoadgenError::Setup {
            what: "a concurrent REST call".to_owned(),
            reason: error.to_string(),
        })??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_and_backoff_doubles() {
        let mut rng = rand::rng();
        assert_eq!(retry_delay_ms(0, Some(1_000), &mut rng), 1_000);
        assert_eq!(
            retry_delay_ms(0, Some(30_000), &mut rng),
            RETRY_DELAY_MS_MAX
        );
        let first = retry_delay_ms(0, None, &mut rng);
        assert!((RETRY_DELAY_MS_MIN / 2..=RETRY_DELAY_MS_MIN).contains(&first));
        let later = retry_delay_ms(3, None, &mut rng);
        assert!((200..=400).contains(&later));
        assert!(retry_delay_ms(30, None, &mut rng) <= RETRY_DELAY_MS_MAX);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after_ms(&headers), Some(2_000));
    }
}
