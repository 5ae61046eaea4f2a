//! Direct hits: what happens to a `POST /hits` request between the HTTP layer and the ingest
//! queue. `api/hits.rs` reads the body and renders the answer; this module decides: each hit's
//! resource, time and visitor, which unknown resources a pattern creates (all or nothing), and
//! the hand-off to the group commit of `ingest`.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::catalog::Catalog;
use crate::ingest::{self, HitError, IngestError, Ingestor, ValidHit};
use crate::patterns::{Admission, Missing, Refusal, RefusalReason};
use crate::store::{Store, StoreError};

/// Hits in one `POST /hits` request.
pub const HITS_PER_REQUEST_MAX: usize = 1_000;

/// `hitcount_hits_accepted_total`, looked up once: `counter!` searches the recorder's registry
/// on every call, which a profile of `POST /hits` under load showed (BENCHMARKS.md). First used
/// by a request, so after the aggregator's start has installed the recorder.
static HITS_ACCEPTED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("hitcount_hits_accepted_total"));

/// One hit as the request states it, its time already read (`None`: now).
#[derive(Debug, Clone)]
pub struct DirectHit {
    pub resource_id: String,
    pub timestamp_ms: Option<u64>,
    pub visitor_id: Option<String>,
}

/// What recording direct hits needs of the aggregator.
#[derive(Debug, Clone, Copy)]
pub struct Recorder<'a> {
    pub catalog: &'a Catalog,
    pub store: &'a Store,
    pub ingestor: &'a Ingestor,
}

/// Why a request's hits were not recorded. Nothing of a refused request is counted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("a request carries 1 to {HITS_PER_REQUEST_MAX} hits")]
    HitCount,
    #[error(transparent)]
    Hit(#[from] HitError),
    /// An unknown resource no pattern created; the first with no pattern, else the first whose
    /// pattern is full.
    #[error("resource {:?} was not created ({})", .0.resource_id, .0.reason.as_str())]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Records a request's hits all or nothing: every hit is checked (an unknown resource against the
/// retention its pattern would give it, so that a request refused for its content creates
/// nothing), the unknown resources are created, and the hits are committed.
pub async fn record(
    recorder: Recorder<'_>,
    hits: Vec<DirectHit>,
    now_ms: u64,
) -> Result<usize, RecordError> {
    if hits.is_empty() || hits.len() > HITS_PER_REQUEST_MAX {
        return Err(RecordError::HitCount);
    }
    let catalog = recorder.catalog;
    let missing = missing_resources(catalog, &hits);
    let tentative: HashMap<&str, Option<u32>> = missing
        .iter()
        .map(|item| {
            let pattern = catalog.patterns.registry.longest_match(&item.resource_id);
            let retention = pattern.and_then(|found| found.retention_days);
            (item.resource_id.as_str(), retention)
        })
        .collect();
    let valid = hits
        .into_iter()
        .map(|hit| {
            let retention = catalog
                .resource_retention(&hit.resource_id)
                .or_else(|| tentative.get(hit.resource_id.as_str()).copied());
            check(hit, retention, now_ms)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !missing.is_empty() {
        admit(recorder, missing, &valid, now_ms).await?;
    }
    let accepted = valid.len();
    recorder.ingestor.submit(valid).await?;
    HITS_ACCEPTED.increment(accepted as u64);
    Ok(accepted)
}

/// Checks one hit to a resource with `retention` (`None`: there is no such resource).
fn check(
    hit: DirectHit,
    retention: Option<Option<u32>>,
    now_ms: u64,
) -> Result<ValidHit, HitError> {
    let retention_days = ingest::check_target(&hit.resource_id, retention)?;
    ingest::check_hit(
        hit.resource_id,
        retention_days,
        hit.timestamp_ms.unwrap_or(now_ms),
        hit.visitor_id.as_deref(),
        now_ms,
    )
}

/// Creates the `missing` resources of valid hits through their patterns, all or nothing.
async fn admit(
    recorder: Recorder<'_>,
    missing: Vec<Missing>,
    valid: &[ValidHit],
    now_ms: u64,
) -> Result<(), RecordError> {
    let catalog = recorder.catalog;
    let refusals = catalog
        .admit(recorder.store, missing, Admission::AllOrNothing, now_ms)
        .await?;
    if let Some(refusal) = first_refusal(&refusals) {
        catalog.record_refusals(&refusals, now_ms);
        return Err(RecordError::Refused(refusal.clone()));
    }
    // Created meanwhile and deleted again: as if it never existed.
    if let Some(hit) = valid
        .iter()
        .find(|hit| !catalog.resource_exists(&hit.resource_id))
    {
        return Err(HitError::UnknownResource(hit.resource_id.clone()).into());
    }
    Ok(())
}

/// The syntactically valid ids of `hits` the cache lacks, with their hits (invalid ids are
/// refused by the checks before anything is created).
fn missing_resources(catalog: &Catalog, hits: &[DirectHit]) -> Vec<Missing> {
    let mut missing: HashMap<&str, Missing> = HashMap::new();
    for hit in hits {
        if let Some(item) = missing.get_mut(hit.resource_id.as_str()) {
            item.hits += 1;
        } else if hitcount_wire::validate_resource_id(&hit.resource_id).is_ok()
            && !catalog.resource_exists(&hit.resource_id)
        {
            let item = Missing {
                resource_id: hit.resource_id.clone(),
                entries: 1,
                hits: 1,
            };
            missing.insert(&hit.resource_id, item);
        }
    }
    missing.into_values().collect()
}

/// The refusal a request answers with: an id no pattern matches first, as that needs the user to
/// act, else a full pattern.
fn first_refusal(refusals: &[Refusal]) -> Option<&Refusal> {
    refusals
        .iter()
        .find(|refusal| refusal.reason == RefusalReason::NoPattern)
        .or_else(|| refusals.first())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refusal(resource_id: &str, reason: RefusalReason) -> Refusal {
        Refusal {
            resource_id: resource_id.to_owned(),
            reason,
            pattern: None,
            entries: 1,
            hits: 1,
        }
    }

    #[test]
    fn an_id_no_pattern_matches_is_answered_before_a_full_pattern() {
        let full = refusal("blog.a", RefusalReason::PatternFull);
        let none = refusal("shop.b", RefusalReason::NoPattern);
        let both = [full.clone(), none.clone()];
        assert_eq!(first_refusal(&both), Some(&none));
        assert_eq!(first_refusal(std::slice::from_ref(&full)), Some(&full));
        assert_eq!(first_refusal(&[]), None);
    }

    #[test]
    fn a_hit_without_a_time_is_counted_now_and_an_unknown_resource_is_refused() {
        const NOW_MS: u64 = 1_800_000_000_000;
        let hit = |resource_id: &str| DirectHit {
            resource_id: resource_id.to_owned(),
            timestamp_ms: None,
            visitor_id: None,
        };
        let valid = check(hit("blog.a"), Some(None), NOW_MS).unwrap();
        assert_eq!(valid.minute, NOW_MS / hitcount_wire::MINUTE_MS);
        assert!(matches!(
            check(hit("blog.a"), None, NOW_MS),
            Err(HitError::UnknownResource(id)) if id == "blog.a"
        ));
        assert!(matches!(
            check(hit("not valid"), None, NOW_MS),
            Err(HitError::InvalidResourceId(_))
        ));
    }
}
