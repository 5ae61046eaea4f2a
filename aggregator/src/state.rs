//! Everything a request handler can reach.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{EdgeKeyRegistry, TokenRegistry};
use crate::config::Config;
use crate::ingest::Ingestor;
use crate::merge::Merger;
use crate::patterns::Patterns;
use crate::rate_limit::RateLimits;
use crate::store::{ResourceRecord, Store};

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub ingestor: Ingestor,
    /// Edge delta batches, merged in groups (the second aggregation level).
    pub merger: Merger,
    /// Resources by id, loaded at start and kept in step with every create and delete, so that
    /// validating a hit costs no store round trip.
    pub resources: RwLock<BTreeMap<String, ResourceRecord>>,
    /// Resource patterns, with their resource counts kept in step with `resources`.
    pub patterns: Patterns,
    pub tokens: TokenRegistry,
    pub edge_keys: EdgeKeyRegistry,
    pub limits: RateLimits,
    pub metrics: PrometheusHandle,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn resource(&self, id: &str) -> Option<ResourceRecord> {
        self.resources
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(id)
            .cloned()
    }

    /// `Some(retention_days)` if the resource exists.
    pub fn resource_retention(&self, id: &str) -> Option<Option<u32>> {
        self.resources
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(id)
            .map(|record| record.retention_days)
    }

    pub fn resource_exists(&self, id: &str) -> bool {
        self.resources
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains_key(id)
    }

    /// Adds resources to the cache (replacing cached records of the same id), keeping the
    /// patterns' counts in step under the same lock.
    pub fn insert_resources(&self, records: impl IntoIterator<Item = ResourceRecord>) {
        let mut cache = self
            .resources
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        for record in records {
            let id = record.id.clone();
            if cache.insert(id.clone(), record).is_none() {
                self.patterns.registry.resource_added(&id);
            }
        }
    }

    /// Removes a resource from the cache, keeping the patterns' counts in step.
    pub fn remove_resource(&self, id: &str) -> Option<ResourceRecord> {
        let mut cache = self
            .resources
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let removed = cache.remove(id);
        if removed.is_some() {
            self.patterns.registry.resource_removed(id);
        }
        removed
    }
}
