//! Reads across resources: the top resources of a period, with the total of every resource a
//! filter selects. Counts add up; distinct visitors do not, so the total's uniques is the union
//! of the selected resources' sketches.

use hitcount_wire::Sketch;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::ResourceGrant;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::query::{Period, Plan, SeriesFold, SeriesPoint, TimeRange};
use crate::store::Tier;
use crate::store::{CELLS_READ_RESOURCES_MAX, CountCell, ManyReader, Store, StoreError};

// Rankings over every resource summed from bucket summaries (`stats/summed.rs`).
mod summed;
pub use summed::TOP_SUMMARY_BUCKETS_MAX;

/// Resources one `GET /stats/top` answer lists.
pub const TOP_LIMIT_MAX: usize = 1_000;
/// Resources listed when the request names no `limit`.
pub const TOP_LIMIT_DEFAULT: usize = 10;

/// What the top resources are ranked by; ties go to the other measure, then to the id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Count,
    Uniques,
}

/// One resource's numbers over the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ResourceTotal {
    pub resource_id: String,
    /// Hits in the period, exact.
    pub count: u64,
    /// Distinct visitors in the period, estimated.
    pub uniques: u64,
    /// With `series=true`: one point per `granularity` bucket of the period, as `GET /hits/{id}`
    /// answers it (what the dashboard draws each row's trend from, in the same request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<SeriesPoint>>,
}

/// The numbers of every selected resource together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Total {
    /// Hits in the period over every selected resource, exact.
    pub count: u64,
    /// Distinct visitors over every selected resource (a visitor of two resources counts once),
    /// estimated.
    pub uniques: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopResponse {
    /// The period counted: the requested window widened to whole buckets (UTC).
    pub period: Period,
    /// The width of the period's buckets, and of each point of a listed resource's `series`.
    pub granularity: Tier,
    /// The resources with hits in the period, best first, at most `limit`.
    pub resources: Vec<ResourceTotal>,
    /// Every resource the filter selects, listed or not.
    pub total: Total,
    /// Present (true) only while the durable store is unavailable: the answer then holds only the
    /// minutes the hot tier (Redis) keeps, the last hour, and older buckets of the period count 0.
    /// Only a minute granularity over at most 1,000 resources is answered so; other reads get 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
}

/// The query of `GET /stats/top`. Described as one exploded object with the period's shapes (its
/// `IntoParams` is in `api::schemas`); unknown parameters are refused so that object is exact.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopQuery {
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub window: Option<String>,
    /// Resources listed, 1 to [`TOP_LIMIT_MAX`] (default [`TOP_LIMIT_DEFAULT`]).
    pub limit: Option<usize>,
    /// Only resources whose id starts with this.
    pub prefix: Option<String>,
    pub order: Option<Order>,
    /// Chosen from the period if absent, as for `GET /hits/{id}`.
    pub granularity: Option<Tier>,
    /// Each listed resource with its series too.
    pub series: Option<bool>,
}

impl TopQuery {
    pub fn range(&self) -> TimeRange<'_> {
        TimeRange::of(&self.window, &self.start_time, &self.end_time)
    }
}

impl TopQuery {
    /// The ranking asked for, its limit and prefix checked against what the document states.
    pub fn request(&self) -> Result<TopRequest<'_>, ApiError> {
        let limit = self.limit.unwrap_or(TOP_LIMIT_DEFAULT);
        if !(1..=TOP_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be between 1 and {TOP_LIMIT_MAX}"),
            ));
        }
        let prefix = checked_prefix(self.prefix.as_deref())?;
        Ok(TopRequest {
            prefix,
            order: self.order.unwrap_or_default(),
            limit,
            series: self.series.unwrap_or(false),
        })
    }
}

/// Which resources a read covers and how the top is cut.
#[derive(Debug, Clone, Copy)]
pub struct TopRequest<'a> {
    /// Resources whose id starts with this (all for `""`).
    pub prefix: &'a str,
    pub order: Order,
    /// 1 to [`TOP_LIMIT_MAX`].
    pub limit: usize,
    /// Each listed resource with its series.
    pub series: bool,
}

/// Ids in one `resource_ids` list of `GET /stats/series`.
pub const SERIES_RESOURCE_IDS_MAX: usize = 100;

/// The query of `GET /stats/series`, described like [`TopQuery`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub window: Option<String>,
    pub granularity: Option<Tier>,
    /// Only resources whose id starts with this.
    pub prefix: Option<String>,
    /// Only these resources, comma-separated (each must exist).
    pub resource_ids: Option<String>,
}

impl SeriesQuery {
    pub fn range(&self) -> TimeRange<'_> {
        TimeRange::of(&self.window, &self.start_time, &self.end_time)
    }

    /// The resources asked for, each part checked against what the document states.
    pub fn selection(&self) -> Result<Selection<'_>, ApiError> {
        let prefix = checked_prefix(self.prefix.as_deref())?;
        let Some(list) = self.resource_ids.as_deref() else {
            return Ok(Selection {
                prefix,
                resource_ids: None,
            });
        };
        let ids: Vec<&str> = list.split(',').collect();
        if ids.len() > SERIES_RESOURCE_IDS_MAX {
            return Err(ApiError::bad_request(
                "invalid_resource_ids",
                format!("resource_ids lists at most {SERIES_RESOURCE_IDS_MAX} ids"),
            ));
        }
        for id in &ids {
            hitcount_wire::validate_resource_id(id).map_err(|error| {
                ApiError::bad_request("invalid_resource_ids", format!("resource_ids: {error}"))
            })?;
        }
        Ok(Selection {
            prefix,
            resource_ids: Some(ids),
        })
    }
}

/// The resources a series covers: those under `prefix`, and of those only the listed ones when
/// a list is given.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    pub prefix: &'a str,
    pub resource_ids: Option<Vec<&'a str>>,
}

impl Selection<'_> {
    /// The selected ids the caller may read, distinct and sorted; a listed id that does not
    /// exist, or that the caller may not read, is an error.
    fn resource_ids(
        &self,
        catalog: &Catalog,
        readable: &ResourceGrant,
    ) -> Result<Vec<String>, SeriesError> {
        let Some(listed) = &self.resource_ids else {
            return Ok(selected_ids(catalog, self.prefix, readable));
        };
        // Refused before unknown: a caller learns nothing of resources it may not read.
        if let Some(refused) = listed.iter().find(|id| !readable.allows(id)) {
            return Err(SeriesError::NotGranted((*refused).to_owned()));
        }
        if let Some(unknown) = listed.iter().find(|id| !catalog.resource_exists(id)) {
            return Err(SeriesError::UnknownResource((*unknown).to_owned()));
        }
        let mut ids: Vec<String> = listed
            .iter()
            .filter(|id| id.starts_with(self.prefix))
            .map(|id| (*id).to_owned())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("no resource with id {0:?}")]
    UnknownResource(String),
    #[error("the caller may not read the resource {0:?}")]
    NotGranted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesResponse {
    /// How many resources the series covers.
    pub resources: usize,
    /// Hits in the period over every selected resource, exact.
    pub count: u64,
    /// Distinct visitors in the period over every selected resource, estimated.
    pub uniques: u64,
    pub granularity: Tier,
    /// The period counted: the requested window widened to whole granularity buckets (UTC).
    pub period: Period,
    /// One point per bucket: hits summed, visitors united across the resources.
    pub series: Vec<SeriesPoint>,
    /// As in `TopResponse`: present (true) only while the durable store is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
}

/// A prefix of a resource id is an id itself, or nothing.
pub fn checked_prefix(prefix: Option<&str>) -> Result<&str, ApiError> {
    let prefix = prefix.unwrap_or_default();
    if !prefix.is_empty() {
        hitcount_wire::validate_resource_id(prefix)
            .map_err(|error| ApiError::bad_request("invalid_prefix", format!("prefix: {error}")))?;
    }
    Ok(prefix)
}

/// The top resources under a prefix over `plan`'s period, and their total: over every resource
/// from bucket summaries (`stats/summed.rs`), otherwise read [`CELLS_READ_RESOURCES_MAX`]
/// resources at a time so memory stays bounded however many match. While the store is
/// unavailable, a minute period reaching into the last hour is answered from the hot tier alone,
/// marked stale (`ManyReader`).
pub async fn top(
    catalog: &Catalog,
    store: &Store,
    request: TopRequest<'_>,
    readable: &ResourceGrant,
    plan: &Plan,
    now_ms: u64,
) -> Result<TopResponse, StoreError> {
    assert!(
        (1..=TOP_LIMIT_MAX).contains(&request.limit),
        "the API layer bounds limit to 1..=TOP_LIMIT_MAX"
    );
    let summed = summed::applies(store, &request, readable, plan);
    let mut selected = None;
    let resources = if summed {
        // A summed ranking selects every resource (`summed::applies`): counted, not listed.
        catalog.read().len()
    } else {
        selected
            .insert(selected_ids(catalog, request.prefix, readable))
            .len()
    };
    let window_ms = (plan.start_ms, plan.end_ms);
    let mut reader = store.many_reader(plan.tier, window_ms, now_ms, resources);
    if summed && !reader.skips_database() {
        match summed::ranked(catalog, store, &request, plan, now_ms).await {
            Ok(ranking) => {
                reader.database_answered();
                return answer(&mut reader, ranking, request, plan).await;
            }
            Err(error) => reader.database_failed(error)?,
        }
    }
    let resource_ids = selected.unwrap_or_else(|| selected_ids(catalog, request.prefix, readable));
    let ranking = ranked_by_cells(&mut reader, &resource_ids, &request).await?;
    answer(&mut reader, ranking, request, plan).await
}

/// The resources under `prefix` a caller may read, sorted.
fn selected_ids(catalog: &Catalog, prefix: &str, readable: &ResourceGrant) -> Vec<String> {
    let mut resource_ids = catalog.resource_ids_under(prefix);
    resource_ids.retain(|resource_id| readable.allows(resource_id));
    resource_ids
}

/// The top `request.limit` of `resource_ids` (those a caller may read under the prefix), and the
/// total of all of them: every selected resource's cells read and summed.
async fn ranked_by_cells(
    reader: &mut ManyReader<'_>,
    resource_ids: &[String],
    request: &TopRequest<'_>,
) -> Result<Ranking, StoreError> {
    let mut ranked = Vec::new();
    let mut total_count = 0u64;
    let mut total_visitors = Sketch::new();
    for chunk in resource_ids.chunks(CELLS_READ_RESOURCES_MAX) {
        let cells = reader.cells_of_many(chunk).await?;
        for (resource_id, cells) in chunk.iter().zip(cells) {
            let (count, visitors) = sum(&cells);
            total_count += count;
            total_visitors.merge(&visitors);
            if count > 0 {
                ranked.push(ResourceTotal {
                    resource_id: resource_id.clone(),
                    count,
                    uniques: visitors.count(),
                    series: None,
                });
            }
        }
    }
    rank(&mut ranked, request.order);
    ranked.truncate(request.limit);
    Ok(Ranking {
        listed: ranked,
        total_count,
        total_visitors,
    })
}

/// A ranking's listed resources, best first, and the total of every selected resource.
struct Ranking {
    listed: Vec<ResourceTotal>,
    total_count: u64,
    total_visitors: Sketch,
}

/// The answer of a ranking: the listed resources, with their series if asked, and the total.
async fn answer(
    reader: &mut ManyReader<'_>,
    mut ranking: Ranking,
    request: TopRequest<'_>,
    plan: &Plan,
) -> Result<TopResponse, StoreError> {
    if request.series {
        add_series(reader, &mut ranking.listed, plan).await?;
    }
    Ok(TopResponse {
        period: plan.period(),
        granularity: plan.granularity,
        resources: ranking.listed,
        total: Total {
            count: ranking.total_count,
            uniques: ranking.total_visitors.count(),
        },
        stale: reader.stale().then_some(true),
    })
}

/// Each listed resource's series, read again for the listed ones only: keeping every
/// candidate's series while ranking would hold a sketch per bucket of every resource.
async fn add_series(
    reader: &mut ManyReader<'_>,
    listed: &mut [ResourceTotal],
    plan: &Plan,
) -> Result<(), StoreError> {
    for chunk in listed.chunks_mut(CELLS_READ_RESOURCES_MAX) {
        let ids: Vec<String> = chunk.iter().map(|item| item.resource_id.clone()).collect();
        let cells = reader.cells_of_many(&ids).await?;
        for (item, cells) in chunk.iter_mut().zip(cells) {
            let mut fold = SeriesFold::new(plan);
            fold.add(&cells);
            item.series = Some(fold.finish().2);
        }
    }
    Ok(())
}

/// One series over the resources `selection` names, read [`CELLS_READ_RESOURCES_MAX`] at a time
/// (from the hot tier alone, marked stale, while the store is unavailable, as [`top`] reads).
pub async fn series(
    catalog: &Catalog,
    store: &Store,
    selection: Selection<'_>,
    readable: &ResourceGrant,
    plan: &Plan,
    now_ms: u64,
) -> Result<SeriesResponse, SeriesError> {
    let resource_ids = selection.resource_ids(catalog, readable)?;
    let window_ms = (plan.start_ms, plan.end_ms);
    let mut reader = store.many_reader(plan.tier, window_ms, now_ms, resource_ids.len());
    let mut fold = SeriesFold::new(plan);
    for chunk in resource_ids.chunks(CELLS_READ_RESOURCES_MAX) {
        let cells = reader.cells_of_many(chunk).await?;
        for cells in &cells {
            fold.add(cells);
        }
    }
    let (count, uniques, series) = fold.finish();
    Ok(SeriesResponse {
        resources: resource_ids.len(),
        count,
        uniques,
        granularity: plan.granularity,
        period: plan.period(),
        series,
        stale: reader.stale().then_some(true),
    })
}

/// One resource's hits and the union of its visitors over its cells.
fn sum(cells: &[CountCell]) -> (u64, Sketch) {
    let mut visitors = Sketch::new();
    let mut count = 0;
    for cell in cells {
        count += cell.hits;
        visitors.merge(&cell.visitors);
    }
    (count, visitors)
}

/// Best first by `order`, then by the other measure, then by id, so equal numbers list the same
/// way every time.
fn rank(resources: &mut [ResourceTotal], order: Order) {
    resources.sort_by(|a, b| {
        let (first, second) = match order {
            Order::Count => (b.count.cmp(&a.count), b.uniques.cmp(&a.uniques)),
            Order::Uniques => (b.uniques.cmp(&a.uniques), b.count.cmp(&a.count)),
        };
        first
            .then(second)
            .then_with(|| a.resource_id.cmp(&b.resource_id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(resource_id: &str, count: u64, uniques: u64) -> ResourceTotal {
        ResourceTotal {
            resource_id: resource_id.to_owned(),
            count,
            uniques,
            series: None,
        }
    }

    #[test]
    fn ranks_by_the_order_then_the_other_measure_then_the_id() {
        let mut resources = vec![
            total("c", 5, 1),
            total("a", 9, 2),
            total("b", 5, 3),
            total("d", 5, 3),
        ];
        rank(&mut resources, Order::Count);
        let ids: Vec<&str> = resources.iter().map(|r| r.resource_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d", "c"]);
        rank(&mut resources, Order::Uniques);
        let ids: Vec<&str> = resources.iter().map(|r| r.resource_id.as_str()).collect();
        assert_eq!(ids, ["b", "d", "a", "c"]);
    }

    #[test]
    fn a_resource_sums_its_hits_and_unions_its_visitors() {
        let cell = |bucket_ms, hits, visitors: &[u64]| {
            let mut sketch = Sketch::new();
            for visitor in visitors {
                sketch.insert(&visitor.to_le_bytes());
            }
            CountCell {
                bucket_ms,
                hits,
                visitors: sketch,
            }
        };
        let (count, visitors) = sum(&[cell(0, 3, &[1, 2]), cell(60_000, 4, &[2, 3])]);
        assert_eq!(count, 7);
        assert_eq!(visitors.count(), 3);
    }
}
