-- Resource patterns: a resource id prefix followed by `*`; a hit for an unknown id under one
-- creates that resource, up to resources_max resources under the prefix. Small, read at start
-- and every few seconds; a reference table on Citus. refused_hits is the sum of what every
-- aggregator refused because the pattern was full (each adds its own about once a second).
CREATE TABLE patterns (
    pattern text PRIMARY KEY,
    resources_max bigint NOT NULL,
    retention_days integer,
    refused_hits bigint NOT NULL DEFAULT 0,
    created_at_ms bigint NOT NULL
);

-- Before deciding to create a resource, an aggregator reads those created in the last seconds
-- (through any aggregator), which its cache may not have yet.
CREATE INDEX resources_by_creation ON resources (created_at_ms);
