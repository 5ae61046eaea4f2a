-- The durable inbox (`--fold-interval-ms` above zero): one row per part of a group commit,
-- holding the group's merged minute cells (postcard-encoded, see aggregator/src/store/inbox.rs),
-- written in the transaction that records the group's batches and folded into hit_counts later
-- by a transaction that deletes it. Empty with the direct write shape.
CREATE TABLE inbox (
    id bigserial PRIMARY KEY,
    created_at_ms bigint NOT NULL,
    entries integer NOT NULL,
    body bytea NOT NULL
);
-- The cells' sketches are mostly random bytes: compressing them costs CPU for little.
ALTER TABLE inbox ALTER COLUMN body SET STORAGE EXTERNAL;
