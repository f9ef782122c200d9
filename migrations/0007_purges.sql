-- Deleting a project (directly, or with its organisation) or a monitor no longer deletes their
-- raw rows in the deleting transaction: a large project took the request (and its locks) for as
-- long as its millions of rows took. The deletion now only records a pending purge here (a
-- trigger, so every path is covered: a project's own deletion, its organisation's cascade, a
-- monitor's deletion), and the Purger of any instance deletes the rows in bounded batches, each
-- its own short transaction, resuming after restarts from this table. (Sentry deletes the same
-- way: a ScheduledDeletion row, then chunked deletes by a background task.)
--
-- A NOTIFY on `observe_purges` tells every instance at commit: they stop the deleted project's
-- IngestActor and MonitorActors at once and start purging. Payloads: `project:<id>`,
-- `monitor:<id>`.

CREATE TABLE purges (
    id            bigserial   PRIMARY KEY,
    project_id    uuid        NOT NULL,
    -- NULL: every raw row of the project (events, errors, requests, metrics, monitor_checks);
    -- else only this (deleted) monitor's checks.
    monitor_id    uuid,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    -- The instance working on it, until when; a purge whose claim ran out is taken up by any
    -- instance. Also "not before" for the final sweep of a purge that found nothing left.
    claimed_by    text,
    claimed_until timestamptz NOT NULL DEFAULT '-infinity',
    -- Rows deleted so far (for operators).
    deleted_rows  bigint      NOT NULL DEFAULT 0
);
CREATE INDEX purges_claimable ON purges (claimed_until);

DROP TRIGGER projects_delete_raw_rows ON projects;
DROP FUNCTION observe_delete_project_rows();
DROP TRIGGER monitors_delete_checks ON monitors;
DROP FUNCTION observe_delete_monitor_checks();

CREATE FUNCTION observe_enqueue_project_purge() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO purges (project_id) VALUES (OLD.id);
    PERFORM pg_notify('observe_purges', 'project:' || OLD.id::text);
    RETURN OLD;
END;
$$;

CREATE TRIGGER projects_enqueue_purge AFTER DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION observe_enqueue_project_purge();

-- A monitor deleted with its project is covered by the project's purge (its checks carry the
-- project id); only a monitor deleted on its own gets a purge of its own.
CREATE FUNCTION observe_enqueue_monitor_purge() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM projects WHERE id = OLD.project_id) THEN
        INSERT INTO purges (project_id, monitor_id) VALUES (OLD.project_id, OLD.id);
        PERFORM pg_notify('observe_purges', 'monitor:' || OLD.id::text);
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER monitors_enqueue_purge AFTER DELETE ON monitors
    FOR EACH ROW EXECUTE FUNCTION observe_enqueue_monitor_purge();
