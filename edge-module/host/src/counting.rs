//! Counting one hit, shared by the beacon endpoints (`api.rs`) and proxy mode (`proxy.rs`): the
//! request's parts the module needs, the instance that counts it, the spool that keeps it, and
//! the result code every answer and metric uses.

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};
use hitcount_edge_core::beacon::{PURPOSE_HEADERS, is_prefetch};

use crate::module::{Hit, Outcome, Trapped};
use crate::spool::Spool;
use crate::{EdgeState, now_ms};

/// The outcomes in a fixed order, for [`HitCounters`].
const OUTCOMES: [Outcome; 6] = [
    Outcome::Counted,
    Outcome::InvalidResourceId,
    Outcome::Bot,
    Outcome::Prefetch,
    Outcome::InvalidTimestamp,
    Outcome::Full,
];

/// `hitcount_edge_hits_total` per result, registered once: looking a labelled counter up on every
/// hit cost more than the rest of the metrics work per request.
#[derive(Debug)]
pub(crate) struct HitCounters {
    by_outcome: [metrics::Counter; 6],
}

impl HitCounters {
    pub(crate) fn new() -> Self {
        Self {
            by_outcome: OUTCOMES.map(|outcome| {
                metrics::counter!("hitcount_edge_hits_total", "result" => result_code(outcome))
            }),
        }
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        let index = OUTCOMES
            .iter()
            .position(|candidate| *candidate == outcome)
            .unwrap_or(0);
        self.by_outcome[index].increment(1);
    }
}

pub(crate) fn result_code(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Counted => "counted",
        Outcome::InvalidResourceId => "invalid_resource_id",
        Outcome::Bot => "bot",
        Outcome::Prefetch => "prefetch",
        Outcome::InvalidTimestamp => "invalid_timestamp",
        Outcome::Full => "full",
    }
}

/// The parts of a request the module needs, besides the resource id.
pub(crate) fn hit_from(
    state: &EdgeState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    resource_id: String,
    timestamp_ms: Option<u64>,
) -> Hit {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let forwarded = state
        .config
        .trust_forwarded_for
        .then(|| {
            headers
                .get("x-forwarded-for")
                .and_then(|value| value.to_str().ok())
        })
        .flatten()
        .and_then(|list| list.split(',').next())
        .map(|address| address.trim().to_owned());
    let client_address =
        forwarded.unwrap_or_else(|| peer.map(|peer| peer.ip().to_string()).unwrap_or_default());
    let origin = text(header::ORIGIN);
    let site = if origin.is_empty() {
        text(header::HOST)
    } else {
        origin
    };
    let purpose = is_prefetch(
        PURPOSE_HEADERS
            .iter()
            .filter_map(|name| headers.get(*name).and_then(|value| value.to_str().ok())),
    );
    Hit {
        resource_id,
        site,
        client_address,
        user_agent: text(header::USER_AGENT),
        prefetch: purpose,
        timestamp_ms,
    }
}

/// Counts one hit in an instance (and, with a spool, waits until it is durable). A trapped
/// instance is replaced by the module; its error says the hit was not counted.
pub(crate) async fn record(state: &EdgeState, hit: Hit) -> Result<Outcome, Trapped> {
    let spool = state.spool.as_ref();
    if spool.is_some_and(Spool::is_full) {
        metrics::counter!("hitcount_edge_hits_total", "result" => "spool-full").increment(1);
        return Ok(Outcome::Full);
    }
    let index = state.instances.pick();
    let now = now_ms();
    let (outcome, durable) = state.instances.with(index, |counter, store| {
        let outcome = counter.call_record(&mut *store, &hit, now)?;
        // Taken and queued under the instance's lock, so the journal keeps its order.
        let durable = match (spool, outcome) {
            (Some(spool), Outcome::Counted) => {
                let records = counter.call_take_journal(&mut *store)?;
                Some(spool.append(store.data().boot_epoch, records))
            }
            _ => None,
        };
        Ok((outcome, durable))
    })?;
    if let Some(durable) = durable
        && let Err(error) = crate::spool::wait(durable).await
    {
        // The hit is counted in memory and will be delivered; only its crash safety is lost,
        // and the metric and the log say so.
        metrics::counter!("hitcount_edge_spool_failures_total").increment(1);
        tracing::error!(%error, "the spool could not make a hit durable");
    }
    state.hit_counters.count(outcome);
    Ok(outcome)
}
