-- Summaries of closed buckets over every resource (aggregator/store/src/summaries.rs), which
-- GET /stats/top adds up: per (tier, bucket) a generation, bumped by every write that changes
-- the bucket late, and the summary a reader kept under it. A reference table on Citus.
CREATE TABLE bucket_summaries (
    tier smallint NOT NULL,
    bucket_ms bigint NOT NULL,
    generation bigint NOT NULL,
    body bytea,
    PRIMARY KEY (tier, bucket_ms)
);
