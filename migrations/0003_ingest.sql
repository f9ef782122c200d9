-- Ingestion (SPEC §6): raw rows per project, error groups, identities, monthly usage.
--
-- Raw tables are append-only and partitioned by day on the item's timestamp, so retention can
-- drop whole partitions instead of running mass DELETEs. `observe_ensure_partitions` creates
-- the partitions ahead of time (at start and hourly, by the PartitionKeeper); each table also
-- has a DEFAULT partition, so an item never fails for a missing partition (an old timestamp
-- from before the first partition lands there). Every row carries its project id and every
-- index starts with it: every read is scoped by project. Raw tables have no foreign key to
-- `projects` on purpose: a per-row check would slow COPY down; deleting a project deletes its
-- raw rows explicitly.

CREATE TABLE events (
    project_id  uuid        NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    name        text        NOT NULL,
    visitor_id  text        NOT NULL,
    user_id     text,
    url         text,
    referrer    text,
    properties  jsonb       NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX events_project_ts ON events (project_id, ts);
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE TABLE errors (
    project_id  uuid        NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    fingerprint text        NOT NULL,
    type        text        NOT NULL,
    message     text        NOT NULL,
    stack_trace jsonb,
    level       text        NOT NULL,
    environment text,
    release     text,
    url         text,
    user_id     text,
    visitor_id  text,
    tags        jsonb       NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX errors_project_fingerprint_ts ON errors (project_id, fingerprint, ts);
CREATE TABLE errors_default PARTITION OF errors DEFAULT;

CREATE TABLE requests (
    project_id    uuid             NOT NULL,
    ts            timestamptz      NOT NULL,
    received_at   timestamptz      NOT NULL,
    method        text             NOT NULL,
    route         text             NOT NULL,
    status_code   integer          NOT NULL,
    duration_ms   double precision NOT NULL,
    user_agent    text,
    ip            text,
    request_size  bigint,
    response_size bigint
) PARTITION BY RANGE (ts);
CREATE INDEX requests_project_ts ON requests (project_id, ts);
CREATE TABLE requests_default PARTITION OF requests DEFAULT;

CREATE TABLE metrics (
    project_id  uuid             NOT NULL,
    ts          timestamptz      NOT NULL,
    received_at timestamptz      NOT NULL,
    name        text             NOT NULL,
    kind        text             NOT NULL,
    value       double precision NOT NULL,
    labels      jsonb            NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX metrics_project_name_ts ON metrics (project_id, name, ts);
CREATE TABLE metrics_default PARTITION OF metrics DEFAULT;

-- Creates the daily partitions of every raw table from today (UTC) to `days_ahead` days on.
-- Idempotent. A partition that cannot be created (say, the DEFAULT partition already holds rows
-- of its day) is reported as a warning and skipped: those rows stay readable in DEFAULT.
CREATE FUNCTION observe_ensure_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent  text;
    day     date;
    created integer := 0;
    name    text;
BEGIN
    FOREACH parent IN ARRAY ARRAY['events', 'errors', 'requests', 'metrics'] LOOP
        FOR i IN 0..days_ahead LOOP
            day := (now() AT TIME ZONE 'UTC')::date + i;
            name := parent || '_p' || to_char(day, 'YYYYMMDD');
            IF to_regclass(name) IS NULL THEN
                BEGIN
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                        name, parent,
                        (day::timestamp AT TIME ZONE 'UTC'),
                        ((day + 1)::timestamp AT TIME ZONE 'UTC'));
                    created := created + 1;
                EXCEPTION WHEN others THEN
                    RAISE WARNING 'cannot create partition %: %', name, SQLERRM;
                END;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END;
$$;

SELECT observe_ensure_partitions(7);

CREATE FUNCTION observe_delete_project_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM events WHERE project_id = OLD.id;
    DELETE FROM errors WHERE project_id = OLD.id;
    DELETE FROM requests WHERE project_id = OLD.id;
    DELETE FROM metrics WHERE project_id = OLD.id;
    RETURN OLD;
END;
$$;

CREATE TRIGGER projects_delete_raw_rows AFTER DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION observe_delete_project_rows();

-- One row per distinct error (project, fingerprint), upserted once per flush.
CREATE TABLE error_groups (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id       uuid        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    fingerprint      text        NOT NULL,
    type             text        NOT NULL,
    message          text        NOT NULL,
    level            text        NOT NULL,
    status           text        NOT NULL DEFAULT 'unresolved'
                                 CHECK (status IN ('unresolved', 'resolved', 'ignored')),
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    occurrences      bigint      NOT NULL,
    -- Distinct users (or, without a user id, visitors) this error reached.
    affected_people  bigint      NOT NULL DEFAULT 0,
    last_occurrence  jsonb       NOT NULL,
    resolved_at      timestamptz,
    -- A new occurrence of a resolved group reopens it: when, and how often that happened.
    regressed_at     timestamptz,
    regressions      integer     NOT NULL DEFAULT 0,
    UNIQUE (project_id, fingerprint)
);
CREATE INDEX error_groups_project_last_seen ON error_groups (project_id, last_seen DESC);

-- Who an error group reached, so `affected_people` counts each person once.
CREATE TABLE error_group_people (
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    fingerprint text NOT NULL,
    person      text NOT NULL,
    PRIMARY KEY (project_id, fingerprint, person)
);

-- identify: which user a visitor (device, browser) is. The latest identify wins.
CREATE TABLE identities (
    project_id uuid        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    visitor_id text        NOT NULL,
    user_id    text        NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    PRIMARY KEY (project_id, visitor_id)
);
CREATE INDEX identities_project_user ON identities (project_id, user_id);

-- The people identify calls name, with their traits merged across calls (later keys win).
CREATE TABLE people (
    project_id uuid        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    text        NOT NULL,
    traits     jsonb       NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    PRIMARY KEY (project_id, user_id)
);

-- Items accepted per organisation, calendar month (UTC) and quota category (`events`,
-- `errors`, `api_requests`). Updated in the same transaction as the rows it counts, under a row
-- lock, so a monthly cap holds exactly across instances.
CREATE TABLE usage (
    organisation_id uuid   NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    month           date   NOT NULL,
    category        text   NOT NULL CHECK (category IN ('events', 'errors', 'api_requests')),
    count           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (organisation_id, month, category)
);
