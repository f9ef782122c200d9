-- Read side, groundwork: row ids for cursor pagination over raw rows, and the hours each flush
-- touched, so rollups can be recomputed exactly where late data arrived.
--
-- `events.id` and `requests.id` are UUIDv7s given at ingest; the explorer and the request log
-- page by (ts, id). Rows stored before this migration have no id (NULL); adding a column
-- without a default rewrites nothing, whatever the tables hold.
ALTER TABLE events ADD COLUMN id uuid;
ALTER TABLE requests ADD COLUMN id uuid;

-- The (project, hour) pairs a flush wrote raw rows into, by kind of rollup (`events`, which
-- metrics and identify calls also touch, `requests`, `errors`, `metrics`). Written in the
-- flush's own transaction, so a committed row is never missed; the Aggregator takes the rows it
-- recomputes (DELETE … RETURNING) in the transaction that writes the rollups, so a flush
-- committing meanwhile marks its hour again for the next tick.
CREATE TABLE rollup_dirty (
    kind       text        NOT NULL,
    project_id uuid        NOT NULL,
    hour       timestamptz NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, project_id, hour)
);
