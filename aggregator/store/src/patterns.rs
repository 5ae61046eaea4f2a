//! What resource patterns need from the store, for both backends alike: the `patterns` table,
//! the refusal counters flushed into it, and inserting resources created on first sight
//! (idempotently, so that aggregators sharing a database can create the same id at once;
//! `Store::create_resources_if_absent` in `facade.rs` renames one whose name is taken).

use crate::records::{ResourceRecord, StoreError};

/// A stored pattern, such as `blog.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternRecord {
    pub pattern: String,
    pub resources_max: u64,
    /// Given to the resources the pattern creates.
    pub retention_days: Option<u32>,
    /// Hits refused because the pattern was full, as flushed by every aggregator so far.
    pub refused_hits: u64,
    pub created_at_ms: u64,
}

/// The patterns' part of the store contract (see [`super::DurableStore`]).
#[async_trait::async_trait]
pub trait PatternStore {
    async fn patterns(&self) -> Result<Vec<PatternRecord>, StoreError>;

    /// Stores a new pattern; false if one with the same text exists.
    async fn create_pattern(&self, record: PatternRecord) -> Result<bool, StoreError>;

    /// Deletes a pattern (the resources it created stay); false if it did not exist.
    async fn delete_pattern(&self, pattern: String) -> Result<bool, StoreError>;

    /// Adds refused hits to the patterns' stored counters (patterns deleted meanwhile are
    /// skipped), in one transaction.
    async fn add_refused_hits(&self, counts: Vec<(String, u64)>) -> Result<(), StoreError>;

    /// The stored resources among `ids`, and (if asked) every resource created since
    /// `created_since_ms`.
    async fn resources_current(
        &self,
        ids: Vec<String>,
        created_since_ms: Option<u64>,
    ) -> Result<Vec<ResourceRecord>, StoreError>;

    /// Inserts the records whose id and name are both free and returns the stored record of
    /// every id asked for that exists afterwards.
    async fn insert_resources_if_absent(
        &self,
        records: Vec<ResourceRecord>,
    ) -> Result<Vec<ResourceRecord>, StoreError>;
}
