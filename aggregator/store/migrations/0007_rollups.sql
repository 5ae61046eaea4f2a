-- Hours rolled up from minutes and days from hours (aggregator/store/src/rollup.rs): per coarse
-- tier, the bucket before which its rows hold every bucket whole, and the last resource of the
-- bucket at it rolled up so far. No row: the tier was never rolled up (written whole).
CREATE TABLE rollups (
    tier smallint PRIMARY KEY,
    until_ms bigint NOT NULL,
    cursor text
);
-- A rollup step pages through the resources in byte order, the order the cursor is compared in.
CREATE INDEX resources_by_id_bytes ON resources (id COLLATE "C");
