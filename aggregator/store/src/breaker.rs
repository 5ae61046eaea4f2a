//! A circuit breaker in front of the durable store, for reads that may be answered stale.
//!
//! While PostgreSQL is down, each read that reaches for it waits for the pool's acquire timeout
//! before it fails; a read of the last hour then answers from the hot tier alone, marked stale.
//! Without a breaker every such read would wait that long. So the breaker opens when the
//! database answers unavailable, and while it is open stale-allowed reads skip the database.
//! After [`DATABASE_BREAKER_OPEN_MS`] one read (the first to notice) probes the database again
//! while the others keep skipping it; any answer from the database, a probe's or a merge's
//! commit, closes the breaker.
//!
//! Time is a parameter (Unix milliseconds, as the rest of the store takes it), so the rules are
//! tested without waiting.

use std::sync::atomic::{AtomicU64, Ordering};

/// How long stale-allowed reads skip the database after it answered unavailable, before one of
/// them probes it again: short against an outage, long against the pool's 2 s acquire timeout
/// that each probe may cost.
pub const DATABASE_BREAKER_OPEN_MS: u64 = 5_000;

/// Closed (0), or open until the Unix millisecond it holds.
#[derive(Debug, Default)]
pub struct DatabaseBreaker {
    open_until_ms: AtomicU64,
}

impl DatabaseBreaker {
    /// Whether a stale-allowed read at `now_ms` skips the database. Once the open time has
    /// passed, exactly one caller gets `false` (it probes) and the breaker stays open for the
    /// others for another period, unless that probe closes it first.
    pub fn skips(&self, now_ms: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now_ms < until {
            return true;
        }
        match self.open_until_ms.compare_exchange(
            until,
            now_ms + DATABASE_BREAKER_OPEN_MS,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => false,
            // Another read took the probe (it skips until that answers), or an answer closed it.
            Err(current) => current != 0 && now_ms < current,
        }
    }

    /// The database answered unavailable at `now_ms`. An open breaker keeps its probe time:
    /// merges that keep failing (a full disk refuses writes, not reads) must not put off the
    /// probe that finds reads answered again.
    pub fn open(&self, now_ms: u64) {
        let until = now_ms + DATABASE_BREAKER_OPEN_MS;
        debug_assert!(until > 0, "an open breaker is never 0, which means closed");
        let armed =
            self.open_until_ms
                .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire);
        if armed.is_ok() {
            tracing::warn!(
                open_ms = DATABASE_BREAKER_OPEN_MS,
                "the database is unavailable: reads of the last hour answer stale from the hot tier"
            );
            metrics::counter!("hitcount_database_breaker_opened_total").increment(1);
        }
    }

    /// The database answered. Called on every commit and read, so it only loads while closed.
    pub fn close(&self) {
        if self.open_until_ms.load(Ordering::Acquire) != 0
            && self.open_until_ms.swap(0, Ordering::AcqRel) != 0
        {
            tracing::info!("the database answers again: reads use it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_until_the_database_fails_then_skipped_until_one_probe() {
        let breaker = DatabaseBreaker::default();
        assert!(
            !breaker.skips(1_000),
            "closed: every read asks the database"
        );
        breaker.open(1_000);
        assert!(breaker.skips(1_001));
        let after = 1_000 + DATABASE_BREAKER_OPEN_MS;
        assert!(
            !breaker.skips(after),
            "the first read after the period probes"
        );
        assert!(breaker.skips(after), "the others skip while it probes");
        assert!(breaker.skips(after + DATABASE_BREAKER_OPEN_MS - 1));
        // The probe failed: it stays open until the period the probe began.
        breaker.open(after + 100);
        assert!(breaker.skips(after + DATABASE_BREAKER_OPEN_MS - 1));
        assert!(
            !breaker.skips(after + DATABASE_BREAKER_OPEN_MS),
            "failures while open do not put the next probe off"
        );
        breaker.close();
        assert!(!breaker.skips(after + 300), "an answer closes it");
        assert!(!breaker.skips(after + 301), "and it stays closed");
    }
}
