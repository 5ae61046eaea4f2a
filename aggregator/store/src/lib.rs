//! Where counts live. [`Store`] (`facade.rs`) is what the aggregator uses; behind it is the
//! embedded store (`embedded.rs`, SQLite in one file in the data directory), PostgreSQL
//! (`postgres.rs`, which Citus speaks too) or Cosmos DB (`cosmos.rs`, with its own rules for
//! what SQL does in one transaction), all held to [`DurableStore`] (`contract.rs`), and
//! with `--redis-url` the hot tier (`hot.rs`). Both backends keep the same rules (their table and
//! column names differ, see ARCHITECTURE.md): three tiers written in the merge's transaction
//! (`group.rs` decides what), the dedupe record in that same transaction, sketches appended to
//! `pending_sketches` and folded later (`rules.rs`); with the durable inbox (`inbox.rs`), minutes
//! folded once closed, as whole cells. `breaker.rs` lets reads skip a database that is down;
//! `closed.rs` holds one resource's closed buckets, decoded, for the next read.
//!
//! Each file has one job; this one only names them and the limits of time every part shares.

mod bounded;
mod breaker;
pub mod closed;
mod contract;
mod cosmos;
mod embedded;
mod facade;
mod group;
pub mod hot;
pub mod inbox;
mod many;
mod patterns;
mod postgres;
mod records;
pub mod rollup;
mod rules;
pub mod sealed;
mod snapshot;
pub mod summaries;

pub use breaker::DATABASE_BREAKER_OPEN_MS;
pub use contract::{CatalogStore, DurableStore};
pub use cosmos::{
    COSMOS_THROTTLE_RETRIES_MAX, COSMOS_THROTTLE_WAIT_MS_MAX, COUNT_WRITE_ATTEMPTS_MAX,
    CosmosSettings, CosmosStore, FOLDED_PAYLOAD_KEEP_MS, INBOX_PART_CHARS_MAX, INBOX_PARTS_MAX,
    OVERLAY_DONE_KEEP_MS, ResumedStream, STREAM_ORPHAN_MS, cosmos_client,
};
pub use embedded::EmbeddedStore;
pub use facade::Store;
pub use group::WriteShape;
pub use many::{ManyReader, STALE_READ_RESOURCES_MAX};
pub use patterns::{PatternRecord, PatternStore};
pub use postgres::{POOL_ACQUIRE_TIMEOUT_MS, PgStore};
pub use records::{
    Applied, ApplyOutcome, BatchKey, CELLS_READ_RESOURCES_MAX, CountCell, CreateOutcome,
    GroupCommit, IMPORT_CELLS_MAX, Import, ImportOutcome, MergeBatch, MinuteCells, Pruned,
    ResourceRecord, StoreError, Tier, TierCell, TokenRecord,
};
pub use rules::cell_kept;
pub use snapshot::TransactionSnapshot;
pub use summaries::{BucketGeneration, BucketSummary, KeptSummaries, StoredSummary};

pub use hitcount_wire::{DAY_MS, HOUR_MS};

/// Minute counts are kept for 48 hours.
pub const MINUTE_TIER_RETENTION_MS: u64 = 48 * HOUR_MS;
/// Hour counts are kept for 90 days; day counts are kept until the resource's retention ends.
pub const HOUR_TIER_RETENTION_MS: u64 = 90 * DAY_MS;
/// Deltas whose window ended longer ago than this are refused: their dedupe records may be gone.
pub const DELTA_AGE_MS_MAX: u64 = 7 * DAY_MS;
/// Dedupe records outlive the age limit by a day, so every batch that can be accepted is checked.
pub const DEDUPE_RETENTION_MS: u64 = DELTA_AGE_MS_MAX + DAY_MS;

/// `bytes` random bytes from the OS, hex-encoded: ids of tokens, resources and hot-tier
/// generations, and the suffix that tells a renamed resource apart.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The OS random source failing is not something a server can continue through.
    getrandom::fill(&mut buffer).unwrap_or_else(|error| panic!("OS random source failed: {error}"));
    hex::encode(buffer)
}
