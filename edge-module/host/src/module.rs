//! The counting component in wasmtime: one compiled component, several long-lived instances.
//!
//! Instances are kept, not made per request: the window lives in the instance's memory, and
//! instantiating costs tens of microseconds against about one for a call.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Instances beyond this add contention, not throughput.
pub const INSTANCES_MAX: usize = 64;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "edge",
    });
}

use bindings::exports::hitcount::edge::counter::Config as ModuleConfig;
pub use bindings::exports::hitcount::edge::counter::{Batch, EdgeStatus, Guest, Hit, Outcome};

/// The component built with this binary (see build.rs).
pub const EMBEDDED_MODULE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hitcount_edge_component.wasm"));

pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// This instance's boot epoch: names its batches and its spool files.
    pub(crate) boot_epoch: u64,
    /// With a spool: batches below this sequence are committed to it (may be sent).
    pub(crate) committed_next_sequence: u64,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What each instance is configured with.
#[derive(Clone)]
pub struct InstanceSettings {
    pub edge_id: String,
    pub visitor_secret: Vec<u8>,
    pub window_entries_max: u32,
    pub pending_entries_max: u32,
    /// Journal counted hits for the spool.
    pub journal: bool,
    /// Count curl and other HTTP clients instead of refusing them as bots.
    pub count_http_clients: bool,
}

impl std::fmt::Debug for InstanceSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InstanceSettings")
            .field("edge_id", &self.edge_id)
            .finish_non_exhaustive()
    }
}

struct Instance {
    store: Store<HostState>,
    edge: bindings::Edge,
}

/// A fixed set of instances; callers borrow one for a call or a few.
pub struct Instances {
    engine: Engine,
    component: Component,
    linker: Linker<HostState>,
    settings: InstanceSettings,
    slots: Vec<Mutex<Instance>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Instances")
            .field("count", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The error of a call into an instance: the instance trapped (a bug in the module) and was
/// replaced; what it held is lost, and the metric `hitcount_edge_instance_traps_total` says so.
#[derive(Debug, thiserror::Error)]
#[error("the counting module trapped: {0}")]
pub struct Trapped(String);

/// wasmtime has its own error type; this keeps its full chain in the message.
fn wasm<T>(result: wasmtime::Result<T>, what: &str) -> anyhow::Result<T> {
    result.map_err(|error| anyhow::anyhow!("{what}: {error:?}"))
}

/// Random bits of a boot epoch, between its start time and its instance index: edges that share
/// an id (every pod of a Deployment signs as one) and start in the same millisecond still name
/// their batches apart unless they also draw the same bits, one chance in 2^15 for such a pair.
pub const BOOT_EPOCH_RANDOM_BITS: u32 = 15;
/// Bits of the instance index, the lowest of a boot epoch.
const BOOT_EPOCH_INDEX_BITS: u32 = INSTANCES_MAX.trailing_zeros();
/// The latest start time (ms) a boot epoch holds within the wire's bound on it: May 2109.
pub const BOOT_EPOCH_STARTED_MS_MAX: u64 =
    hitcount_wire::KEY_NUMBER_MAX >> (BOOT_EPOCH_RANDOM_BITS + BOOT_EPOCH_INDEX_BITS);
// Starts up to May 2109 fit: 2100-01-01T00:00:00Z is well within.
const _: () = assert!(BOOT_EPOCH_STARTED_MS_MAX > 4_102_444_800_000);

/// Distinct for every instance and every start or replacement of one: its start time in ms, then
/// [`BOOT_EPOCH_RANDOM_BITS`] of `random`, then its index (configuration keeps it below
/// [`INSTANCES_MAX`]). Later starts of one edge have larger epochs.
fn boot_epoch(started_ms: u64, random: u16, index: usize) -> u64 {
    const { assert!(INSTANCES_MAX.is_power_of_two()) };
    assert!(
        index < INSTANCES_MAX,
        "instance {index} of at most {INSTANCES_MAX}"
    );
    assert!(
        started_ms <= BOOT_EPOCH_STARTED_MS_MAX,
        "a start time after 2109"
    );
    let random = u64::from(random) & ((1 << BOOT_EPOCH_RANDOM_BITS) - 1);
    (started_ms << (BOOT_EPOCH_RANDOM_BITS + BOOT_EPOCH_INDEX_BITS))
        | (random << BOOT_EPOCH_INDEX_BITS)
        | index as u64
}

/// Random bits for [`boot_epoch`] from the operating system.
fn boot_epoch_random() -> u16 {
    let mut bytes = [0u8; 2];
    getrandom::fill(&mut bytes).unwrap_or_else(|error| panic!("OS random source failed: {error}"));
    u16::from_le_bytes(bytes)
}

impl Instances {
    pub fn new(
        module: Option<&Path>,
        count: usize,
        settings: InstanceSettings,
        started_ms: u64,
    ) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        // The counter is called synchronously, one call at a time per instance. Without the
        // data structures for concurrent (async component model) execution a call costs a third
        // to a half as much, as measured on these machines while planning (../shared/notes).
        config.concurrency_support(false);
        let engine = wasm(Engine::new(&config), "creating the wasmtime engine")?;
        let component = match module {
            Some(path) => wasm(
                Component::from_file(&engine, path),
                &format!("loading the module {}", path.display()),
            )?,
            None => wasm(
                Component::new(&engine, EMBEDDED_MODULE),
                "compiling the embedded module",
            )?,
        };
        let mut linker = Linker::new(&engine);
        wasm(
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker),
            "linking WASI",
        )?;
        let mut instances = Self {
            engine,
            component,
            linker,
            settings,
            slots: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
        };
        for index in 0..count {
            let instance =
                instances.instantiate(boot_epoch(started_ms, boot_epoch_random(), index))?;
            instances.slots.push(Mutex::new(instance));
        }
        Ok(instances)
    }

    fn instantiate(&self, boot_epoch: u64) -> anyhow::Result<Instance> {
        // The module gets no environment, arguments, files or network: stderr only, for panics.
        let wasi = WasiCtx::builder().inherit_stderr().build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                boot_epoch,
                committed_next_sequence: 0,
            },
        );
        let edge = wasm(
            bindings::Edge::instantiate(&mut store, &self.component, &self.linker),
            "instantiating the module",
        )?;
        let config = ModuleConfig {
            edge_id: self.settings.edge_id.clone(),
            boot_epoch,
            secret: self.settings.visitor_secret.clone(),
            window_entries_max: self.settings.window_entries_max,
            pending_entries_max: self.settings.pending_entries_max,
            journal: self.settings.journal,
            count_http_clients: self.settings.count_http_clients,
        };
        wasm(
            edge.hitcount_edge_counter()
                .call_configure(&mut store, &config),
            "calling configure",
        )?
        .map_err(|message| anyhow::anyhow!("the module refused its configuration: {message}"))?;
        Ok(Instance { store, edge })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Runs `work` on instance `index`, replacing the instance if it traps.
    pub(crate) fn with<T>(
        &self,
        index: usize,
        work: impl FnOnce(&Guest, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, Trapped> {
        let mut slot = self.slots[index]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let instance = &mut *slot;
        match work(instance.edge.hitcount_edge_counter(), &mut instance.store) {
            Ok(value) => Ok(value),
            Err(error) => {
                metrics::counter!("hitcount_edge_instance_traps_total").increment(1);
                tracing::error!(%error, index, "the counting module trapped; replacing the instance");
                match self.instantiate(boot_epoch(
                    hitcount_process::now_ms(),
                    boot_epoch_random(),
                    index,
                )) {
                    Ok(fresh) => *slot = fresh,
                    Err(replace_error) => {
                        tracing::error!(%replace_error, "could not replace the instance")
                    }
                }
                Err(Trapped(error.to_string()))
            }
        }
    }

    /// Records a batch of hits in one call (what a host with its own request batching, or the
    /// benchmark, uses).
    pub fn record_batch(
        &self,
        index: usize,
        hits: &[Hit],
        now_ms: u64,
    ) -> Result<Vec<Outcome>, Trapped> {
        self.with(index, |counter, store| {
            counter.call_record_batch(store, hits, now_ms)
        })
    }

    /// Records one hit.
    pub fn record(&self, index: usize, hit: &Hit, now_ms: u64) -> Result<Outcome, Trapped> {
        self.with(index, |counter, store| {
            counter.call_record(store, hit, now_ms)
        })
    }

    /// Closes instance `index`'s window and returns its next batch, acknowledging it at once
    /// (for measuring batch sizes without an aggregator).
    pub fn flush_and_take(&self, index: usize, now_ms: u64) -> Result<Option<Batch>, Trapped> {
        self.with(index, |counter, store| {
            counter.call_flush(&mut *store, now_ms)?;
            let batch = counter.call_next_batch(&mut *store)?;
            if let Some(batch) = &batch {
                counter.call_acknowledge(&mut *store, batch.sequence)?;
            }
            Ok(batch)
        })
    }

    /// Counts journal records from an earlier run again in instance `index`; returns its boot
    /// epoch and the journal records it wrote for them (to be spooled before anything else).
    pub fn replay(
        &self,
        index: usize,
        journal: &[u8],
        now_ms: u64,
    ) -> anyhow::Result<(u64, Vec<u8>)> {
        let replayed = self
            .with(index, |counter, store| {
                let counted = counter.call_replay(&mut *store, journal, now_ms)?;
                let rewritten = counter.call_take_journal(&mut *store)?;
                Ok((counted, store.data().boot_epoch, rewritten))
            })
            .map_err(|trapped| anyhow::anyhow!("replaying the spool: {trapped}"))?;
        let (counted, boot_epoch, rewritten) = replayed;
        counted.map_err(|message| anyhow::anyhow!("replaying the spool: {message}"))?;
        Ok((boot_epoch, rewritten))
    }

    /// An instance index for the next request: round robin, preferring one that is free.
    pub fn pick(&self) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.slots.len();
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|index| self.slots[*index].try_lock().is_ok())
            .unwrap_or(start % count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_epochs_order_by_start_and_keep_same_millisecond_starts_apart_by_their_random_bits() {
        let now_ms = 1_780_000_000_000;
        // Two pods of one id starting in the same millisecond: apart unless the bits match.
        assert_ne!(boot_epoch(now_ms, 1, 0), boot_epoch(now_ms, 2, 0));
        assert_eq!(boot_epoch(now_ms, 7, 0), boot_epoch(now_ms, 7, 0));
        // Instances of one start are apart, and every epoch of a later start is larger.
        assert_ne!(boot_epoch(now_ms, 7, 0), boot_epoch(now_ms, 7, 1));
        assert!(boot_epoch(now_ms, u16::MAX, INSTANCES_MAX - 1) < boot_epoch(now_ms + 1, 0, 0));
        // Only BOOT_EPOCH_RANDOM_BITS of the random value count.
        assert_eq!(
            boot_epoch(now_ms, 1 << BOOT_EPOCH_RANDOM_BITS, 0),
            boot_epoch(now_ms, 0, 0)
        );
        let last = boot_epoch(BOOT_EPOCH_STARTED_MS_MAX, u16::MAX, INSTANCES_MAX - 1);
        assert_eq!(last, hitcount_wire::KEY_NUMBER_MAX);
    }

    #[test]
    #[should_panic(expected = "a start time after 2109")]
    fn a_start_past_the_bound_is_a_bug_not_a_colliding_epoch() {
        boot_epoch(BOOT_EPOCH_STARTED_MS_MAX + 1, 0, 0);
    }
}
