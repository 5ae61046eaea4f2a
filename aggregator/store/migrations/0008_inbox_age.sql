-- The oldest row's age is asked for by every read that may hold closed buckets and by every
-- bucket summary (inbox_oldest_ms in aggregator/store/src/postgres.rs), whatever the asking
-- aggregator's own write shape: an index answers min(created_at_ms) without a scan.
CREATE INDEX inbox_by_age ON inbox (created_at_ms);
