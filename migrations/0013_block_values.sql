-- What a long /stats range still read hour by hour after 0012, measured by make bench-queries on
-- 10 million events: the top lists summed one row per (hour, value) — 160,000 rows for 30 days,
-- ~50 ms in PostgreSQL alone — and each hourly bucket decoded its visitors sketch only to count
-- it. Blocks now carry their counts by value too, and every hour and block its unique counts.

-- Counts per value of a block (the sum of its hours' rollup_event_values), so the top lists of
-- a range sum a few blocks' rows.
CREATE TABLE rollup_event_value_blocks (
    project_id  uuid        NOT NULL,
    block_start timestamptz NOT NULL,
    hours       smallint    NOT NULL,
    dim         text        NOT NULL CHECK (dim IN ('name', 'page', 'referrer')),
    value       text        NOT NULL,
    count       bigint      NOT NULL,
    PRIMARY KEY (project_id, block_start, hours, dim, value)
);

INSERT INTO rollup_event_value_blocks (project_id, block_start, hours, dim, value, count)
SELECT b.project_id, b.block_start, b.hours, v.dim, v.value, sum(v.count)
FROM rollup_event_blocks b
JOIN rollup_event_values v
  ON v.project_id = b.project_id
 AND v.hour >= b.block_start
 AND v.hour < b.block_start + b.hours * interval '1 hour'
GROUP BY b.project_id, b.block_start, b.hours, v.dim, v.value;

-- The estimate (or exact count) of each sketch, so a bucket that is one hour or one block is
-- answered without decoding it. NULL on rows written before this migration: read from the
-- sketch then.
ALTER TABLE rollup_events
    ADD COLUMN visitors_count bigint,
    ADD COLUMN people_count bigint;
ALTER TABLE rollup_event_blocks
    ADD COLUMN visitors_count bigint,
    ADD COLUMN people_count bigint;

-- Blocks of two hours read their hours' values by (project, hour); retention deletes by the same.
CREATE INDEX rollup_event_values_project_hour ON rollup_event_values (project_id, hour);
