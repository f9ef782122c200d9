-- Hourly rollups (SPEC §8), recomputed by the Aggregator for exactly the (project, hour) pairs
-- that flushes marked in `rollup_dirty` — so late data is folded in by the next tick and a
-- re-run of an hour gives the same rows. Day and longer ranges sum hours (a time zone decides
-- where its days begin); unique counts and percentiles merge the hours' sketches (see
-- core/src/sketch.rs), never adding hourly uniques or averaging hourly percentiles.

-- Events per project and hour. `visitors` counts people, not devices: its keys are the user an
-- event belongs to (its own user_id, or its visitor's identity) or else its visitor; `people`
-- counts the identified users alone. Both are Uniques sketches.
CREATE TABLE rollup_events (
    project_id uuid        NOT NULL,
    hour       timestamptz NOT NULL,
    events     bigint      NOT NULL,
    pageviews  bigint      NOT NULL,
    visitors   bytea       NOT NULL,
    people     bytea       NOT NULL,
    PRIMARY KEY (project_id, hour)
);

-- Counts per value of one dimension of events: `name` (every event), `page` (page views by
-- url), `referrer` (page views by referrer), for the top lists of any range.
CREATE TABLE rollup_event_values (
    project_id uuid        NOT NULL,
    dim        text        NOT NULL CHECK (dim IN ('name', 'page', 'referrer')),
    hour       timestamptz NOT NULL,
    value      text        NOT NULL,
    count      bigint      NOT NULL,
    PRIMARY KEY (project_id, dim, hour, value)
);

-- API requests per project, hour, method and route: counts, errors by class, the duration sum
-- (for averages) and a DDSketch of durations (for percentiles over any range).
CREATE TABLE rollup_requests (
    project_id   uuid             NOT NULL,
    hour         timestamptz      NOT NULL,
    method       text             NOT NULL,
    route        text             NOT NULL,
    count        bigint           NOT NULL,
    errors_4xx   bigint           NOT NULL,
    errors_5xx   bigint           NOT NULL,
    duration_sum double precision NOT NULL,
    latency      bytea            NOT NULL,
    PRIMARY KEY (project_id, hour, method, route)
);

-- Custom metrics per project, hour, name and label set: count, sum, min, max, the last value
-- and its time (gauges), and a DDSketch of values for histograms.
CREATE TABLE rollup_metrics (
    project_id uuid             NOT NULL,
    name       text             NOT NULL,
    hour       timestamptz      NOT NULL,
    labels     jsonb            NOT NULL,
    kind       text             NOT NULL,
    count      bigint           NOT NULL,
    sum        double precision NOT NULL,
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    last       double precision NOT NULL,
    last_at    timestamptz      NOT NULL,
    sketch     bytea,
    PRIMARY KEY (project_id, name, hour, labels)
);

-- Visitors linked to a new or different user since the last tick (an identify call, or an
-- event carrying both ids): every closed hour of the last `jobs.identify_lookback_days` holding
-- events of theirs is recomputed, since who they are changed (a visitor later identified
-- counts as that person, in the past too). Their events are found through the (project_id, ts)
-- index and a filter: an index on visitor_id would cost every ingest COPY (measured: 500,000
-- events took 2.9–4.1 s with it against 1.1–1.3 s without).
CREATE TABLE rollup_dirty_visitors (
    project_id uuid        NOT NULL,
    visitor_id text        NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, visitor_id)
);
