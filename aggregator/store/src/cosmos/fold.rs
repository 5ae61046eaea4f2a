//! Folding Cosmos DB's inbox into the count documents, exactly once without transactions.
//!
//! Each aggregator process writes its rows into a stream of its own (its writer id) and folds
//! that stream in numbered rounds. A round first records which rows it takes in the stream's
//! document (in `catalog`, replaced on its ETag, so one process at a time moves a stream on),
//! then adds those rows' cells to each count document with the round's mark (`counts.rs`: a
//! document that has the mark is skipped), then marks the rows folded, then records the round
//! finished. A process that dies anywhere in a round leaves the stream's document saying which
//! rows the round took; whoever folds the stream next finishes that round first, and the marks
//! make the documents it had written skip. A stream whose process stopped sending heartbeats
//! for [`STREAM_ORPHAN_MS`] is taken over by another process, which finishes it and deletes it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use hitcount_wire::Sketch;
use serde::{Deserialize, Serialize};

use super::counts::{Mark, count_ttl, pages};
use super::inbox::{RowRef, RowState};
use super::{CosmosStore, Kind, classify};
use crate::inbox::{choose_fold_rows, fold_rows, rows_resource_ids};
use crate::records::{StoreError, Tier};
use crate::rollup::Rollups;

/// A stream whose heartbeat (each fold, every fold interval) is this old belongs to a process
/// that stopped: another process takes it over. Several fold intervals at their longest
/// (`FOLD_INTERVAL_MS_MAX`), so a live process is never taken over for a slow fold.
pub const STREAM_ORPHAN_MS: u64 = 5 * crate::inbox::FOLD_INTERVAL_MS_MAX;
/// Pending rows a round chooses from.
const FOLD_ROWS_LISTED_MAX: u64 = 1_000;
/// Rounds one fold runs per stream, so that a stream under constant load does not keep the
/// fold from the others.
const FOLD_ROUNDS_MAX: u32 = 64;
/// Count document writes a round keeps in flight: each is a read and a replace, so a round's
/// time is its pages over this many round trips.
const FOLD_WRITES_IN_FLIGHT_MAX: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamDocument {
    /// The stream: its writer's id.
    id: String,
    kind: Kind,
    /// The process that folds it: its writer, or the one that took it over.
    owner: String,
    heartbeat_ms: u64,
    round: u64,
    /// The rows of `round`, while it is unfinished.
    rows: Vec<RowRef>,
    folding: bool,
    #[serde(rename = "_etag", skip_serializing, default)]
    etag: Option<String>,
}

impl CosmosStore {
    /// Folds this process's stream, then takes over and folds every orphaned one; returns the
    /// rows folded.
    pub(super) async fn fold_streams(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut folded = self.fold_own(now_ms).await?;
        let me = self.writer();
        let streams: Vec<StreamDocument> = self.all_of(Kind::FoldStream).await?;
        for mut stream in streams {
            if stream.id == me || stream.heartbeat_ms + STREAM_ORPHAN_MS > now_ms {
                continue;
            }
            tracing::info!(stream = %stream.id, owner = %stream.owner, "taking over an orphaned fold stream");
            stream.owner = me.clone();
            stream.heartbeat_ms = now_ms;
            let Some(stream) = self.replace_stream(stream).await? else {
                continue;
            };
            let (rows, finished) = self.fold_stream(stream, now_ms, false).await?;
            folded += rows;
            if let Some(stream) = finished {
                self.delete_stream(&stream).await?;
            }
        }
        Ok(folded)
    }

    /// Records this process's stream (once per stream, before its first row): a process that
    /// dies before it ever folds leaves a stream whose heartbeat ages, which another process
    /// then takes over.
    pub(super) async fn start_stream(&self, now_ms: u64) -> Result<(), StoreError> {
        if self.stream_started.load(Ordering::Acquire) {
            return Ok(());
        }
        let me = self.writer();
        let stream = StreamDocument {
            id: me.clone(),
            kind: Kind::FoldStream,
            owner: me.clone(),
            heartbeat_ms: now_ms,
            round: 0,
            rows: Vec::new(),
            folding: false,
            etag: None,
        };
        self.create(Kind::FoldStream, &me, &stream).await?;
        self.next_row.store(
            now_ms.saturating_mul(super::ROW_NUMBERS_PER_MS),
            Ordering::Relaxed,
        );
        self.stream_started.store(true, Ordering::Release);
        Ok(())
    }

    async fn fold_own(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.start_stream(now_ms).await?;
        let me = self.writer();
        let stream = self.read::<StreamDocument>(Kind::FoldStream, &me).await?;
        let Some(stream) = stream.filter(|stream| stream.owner == me) else {
            // This process stalled past STREAM_ORPHAN_MS and another took its stream (and may
            // have finished and deleted it): which of its rows are folded is no longer known
            // here, so reads stop adding them (they see them once folded) and new rows go into
            // a new stream.
            tracing::warn!(stream = %me, "this process's fold stream was taken over");
            self.overlay.clear();
            self.rotate_writer();
            return Ok(0);
        };
        Ok(self.fold_stream(stream, now_ms, true).await?.0)
    }

    /// Runs rounds on a stream until it has no pending rows (or [`FOLD_ROUNDS_MAX`]); returns
    /// the rows folded and, if this process still holds the stream and it has no pending rows,
    /// its document. Stops where another process's write to the stream document wins.
    async fn fold_stream(
        &self,
        mut stream: StreamDocument,
        now_ms: u64,
        own: bool,
    ) -> Result<(u64, Option<StreamDocument>), StoreError> {
        let mut folded = 0;
        if own {
            // Rounds recorded finished whose answer was lost before this process saw it.
            let finished = if stream.folding {
                stream.round - 1
            } else {
                stream.round
            };
            self.overlay.finish_through(finished);
        }
        for _ in 0..FOLD_ROUNDS_MAX {
            if stream.folding {
                if own {
                    // A round this process recorded but did not finish (its answer was lost):
                    // reads must ask the documents about its rows before it writes them.
                    let numbers: Vec<u64> = stream.rows.iter().map(|row| row.row).collect();
                    self.overlay.assign(&numbers, stream.round);
                }
                self.finish_round(&stream.id, stream.round, &stream.rows, now_ms)
                    .await?;
                stream.folding = false;
                stream.rows.clear();
                stream.heartbeat_ms = now_ms;
                let round = stream.round;
                let Some(replaced) = self.replace_stream(stream).await? else {
                    return Ok((folded, None));
                };
                stream = replaced;
                if own {
                    self.overlay.finish_through(round);
                }
            }
            let listed = self.pending_rows(&stream.id, FOLD_ROWS_LISTED_MAX).await?;
            if listed.is_empty() {
                if own {
                    stream.heartbeat_ms = now_ms;
                    let Some(replaced) = self.replace_stream(stream).await? else {
                        return Ok((folded, None));
                    };
                    stream = replaced;
                }
                return Ok((folded, Some(stream)));
            }
            let sizes: Vec<(u64, usize)> = listed
                .iter()
                .map(|row| (row.row, usize::try_from(row.cells).unwrap_or(usize::MAX)))
                .collect();
            let chosen = choose_fold_rows(&sizes);
            let rows: Vec<RowRef> = listed.into_iter().take(chosen.len()).collect();
            stream.round += 1;
            stream.rows = rows;
            stream.folding = true;
            stream.heartbeat_ms = now_ms;
            let Some(replaced) = self.replace_stream(stream).await? else {
                return Ok((folded, None));
            };
            stream = replaced;
            if own {
                self.overlay.assign(&chosen, stream.round);
            }
            folded += chosen.len() as u64;
        }
        Ok((folded, None))
    }

    /// Adds the round's rows to the count documents (skipping those the round wrote before),
    /// then marks them folded. A row found folded already means a process finished the count
    /// writes before it died: only the marking is left.
    async fn finish_round(
        &self,
        stream: &str,
        round: u64,
        rows: &[RowRef],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut pending = Vec::new();
        let mut counted = false;
        for row in rows {
            match self.read_row_document(&row.edge_id, &row.id).await? {
                Some(document) if document.state == RowState::Pending => pending.push(document),
                _ => counted = true,
            }
        }
        if !counted {
            let mut loaded = Vec::with_capacity(pending.len());
            for document in &pending {
                loaded.push(self.load_row(document).await?);
            }
            let retention = self.retention_of(rows_resource_ids(&loaded)).await?;
            let writes = fold_rows(&loaded, &retention, &Rollups::none(), now_ms);
            let mut sketches: HashMap<(String, Tier, u64), Sketch> = HashMap::new();
            for ((resource_id, minute_ms), sketch) in &writes.sketches {
                for tier in Tier::ALL {
                    let bucket_ms = minute_ms / tier.resolution_ms() * tier.resolution_ms();
                    let key = (resource_id.clone(), tier, bucket_ms);
                    if writes.cells.contains_key(&key) {
                        sketches.entry(key).or_default().merge(sketch);
                    }
                }
            }
            let mark = Mark::Round {
                stream: stream.to_owned(),
                round,
            };
            let empty = Sketch::new();
            let cells = writes
                .cells
                .iter()
                .map(|((resource_id, tier, bucket_ms), hits)| {
                    let key = (resource_id.clone(), *tier, *bucket_ms);
                    let visitors = sketches.get(&key).unwrap_or(&empty);
                    (resource_id.as_str(), *tier, *bucket_ms, *hits, visitors)
                });
            let pages = pages(cells, |resource_id, tier, page_ms| {
                let retention_days = retention.get(resource_id).copied().flatten();
                count_ttl(tier, page_ms, retention_days, now_ms)
            });
            let mark = &mark;
            futures::stream::iter(pages)
                .map(|write| async move { self.add_to_count(&write, mark, now_ms).await })
                .buffer_unordered(FOLD_WRITES_IN_FLIGHT_MAX)
                .try_collect::<Vec<bool>>()
                .await?;
        }
        for document in pending {
            self.mark_folded(document).await?;
        }
        Ok(())
    }

    /// Replaces the stream's document on the ETag it was read with; `None` when another
    /// process wrote it meanwhile.
    async fn replace_stream(
        &self,
        stream: StreamDocument,
    ) -> Result<Option<StreamDocument>, StoreError> {
        let etag = stream
            .etag
            .clone()
            .ok_or(StoreError::CorruptInbox("a fold stream has no etag"))?;
        let options = azure_data_cosmos::options::ItemWriteOptions::default().with_precondition(
            azure_data_cosmos::options::Precondition::if_match(azure_core::http::Etag::from(etag)),
        );
        match self
            .catalog
            .replace_item(
                Kind::FoldStream.as_str(),
                &stream.id,
                &stream,
                Some(options),
            )
            .await
        {
            Ok(_) => {}
            Err(error) if error.status().is_precondition_failed() => return Ok(None),
            Err(error) if error.status().is_not_found() => return Ok(None),
            Err(error) => return Err(classify(error)),
        }
        // Read back for the new ETag (the service may answer writes without their body).
        let stored = self
            .read::<StreamDocument>(Kind::FoldStream, &stream.id)
            .await?;
        Ok(stored.filter(|stored| stored.owner == stream.owner && stored.round == stream.round))
    }

    async fn delete_stream(&self, stream: &StreamDocument) -> Result<(), StoreError> {
        let etag = stream.etag.clone().unwrap_or_default();
        let options = azure_data_cosmos::options::ItemWriteOptions::default().with_precondition(
            azure_data_cosmos::options::Precondition::if_match(azure_core::http::Etag::from(etag)),
        );
        match self
            .catalog
            .delete_item(Kind::FoldStream.as_str(), &stream.id, Some(options))
            .await
        {
            Ok(_) => Ok(()),
            Err(error)
                if error.status().is_precondition_failed() || error.status().is_not_found() =>
            {
                Ok(())
            }
            Err(error) => Err(classify(error)),
        }
    }
}
