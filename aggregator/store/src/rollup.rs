//! Hours rolled up from closed minutes and days from closed hours (issue 28), the decisions both
//! SQL backends share. A backend keeps one watermark per coarse tier ([`Watermark`]) and writes
//! what these functions decide.
//!
//! The rule every writer and reader keeps, per resource and coarse tier T (hour or day):
//! - a bucket of T before the watermark is *rolled up*: T's own row holds all of it, and a
//!   write to it adds to T's row as well as to the finer rows;
//! - a bucket of T at or after the watermark is *open*: what it holds is T's own row (imports,
//!   and writes whose finer cell retention no longer keeps) plus what the next finer tier holds
//!   of it, and a write adds to exactly one of the two.
//!
//! So a minute's hits are written once while their hour and day are open, and the rollup adds
//! each hour's minutes into the hour's row once, after the hour closed: durable rows follow
//! distinct (resource, minute) cells, not three tiers of them. Reads of an open bucket add up
//! the finer rows, which are at most a few hours of minutes or a day of hours.
//!
//! A rollup advances resource by resource ([`Watermark::cursor`]) in bounded transactions;
//! writers and readers see, per resource, whether its current bucket is rolled up yet.

use std::collections::{BTreeMap, BTreeSet};

use hitcount_wire::{MINUTE_MS, Sketch};

use crate::records::{CountCell, Tier, TierCell};

/// A bucket is rolled up once it ended this long ago: after the inbox's own minute-close grace
/// and a fold or two, so that the minutes of an hour are nearly always in their rows by then
/// (a minute that comes later is still counted, only written to two rows).
pub const ROLLUP_DELAY_MS: u64 = 2 * MINUTE_MS;
/// Resources one rollup transaction rolls up, each read with its finer rows of one bucket (at
/// most 60 minutes or 24 hours): bounds the time a rollup holds the writers back.
pub const ROLLUP_RESOURCES_MAX: usize = 1_000;

/// How far a coarse tier is rolled up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermark {
    /// Every bucket before this is rolled up, for every resource.
    pub until_ms: u64,
    /// The bucket at `until_ms` is rolled up too for the resources up to this id (a rollup in
    /// progress); none when it is not started.
    pub cursor: Option<String>,
}

/// The watermarks of the hour and day tiers. A tier without one has never been rolled up: every
/// bucket of it counts as rolled up, which is what every write did before rollups, so a store
/// written by an earlier version reads the same until its first rollup sets the watermarks
/// past everything written so far ([`first_watermark`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollups {
    pub hour: Option<Watermark>,
    pub day: Option<Watermark>,
}

impl Rollups {
    /// The rollups of a store that never had any: every bucket written whole.
    pub fn none() -> Self {
        Self::default()
    }

    pub(crate) fn set(&mut self, tier: Tier, watermark: Watermark) {
        match tier {
            Tier::Minute => unreachable!("minutes are not rolled up"),
            Tier::Hour => self.hour = Some(watermark),
            Tier::Day => self.day = Some(watermark),
        }
    }

    pub(crate) fn get(&self, tier: Tier) -> Option<&Watermark> {
        match tier {
            Tier::Minute => None,
            Tier::Hour => self.hour.as_ref(),
            Tier::Day => self.day.as_ref(),
        }
    }

    /// Where `resource_id`'s open buckets of `tier` start (`u64::MAX` when all are rolled up).
    pub fn rolled_until(&self, tier: Tier, resource_id: &str) -> u64 {
        let Some(mark) = self.get(tier) else {
            return u64::MAX;
        };
        let cursor_passed = mark
            .cursor
            .as_deref()
            .is_some_and(|cursor| resource_id <= cursor);
        if cursor_passed {
            mark.until_ms + tier.resolution_ms()
        } else {
            mark.until_ms
        }
    }

    pub fn rolled(&self, tier: Tier, resource_id: &str, bucket_ms: u64) -> bool {
        bucket_ms < self.rolled_until(tier, resource_id)
    }

    /// How far retention may delete `tier` given its `cutoff_ms`: no row a coarser bucket that
    /// is not rolled up still counts (however long the rollup was held up, a stopped store say).
    pub fn prunable_until(&self, tier: Tier, cutoff_ms: u64) -> u64 {
        let coarser = match tier {
            Tier::Minute => self.hour.as_ref(),
            Tier::Hour => self.day.as_ref(),
            Tier::Day => None,
        };
        coarser.map_or(cutoff_ms, |mark| cutoff_ms.min(mark.until_ms))
    }

    /// Every resource's open buckets: the rollups as they are for a resource that no rollup in
    /// progress has reached yet. What a listing of the resources with counts in a range reads.
    pub fn earliest(&self) -> Self {
        let earliest = |mark: &Option<Watermark>| {
            mark.as_ref().map(|mark| Watermark {
                until_ms: mark.until_ms,
                cursor: None,
            })
        };
        Self {
            hour: earliest(&self.hour),
            day: earliest(&self.day),
        }
    }

    /// The rows one minute's counts are written to: the minute, and an hour or day only where
    /// that bucket is rolled up or the finer tier does not hold the minute (retention). `kept`
    /// says whether retention keeps a tier's bucket. A reader adds the finer rows of an open
    /// bucket, so every kept tier counts the minute exactly once.
    pub fn minute_rows(
        &self,
        resource_id: &str,
        minute_ms: u64,
        kept: impl Fn(Tier, u64) -> bool,
    ) -> Vec<(Tier, u64)> {
        let [minute, hour, day] = Tier::ALL.map(|tier| (tier, bucket_of(tier, minute_ms)));
        let minute_kept = kept(minute.0, minute.1);
        let hour_rolled = self.rolled(Tier::Hour, resource_id, hour.1);
        let hour_written = kept(hour.0, hour.1) && (hour_rolled || !minute_kept);
        // What a read of an open day adds: every hour row, and the minutes of open hours.
        let day_counts_finer = hour_written || (minute_kept && !hour_rolled);
        let day_written =
            kept(day.0, day.1) && (self.rolled(Tier::Day, resource_id, day.1) || !day_counts_finer);
        let mut rows = Vec::with_capacity(3);
        for (written, row) in [
            (minute_kept, minute),
            (hour_written, hour),
            (day_written, day),
        ] {
            if written {
                rows.push(row);
            }
        }
        rows
    }

    /// The finer rows a read of `tier` over `[start_ms, end_ms)` adds for `resource_id`, as
    /// (finer tier, start, end): those of its open buckets. Empty for minutes and for tiers
    /// rolled up through `end_ms`.
    pub fn finer_reads(
        &self,
        tier: Tier,
        resource_id: &str,
        start_ms: u64,
        end_ms: u64,
    ) -> Vec<(Tier, u64, u64)> {
        // A read takes whole buckets of `tier` from `start_ms` on; their finer rows with them.
        let resolution = tier.resolution_ms();
        let start_ms = start_ms.div_ceil(resolution).saturating_mul(resolution);
        let end_ms = end_ms.div_ceil(resolution).saturating_mul(resolution);
        let mut reads = Vec::new();
        let mut from_ms = start_ms;
        let mut coarse = tier;
        while let Some(finer) = finer_tier(coarse) {
            from_ms = from_ms.max(self.rolled_until(coarse, resource_id));
            if from_ms >= end_ms {
                break;
            }
            reads.push((finer, from_ms, end_ms));
            coarse = finer;
        }
        reads
    }

    /// An import's cells as they are written, so that each tier reads as the file says
    /// whatever is rolled up, and a tier the file does not carry for a bucket reads what its
    /// finer cells add up to (as it would once rolled up):
    /// - a coarse cell of an open bucket keeps only the hits the import's finer cells do not
    ///   already count there (never below zero; visitors whole, since a union counts each once);
    /// - a bucket rolled up that the file carries finer cells of but no cell gets one, their sum.
    pub fn import_rows(&self, cells: &[TierCell]) -> Vec<TierCell> {
        let mut by_resource: BTreeMap<&str, Vec<&TierCell>> = BTreeMap::new();
        for cell in cells {
            by_resource.entry(&cell.resource_id).or_default().push(cell);
        }
        let mut rows = Vec::with_capacity(cells.len());
        for (resource_id, cells) in by_resource {
            // What the import adds to a read of each bucket of the tier below the one written.
            let mut finer_reads: BTreeMap<u64, CountCell> = BTreeMap::new();
            for cell in cells.iter().filter(|cell| cell.tier == Tier::Minute) {
                rows.push((*cell).clone());
                finer_reads.insert(cell.cell.bucket_ms, cell.cell.clone());
            }
            for tier in [Tier::Hour, Tier::Day] {
                let own: BTreeMap<u64, &TierCell> = cells
                    .iter()
                    .filter(|cell| cell.tier == tier)
                    .map(|cell| (cell.cell.bucket_ms, *cell))
                    .collect();
                let from_finer = add_finer(tier, Vec::new(), finer_reads.into_values().collect());
                let mut from_finer: BTreeMap<u64, CountCell> = from_finer
                    .into_iter()
                    .map(|cell| (cell.bucket_ms, cell))
                    .collect();
                let mut reads = BTreeMap::new();
                for bucket_ms in own
                    .keys()
                    .chain(from_finer.keys())
                    .copied()
                    .collect::<BTreeSet<_>>()
                {
                    let finer = from_finer.remove(&bucket_ms);
                    let rolled = self.rolled(tier, resource_id, bucket_ms);
                    let (written, read) =
                        import_bucket(own.get(&bucket_ms).copied(), finer, rolled);
                    if let Some(hits) = written {
                        rows.push(with_cell(
                            resource_id,
                            tier,
                            CountCell {
                                hits,
                                ..read.clone()
                            },
                        ));
                    }
                    reads.insert(bucket_ms, read);
                }
                finer_reads = reads;
            }
        }
        rows
    }
}

/// One coarse bucket of an import: the hits its row is written with (none: no row), and what
/// the import adds to a read of the bucket (its visitors are the row's). `own` is the file's
/// cell of the bucket, `finer` what the import adds to the reads of its finer buckets.
fn import_bucket(
    own: Option<&TierCell>,
    finer: Option<CountCell>,
    rolled: bool,
) -> (Option<u64>, CountCell) {
    let bucket_ms = own.map_or_else(
        || finer.as_ref().map_or(0, |cell| cell.bucket_ms),
        |cell| cell.cell.bucket_ms,
    );
    let finer = finer.unwrap_or(CountCell {
        bucket_ms,
        hits: 0,
        visitors: Sketch::new(),
    });
    match (own, rolled) {
        (Some(own), true) => (Some(own.cell.hits), own.cell.clone()),
        (Some(own), false) => {
            let written = own.cell.hits.saturating_sub(finer.hits);
            let mut visitors = own.cell.visitors.clone();
            visitors.merge(&finer.visitors);
            let read = CountCell {
                bucket_ms,
                hits: written + finer.hits,
                visitors,
            };
            (Some(written), read)
        }
        (None, true) => (Some(finer.hits), CountCell { bucket_ms, ..finer }),
        (None, false) => (None, CountCell { bucket_ms, ..finer }),
    }
}

fn with_cell(resource_id: &str, tier: Tier, cell: CountCell) -> TierCell {
    TierCell {
        resource_id: resource_id.to_owned(),
        tier,
        cell,
    }
}

/// The bucket of `tier` that holds `ms`.
pub fn bucket_of(tier: Tier, ms: u64) -> u64 {
    ms / tier.resolution_ms() * tier.resolution_ms()
}

/// The tier a coarse tier is rolled up from.
pub fn finer_tier(tier: Tier) -> Option<Tier> {
    match tier {
        Tier::Minute => None,
        Tier::Hour => Some(Tier::Minute),
        Tier::Day => Some(Tier::Hour),
    }
}

/// Adds cells of a finer tier into `cells` of `tier` (sorted by bucket): hits summed, visitors
/// united. What a read of open buckets does with the finer rows it read.
pub fn add_finer(tier: Tier, cells: Vec<CountCell>, finer: Vec<CountCell>) -> Vec<CountCell> {
    if finer.is_empty() {
        return cells;
    }
    let mut by_bucket: BTreeMap<u64, CountCell> = cells
        .into_iter()
        .map(|cell| (cell.bucket_ms, cell))
        .collect();
    for cell in finer {
        let bucket_ms = bucket_of(tier, cell.bucket_ms);
        let into = by_bucket.entry(bucket_ms).or_insert_with(|| CountCell {
            bucket_ms,
            hits: 0,
            visitors: Sketch::new(),
        });
        into.hits += cell.hits;
        into.visitors.merge(&cell.visitors);
    }
    by_bucket.into_values().collect()
}

/// The watermark a tier starts from at its first rollup: past every bucket of it or of a finer
/// tier that holds a row (all written whole by the earlier rule), and no earlier than the
/// bucket that holds `now_ms`. `newest_ms` is the newest stored bucket of each tier.
pub fn first_watermark(tier: Tier, newest_ms: &[(Tier, u64)], now_ms: u64) -> Watermark {
    let resolution = tier.resolution_ms();
    let past_rows = newest_ms
        .iter()
        .filter(|(stored, _)| stored.resolution_ms() <= resolution)
        .map(|(_, bucket_ms)| bucket_of(tier, *bucket_ms) + resolution)
        .max()
        .unwrap_or(0);
    Watermark {
        until_ms: bucket_of(tier, now_ms).max(past_rows),
        cursor: None,
    }
}

/// Where the buckets of `tier` due for a rollup at `now_ms` end: a bucket is due once it
/// ended [`ROLLUP_DELAY_MS`] ago, and a day only once its hours are rolled up.
pub fn due_until(tier: Tier, rollups: &Rollups, now_ms: u64) -> u64 {
    let closed = bucket_of(tier, now_ms.saturating_sub(ROLLUP_DELAY_MS));
    match (tier, &rollups.hour) {
        (Tier::Day, Some(hour)) => closed.min(bucket_of(Tier::Day, hour.until_ms)),
        (Tier::Day, None) => 0,
        _ => closed,
    }
}

/// Where a rollup not in progress moves the watermark `mark` of `tier` without rolling anything
/// up, given the first finer row at or after it (`next_finer_ms`): past the buckets
/// without finer rows, up to `due_ms`. `None` when the bucket at the watermark has finer rows.
pub fn skipped(
    tier: Tier,
    mark: &Watermark,
    next_finer_ms: Option<u64>,
    due_ms: u64,
) -> Option<Watermark> {
    debug_assert!(
        mark.cursor.is_none(),
        "a rollup in progress finishes its bucket"
    );
    let next_ms = next_finer_ms.map_or(u64::MAX, |next_ms| bucket_of(tier, next_ms));
    (next_ms > mark.until_ms).then(|| Watermark {
        until_ms: next_ms.min(due_ms),
        cursor: None,
    })
}

/// The watermark after a rollup step of `tier` rolled up `ids` (at most
/// [`ROLLUP_RESOURCES_MAX`], in order) of the bucket at `mark`: the bucket is done when fewer
/// were left, or else the cursor moves to the last.
pub fn after_step(tier: Tier, mark: &Watermark, ids: &[String]) -> Watermark {
    debug_assert!(ids.len() <= ROLLUP_RESOURCES_MAX);
    if ids.len() < ROLLUP_RESOURCES_MAX {
        Watermark {
            until_ms: mark.until_ms + tier.resolution_ms(),
            cursor: None,
        }
    } else {
        Watermark {
            until_ms: mark.until_ms,
            cursor: ids.last().cloned(),
        }
    }
}

/// One resource's finer cells of a bucket, as the coarse cell the rollup adds.
pub fn rolled_cell(resource_id: &str, tier: Tier, bucket_ms: u64, finer: &[CountCell]) -> TierCell {
    let mut cell = CountCell {
        bucket_ms,
        hits: 0,
        visitors: Sketch::new(),
    };
    for part in finer {
        debug_assert_eq!(bucket_of(tier, part.bucket_ms), bucket_ms);
        cell.hits += part.hits;
        cell.visitors.merge(&part.visitors);
    }
    TierCell {
        resource_id: resource_id.to_owned(),
        tier,
        cell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DAY_MS, HOUR_MS};

    fn open_from(hour_ms: u64, day_ms: u64) -> Rollups {
        Rollups {
            hour: Some(Watermark {
                until_ms: hour_ms,
                cursor: None,
            }),
            day: Some(Watermark {
                until_ms: day_ms,
                cursor: None,
            }),
        }
    }

    fn all_kept(_: Tier, _: u64) -> bool {
        true
    }

    #[test]
    fn without_rollups_every_tier_is_written_and_nothing_finer_is_read() {
        let none = Rollups::none();
        assert_eq!(none.minute_rows("a", MINUTE_MS, all_kept).len(), 3);
        assert!(none.finer_reads(Tier::Day, "a", 0, 10 * DAY_MS).is_empty());
    }

    #[test]
    fn an_open_minute_is_written_once_and_read_through_its_hour_and_day() {
        let rollups = open_from(2 * DAY_MS + HOUR_MS, 2 * DAY_MS);
        let minute = 2 * DAY_MS + 2 * HOUR_MS + 5 * MINUTE_MS;
        assert_eq!(
            rollups.minute_rows("a", minute, all_kept),
            vec![(Tier::Minute, minute)]
        );
        // A late minute of a rolled-up hour of the open day: the hour row too, not the day.
        let late = 2 * DAY_MS + 7 * MINUTE_MS;
        assert_eq!(
            rollups.minute_rows("a", late, all_kept),
            vec![(Tier::Minute, late), (Tier::Hour, 2 * DAY_MS)]
        );
        // A minute of a rolled-up day: every tier.
        assert_eq!(rollups.minute_rows("a", DAY_MS + 1, all_kept).len(), 3);
        // An open hour whose minute retention no longer keeps: the hour row holds it.
        let no_minutes = |tier: Tier, _| tier != Tier::Minute;
        assert_eq!(
            rollups.minute_rows("a", minute, no_minutes),
            vec![(Tier::Hour, 2 * DAY_MS + 2 * HOUR_MS)]
        );
        assert_eq!(
            rollups.finer_reads(Tier::Day, "a", 0, 3 * DAY_MS),
            vec![
                (Tier::Hour, 2 * DAY_MS, 3 * DAY_MS),
                (Tier::Minute, 2 * DAY_MS + HOUR_MS, 3 * DAY_MS)
            ]
        );
        assert_eq!(
            rollups.finer_reads(Tier::Hour, "a", 0, 2 * DAY_MS + HOUR_MS),
            vec![]
        );
    }

    #[test]
    fn a_rollup_in_progress_has_rolled_the_resources_up_to_its_cursor() {
        let rollups = Rollups {
            hour: Some(Watermark {
                until_ms: HOUR_MS,
                cursor: Some("m".to_owned()),
            }),
            day: None,
        };
        assert!(rollups.rolled(Tier::Hour, "a", HOUR_MS));
        assert!(rollups.rolled(Tier::Hour, "m", HOUR_MS));
        assert!(!rollups.rolled(Tier::Hour, "n", HOUR_MS));
        assert!(!rollups.rolled(Tier::Hour, "a", 2 * HOUR_MS));
    }

    #[test]
    fn an_import_of_an_open_bucket_writes_what_its_finer_cells_do_not_count() {
        let rollups = open_from(HOUR_MS, 0);
        let cell = |tier, bucket_ms, hits| TierCell {
            resource_id: "a".to_owned(),
            tier,
            cell: CountCell {
                bucket_ms,
                hits,
                visitors: Sketch::new(),
            },
        };
        let rows = rollups.import_rows(&[
            cell(Tier::Minute, HOUR_MS, 3),
            cell(Tier::Minute, HOUR_MS + MINUTE_MS, 4),
            cell(Tier::Hour, 0, 10),
            cell(Tier::Hour, HOUR_MS, 9),
            cell(Tier::Day, 0, 19),
        ]);
        let hits: Vec<(Tier, u64, u64)> = rows
            .iter()
            .map(|row| (row.tier, row.cell.bucket_ms, row.cell.hits))
            .collect();
        assert_eq!(
            hits,
            vec![
                (Tier::Minute, HOUR_MS, 3),
                (Tier::Minute, HOUR_MS + MINUTE_MS, 4),
                (Tier::Hour, 0, 10),
                (Tier::Hour, HOUR_MS, 2),
                (Tier::Day, 0, 0),
            ]
        );
    }

    #[test]
    fn an_import_without_a_coarse_cell_counts_its_finer_cells_there_rolled_up_or_not() {
        let minute = |bucket_ms, hits| TierCell {
            resource_id: "a".to_owned(),
            tier: Tier::Minute,
            cell: CountCell {
                bucket_ms,
                hits,
                visitors: Sketch::new(),
            },
        };
        let file = [minute(5 * MINUTE_MS, 6), minute(HOUR_MS + MINUTE_MS, 4)];
        let written = |rollups: Rollups| -> Vec<(Tier, u64, u64)> {
            rollups
                .import_rows(&file)
                .iter()
                .map(|row| (row.tier, row.cell.bucket_ms, row.cell.hits))
                .collect()
        };
        let minutes = [
            (Tier::Minute, 5 * MINUTE_MS, 6),
            (Tier::Minute, HOUR_MS + MINUTE_MS, 4),
        ];
        // Hour 0 rolled up gets the sum of its minutes; the open hour and day read them.
        let mut expected = minutes.to_vec();
        expected.push((Tier::Hour, 0, 6));
        assert_eq!(written(open_from(HOUR_MS, 0)), expected);
        // With the day rolled up too, the day gets what its hours read: 6 and 4.
        expected.push((Tier::Day, 0, 10));
        assert_eq!(written(open_from(HOUR_MS, DAY_MS)), expected);
        // Without rollups every bucket is rolled up: each tier gets the sum.
        let mut whole = minutes.to_vec();
        whole.extend([
            (Tier::Hour, 0, 6),
            (Tier::Hour, HOUR_MS, 4),
            (Tier::Day, 0, 10),
        ]);
        assert_eq!(written(Rollups::none()), whole);
    }

    #[test]
    fn the_first_watermark_passes_every_stored_row() {
        let newest = [(Tier::Minute, 5 * HOUR_MS + 1), (Tier::Hour, 3 * HOUR_MS)];
        assert_eq!(
            first_watermark(Tier::Hour, &newest, HOUR_MS).until_ms,
            6 * HOUR_MS
        );
        assert_eq!(
            first_watermark(Tier::Hour, &[], 7 * HOUR_MS + 1).until_ms,
            7 * HOUR_MS
        );
        assert_eq!(first_watermark(Tier::Day, &newest, 0).until_ms, DAY_MS);
    }

    #[test]
    fn retention_keeps_the_rows_of_buckets_not_rolled_up() {
        let rollups = open_from(5 * HOUR_MS, DAY_MS);
        assert_eq!(
            rollups.prunable_until(Tier::Minute, 9 * HOUR_MS),
            5 * HOUR_MS
        );
        assert_eq!(
            rollups.prunable_until(Tier::Minute, 2 * HOUR_MS),
            2 * HOUR_MS
        );
        assert_eq!(rollups.prunable_until(Tier::Hour, 3 * DAY_MS), DAY_MS);
        assert_eq!(rollups.prunable_until(Tier::Day, 3 * DAY_MS), 3 * DAY_MS);
        assert_eq!(Rollups::none().prunable_until(Tier::Minute, 7), 7);
    }

    #[test]
    fn days_are_due_only_once_their_hours_are_rolled_up() {
        let rollups = open_from(DAY_MS + HOUR_MS, 0);
        assert_eq!(due_until(Tier::Day, &rollups, 5 * DAY_MS), DAY_MS);
        assert_eq!(
            due_until(Tier::Hour, &rollups, 5 * HOUR_MS + ROLLUP_DELAY_MS - 1),
            4 * HOUR_MS
        );
        assert_eq!(due_until(Tier::Day, &Rollups::none(), 5 * DAY_MS), 0);
    }
}
