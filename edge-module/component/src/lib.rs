//! `hitcount-edge-core` as a component. A host instantiates it once per worker and keeps it:
//! the window and the delivery queue live in this instance's memory.
//!
//! The bindings exist only for wasm targets: natively there is nothing to export (the core is
//! tested natively on its own), and the exported symbol names (`hitcount:edge/counter@...`) are
//! not valid in a native shared library.

#[cfg(target_family = "wasm")]
mod component {
    use std::cell::RefCell;

    use hitcount_edge_core::{
        BotPolicy, Counting, Delivery, EdgeCounter, HitRequest, Outcome as Core, Rejection,
        SealedBatch,
    };

    use exports::hitcount::edge::counter::{Batch, Config, EdgeStatus, Guest, Hit, Outcome};

    wit_bindgen::generate!({
        path: "../wit",
        world: "edge",
    });

    /// The instance's window and delivery queue (the core's `Counting`, which also owns the
    /// rule for a full window).
    type Edge = Counting;

    thread_local! {
        // Components are single-threaded; the cell only satisfies Rust's rules for statics.
        static EDGE: RefCell<Option<Edge>> = const { RefCell::new(None) };
    }

    fn with_edge<T>(default: T, work: impl FnOnce(&mut Edge) -> T) -> T {
        EDGE.with(|cell| match cell.borrow_mut().as_mut() {
            Some(edge) => work(edge),
            None => default,
        })
    }

    /// The core's outcome as the interface names it (one variant per refusal reason).
    fn outcome(core: Core) -> Outcome {
        match core {
            Core::Counted => Outcome::Counted,
            Core::Full => Outcome::Full,
            Core::Rejected(Rejection::InvalidResourceId) => Outcome::InvalidResourceId,
            Core::Rejected(Rejection::Bot) => Outcome::Bot,
            Core::Rejected(Rejection::Prefetch) => Outcome::Prefetch,
            Core::Rejected(Rejection::InvalidTimestamp) => Outcome::InvalidTimestamp,
        }
    }

    fn record_one(edge: &mut Edge, hit: &Hit, now_ms: u64) -> Outcome {
        let request = HitRequest {
            resource_id: &hit.resource_id,
            site: &hit.site,
            client_address: &hit.client_address,
            user_agent: &hit.user_agent,
            prefetch: hit.prefetch,
            timestamp_ms: hit.timestamp_ms,
        };
        // A refusal as full (the host answers 503) means the window and the queue are both
        // full; counted hits are never dropped.
        outcome(edge.record(&request, now_ms))
    }

    fn batch_of(batch: &SealedBatch) -> Batch {
        Batch {
            sequence: batch.sequence,
            hits: batch.hits,
            bytes: batch.bytes.clone(),
            generation: batch.generation,
        }
    }

    struct Component;

    impl Guest for Component {
        fn configure(config: Config) -> Result<(), String> {
            hitcount_edge_core::validate_config(&config.edge_id, &config.secret)
                .map_err(|error| error.to_string())?;
            let policy = if config.count_http_clients {
                BotPolicy::CountHttpClients
            } else {
                BotPolicy::RefuseHttpClients
            };
            let counter = EdgeCounter::new(&config.secret, config.window_entries_max as usize)
                .with_bot_policy(policy);
            let edge = Counting::new(
                if config.journal {
                    counter.with_journal()
                } else {
                    counter
                },
                Delivery::new(
                    &config.edge_id,
                    config.boot_epoch,
                    config.pending_entries_max as usize,
                    hitcount_edge_core::window_map_key(&config.secret),
                ),
            );
            EDGE.with(|cell| *cell.borrow_mut() = Some(edge));
            Ok(())
        }

        fn record(hit: Hit, now_ms: u64) -> Outcome {
            with_edge(Outcome::Full, |edge| record_one(edge, &hit, now_ms))
        }

        fn record_batch(hits: Vec<Hit>, now_ms: u64) -> Vec<Outcome> {
            with_edge(vec![Outcome::Full; hits.len()], |edge| {
                hits.iter()
                    .map(|hit| record_one(edge, hit, now_ms))
                    .collect()
            })
        }

        fn flush(now_ms: u64) -> bool {
            with_edge(false, |edge| edge.flush(now_ms).is_ok())
        }

        fn next_batch() -> Option<Batch> {
            with_edge(None, |edge| edge.delivery.next_batch().map(batch_of))
        }

        fn acknowledge(sequence: u64) {
            with_edge((), |edge| edge.delivery.acknowledge(sequence));
        }

        fn unacknowledged_hits_for(resource_id: String) -> u64 {
            with_edge(0, |edge| {
                edge.counter.hits_for(&resource_id)
                    + edge.delivery.unacknowledged_hits_for(&resource_id)
            })
        }

        fn status() -> EdgeStatus {
            with_edge(
                EdgeStatus {
                    window_hits: 0,
                    window_counters: 0,
                    unacknowledged_hits: 0,
                    pending_counters: 0,
                    generation: 0,
                },
                |edge| EdgeStatus {
                    window_hits: edge.counter.hits(),
                    window_counters: edge.counter.len() as u32,
                    unacknowledged_hits: edge.delivery.unacknowledged_hits(),
                    pending_counters: edge.delivery.pending_len() as u32,
                    generation: edge.counter.generation(),
                },
            )
        }

        fn sealed_batches() -> Vec<Batch> {
            with_edge(Vec::new(), |edge| {
                edge.delivery.sealed_batches().map(batch_of).collect()
            })
        }

        fn take_journal() -> Vec<u8> {
            with_edge(Vec::new(), |edge| edge.counter.take_journal())
        }

        fn replay(journal: Vec<u8>, now_ms: u64) -> Result<u64, String> {
            let records = hitcount_wire::journal::decode_journal(&journal)
                .map_err(|error| format!("the journal is malformed: {error}"))?;
            with_edge(Err("the module is not configured".to_owned()), |edge| {
                for (index, record) in records.iter().enumerate() {
                    // As for new hits, a full window is flushed early into the pending map.
                    let outcome = edge.record_hashed(
                        &record.resource_id,
                        record.minute,
                        record.visitor,
                        now_ms,
                    );
                    if outcome != Core::Counted {
                        return Err(format!(
                            "the window and the pending map are full after {index} of {} \
                             journal records; raise --pending-entries-max",
                            records.len()
                        ));
                    }
                }
                Ok(records.len() as u64)
            })
        }
    }

    export!(Component);
}
