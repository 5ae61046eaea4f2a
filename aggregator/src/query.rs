//! Time windows for `GET /hits/{resource_id}`: parsing, choosing a tier and granularity, and
//! folding stored cells into a total and a series.

use hitcount_wire::Sketch;
use hitcount_wire::text::duration_text;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::store::{
    CountCell, DAY_MS, HOUR_MS, HOUR_TIER_RETENTION_MS, MINUTE_TIER_RETENTION_MS, Tier,
};

/// The most points one series may hold (48 hours of minutes fits; ten years of hours does not).
pub const SERIES_POINTS_MAX: u64 = 10_000;
/// Windows up to this long default to minute points.
const MINUTE_GRANULARITY_SPAN_MS_MAX: u64 = 6 * HOUR_MS;
/// Windows up to this long default to hour points; longer ones to day points.
const HOUR_GRANULARITY_SPAN_MS_MAX: u64 = 14 * DAY_MS;
/// Times beyond the year 9999 cannot be written in RFC 3339.
pub const TIME_MS_MAX: u64 = 253_402_300_799_999;
/// The window used when a query names no time at all.
const DEFAULT_WINDOW_MS: u64 = DAY_MS;

/// The query of `GET /hits/{resource_id}`. Its parameters are described as one exploded object
/// (its `IntoParams` is in `api::schemas`), the only way OpenAPI can say that `window` excludes
/// `start_time`/`end_time`; unknown parameters are refused so that object is exact.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitsQuery {
    /// Start of the window (inclusive): RFC 3339, or Unix milliseconds.
    pub start_time: Option<String>,
    /// End of the window (exclusive): RFC 3339, or Unix milliseconds.
    pub end_time: Option<String>,
    /// A window ending now instead of start/end: a number and a unit (s, m, h, d, w), e.g. `24h`.
    pub window: Option<String>,
    /// Width of each series point: `minute`, `hour` or `day` (chosen from the window if absent).
    pub granularity: Option<Tier>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Period {
    /// RFC 3339, inclusive.
    pub start_time: String,
    /// RFC 3339, exclusive.
    pub end_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SeriesPoint {
    pub start_time: String,
    pub count: u64,
    pub uniques: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HitsResponse {
    pub resource_id: String,
    /// Hits in the period, exact.
    pub count: u64,
    /// Distinct visitors in the period, estimated (standard error 0.81%).
    pub uniques: u64,
    pub granularity: Tier,
    /// The period counted: the requested window widened to whole granularity buckets (UTC).
    pub period: Period,
    pub series: Vec<SeriesPoint>,
    /// Present (true) only while the durable store is unavailable: the answer then holds only the
    /// minutes the hot tier (Redis) keeps, the last hour, and older buckets of the period count 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
}

pub fn format_time(ms: u64) -> String {
    let nanos = i128::from(ms.min(TIME_MS_MAX)) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// RFC 3339 or Unix milliseconds. Only text of neither form is refused: a time before 1970
/// counts as 1970 and one after 9999 as the end of 9999, as the document says, because a schema
/// can state the form of a time but not its range.
pub fn parse_time(name: &str, text: &str) -> Result<u64, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_time",
            format!(
                "{name} must be RFC 3339 (2026-01-31T12:00:00Z) or Unix milliseconds, got {text:?}"
            ),
        )
    };
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        // All digits: the only parse error left is overflow, which is past the year 9999 too.
        return Ok(text.parse::<u64>().unwrap_or(u64::MAX).min(TIME_MS_MAX));
    }
    rfc3339_ms(text).ok_or_else(invalid)
}

/// An RFC 3339 time in Unix milliseconds, clamped to 1970 ..= the end of 9999.
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    // RFC 3339 allows a lowercase `t` and `z`; the parser wants them uppercase.
    let time = OffsetDateTime::parse(&text.to_ascii_uppercase(), &Rfc3339).ok()?;
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    Some(
        u64::try_from(ms.max(0))
            .unwrap_or(u64::MAX)
            .min(TIME_MS_MAX),
    )
}

/// `90s`, `1m`, `24h`, `7d`, `2w`.
pub fn parse_window(text: &str) -> Result<u64, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_window",
            format!(
                "window must be a positive number and a unit (s, m, h, d, w), e.g. 24h; got {text:?}"
            ),
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    // All digits: the only parse error left is overflow, a window longer than all time.
    let number: u64 = if number.is_empty() {
        return Err(invalid());
    } else {
        number.parse().unwrap_or(u64::MAX)
    };
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        _ => return Err(invalid()),
    };
    if number == 0 {
        return Err(invalid());
    }
    // Longer than all time is all time: the schema states the form, not a bound.
    Ok(number.saturating_mul(unit_ms).min(TIME_MS_MAX))
}

/// What to read and how to fold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub tier: Tier,
    pub granularity: Tier,
    pub start_ms: u64,
    pub end_ms: u64,
}

fn covers(tier: Tier, start_ms: u64, now_ms: u64) -> bool {
    match tier.retention_ms() {
        // One bucket of slack: a window of exactly the retention starts mid-bucket.
        Some(retention) => start_ms + retention + tier.resolution_ms() >= now_ms,
        None => true,
    }
}

/// How a read query names its period: a `window` ending now, or `start_time` and `end_time`, or
/// neither (the last [`DEFAULT_WINDOW_MS`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeRange<'a> {
    pub window: Option<&'a str>,
    pub start_time: Option<&'a str>,
    pub end_time: Option<&'a str>,
}

impl<'a> TimeRange<'a> {
    /// The range a query's three time fields name, as sent.
    pub fn of(
        window: &'a Option<String>,
        start_time: &'a Option<String>,
        end_time: &'a Option<String>,
    ) -> Self {
        Self {
            window: window.as_deref(),
            start_time: start_time.as_deref(),
            end_time: end_time.as_deref(),
        }
    }
}

impl HitsQuery {
    pub fn range(&self) -> TimeRange<'_> {
        TimeRange::of(&self.window, &self.start_time, &self.end_time)
    }
}

/// Chooses the tier, granularity and bucket-aligned period of a read of `range` at
/// `granularity` (chosen from the span when `None`).
pub fn plan(
    range: TimeRange<'_>,
    granularity: Option<Tier>,
    now_ms: u64,
) -> Result<Plan, ApiError> {
    let (start_ms, end_ms) = period(range, now_ms)?;
    let granularity =
        granularity.unwrap_or_else(|| default_granularity(end_ms - start_ms, start_ms, now_ms));
    // Every tier holds the same counts (they are rolled up at write time), so the tier of the
    // requested granularity is exact and the cheapest to read. Finer tiers are kept for shorter
    // times, so if this one no longer covers the window, none does.
    if !covers(granularity, start_ms, now_ms) {
        return Err(not_kept(granularity));
    }
    let resolution = granularity.resolution_ms();
    let aligned_start = start_ms / resolution * resolution;
    let aligned_end = end_ms.div_ceil(resolution) * resolution;
    let points = (aligned_end - aligned_start) / resolution;
    if points > SERIES_POINTS_MAX {
        return Err(ApiError::Unprocessable {
            code: "too_many_points",
            message: format!(
                "this window at {} granularity has {points} points; the limit is {SERIES_POINTS_MAX}",
                granularity.as_str()
            ),
        });
    }
    Ok(Plan {
        tier: granularity,
        granularity,
        start_ms: aligned_start,
        end_ms: aligned_end,
    })
}

/// The period `range` names, `[start_ms, end_ms)`, not empty.
pub fn period(range: TimeRange<'_>, now_ms: u64) -> Result<(u64, u64), ApiError> {
    let (start_ms, end_ms) = match (range.window, range.start_time, range.end_time) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_time_range",
                "give either window or start_time and end_time, not both",
            ));
        }
        (Some(window), None, None) => {
            let span = parse_window(window)?;
            (now_ms.saturating_sub(span), now_ms)
        }
        (None, Some(start), Some(end)) => (
            parse_time("start_time", start)?,
            parse_time("end_time", end)?,
        ),
        (None, None, None) => (now_ms.saturating_sub(DEFAULT_WINDOW_MS), now_ms),
        (None, _, _) => {
            return Err(ApiError::bad_request(
                "invalid_time_range",
                "start_time and end_time must be given together",
            ));
        }
    };
    // A relation between two parameters, which no schema states: unprocessable, not malformed.
    if start_ms >= end_ms {
        return Err(ApiError::Unprocessable {
            code: "invalid_time_range",
            message: "start_time must be before end_time".to_owned(),
        });
    }
    Ok((start_ms, end_ms))
}

/// Minutes for short spans, hours for middling ones, days beyond; and, since nothing asked for
/// it, a coarser granularity that is still kept when that one no longer covers the start.
fn default_granularity(span_ms: u64, start_ms: u64, now_ms: u64) -> Tier {
    let wanted = if span_ms <= MINUTE_GRANULARITY_SPAN_MS_MAX {
        Tier::Minute
    } else if span_ms <= HOUR_GRANULARITY_SPAN_MS_MAX {
        Tier::Hour
    } else {
        Tier::Day
    };
    Tier::ALL
        .into_iter()
        .filter(|tier| *tier >= wanted)
        .find(|tier| covers(*tier, start_ms, now_ms))
        .unwrap_or(Tier::Day)
}

fn not_kept(granularity: Tier) -> ApiError {
    let kept = match granularity {
        Tier::Minute => format!(
            "minute counts are kept for {}",
            duration_text(MINUTE_TIER_RETENTION_MS)
        ),
        Tier::Hour => format!(
            "hour counts are kept for {}",
            duration_text(HOUR_TIER_RETENTION_MS)
        ),
        Tier::Day => "day counts are kept for the resource's retention".to_owned(),
    };
    ApiError::Unprocessable {
        code: "granularity_not_kept",
        message: format!("{kept}; ask for a coarser granularity for this window"),
    }
}

/// Folds cells (sorted by bucket) of one resource into the response: one point per granularity
/// bucket, empty buckets included, so charts need no gap filling.
/// `stale`: the cells are the hot tier's alone (see [`HitsResponse::stale`]).
pub fn fold(resource_id: String, plan: &Plan, cells: &[CountCell], stale: bool) -> HitsResponse {
    let mut series = SeriesFold::new(plan);
    series.add(cells);
    let (count, uniques, series) = series.finish();
    HitsResponse {
        resource_id,
        count,
        uniques,
        granularity: plan.granularity,
        period: plan.period(),
        series,
        stale: stale.then_some(true),
    }
}

impl Plan {
    pub fn period(&self) -> Period {
        Period {
            start_time: format_time(self.start_ms),
            end_time: format_time(self.end_ms),
        }
    }
}

/// Cells of one or many resources folded into one series over a plan's period: hits add up,
/// visitors are the union of the sketches.
#[derive(Debug)]
pub struct SeriesFold {
    plan: Plan,
    points: Vec<(u64, Sketch)>,
    count: u64,
    visitors: Sketch,
}

impl SeriesFold {
    pub fn new(plan: &Plan) -> Self {
        let points = (plan.end_ms - plan.start_ms) / plan.granularity.resolution_ms();
        assert!(
            points <= SERIES_POINTS_MAX,
            "plan bounds a series to SERIES_POINTS_MAX points"
        );
        Self {
            plan: *plan,
            points: vec![(0, Sketch::new()); points as usize],
            count: 0,
            visitors: Sketch::new(),
        }
    }

    /// Adds the cells of one resource, each within the plan's period.
    pub fn add(&mut self, cells: &[CountCell]) {
        let resolution = self.plan.granularity.resolution_ms();
        for cell in cells {
            debug_assert!(
                cell.bucket_ms >= self.plan.start_ms && cell.bucket_ms < self.plan.end_ms
            );
            let index = ((cell.bucket_ms - self.plan.start_ms) / resolution) as usize;
            if let Some((hits, visitors)) = self.points.get_mut(index) {
                *hits += cell.hits;
                visitors.merge(&cell.visitors);
            }
            self.count += cell.hits;
            self.visitors.merge(&cell.visitors);
        }
    }

    /// The period's hits, its distinct visitors, and one point per bucket.
    pub fn finish(self) -> (u64, u64, Vec<SeriesPoint>) {
        let resolution = self.plan.granularity.resolution_ms();
        let start_ms = self.plan.start_ms;
        let series = self
            .points
            .into_iter()
            .enumerate()
            .map(|(index, (hits, visitors))| SeriesPoint {
                start_time: format_time(start_ms + index as u64 * resolution),
                count: hits,
                uniques: visitors.count(),
            })
            .collect();
        (self.count, self.visitors.count(), series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_780_000_000_000;

    fn plan(window: &str, granularity: Option<Tier>, now_ms: u64) -> Result<Plan, ApiError> {
        let range = TimeRange {
            window: Some(window),
            ..TimeRange::default()
        };
        super::plan(range, granularity, now_ms)
    }

    #[test]
    fn parses_times_and_windows() {
        assert_eq!(parse_time("t", "1000").unwrap(), 1_000);
        assert_eq!(parse_time("t", "1970-01-01T00:00:01.5Z").unwrap(), 1_500);
        assert_eq!(parse_time("t", "1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert!(parse_time("t", "yesterday").is_err());
        assert_eq!(
            parse_time("t", "99999999999999999999").unwrap(),
            TIME_MS_MAX
        );
        assert_eq!(parse_time("t", "1969-12-31T23:59:59z").unwrap(), 0);
        assert_eq!(parse_window("24h").unwrap(), DAY_MS);
        assert_eq!(parse_window("1m").unwrap(), 60_000);
        for bad in ["", "h", "0h", "5y", "-1h"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_window("99999999999999999999w").unwrap(), TIME_MS_MAX);
        assert_eq!(format_time(1_500), "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn picks_the_finest_tier_that_is_kept() {
        let day = plan("24h", None, NOW_MS).unwrap();
        assert_eq!((day.tier, day.granularity), (Tier::Hour, Tier::Hour));
        let minutes = plan("24h", Some(Tier::Minute), NOW_MS).unwrap();
        assert!(minutes.end_ms - minutes.start_ms <= DAY_MS + 60_000);
        assert_eq!(
            (minutes.tier, minutes.granularity),
            (Tier::Minute, Tier::Minute)
        );
        let hour = plan("1h", None, NOW_MS).unwrap();
        assert_eq!(hour.tier, Tier::Minute);
        let week = plan("7d", Some(Tier::Hour), NOW_MS).unwrap();
        assert_eq!(week.tier, Tier::Hour);
        let year = plan("365d", None, NOW_MS).unwrap();
        assert_eq!((year.tier, year.granularity), (Tier::Day, Tier::Day));
        assert!(plan("3d", Some(Tier::Minute), NOW_MS).is_err());
        assert!(plan("200d", Some(Tier::Hour), NOW_MS).is_err());
    }

    #[test]
    fn aligns_and_bounds_points() {
        let short = plan("90s", None, NOW_MS + 30_000).unwrap();
        assert_eq!(short.start_ms % 60_000, 0);
        assert_eq!(short.end_ms % 60_000, 0);
        assert!(plan("1500w", None, NOW_MS).is_err());
    }
}
