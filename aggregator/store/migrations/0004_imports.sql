-- One row per imported file (POST /import), written in the import's transaction, so a file is
-- imported once. Kept for good: a file may be sent again any time later. A reference table on
-- Citus.
CREATE TABLE imports (
    file_sha256 bytea PRIMARY KEY,
    imported_at_ms bigint NOT NULL,
    cells bigint NOT NULL
);
