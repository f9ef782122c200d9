-- Uptime monitors (SPEC §7, §8): the monitors users configure, the checks observe runs, the
-- incidents three consecutive failures open, and the shard leases that let several instances
-- split the monitors between them so each monitor is run by exactly one live instance.
--
-- A monitor's runtime state (status, failure streak, when it was last and will next be checked)
-- lives on its row, written by the instance that runs it, so a restarted instance (or the one
-- that takes its shard over) resumes the streak and the open incident instead of starting over.

CREATE TABLE monitors (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id       uuid        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name             text        NOT NULL,
    url              text        NOT NULL,
    method           text        NOT NULL DEFAULT 'GET',
    interval_seconds integer     NOT NULL CHECK (interval_seconds IN (60, 300, 900)),
    timeout_seconds  integer     NOT NULL CHECK (timeout_seconds > 0 AND timeout_seconds < interval_seconds),
    -- A JSON array of codes (200) and ranges ("200-399").
    expected_status  jsonb       NOT NULL DEFAULT '["200-399"]',
    keyword          text,
    -- true: the keyword must NOT appear in the body.
    keyword_absent   boolean     NOT NULL DEFAULT false,
    -- A JSON object of request headers (name → value).
    headers          jsonb       NOT NULL DEFAULT '{}',
    paused           boolean     NOT NULL DEFAULT false,
    -- Runtime state, written by the instance running the monitor.
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'up', 'down')),
    failure_streak   integer     NOT NULL DEFAULT 0,
    last_checked_at  timestamptz,
    next_check_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every change through the API; instances poll it to pick up changes to monitors
    -- they run that were made through another instance.
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX monitors_project ON monitors (project_id, created_at, id);
CREATE INDEX monitors_updated ON monitors (updated_at);

-- One row per check run (after its quick retry): batched by the CheckWriter. Partitioned by day
-- like the raw ingest tables, so retention drops partitions.
CREATE TABLE monitor_checks (
    monitor_id    uuid        NOT NULL,
    project_id    uuid        NOT NULL,
    -- When the check was due, and when it started (lateness = started_at - scheduled_at).
    scheduled_at  timestamptz NOT NULL,
    started_at    timestamptz NOT NULL,
    ok            boolean     NOT NULL,
    status_code   integer,
    response_ms   integer,
    failure       text        CHECK (failure IN ('dns', 'connect', 'tls', 'timeout', 'status', 'keyword')),
    error         text
) PARTITION BY RANGE (started_at);
CREATE INDEX monitor_checks_monitor ON monitor_checks (monitor_id, started_at);
CREATE INDEX monitor_checks_project ON monitor_checks (project_id, started_at);
CREATE TABLE monitor_checks_default PARTITION OF monitor_checks DEFAULT;

-- An outage: opened by the third consecutive failure, closed by the first success. At most
-- one open incident per monitor (the partial unique index), so a restart cannot open a second.
-- The alert columns hold the outbox rows of the down/recovery emails, written in the same
-- transaction as the incident change: one email each, even across restarts.
CREATE TABLE incidents (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    monitor_id        uuid        NOT NULL REFERENCES monitors (id) ON DELETE CASCADE,
    project_id        uuid        NOT NULL,
    started_at        timestamptz NOT NULL,
    resolved_at       timestamptz,
    -- The failure kind of the check that opened it, and its error text.
    cause             text        NOT NULL,
    error             text,
    down_alert_id     uuid,
    recovery_alert_id uuid
);
CREATE UNIQUE INDEX incidents_one_open ON incidents (monitor_id) WHERE resolved_at IS NULL;
CREATE INDEX incidents_monitor ON incidents (monitor_id, started_at DESC);

-- Shard leases. Monitor m belongs to shard `observe_monitor_shard(m.id, shards)`; an instance
-- runs the monitors of the shards it holds a live lease on, renews its leases well within
-- the lease time, and takes over shards whose lease ran out (a dead instance's).
CREATE TABLE monitor_shards (
    shard       integer     PRIMARY KEY,
    owner       text,
    lease_until timestamptz NOT NULL DEFAULT '-infinity'
);

CREATE FUNCTION observe_monitor_shard(id uuid, shards integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (abs(hashtextextended(id::text, 0)) % shards)::integer
$$;

-- Keep monitor_checks' daily partitions with the raw ingest tables'.
CREATE OR REPLACE FUNCTION observe_ensure_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent  text;
    day     date;
    created integer := 0;
    name    text;
BEGIN
    FOREACH parent IN ARRAY ARRAY['events', 'errors', 'requests', 'metrics', 'monitor_checks'] LOOP
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

-- monitor_checks has no foreign key (a per-row check would slow the batched writes): deleting a
-- monitor (directly, or with its project) deletes its checks here.
CREATE FUNCTION observe_delete_monitor_checks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM monitor_checks WHERE monitor_id = OLD.id;
    RETURN OLD;
END;
$$;

CREATE TRIGGER monitors_delete_checks AFTER DELETE ON monitors
    FOR EACH ROW EXECUTE FUNCTION observe_delete_monitor_checks();
