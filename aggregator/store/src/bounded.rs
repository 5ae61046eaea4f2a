//! Tables of decoded data a process holds in memory, bounded by weight. A crate made for this
//! (`quick_cache`) bounds them and evicts the least recently used; this is its set-up, shared by
//! held closed buckets (`closed.rs`), held hot minutes (`hot/held.rs`) and Cosmos DB's pages.

use std::hash::Hash;

/// A table of at most `bytes_max` as `weighter` weighs its entries, sized for entries of about
/// `entry_bytes_expected`, in `shards` shards (quick_cache splits the weight among them and
/// refuses an entry heavier than one shard).
pub(crate) fn weighed_table<K, V, W>(
    bytes_max: u64,
    entry_bytes_expected: u64,
    shards: usize,
    weighter: W,
) -> quick_cache::sync::Cache<K, V, W>
where
    K: Eq + Hash,
    V: Clone,
    W: quick_cache::Weighter<K, V> + Clone,
{
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity((bytes_max / entry_bytes_expected) as usize)
        .weight_capacity(bytes_max)
        .shards(shards)
        .build()
        // Only a missing capacity fails, and both are given.
        .unwrap_or_else(|_| unreachable!());
    quick_cache::sync::Cache::with_options(
        options,
        weighter,
        quick_cache::DefaultHashBuilder::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    )
}
