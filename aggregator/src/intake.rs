//! The delta intake: what happens to a signed batch between the HTTP layer and the merge.
//! `api/deltas.rs` reads the request (content type, body, headers) and renders the answer; this
//! module decides: the signature, the batch, its window, which new resources a pattern admits,
//! and the merge.

use hitcount_wire::auth::CLOCK_SKEW_MS_MAX;
use hitcount_wire::text::duration_text;
use hitcount_wire::{DeltaBatch, DeltaHeader, WireError};
use sha2::{Digest, Sha256};

use crate::auth::EdgeKeyRegistry;
use crate::catalog::Catalog;
use crate::merge::{MergeError, Merger};
use crate::patterns::{self, Admission};
use crate::store::{Applied, ApplyOutcome, BatchKey, DELTA_AGE_MS_MAX, Store, StoreError};

/// What a request says about who signed it, as sent.
#[derive(Debug, Clone, Copy)]
pub struct Signature<'a> {
    pub edge_id: &'a str,
    pub timestamp_ms: u64,
    /// Lowercase hex HMAC-SHA256.
    pub hex: &'a str,
}

/// What the intake needs of the aggregator: its keys, its resources, its store and its merger.
#[derive(Debug, Clone, Copy)]
pub struct Intake<'a> {
    pub edge_keys: &'a EdgeKeyRegistry,
    pub catalog: &'a Catalog,
    pub store: &'a Store,
    pub merger: &'a Merger,
}

/// A batch the intake took: merged now, or merged before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// What the merge counted; `unknown_resource_entries` includes the entries no pattern
    /// admitted.
    Applied(Applied),
    Duplicate,
}

/// Why a batch was not taken. Nothing of a refused batch is counted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(
        "the request timestamp is more than {} from the aggregator's clock",
        duration_text(CLOCK_SKEW_MS_MAX)
    )]
    StaleSignature,
    #[error("unknown or revoked edge key")]
    UnknownEdge,
    #[error("the signature does not match the body")]
    WrongSignature,
    #[error("malformed delta batch: {0}")]
    Malformed(#[from] WireError),
    #[error("the batch is from edge {batch:?} but was signed by {signer:?}")]
    WrongEdge { batch: String, signer: String },
    #[error(
        "the batch's window ended more than {} ago; it can no longer be deduplicated",
        duration_text(DELTA_AGE_MS_MAX)
    )]
    WindowTooOld,
    #[error("the batch's window starts in the future; check the edge's clock")]
    WindowInFuture,
    #[error("this edge, boot epoch and sequence were applied with a different body")]
    Conflict,
    #[error(transparent)]
    Merge(#[from] MergeError),
}

impl From<StoreError> for IntakeError {
    fn from(error: StoreError) -> Self {
        Self::Merge(MergeError::Store(error))
    }
}

/// Checks the signature of `body` and returns the edge id that signed it.
pub fn authenticate(
    edge_keys: &EdgeKeyRegistry,
    signature: Signature<'_>,
    body: &[u8],
    now_ms: u64,
) -> Result<String, IntakeError> {
    if signature.timestamp_ms.abs_diff(now_ms) > CLOCK_SKEW_MS_MAX {
        return Err(IntakeError::StaleSignature);
    }
    let key = edge_keys
        .get(signature.edge_id)
        .ok_or(IntakeError::UnknownEdge)?;
    let edge_id = signature.edge_id;
    if !hitcount_wire::auth::verify(
        &key.secret,
        edge_id,
        signature.timestamp_ms,
        body,
        signature.hex,
    ) {
        return Err(IntakeError::WrongSignature);
    }
    Ok(edge_id.to_owned())
}

/// Decodes a batch `signer` signed: it must name the edge that signed it.
pub fn decode(body: &[u8], signer: &str) -> Result<DeltaBatch, IntakeError> {
    let batch = DeltaBatch::decode(body).inspect_err(|error| {
        metrics::counter!("hitcount_deltas_rejected_total", "reason" => error.code()).increment(1);
    })?;
    if batch.header.edge_id != signer {
        return Err(IntakeError::WrongEdge {
            batch: batch.header.edge_id,
            signer: signer.to_owned(),
        });
    }
    Ok(batch)
}

/// A window can be deduplicated only while its dedupe records are kept, and one that starts
/// ahead of the aggregator's clock by more than the clock skew comes from a wrong clock.
pub fn check_window(header: &DeltaHeader, now_ms: u64) -> Result<(), IntakeError> {
    if header.window_end_ms + DELTA_AGE_MS_MAX < now_ms {
        return Err(IntakeError::WindowTooOld);
    }
    if header.window_start_ms > now_ms + CLOCK_SKEW_MS_MAX {
        return Err(IntakeError::WindowInFuture);
    }
    Ok(())
}

/// Takes one signed batch: checks it, admits the resources patterns create, merges the rest
/// exactly once, and reports what was counted.
pub async fn accept(
    intake: Intake<'_>,
    signature: Signature<'_>,
    body: &[u8],
    now_ms: u64,
) -> Result<Accepted, IntakeError> {
    let signer = authenticate(intake.edge_keys, signature, body, now_ms)?;
    let batch = decode(body, &signer)?;
    check_window(&batch.header, now_ms)?;
    let key = BatchKey {
        edge_id: signer,
        boot_epoch: batch.header.boot_epoch,
        sequence: batch.header.sequence,
        body_sha256: Sha256::digest(body).into(),
    };
    // Resources the cache lacks are created first where a pattern allows; the rest are left out
    // of the merge, so that what is reported refused is exactly what was not counted.
    let missing = intake.catalog.missing_in(&batch.entries);
    let mut entries = batch.entries;
    let refusals = if missing.is_empty() {
        Vec::new()
    } else {
        let refusals = intake
            .catalog
            .admit(intake.store, missing, Admission::WhatFits, now_ms)
            .await?;
        let refused = patterns::refused_ids(&refusals);
        entries.retain(|entry| !refused.contains(entry.resource_id.as_str()));
        refusals
    };
    let outcome = intake.merger.submit(entries, Some(key)).await?;
    match outcome {
        ApplyOutcome::Applied(mut applied) => {
            metrics::counter!("hitcount_deltas_applied_total").increment(1);
            metrics::counter!("hitcount_delta_hits_applied_total").increment(applied.hits);
            // Counted only once applied: a replay answers `duplicate` and refuses nothing again.
            intake.catalog.record_refusals(&refusals, now_ms);
            if applied.unknown_resource_hits > 0 {
                // Known when admitted, gone when merged: deleted meanwhile.
                metrics::counter!("hitcount_resources_refused_total", "reason" => "deleted")
                    .increment(applied.unknown_resource_hits);
            }
            applied.unknown_resource_entries +=
                refusals.iter().map(|refusal| refusal.entries).sum::<u64>();
            tracing::debug!(
                edge_id = %batch.header.edge_id,
                sequence = batch.header.sequence,
                hits = applied.hits,
                "delta applied"
            );
            Ok(Accepted::Applied(applied))
        }
        ApplyOutcome::Duplicate => {
            metrics::counter!("hitcount_deltas_duplicate_total").increment(1);
            Ok(Accepted::Duplicate)
        }
        ApplyOutcome::Conflict => {
            metrics::counter!("hitcount_deltas_conflict_total").increment(1);
            Err(IntakeError::Conflict)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::EdgeSecret;

    const NOW_MS: u64 = 1_800_000_000_000;
    const SECRET: &[u8] = b"a-secret-of-sixteen-bytes";

    fn keys() -> EdgeKeyRegistry {
        let keys = EdgeKeyRegistry::default();
        keys.insert(
            "edge-1".to_owned(),
            EdgeSecret {
                secret: SECRET.to_vec(),
                configured: true,
                created_at_ms: 0,
            },
        );
        keys
    }

    fn signed<'a>(edge_id: &'a str, timestamp_ms: u64, hex: &'a str) -> Signature<'a> {
        Signature {
            edge_id,
            timestamp_ms,
            hex,
        }
    }

    #[test]
    fn a_signature_counts_only_within_the_clock_skew_with_a_known_key() {
        let body = b"body";
        let at = |timestamp_ms| hitcount_wire::auth::sign(SECRET, "edge-1", timestamp_ms, body);
        for timestamp_ms in [
            NOW_MS - CLOCK_SKEW_MS_MAX,
            NOW_MS,
            NOW_MS + CLOCK_SKEW_MS_MAX,
        ] {
            let hex = at(timestamp_ms);
            let signer = authenticate(&keys(), signed("edge-1", timestamp_ms, &hex), body, NOW_MS);
            assert_eq!(signer.unwrap(), "edge-1", "signed at {timestamp_ms}");
        }
        for timestamp_ms in [
            NOW_MS - CLOCK_SKEW_MS_MAX - 1,
            NOW_MS + CLOCK_SKEW_MS_MAX + 1,
        ] {
            let hex = at(timestamp_ms);
            let refused = authenticate(&keys(), signed("edge-1", timestamp_ms, &hex), body, NOW_MS);
            assert!(matches!(refused, Err(IntakeError::StaleSignature)));
        }
        let hex = at(NOW_MS);
        let unknown = authenticate(&keys(), signed("edge-2", NOW_MS, &hex), body, NOW_MS);
        assert!(matches!(unknown, Err(IntakeError::UnknownEdge)));
        let changed = authenticate(&keys(), signed("edge-1", NOW_MS, &hex), b"bodY", NOW_MS);
        assert!(matches!(changed, Err(IntakeError::WrongSignature)));
    }

    fn header(window_start_ms: u64, window_end_ms: u64) -> DeltaHeader {
        DeltaHeader {
            edge_id: "edge-1".to_owned(),
            boot_epoch: 1,
            sequence: 0,
            window_start_ms,
            window_end_ms,
        }
    }

    #[test]
    fn a_window_is_taken_from_the_dedupe_horizon_to_the_clock_skew() {
        let oldest_end = NOW_MS - DELTA_AGE_MS_MAX;
        assert!(check_window(&header(oldest_end - 1_000, oldest_end), NOW_MS).is_ok());
        let too_old = check_window(&header(oldest_end - 1_001, oldest_end - 1), NOW_MS);
        assert!(matches!(too_old, Err(IntakeError::WindowTooOld)));
        let latest_start = NOW_MS + CLOCK_SKEW_MS_MAX;
        assert!(check_window(&header(latest_start, latest_start + 1_000), NOW_MS).is_ok());
        let ahead = check_window(&header(latest_start + 1, latest_start + 1_001), NOW_MS);
        assert!(matches!(ahead, Err(IntakeError::WindowInFuture)));
    }

    #[test]
    fn a_batch_must_name_the_edge_that_signed_it() {
        let batch = DeltaBatch {
            header: header(NOW_MS, NOW_MS + 1_000),
            entries: Vec::new(),
        };
        let body = batch.encode().unwrap();
        assert_eq!(decode(&body, "edge-1").unwrap().header.edge_id, "edge-1");
        let other = decode(&body, "edge-2");
        assert!(
            matches!(other, Err(IntakeError::WrongEdge { ref batch, ref signer }) if batch == "edge-1" && signer == "edge-2")
        );
        assert!(matches!(
            decode(b"garbage", "edge-1"),
            Err(IntakeError::Malformed(_))
        ));
    }
}
