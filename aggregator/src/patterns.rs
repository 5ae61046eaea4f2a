//! Resource patterns: a resource id prefix followed by `*` (`blog.*`, or `*` for every id). A hit
//! or delta entry for a resource that does not exist, under a pattern, creates that resource
//! (named after its id, with the pattern's retention) before it is merged, so pages count without
//! being registered one by one.
//!
//! The bound: a pattern creates resources only while fewer than its `resources_max` exist under
//! its prefix (explicitly created ones included, so deleting resources frees room). The number is
//! kept beside the resource cache ([`PatternRegistry`]), changed under the cache's lock by every
//! insert and removal and recounted whenever the cache is reloaded, so checking it costs no scan.
//! Creation is serialised within an aggregator, and before deciding it reads the resources
//! created in the last [`RECENT_RESOURCES_MS`] from the store, which the cache (reloaded every
//! 5 s) may lack, at most once every [`RECENT_READ_INTERVAL_MS`]; aggregators sharing a database
//! can therefore overshoot a bound only by what the others created since that read (about the
//! interval; never more than since the last reload).
//!
//! Refusals (`no_pattern`: no pattern matches the id; `pattern_full`: its pattern is at its
//! bound) are counted in `hitcount_resources_refused_total{reason}` (in hits), in the pattern's
//! `refused_hits` (persisted, flushed about once a second) and listed per id in the bounded, in
//! memory [`UnknownResources`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hitcount_wire::{RESOURCE_ID_BYTES_MAX, WireError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{PatternRecord, ResourceRecord};

/// Resources a pattern may create when the request names no `resources_max`.
pub const PATTERN_RESOURCES_DEFAULT: u64 = 10_000;
/// The largest `resources_max` a pattern may have.
pub const PATTERN_RESOURCES_MAX: u64 = 1_000_000;
/// A prefix is shorter than the longest resource id, so every pattern can match some id.
pub const PATTERN_PREFIX_BYTES_MAX: usize = RESOURCE_ID_BYTES_MAX - 1;
/// Patterns an aggregator keeps; each costs a lookup per new id and a count per cache reload.
pub const PATTERNS_MAX: usize = 1_000;
/// Unknown resource ids kept for `GET /unknown-resources`; the least recently refused goes first.
pub const UNKNOWN_RESOURCES_LISTED_MAX: usize = 1_000;
/// Before deciding whether to create resources, those created this recently (through any
/// aggregator) are read from the store: the cache is reloaded every 5 s and each reload may be a
/// few seconds old; the rest allows for aggregators' clocks disagreeing by a few seconds.
pub const RECENT_RESOURCES_MS: u64 = 10_000;
/// How often an aggregator that creates resources reads those created lately (the read above).
/// Once per admitted batch, its cost was the batches times the resources created in the last
/// [`RECENT_RESOURCES_MS`]: while a pattern filled, half the aggregator's CPU (BENCHMARKS.md,
/// "Resources created through a pattern"). Once a second it costs less than the 5 s reload of
/// every resource, and lets other aggregators' creations since the read (about a second, at most
/// since the last reload) overshoot a bound.
pub const RECENT_READ_INTERVAL_MS: u64 = 1_000;
/// What ends every pattern.
pub const WILDCARD: char = '*';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a pattern is a resource id prefix followed by `*`, such as `blog.*` or `*`")]
    MissingWildcard,
    #[error("`*` may only end a pattern, once")]
    WildcardNotLast,
    #[error("a pattern's prefix is at most {PATTERN_PREFIX_BYTES_MAX} bytes")]
    TooLong,
    #[error("a pattern's prefix follows the resource id rules: {0}")]
    InvalidPrefix(#[source] WireError),
}

/// The prefix of a pattern (`blog.` of `blog.*`), or why the text is not a pattern.
pub fn parse_pattern(pattern: &str) -> Result<&str, PatternError> {
    let prefix = pattern
        .strip_suffix(WILDCARD)
        .ok_or(PatternError::MissingWildcard)?;
    if prefix.contains(WILDCARD) {
        return Err(PatternError::WildcardNotLast);
    }
    if prefix.len() > PATTERN_PREFIX_BYTES_MAX {
        return Err(PatternError::TooLong);
    }
    if !prefix.is_empty() {
        hitcount_wire::validate_resource_id(prefix).map_err(PatternError::InvalidPrefix)?;
    }
    Ok(prefix)
}

/// Why an entry or hit for a resource that does not exist was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// No pattern matches the id.
    NoPattern,
    /// The matching pattern has `resources_max` resources already.
    PatternFull,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPattern => "no_pattern",
            Self::PatternFull => "pattern_full",
        }
    }
}

/// A pattern as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternView {
    /// `refused_hits` includes what this aggregator has not flushed to the store yet.
    pub record: PatternRecord,
    /// Resources that exist under the prefix now.
    pub resources: u64,
}

/// The pattern that decides about an id: the one with the longest matching prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternMatch {
    pub pattern: String,
    pub resources_max: u64,
    pub retention_days: Option<u32>,
    pub resources: u64,
}

#[derive(Debug, Clone)]
struct PatternState {
    record: PatternRecord,
    resources: u64,
    unflushed_refused_hits: u64,
}

/// The resource cache (see [`crate::catalog::Catalog`]): records by id in a hash table, which
/// every hit and every delta entry asks (a lookup in an ordered map of 100,000 ids was 6% of an
/// aggregator's CPU under load), beside the ids in order, which prefix counts and listings walk.
///
/// The table hashes with SipHash (std's default): resources created through a pattern have ids
/// that anyone who sends hits chooses, so a hash without a random key could be flooded.
#[derive(Debug, Clone, Default)]
pub struct ResourceCache {
    by_id: HashMap<String, ResourceRecord>,
    ordered: BTreeSet<String>,
}

impl ResourceCache {
    pub fn get(&self, id: &str) -> Option<&ResourceRecord> {
        self.by_id.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Adds or replaces the record of its id; returns the record replaced.
    pub fn insert(&mut self, record: ResourceRecord) -> Option<ResourceRecord> {
        let id = record.id.clone();
        let replaced = self.by_id.insert(id.clone(), record);
        if replaced.is_none() {
            self.ordered.insert(id);
        }
        debug_assert_eq!(
            self.by_id.len(),
            self.ordered.len(),
            "both indexes hold the same ids"
        );
        replaced
    }

    pub fn remove(&mut self, id: &str) -> Option<ResourceRecord> {
        let removed = self.by_id.remove(id)?;
        self.ordered.remove(id);
        Some(removed)
    }

    /// Keeps the resources whose id `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_id.retain(|id, _| keep(id));
        self.ordered.retain(|id| self.by_id.contains_key(id));
    }

    /// Every record, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &ResourceRecord> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The records whose ids come after `start` (or from the first with `None`), in id order.
    pub fn after(&self, start: Option<&str>) -> impl Iterator<Item = &ResourceRecord> {
        let start = start.map_or(Bound::Unbounded, Bound::Excluded);
        self.ordered
            .range::<str, _>((start, Bound::Unbounded))
            .map(|id| &self.by_id[id])
    }

    /// The ids that start with `prefix` (every id for `""`), in order.
    pub fn ids_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> {
        self.ordered
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |id| id.starts_with(prefix))
    }
}

impl FromIterator<ResourceRecord> for ResourceCache {
    fn from_iter<T: IntoIterator<Item = ResourceRecord>>(records: T) -> Self {
        let mut cache = Self::default();
        for record in records {
            cache.insert(record);
        }
        cache
    }
}

fn count_under(cache: &ResourceCache, prefix: &str) -> u64 {
    cache.ids_under(prefix).count() as u64
}

/// Patterns by prefix, each with the number of cached resources under it.
///
/// Lock order: the resource cache first, then this registry; never the other way round.
#[derive(Debug, Default)]
pub struct PatternRegistry {
    by_prefix: Mutex<BTreeMap<String, PatternState>>,
    /// Patterns created or deleted through this aggregator so far: a reload whose list was read
    /// before one of them must not undo it (see [`PatternRegistry::replace_unless_changed`]).
    local_changes: AtomicU64,
}

impl PatternRegistry {
    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PatternState>> {
        self.by_prefix
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Replaces every pattern with the stored ones (keeping refusals not flushed yet) and counts
    /// their resources in `cache`.
    pub fn replace(&self, records: Vec<PatternRecord>, cache: &ResourceCache) {
        Self::replace_in(&mut self.table(), records, cache);
    }

    fn replace_in(
        table: &mut BTreeMap<String, PatternState>,
        records: Vec<PatternRecord>,
        cache: &ResourceCache,
    ) {
        let mut replaced = BTreeMap::new();
        for record in records {
            let Ok(prefix) = parse_pattern(&record.pattern) else {
                tracing::warn!(pattern = %record.pattern, "ignoring a stored pattern that is not valid");
                continue;
            };
            let prefix = prefix.to_owned();
            let unflushed_refused_hits = table
                .get(&prefix)
                .map_or(0, |state| state.unflushed_refused_hits);
            let resources = count_under(cache, &prefix);
            replaced.insert(
                prefix,
                PatternState {
                    record,
                    resources,
                    unflushed_refused_hits,
                },
            );
        }
        *table = replaced;
    }

    /// How many local creations and deletions there have been, for
    /// [`PatternRegistry::replace_unless_changed`].
    pub fn local_changes(&self) -> u64 {
        self.local_changes.load(Ordering::Acquire)
    }

    /// [`PatternRegistry::replace`], unless a pattern was created or deleted here since
    /// `local_changes` was read (before the store was): then the list may lack it or still have
    /// it, and the next reload does the work. Returns whether it replaced.
    pub fn replace_unless_changed(
        &self,
        records: Vec<PatternRecord>,
        cache: &ResourceCache,
        local_changes: u64,
    ) -> bool {
        // Checked under the table's lock, which every local change takes to count itself.
        let mut table = self.table();
        if self.local_changes() != local_changes {
            return false;
        }
        Self::replace_in(&mut table, records, cache);
        true
    }

    /// Adds a pattern just stored.
    pub fn insert(&self, record: PatternRecord, cache: &ResourceCache) {
        let Ok(prefix) = parse_pattern(&record.pattern) else {
            return;
        };
        let resources = count_under(cache, prefix);
        let mut table = self.table();
        self.local_changes.fetch_add(1, Ordering::AcqRel);
        table.insert(
            prefix.to_owned(),
            PatternState {
                record,
                resources,
                unflushed_refused_hits: 0,
            },
        );
    }

    /// Forgets a pattern just deleted from the store.
    pub fn remove(&self, pattern: &str) {
        if let Ok(prefix) = parse_pattern(pattern) {
            let mut table = self.table();
            self.local_changes.fetch_add(1, Ordering::AcqRel);
            table.remove(prefix);
        }
    }

    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }

    /// Recounts every pattern's resources after the cache was replaced.
    pub fn recount(&self, cache: &ResourceCache) {
        for (prefix, state) in self.table().iter_mut() {
            state.resources = count_under(cache, prefix);
        }
    }

    /// Call with the cache's write lock held, after `id` was added to it.
    pub fn resource_added(&self, id: &str) {
        self.adjust(id, |count| *count += 1);
    }

    /// Call with the cache's write lock held, after `id` was removed from it.
    pub fn resource_removed(&self, id: &str) {
        self.adjust(id, |count| *count = count.saturating_sub(1));
    }

    fn adjust(&self, id: &str, change: impl Fn(&mut u64)) {
        let mut table = self.table();
        if table.is_empty() {
            return;
        }
        for length in (0..=id.len()).filter(|length| id.is_char_boundary(*length)) {
            if let Some(state) = table.get_mut(&id[..length]) {
                change(&mut state.resources);
            }
        }
    }

    /// The pattern with the longest prefix of `id`, if any.
    pub fn longest_match(&self, id: &str) -> Option<PatternMatch> {
        let table = self.table();
        (0..=id.len())
            .rev()
            .filter(|length| id.is_char_boundary(*length))
            .find_map(|length| table.get(&id[..length]))
            .map(|state| PatternMatch {
                pattern: state.record.pattern.clone(),
                resources_max: state.record.resources_max,
                retention_days: state.record.retention_days,
                resources: state.resources,
            })
    }

    fn view(state: &PatternState) -> PatternView {
        let mut record = state.record.clone();
        record.refused_hits += state.unflushed_refused_hits;
        PatternView {
            record,
            resources: state.resources,
        }
    }

    pub fn list(&self) -> Vec<PatternView> {
        let mut views: Vec<PatternView> = self.table().values().map(Self::view).collect();
        views.sort_by(|a, b| a.record.pattern.cmp(&b.record.pattern));
        views
    }

    pub fn get(&self, pattern: &str) -> Option<PatternView> {
        let prefix = parse_pattern(pattern).ok()?;
        self.table().get(prefix).map(Self::view)
    }

    pub(crate) fn refused(&self, pattern: &str, hits: u64) {
        if let Ok(prefix) = parse_pattern(pattern)
            && let Some(state) = self.table().get_mut(prefix)
        {
            state.unflushed_refused_hits += hits;
        }
    }

    /// Takes the refusals not yet flushed to the store, by pattern.
    pub(crate) fn take_unflushed(&self) -> Vec<(String, u64)> {
        self.table()
            .values_mut()
            .filter(|state| state.unflushed_refused_hits > 0)
            .map(|state| {
                let hits = std::mem::take(&mut state.unflushed_refused_hits);
                (state.record.pattern.clone(), hits)
            })
            .collect()
    }

    /// After a flush: what was stored becomes part of the stored count; what failed is kept
    /// for the next flush.
    pub(crate) fn flushed(&self, counts: &[(String, u64)], stored: bool) {
        let mut table = self.table();
        for (pattern, hits) in counts {
            let Some(state) = parse_pattern(pattern)
                .ok()
                .and_then(|prefix| table.get_mut(prefix))
            else {
                continue;
            };
            if stored {
                state.record.refused_hits += hits;
            } else {
                state.unflushed_refused_hits += hits;
            }
        }
    }
}

/// A refused unknown resource id, as `GET /unknown-resources` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownResource {
    pub resource_id: String,
    /// The reason of the latest refusal.
    pub reason: RefusalReason,
    /// The full pattern, for `pattern_full`.
    pub pattern: Option<String>,
    /// Hits refused for this id since it entered the list.
    pub refused_hits: u64,
    pub last_refused_ms: u64,
}

#[derive(Debug, Default)]
struct UnknownList {
    by_id: HashMap<String, (u64, UnknownResource)>,
    /// Ids by the sequence number of their latest refusal, oldest first.
    order: BTreeMap<u64, String>,
    next_sequence: u64,
}

/// The most recently refused unknown resource ids (at most [`UNKNOWN_RESOURCES_LISTED_MAX`]),
/// in memory: each aggregator lists what it refused since it started.
#[derive(Debug, Default)]
pub struct UnknownResources {
    list: Mutex<UnknownList>,
}

impl UnknownResources {
    pub(crate) fn record(&self, refusal: &Refusal, now_ms: u64) {
        let mut list = self
            .list
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let sequence = list.next_sequence;
        list.next_sequence += 1;
        let previous = list.by_id.remove(&refusal.resource_id);
        let refused_hits = match &previous {
            Some((old_sequence, old)) => {
                list.order.remove(old_sequence);
                old.refused_hits + refusal.hits
            }
            None => refusal.hits,
        };
        list.by_id.insert(
            refusal.resource_id.clone(),
            (
                sequence,
                UnknownResource {
                    resource_id: refusal.resource_id.clone(),
                    reason: refusal.reason,
                    pattern: refusal.pattern.clone(),
                    refused_hits,
                    last_refused_ms: now_ms,
                },
            ),
        );
        list.order.insert(sequence, refusal.resource_id.clone());
        while list.by_id.len() > UNKNOWN_RESOURCES_LISTED_MAX {
            let Some((_, evicted)) = list.order.pop_first() else {
                break;
            };
            list.by_id.remove(&evicted);
        }
    }

    /// Most recently refused first.
    pub fn list(&self) -> Vec<UnknownResource> {
        let list = self
            .list
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        list.order
            .values()
            .rev()
            .filter_map(|id| list.by_id.get(id).map(|(_, item)| item.clone()))
            .collect()
    }
}

/// Everything patterns keep in an aggregator.
#[derive(Debug, Default)]
pub struct Patterns {
    pub registry: PatternRegistry,
    pub unknown: UnknownResources,
    /// Held while deciding about and creating resources, so two requests of this aggregator
    /// cannot both take a pattern's last places.
    pub(crate) creating: tokio::sync::Mutex<()>,
}

/// A resource id the cache does not have, with what a batch or request carries for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub resource_id: String,
    pub entries: u64,
    pub hits: u64,
}

/// An unknown resource id that was not created, with what was not counted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub resource_id: String,
    pub reason: RefusalReason,
    /// The pattern that was full, for `pattern_full`.
    pub pattern: Option<String>,
    pub entries: u64,
    pub hits: u64,
}

impl Refusal {
    /// `item` refused for `reason` (`pattern`: the full one, for `PatternFull`).
    pub fn of(item: Missing, reason: RefusalReason, pattern: Option<String>) -> Self {
        Self {
            resource_id: item.resource_id,
            reason,
            pattern,
            entries: item.entries,
            hits: item.hits,
        }
    }
}

/// Whether one refusal stops every creation (a `POST /hits` request is all or nothing) or what
/// fits is created (a delta batch counts what it can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    AllOrNothing,
    WhatFits,
}

/// The ids of refusals, for filtering entries.
pub fn refused_ids(refusals: &[Refusal]) -> BTreeSet<&str> {
    refusals
        .iter()
        .map(|refusal| refusal.resource_id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_or_say_why_not() {
        assert_eq!(parse_pattern("blog.*"), Ok("blog."));
        assert_eq!(parse_pattern("*"), Ok(""));
        assert_eq!(parse_pattern("blog"), Err(PatternError::MissingWildcard));
        assert_eq!(parse_pattern("b*g.*"), Err(PatternError::WildcardNotLast));
        assert_eq!(parse_pattern("**"), Err(PatternError::WildcardNotLast));
        assert!(matches!(
            parse_pattern("blog/*"),
            Err(PatternError::InvalidPrefix(_))
        ));
        let longest = format!("{}*", "a".repeat(PATTERN_PREFIX_BYTES_MAX));
        assert!(parse_pattern(&longest).is_ok());
        let too_long = format!("{}*", "a".repeat(PATTERN_PREFIX_BYTES_MAX + 1));
        assert_eq!(parse_pattern(&too_long), Err(PatternError::TooLong));
    }

    fn record(pattern: &str) -> PatternRecord {
        PatternRecord {
            pattern: pattern.to_owned(),
            resources_max: 10,
            retention_days: None,
            refused_hits: 0,
            created_at_ms: 0,
        }
    }

    fn resource(id: &str) -> ResourceRecord {
        ResourceRecord {
            id: id.to_owned(),
            name: id.to_owned(),
            retention_days: None,
            created_at_ms: 0,
        }
    }

    #[test]
    fn the_cache_finds_and_orders_the_same_ids_through_every_change() {
        let mut cache: ResourceCache = ["b", "a.2", "a.1", "c"].into_iter().map(resource).collect();
        let mut renamed = resource("a.1");
        renamed.name = "renamed".to_owned();
        assert!(
            cache.insert(renamed).is_some(),
            "a record of a known id is replaced"
        );
        assert_eq!(cache.get("a.1").unwrap().name, "renamed");
        assert_eq!(cache.remove("b").unwrap().id, "b");
        assert!(cache.remove("b").is_none());
        cache.insert(resource("a.0"));
        cache.retain(|id| id != "c");
        let ordered: Vec<&str> = cache.after(None).map(|record| record.id.as_str()).collect();
        assert_eq!(ordered, ["a.0", "a.1", "a.2"]);
        let after: Vec<&str> = cache
            .after(Some("a.0"))
            .map(|record| record.id.as_str())
            .collect();
        assert_eq!(after, ["a.1", "a.2"]);
        assert_eq!(cache.ids_under("a.").count(), 3);
        assert_eq!(cache.ids_under("c").count(), 0);
        assert!(!cache.contains("c") && cache.contains("a.2"));
        assert_eq!(cache.len(), cache.records().count());
    }

    #[test]
    fn the_longest_prefix_wins_and_counts_follow_the_cache() {
        let cache: ResourceCache = ["blog.a", "blog.b", "blogger", "home"]
            .into_iter()
            .map(resource)
            .collect();
        let registry = PatternRegistry::default();
        registry.replace(vec![record("*"), record("blog.*"), record("blog*")], &cache);
        let found = registry.longest_match("blog.new").unwrap();
        assert_eq!((found.pattern.as_str(), found.resources), ("blog.*", 2));
        assert_eq!(registry.longest_match("blogs").unwrap().pattern, "blog*");
        assert_eq!(registry.longest_match("home").unwrap().resources, 4);
        registry.resource_added("blog.c");
        registry.resource_removed("home");
        let counts: Vec<(String, u64)> = registry
            .list()
            .into_iter()
            .map(|view| (view.record.pattern, view.resources))
            .collect();
        assert_eq!(
            counts,
            [
                ("*".to_owned(), 4),
                ("blog*".to_owned(), 4),
                ("blog.*".to_owned(), 3)
            ]
        );
    }

    #[test]
    fn the_unknown_list_is_bounded_and_most_recent_first() {
        let unknown = UnknownResources::default();
        for index in 0..UNKNOWN_RESOURCES_LISTED_MAX + 5 {
            let refusal = Refusal {
                resource_id: format!("id-{index}"),
                reason: RefusalReason::NoPattern,
                pattern: None,
                entries: 1,
                hits: 2,
            };
            unknown.record(&refusal, index as u64);
        }
        let again = Refusal {
            resource_id: "id-10".to_owned(),
            reason: RefusalReason::PatternFull,
            pattern: Some("id-*".to_owned()),
            entries: 1,
            hits: 3,
        };
        unknown.record(&again, 99_999);
        let list = unknown.list();
        assert_eq!(list.len(), UNKNOWN_RESOURCES_LISTED_MAX);
        assert_eq!(list[0].resource_id, "id-10");
        assert_eq!(
            (list[0].refused_hits, list[0].reason),
            (5, RefusalReason::PatternFull)
        );
        // The five oldest went; the sixth is still there.
        assert!(list.iter().all(|item| item.resource_id != "id-4"));
        assert!(list.iter().any(|item| item.resource_id == "id-5"));
    }
}
