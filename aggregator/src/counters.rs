//! Every counter the aggregator exports (its own and its store's), started at zero when it
//! starts: a scrape lists each from the first one, so `rate()` and the alert rules
//! (`infra/monitoring`) see a series before the first event, and the deployment check compares
//! the dashboard and the rules with a real scrape (`.ci/check-deploy`).

/// The counters, each once; a test keeps the list equal to the `counter!` calls in the sources.
pub const COUNTERS: &[&str] = &[
    "hitcount_bucket_summaries_kept_total",
    "hitcount_bucket_summaries_read_total",
    "hitcount_closed_buckets_read_total",
    "hitcount_cosmos_pages_read_total",
    "hitcount_database_breaker_opened_total",
    "hitcount_delta_hits_applied_total",
    "hitcount_deltas_applied_total",
    "hitcount_deltas_conflict_total",
    "hitcount_deltas_duplicate_total",
    "hitcount_deltas_overloaded_total",
    "hitcount_deltas_rejected_total",
    "hitcount_hits_accepted_total",
    "hitcount_hits_committed_total",
    "hitcount_hot_fragments_read_total",
    "hitcount_hot_tier_failures_total",
    "hitcount_hot_tier_reads_total",
    "hitcount_hot_tier_rebuilds_total",
    "hitcount_http_requests_total",
    "hitcount_inbox_fold_failures_total",
    "hitcount_inbox_folded_cells_total",
    "hitcount_inbox_folded_rows_total",
    "hitcount_ingest_commit_failures_total",
    "hitcount_merge_entries_total",
    "hitcount_merge_failures_total",
    "hitcount_merge_groups_total",
    "hitcount_rate_limited_total",
    "hitcount_resources_created_by_pattern_total",
    "hitcount_resources_refused_total",
    "hitcount_retention_rows_deleted_total",
    "hitcount_rollup_cells_total",
    "hitcount_sketches_compacted_total",
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_counter_the_sources_increment_is_listed_once() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let used =
            hitcount_test_support::counters_in_sources(&[root.join("src"), root.join("store/src")]);
        let mut listed = super::COUNTERS.to_vec();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(listed.len(), super::COUNTERS.len(), "listed once");
        assert_eq!(listed, used.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
