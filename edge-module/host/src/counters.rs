//! Every counter the edge exports, started at zero when it starts: a scrape lists each from the first one, so `rate()` and the alert rules
//! (`infra/monitoring`) see a series before the first event, and the deployment check compares
//! the dashboard and the rules with a real scrape (`.ci/check-deploy`).

/// The counters, each once; a test keeps the list equal to the `counter!` calls in the sources.
pub const COUNTERS: &[&str] = &[
    "hitcount_edge_batches_delivered_total",
    "hitcount_edge_delivery_failures_total",
    "hitcount_edge_delivery_queue_full_total",
    "hitcount_edge_hits_delivered_total",
    "hitcount_edge_hits_refused_total",
    "hitcount_edge_hits_total",
    "hitcount_edge_instance_traps_total",
    "hitcount_edge_proxied_views_total",
    "hitcount_edge_recovered_batches_refused_total",
    "hitcount_edge_spool_failures_total",
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_counter_the_sources_increment_is_listed_once() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let used = hitcount_test_support::counters_in_sources(&[root.join("src")]);
        let mut listed = super::COUNTERS.to_vec();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(listed.len(), super::COUNTERS.len(), "listed once");
        assert_eq!(listed, used.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
