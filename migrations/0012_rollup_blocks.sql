-- Blocks of hours (core/src/blocks.rs): whole UTC days and aligned runs of 16, 8, 4 and 2 hours
-- inside them, each the merge of its two halves, rebuilt with every hour the Aggregator rolls
-- up again. A long range reads a few blocks per bucket instead of one row per hour: a 30-day
-- range in UTC is 30 day rows, a day of a whole-hour zone at most eight blocks. Only the
-- mergeable sketches need them; counts by value stay hourly.

CREATE TABLE rollup_event_blocks (
    project_id  uuid        NOT NULL,
    hours       smallint    NOT NULL,
    block_start timestamptz NOT NULL,
    events      bigint      NOT NULL,
    pageviews   bigint      NOT NULL,
    visitors    bytea       NOT NULL,
    people      bytea       NOT NULL,
    PRIMARY KEY (project_id, hours, block_start)
);

CREATE TABLE rollup_request_blocks (
    project_id   uuid             NOT NULL,
    hours        smallint         NOT NULL,
    block_start  timestamptz      NOT NULL,
    method       text             NOT NULL,
    route        text             NOT NULL,
    count        bigint           NOT NULL,
    errors_4xx   bigint           NOT NULL,
    errors_5xx   bigint           NOT NULL,
    duration_sum double precision NOT NULL,
    latency      bytea            NOT NULL,
    PRIMARY KEY (project_id, hours, block_start, method, route)
);
