//! `GET /stats/top` over every resource from bucket summaries (`hitcount_store::summaries`):
//! each bucket of the period summed once over all resources, kept by the store once closed, so
//! a ranking reads a few dozen summaries plus the cells of the still open buckets, and sketches
//! only of the resources it lists. Answers exactly what reading every resource's cells answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use hitcount_wire::Sketch;

use super::{Order, Ranking, ResourceTotal, TopRequest, rank, sum};
use crate::auth::ResourceGrant;
use crate::catalog::Catalog;
use crate::query::Plan;
use crate::store::summaries::{Keeping, SUMMARY_RESOURCES_MAX, bucket_closed, far_from_retention};
use crate::store::{
    BucketSummary, CELLS_READ_RESOURCES_MAX, KeptSummaries, Store, StoreError, Tier,
};

/// Buckets of the read tier one summed ranking covers; a longer period at a finer tier is read
/// resource by resource (each bucket holds a sketch of every resource's visitors, up to 12 KiB).
pub const TOP_SUMMARY_BUCKETS_MAX: u64 = 1_000;

/// Whether a ranking can be summed from bucket summaries: they hold every resource, so the
/// request must select every resource (no prefix, a caller who may read all) and rank by hits
/// (visitors do not add up across buckets).
pub(super) fn applies(
    store: &Store,
    request: &TopRequest<'_>,
    readable: &ResourceGrant,
    plan: &Plan,
) -> bool {
    let buckets = (plan.end_ms - plan.start_ms) / plan.tier.resolution_ms();
    store.keeps_bucket_summaries()
        && request.prefix.is_empty()
        && request.order == Order::Count
        && matches!(readable, ResourceGrant::All)
        && buckets <= TOP_SUMMARY_BUCKETS_MAX
}

/// The period's numbers over every resource, and its top `request.limit` resources ranked as
/// [`super::top`] ranks them.
pub(super) async fn ranked(
    catalog: &Catalog,
    store: &Store,
    request: &TopRequest<'_>,
    plan: &Plan,
    now_ms: u64,
) -> Result<Ranking, StoreError> {
    let keeping = store.keeping(now_ms).await?;
    let period = (plan.start_ms, plan.end_ms);
    let buckets = period_buckets(catalog, store, plan.tier, period, keeping).await?;
    let mut total_count = 0;
    let mut total_visitors = Sketch::new();
    // 10,000 resources over 30 days are 300,000 additions: a fast hasher (the keys are ours).
    let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
    for bucket in &buckets {
        total_count += bucket.hits;
        total_visitors.merge(&bucket.visitors);
        for (resource_id, hits) in &bucket.resources {
            *counts.entry(resource_id).or_default() += hits;
        }
    }
    let mut by_count: Vec<(&str, u64)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
    by_count.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    // Equal counts rank by visitors: every resource with the count of the last one listed is
    // read, so ties cut where reading every resource would cut them.
    let cut = by_count.get(request.limit - 1).map(|(_, count)| *count);
    let candidates: Vec<(String, u64)> = by_count
        .iter()
        .take_while(|(_, count)| cut.is_none_or(|cut| *count >= cut))
        .map(|(resource_id, count)| ((*resource_id).to_owned(), *count))
        .collect();
    let mut listed = Vec::with_capacity(candidates.len());
    for chunk in candidates.chunks(CELLS_READ_RESOURCES_MAX) {
        let ids = chunk.iter().map(|(id, _)| id.clone()).collect();
        let cells = store
            .cells_of_many(ids, plan.tier, plan.start_ms, plan.end_ms, now_ms)
            .await?;
        for ((resource_id, count), cells) in chunk.iter().zip(cells) {
            listed.push(ResourceTotal {
                resource_id: resource_id.clone(),
                // The summed count, so the listed counts and the total come from one reading.
                count: *count,
                uniques: sum(&cells).1.count(),
                series: None,
            });
        }
    }
    rank(&mut listed, Order::Count);
    listed.truncate(request.limit);
    Ok(Ranking {
        listed,
        total_count,
        total_visitors,
    })
}

/// Each bucket of `tier` in `[start_ms, end_ms)` over every resource, in order: the summaries
/// the store keeps, the rest summed (an open day from its hours, any other bucket from its
/// cells), and of those the ones [`Keeping::may_keep`] allows kept for the next reader.
async fn period_buckets(
    catalog: &Catalog,
    store: &Store,
    tier: Tier,
    (start_ms, end_ms): (u64, u64),
    keeping: Keeping,
) -> Result<Vec<Arc<BucketSummary>>, StoreError> {
    let resolution_ms = tier.resolution_ms();
    assert_eq!(start_ms % resolution_ms, 0, "periods start on a bucket");
    let (generations, mut summed) =
        kept_summaries(store, tier, (start_ms, end_ms), keeping.unfolded_from_ms).await?;
    let buckets: Vec<u64> = (start_ms..end_ms).step_by(resolution_ms as usize).collect();
    let missing = buckets.iter().filter(|bucket| !summed.contains_key(bucket));
    // The open day from its hours: they close (and are kept) one by one, where the day's cells
    // (one per resource hit today) would be read whole until the day closes. Not once an
    // import, a deletion or retention changed the day (its generation moved): an import may
    // hold day cells without their hours.
    let (from_hours, from_cells): (Vec<u64>, Vec<u64>) = missing.partition(|bucket_ms| {
        tier == Tier::Day
            && !bucket_closed(tier, **bucket_ms, keeping.now_ms)
            && far_from_retention(Tier::Hour, **bucket_ms, keeping.now_ms)
            && !generations.contains_key(*bucket_ms)
    });
    for day_ms in from_hours {
        let hours = Box::pin(period_buckets(
            catalog,
            store,
            Tier::Hour,
            (day_ms, day_ms + resolution_ms),
            keeping,
        ))
        .await?;
        summed.insert(day_ms, Arc::new(united(&hours)));
    }
    if let (Some(first), Some(last)) = (from_cells.first(), from_cells.last()) {
        let (mut fresh, every_resource_known) = sum_from_cells(
            catalog,
            store,
            tier,
            *first,
            last + resolution_ms,
            keeping.now_ms,
        )
        .await?;
        for bucket_ms in from_cells {
            let summary = fresh.remove(&bucket_ms).unwrap_or_default();
            // Not kept without a resource this aggregator does not know yet (created by another
            // one moments ago): the summary would lack its hits for good.
            if every_resource_known
                && keeping.may_keep(tier, bucket_ms)
                && summary.resources.len() <= SUMMARY_RESOURCES_MAX
            {
                let generation = generations.get(&bucket_ms).copied().unwrap_or(0);
                keep(store, tier, bucket_ms, generation, &summary).await;
            }
            summed.insert(bucket_ms, Arc::new(summary));
        }
    }
    Ok(buckets
        .iter()
        .map(|bucket_ms| summed.remove(bucket_ms).unwrap_or_default())
        .collect())
}

/// Keeps a summary for the next reader, if its generation still holds. Best effort: the
/// answer in hand does not depend on it, so a store that cannot take it now fails nothing.
async fn keep(store: &Store, tier: Tier, bucket_ms: u64, generation: u64, summary: &BucketSummary) {
    match store
        .put_bucket_summary(tier, bucket_ms, generation, summary.encode())
        .await
    {
        Ok(true) => metrics::counter!("hitcount_bucket_summaries_kept_total").increment(1),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, bucket_ms, "a bucket summary was not kept"),
    }
}

/// Every bucket's generation in the period, and the summaries kept that still hold: read before
/// any cell, as a summary is kept only under the generation its cells were read after.
async fn kept_summaries(
    store: &Store,
    tier: Tier,
    (start_ms, end_ms): (u64, u64),
    unfolded_from_ms: u64,
) -> Result<(HashMap<u64, u64>, BTreeMap<u64, Arc<BucketSummary>>), StoreError> {
    let KeptSummaries {
        generations,
        mut summaries,
    } = store.kept_summaries(tier, start_ms, end_ms).await?;
    // This process's unfolded inbox rows are in the cells it reads but not yet in the kept
    // summaries (the fold bumps what they change late): buckets from them on are summed again.
    // (The earliest of them is read once per request, in `Keeping`: the overlay's lock is the
    // ingest path's.)
    summaries.retain(|bucket_ms, _| bucket_ms + tier.resolution_ms() <= unfolded_from_ms);
    metrics::counter!("hitcount_bucket_summaries_read_total").increment(summaries.len() as u64);
    Ok((generations, summaries))
}

/// Several buckets as one: hits added, visitors united, each resource's hits added.
fn united(parts: &[Arc<BucketSummary>]) -> BucketSummary {
    let mut whole = BucketSummary::default();
    let mut resources: BTreeMap<String, u64> = BTreeMap::new();
    for part in parts {
        whole.hits += part.hits;
        whole.visitors.merge(&part.visitors);
        for (resource_id, hits) in &part.resources {
            *resources.entry(resource_id.clone()).or_default() += hits;
        }
    }
    whole.resources = resources.into_iter().collect();
    whole
}

/// Every bucket of `tier` in `[start_ms, end_ms)` summed over every resource from the cells, and
/// whether every resource with cells there is one this aggregator knows.
async fn sum_from_cells(
    catalog: &Catalog,
    store: &Store,
    tier: Tier,
    start_ms: u64,
    end_ms: u64,
    now_ms: u64,
) -> Result<(BTreeMap<u64, BucketSummary>, bool), StoreError> {
    // Only resources with cells there (the open buckets are the newest: a few of every
    // resource's), and of those the ones this aggregator knows, as reading every resource would.
    let mut resource_ids = store.resource_ids_between(tier, start_ms, end_ms).await?;
    let stored = resource_ids.len();
    resource_ids.retain(|resource_id| catalog.resource_exists(resource_id));
    let every_resource_known = resource_ids.len() == stored;
    let mut buckets: BTreeMap<u64, BucketSummary> = BTreeMap::new();
    for chunk in resource_ids.chunks(CELLS_READ_RESOURCES_MAX) {
        let cells = store
            .cells_of_many(chunk.to_vec(), tier, start_ms, end_ms, now_ms)
            .await?;
        for (resource_id, cells) in chunk.iter().zip(cells) {
            for cell in cells {
                let bucket = buckets.entry(cell.bucket_ms).or_default();
                bucket.hits += cell.hits;
                bucket.visitors.merge(&cell.visitors);
                if cell.hits > 0 {
                    bucket.resources.push((resource_id.clone(), cell.hits));
                }
            }
        }
    }
    for bucket in buckets.values_mut() {
        bucket.resources.sort_unstable();
    }
    Ok((buckets, every_resource_known))
}
