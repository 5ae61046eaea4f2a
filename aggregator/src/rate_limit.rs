//! Token-bucket rate limits per client address and per API token (governor's keyed limiters).

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// A bucket holds this many seconds' worth of requests, so short bursts pass.
const BURST_SECONDS: u32 = 2;

#[derive(Debug)]
pub struct RateLimits {
    by_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Keyed by token digest, which is fixed-size and needs no allocation per check.
    by_token: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(NonZeroU32::new(BURST_SECONDS).unwrap_or(NonZeroU32::MIN));
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

fn retry_after(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> ApiError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    metrics::counter!("hitcount_rate_limited_total").increment(1);
    // Rounded up: a client that waits the whole seconds it is told finds a token.
    let wait_s = wait.as_millis().div_ceil(1_000).max(1);
    ApiError::RateLimited {
        retry_after_s: u64::try_from(wait_s).unwrap_or(u64::MAX),
    }
}

impl RateLimits {
    /// A limit of 0 disables that limiter.
    pub fn new(per_address_per_second: u32, per_token_per_second: u32) -> Self {
        Self {
            by_address: limiter(per_address_per_second),
            by_token: limiter(per_token_per_second),
        }
    }

    pub fn check_address(&self, address: IpAddr) -> Result<(), ApiError> {
        match &self.by_address {
            Some(limiter) => limiter
                .check_key(&address)
                .map_err(|not_until| retry_after(&not_until)),
            None => Ok(()),
        }
    }

    pub fn check_token(&self, token_digest: [u8; 32]) -> Result<(), ApiError> {
        match &self.by_token {
            Some(limiter) => limiter
                .check_key(&token_digest)
                .map_err(|not_until| retry_after(&not_until)),
            None => Ok(()),
        }
    }

    /// Forgets buckets that have refilled, so memory follows active clients, not all clients ever.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.by_address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.by_token {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}
