//! What resource patterns need from the store, for both backends alike: the `patterns` table,
//! the refusal counters flushed into it, and resources created on first sight (idempotently, so
//! that aggregators sharing a database can create the same id at once).

use super::{ResourceRecord, Store, StoreError};

/// A resource created under a name another resource has gets this many random bytes, in hex,
/// after it: enough that two renames of one name do not meet.
const RENAME_SUFFIX_BYTES: usize = 4;

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

impl Store {
    pub async fn patterns(&self) -> Result<Vec<PatternRecord>, StoreError> {
        self.backend.patterns().await
    }

    /// Stores a new pattern; false if one with the same text exists.
    pub async fn create_pattern(&self, record: PatternRecord) -> Result<bool, StoreError> {
        self.backend.create_pattern(record).await
    }

    /// Deletes a pattern (the resources it created stay); false if it did not exist.
    pub async fn delete_pattern(&self, pattern: String) -> Result<bool, StoreError> {
        self.backend.delete_pattern(pattern).await
    }

    /// Adds refused hits to the patterns' stored counters (patterns deleted meanwhile are
    /// skipped), in one transaction.
    pub async fn add_refused_hits(&self, counts: Vec<(String, u64)>) -> Result<(), StoreError> {
        self.backend.add_refused_hits(counts).await
    }

    /// The stored resources among `ids`, and (if asked) every resource created since
    /// `created_since_ms`: what a cache reloaded a few seconds ago may lack.
    pub async fn resources_current(
        &self,
        ids: Vec<String>,
        created_since_ms: Option<u64>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        self.backend.resources_current(ids, created_since_ms).await
    }

    /// Creates the resources that do not exist yet and returns the stored record of every id
    /// asked for: the new ones, and those another aggregator created first (creating an id twice
    /// is one resource, not an error). A record whose name another resource already has is
    /// created under its name with a random suffix, since names are unique too.
    pub async fn create_resources_if_absent(
        &self,
        records: Vec<ResourceRecord>,
    ) -> Result<Vec<ResourceRecord>, StoreError> {
        let mut stored = self
            .backend
            .insert_resources_if_absent(records.clone())
            .await?;
        let renamed: Vec<ResourceRecord> = records
            .into_iter()
            .filter(|record| !stored.iter().any(|existing| existing.id == record.id))
            .map(|record| ResourceRecord {
                name: format!(
                    "{} ({})",
                    record.name,
                    crate::random_hex(RENAME_SUFFIX_BYTES)
                ),
                ..record
            })
            .collect();
        if !renamed.is_empty() {
            stored.extend(self.backend.insert_resources_if_absent(renamed).await?);
        }
        Ok(stored)
    }
}
