-- When a row's last minute closes: a fold takes a row only after that (FoldScope in
-- aggregator/store/src/inbox.rs), so that a (resource, minute) cell is written about once. Rows
-- of earlier versions have 0, and are folded at once.
ALTER TABLE inbox ADD COLUMN closes_at_ms bigint NOT NULL DEFAULT 0;
CREATE INDEX inbox_by_closing ON inbox (closes_at_ms, id);
