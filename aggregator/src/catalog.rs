//! What resources and patterns exist, as this aggregator knows them: the resource cache (loaded
//! at start, kept in step with every create and delete here and reloaded from the store every few
//! seconds for other aggregators' changes) and the patterns whose resource counts follow it, with
//! the decisions that need both: which ids of a request are missing, and which a pattern may
//! create ([`Catalog::admit`]).
//!
//! It knows the store, not the HTTP layer: handlers call it with the state's store, so neither
//! `state.rs` nor `api/` is imported here.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use hitcount_wire::DeltaEntry;

use crate::patterns::{
    Admission, Missing, PATTERNS_MAX, PatternView, Patterns, RECENT_READ_INTERVAL_MS,
    RECENT_RESOURCES_MS, Refusal, RefusalReason, ResourceCache,
};
use crate::store::{CreateOutcome, PatternRecord, ResourceRecord, Store, StoreError};

/// Name lengths for resources and tokens.
pub const NAME_CHARS_MAX: usize = 200;
/// Longest per-resource retention: a hundred years.
pub const RETENTION_DAYS_MAX: u32 = 36_500;

/// A name as stored (trimmed), if it is one: 1 to [`NAME_CHARS_MAX`] characters, not all
/// whitespace, without control characters.
pub fn checked_name(name: &str) -> Option<String> {
    let valid = name.chars().count() <= NAME_CHARS_MAX
        && !name.trim().is_empty()
        && !name.chars().any(char::is_control);
    valid.then(|| name.trim().to_owned())
}

/// A per-resource retention is absent (forever) or 1 to [`RETENTION_DAYS_MAX`] days.
pub fn retention_valid(days: Option<u32>) -> bool {
    days.is_none_or(|days| (1..=RETENTION_DAYS_MAX).contains(&days))
}

/// Why a resource was not created. Nothing was created.
#[derive(Debug, thiserror::Error)]
pub enum CreateResourceError {
    #[error("a resource with id {0:?} exists")]
    IdTaken(String),
    #[error("a resource named {0:?} exists")]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a pattern was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreatePatternError {
    #[error("the pattern {0:?} exists")]
    Exists(String),
    #[error("{PATTERNS_MAX} patterns exist; delete one first")]
    TooMany,
    /// Created, then deleted by another request before it could be shown.
    #[error("no pattern {0:?}")]
    DeletedMeanwhile(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resources created this shortly before a reload began are kept in the cache even if the
/// reload's list lacks them (their transaction may not have been visible to it yet).
const RESOURCE_RELOAD_GRACE_MS: u64 = 2_000;

/// The resource cache and the patterns, under one lock order: the cache first, then the
/// patterns' registry.
#[derive(Debug)]
pub struct Catalog {
    /// Resources by id, so that validating a hit costs no store round trip.
    resources: RwLock<ResourceCache>,
    /// Resource patterns, with their resource counts kept in step with `resources`.
    pub patterns: Patterns,
    /// Ids deleted here, with when the store's delete finished (`None`: still running). A reload
    /// whose read began before that cannot tell the deletion, so it must not bring them back.
    deletions: Mutex<HashMap<String, Option<u64>>>,
    /// When this aggregator last read the resources created lately (`admit`), in ms.
    recent_read_ms: AtomicU64,
}

impl Catalog {
    /// A catalog of `resources` (as the store lists them) and the stored `patterns`.
    pub fn new(
        resources: impl IntoIterator<Item = ResourceRecord>,
        patterns: Vec<crate::store::PatternRecord>,
    ) -> Self {
        let resources: ResourceCache = resources.into_iter().collect();
        let catalog_patterns = Patterns::default();
        catalog_patterns.registry.replace(patterns, &resources);
        Self {
            resources: RwLock::new(resources),
            patterns: catalog_patterns,
            deletions: Mutex::default(),
            recent_read_ms: AtomicU64::new(0),
        }
    }

    /// The resource cache, for reading (a listing, a pattern's count).
    pub fn read(&self) -> RwLockReadGuard<'_, ResourceCache> {
        self.resources
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The ids of the resources whose id starts with `prefix` (every resource for `""`), sorted.
    pub fn resource_ids_under(&self, prefix: &str) -> Vec<String> {
        self.read().ids_under(prefix).cloned().collect()
    }

    pub fn resource(&self, id: &str) -> Option<ResourceRecord> {
        self.read().get(id).cloned()
    }

    /// `Some(retention_days)` if the resource exists.
    pub fn resource_retention(&self, id: &str) -> Option<Option<u32>> {
        self.read().get(id).map(|record| record.retention_days)
    }

    pub fn resource_exists(&self, id: &str) -> bool {
        self.read().contains(id)
    }

    /// Adds resources to the cache (replacing cached records of the same id), keeping the
    /// patterns' counts in step under the same lock.
    pub fn insert_resources(&self, records: impl IntoIterator<Item = ResourceRecord>) {
        let mut cache = self
            .resources
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut deletions = self.deletions();
        for record in records {
            let id = record.id.clone();
            // Created again (or its deletion failed): a reload may list it again.
            deletions.remove(&id);
            if cache.insert(record).is_none() {
                self.patterns.registry.resource_added(&id);
            }
        }
    }

    /// Removes a resource from the cache, keeping the patterns' counts in step.
    pub fn remove_resource(&self, id: &str) -> Option<ResourceRecord> {
        let mut cache = self
            .resources
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let removed = cache.remove(id);
        if removed.is_some() {
            self.patterns.registry.resource_removed(id);
            self.deletions().insert(id.to_owned(), None);
        }
        removed
    }

    /// The store's delete of `id` (after [`Self::remove_resource`]) has committed.
    pub fn deletion_finished(&self, id: &str, now_ms: u64) {
        if let Some(finished) = self.deletions().get_mut(id) {
            *finished = Some(now_ms);
        }
    }

    fn deletions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<u64>>> {
        self.deletions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Replaces the cache with the store's list, so resources created or deleted through
    /// another aggregator on the same database appear here; the patterns are recounted.
    /// `reload_started_ms` is the clock just before the call.
    pub async fn reload_resources(&self, store: &Store, reload_started_ms: u64) {
        // Ids cached before the read began: only those can be gone because another aggregator
        // deleted them. One cached later was created here after the read began (its commit may
        // not be in the read, whatever its creation time says).
        let cached_before: HashSet<String> = self
            .read()
            .records()
            .map(|record| record.id.clone())
            .collect();
        match store.resources().await {
            Ok(records) => {
                let mut loaded: ResourceCache = records.into_iter().collect();
                let mut cache = self
                    .resources
                    .write()
                    .unwrap_or_else(|poison| poison.into_inner());
                // A resource deleted here may still be in the list: the read may have begun before
                // the delete committed. Once a reload began after the commit, the list is right.
                let mut deletions = self.deletions();
                loaded.retain(|id| !deletions.contains_key(id));
                deletions.retain(|_, finished| finished.is_none_or(|at| at >= reload_started_ms));
                drop(deletions);
                // A resource created here while the list was being read is not in it yet.
                let recent = reload_started_ms.saturating_sub(RESOURCE_RELOAD_GRACE_MS);
                for record in cache.records() {
                    if !loaded.contains(&record.id)
                        && (!cached_before.contains(&record.id) || record.created_at_ms >= recent)
                    {
                        loaded.insert(record.clone());
                    }
                }
                *cache = loaded;
                self.patterns.registry.recount(&cache);
            }
            Err(error) => tracing::warn!(%error, "reloading resources failed; will retry"),
        }
    }

    /// The ids among `entries` (sorted by resource, as batches are) that the cache does not have.
    pub fn missing_in(&self, entries: &[DeltaEntry]) -> Vec<Missing> {
        let cache = self.read();
        let mut missing: Vec<Missing> = Vec::new();
        for entry in entries {
            match missing.last_mut() {
                Some(last) if last.resource_id == entry.resource_id => {
                    last.entries += 1;
                    last.hits += entry.hits;
                }
                _ if cache.contains(&entry.resource_id) => {}
                _ => missing.push(Missing {
                    resource_id: entry.resource_id.clone(),
                    entries: 1,
                    hits: entry.hits,
                }),
            }
        }
        missing
    }

    /// Makes the missing ids exist where a pattern allows it: first takes in what the store has
    /// that the cache lacks (created through another aggregator), then creates the ids under a
    /// pattern with room, longest prefix first. Returns the ids refused; with
    /// [`Admission::AllOrNothing`], any refusal means nothing was created.
    pub async fn admit(
        &self,
        store: &Store,
        mut missing: Vec<Missing>,
        admission: Admission,
        now_ms: u64,
    ) -> Result<Vec<Refusal>, StoreError> {
        let registry = &self.patterns.registry;
        let may_create = missing
            .iter()
            .any(|item| registry.longest_match(&item.resource_id).is_some());
        // The ids may have been created through another aggregator since the last reload; and when
        // something may be created here, so may others under the same prefixes lately, which count
        // toward the bounds.
        let ids = missing
            .iter()
            .map(|item| item.resource_id.clone())
            .collect();
        let created_since_ms = (may_create && self.recent_read_due(now_ms))
            .then(|| now_ms.saturating_sub(RECENT_RESOURCES_MS));
        let current = store.resources_current(ids, created_since_ms).await?;
        self.insert_resources(current);
        missing.retain(|item| !self.resource_exists(&item.resource_id));
        if !may_create {
            return Ok(missing
                .into_iter()
                .map(|item| Refusal::of(item, RefusalReason::NoPattern, None))
                .collect());
        }
        let _creating = self.patterns.creating.lock().await;
        // Another request of this aggregator may have created some while this one waited.
        missing.retain(|item| !self.resource_exists(&item.resource_id));
        let (creations, refusals) = self.plan_creations(missing, now_ms);
        if creations.is_empty() || (admission == Admission::AllOrNothing && !refusals.is_empty()) {
            return Ok(refusals);
        }
        let wanted = creations.len();
        let created = store.create_resources_if_absent(creations).await?;
        for record in &created {
            tracing::debug!(resource_id = %record.id, "resource created by a pattern");
        }
        tracing::info!(
            resources = created.len(),
            wanted,
            "resources created by patterns"
        );
        metrics::counter!("hitcount_resources_created_by_pattern_total")
            .increment(created.len() as u64);
        self.insert_resources(created);
        Ok(refusals)
    }

    /// Whether this admission reads the resources created lately: the first one in each
    /// [`RECENT_READ_INTERVAL_MS`] does (and claims the interval, so concurrent ones do not). A
    /// clock stepped back makes it due, rather than silent until the clock catches up.
    fn recent_read_due(&self, now_ms: u64) -> bool {
        let last_ms = self.recent_read_ms.load(Ordering::Acquire);
        (now_ms < last_ms || now_ms - last_ms >= RECENT_READ_INTERVAL_MS)
            && self
                .recent_read_ms
                .compare_exchange(last_ms, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Which `missing` ids a pattern creates (the longest prefix that matches, while it has room
    /// counting the ones planned here) and which are refused, and why.
    fn plan_creations(
        &self,
        missing: Vec<Missing>,
        now_ms: u64,
    ) -> (Vec<ResourceRecord>, Vec<Refusal>) {
        let mut refusals = Vec::new();
        let mut creations = Vec::new();
        let mut planned: HashMap<String, u64> = HashMap::new();
        for item in missing {
            let Some(found) = self.patterns.registry.longest_match(&item.resource_id) else {
                refusals.push(Refusal::of(item, RefusalReason::NoPattern, None));
                continue;
            };
            let planned_here = planned.entry(found.pattern.clone()).or_default();
            if found.resources + *planned_here >= found.resources_max {
                let pattern = Some(found.pattern);
                refusals.push(Refusal::of(item, RefusalReason::PatternFull, pattern));
                continue;
            }
            *planned_here += 1;
            creations.push(ResourceRecord {
                name: item.resource_id.clone(),
                id: item.resource_id,
                retention_days: found.retention_days,
                created_at_ms: now_ms,
            });
        }
        (creations, refusals)
    }

    /// Creates a resource in the store and, once committed, in the cache.
    pub async fn create_resource(
        &self,
        store: &Store,
        record: ResourceRecord,
    ) -> Result<(), CreateResourceError> {
        match store.create_resource(record.clone()).await? {
            CreateOutcome::Created => {}
            CreateOutcome::IdTaken => return Err(CreateResourceError::IdTaken(record.id)),
            CreateOutcome::NameTaken => return Err(CreateResourceError::NameTaken(record.name)),
        }
        tracing::info!(resource_id = %record.id, "resource created");
        self.insert_resources([record]);
        Ok(())
    }

    /// Creates a pattern in the store and the registry (counting the cached resources under
    /// it), within [`PATTERNS_MAX`]; returns it as the registry shows it.
    pub async fn create_pattern(
        &self,
        store: &Store,
        record: PatternRecord,
    ) -> Result<PatternView, CreatePatternError> {
        if self.patterns.registry.len() >= PATTERNS_MAX {
            return Err(CreatePatternError::TooMany);
        }
        if !store.create_pattern(record.clone()).await? {
            return Err(CreatePatternError::Exists(record.pattern));
        }
        tracing::info!(pattern = %record.pattern, resources_max = record.resources_max, "pattern created");
        let pattern = record.pattern.clone();
        {
            let cache = self.read();
            self.patterns.registry.insert(record, &cache);
        }
        // Deleted by another request since the insert: as if it never was.
        self.patterns
            .registry
            .get(&pattern)
            .ok_or(CreatePatternError::DeletedMeanwhile(pattern))
    }

    /// Counts refusals: the metric, the pattern's `refused_hits` and the unknown-resources list.
    pub fn record_refusals(&self, refusals: &[Refusal], now_ms: u64) {
        for refusal in refusals {
            metrics::counter!("hitcount_resources_refused_total", "reason" => refusal.reason.as_str())
                .increment(refusal.hits);
            if let Some(pattern) = &refusal.pattern {
                self.patterns.registry.refused(pattern, refusal.hits);
            }
            self.patterns.unknown.record(refusal, now_ms);
        }
        if let Some(first) = refusals.first() {
            tracing::debug!(
                refused = refusals.len(),
                first = %first.resource_id,
                reason = first.reason.as_str(),
                "entries for unknown resources refused"
            );
        }
    }

    /// Writes refusals not yet stored into the patterns' counters; on failure they wait for the
    /// next call.
    pub async fn flush_refusals(&self, store: &Store) {
        let counts = self.patterns.registry.take_unflushed();
        if counts.is_empty() {
            return;
        }
        let stored = store.add_refused_hits(counts.clone()).await;
        if let Err(error) = &stored {
            tracing::warn!(%error, "storing refused hits of patterns failed; will retry");
        }
        self.patterns.registry.flushed(&counts, stored.is_ok());
    }

    /// The maintenance task's part, every tick: flushes refusals and, with `reload`, loads the
    /// stored patterns (created or deleted through another aggregator too).
    pub async fn maintain_patterns(&self, store: &Store, reload: bool) {
        self.flush_refusals(store).await;
        if !reload {
            return;
        }
        let local_changes = self.patterns.registry.local_changes();
        match store.patterns().await {
            Ok(records) => {
                let cache = self.read();
                self.patterns
                    .registry
                    .replace_unless_changed(records, &cache, local_changes);
            }
            Err(error) => tracing::warn!(%error, "reloading patterns failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the resources created lately costs once per interval, not once per batch.
    #[test]
    fn the_recent_read_is_due_once_per_interval() {
        let catalog = Catalog::new(Vec::new(), Vec::new());
        let start_ms = 1_000_000;
        assert!(catalog.recent_read_due(start_ms));
        assert!(!catalog.recent_read_due(start_ms));
        assert!(!catalog.recent_read_due(start_ms + RECENT_READ_INTERVAL_MS - 1));
        assert!(catalog.recent_read_due(start_ms + RECENT_READ_INTERVAL_MS));
        assert!(!catalog.recent_read_due(start_ms + RECENT_READ_INTERVAL_MS + 1));
        // The clock stepped back.
        assert!(catalog.recent_read_due(start_ms));
    }
}
