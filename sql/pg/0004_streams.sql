-- 0004 on PostgreSQL: as sql/0004_streams.sql, plus what several nodes need: an index to
-- find recently changed streams (the polling path of design/cluster.md §5.5), and the
-- batch markers that resolve a connection lost during COMMIT (§5.4).

CREATE TABLE streams (
    id         TEXT PRIMARY KEY,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE INDEX streams_by_update ON streams (updated_at);

CREATE TABLE events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY,
    stream     TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (stream, seq)
);
-- Pruning goes oldest first, as SQLite's rowid order does.
CREATE INDEX events_by_age ON events (id);

ALTER TABLE messages ADD COLUMN seq BIGINT;

-- One row per committed write batch of a node: a writer that lost its connection during
-- COMMIT looks its batch up to learn whether it committed. Pruned with `events`.
CREATE TABLE batches (
    node         TEXT NOT NULL,
    batch        BIGINT NOT NULL,
    committed_at BIGINT NOT NULL,
    PRIMARY KEY (node, batch)
);
