-- hitcount's PostgreSQL schema (also valid on Azure Cosmos DB for PostgreSQL / Citus; see
-- README.md "PostgreSQL and Citus" for the distribution calls). Times are Unix milliseconds.

-- Resource metadata: small, read at start; a reference table on Citus.
CREATE TABLE resources (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    retention_days integer,
    created_at_ms bigint NOT NULL
);

-- The seed's hit_counts(resource_id, timestamp, hit_count), with the granularity tier (0 minute,
-- 1 hour, 2 day) in the key, `bucket_ms` as the bucket's start, and the folded visitor sketch.
-- Distributed by resource_id on Citus; every query names one resource or goes through the key.
CREATE TABLE hit_counts (
    resource_id text NOT NULL,
    tier smallint NOT NULL,
    bucket_ms bigint NOT NULL,
    hit_count bigint NOT NULL,
    sketch bytea NOT NULL,
    PRIMARY KEY (resource_id, tier, bucket_ms)
);
CREATE INDEX hit_counts_by_tier_and_bucket ON hit_counts (tier, bucket_ms);

-- Sketches of merged entries, appended in the merge's transaction and folded into hit_counts by
-- the compaction job. Colocated with hit_counts (its key starts with resource_id).
CREATE TABLE pending_sketches (
    resource_id text NOT NULL,
    id bigserial NOT NULL,
    minute_ms bigint NOT NULL,
    sketch bytea NOT NULL,
    PRIMARY KEY (resource_id, id)
);
CREATE INDEX pending_sketches_by_id ON pending_sketches (id);

-- One row per applied edge batch, written in the transaction that applies it.
CREATE TABLE applied_batches (
    edge_id text NOT NULL,
    boot_epoch bigint NOT NULL,
    sequence bigint NOT NULL,
    body_sha256 bytea NOT NULL,
    applied_at_ms bigint NOT NULL,
    PRIMARY KEY (edge_id, boot_epoch, sequence)
);
CREATE INDEX applied_batches_by_time ON applied_batches (applied_at_ms);

CREATE TABLE tokens (
    id text PRIMARY KEY,
    name text NOT NULL,
    token_sha256 bytea NOT NULL UNIQUE,
    scopes text NOT NULL,
    created_at_ms bigint NOT NULL
);

CREATE TABLE edge_keys (
    edge_id text PRIMARY KEY,
    secret bytea NOT NULL,
    created_at_ms bigint NOT NULL
);
