-- Foundation: cluster-wide claims of scheduled work.
--
-- Several observe instances may share one database. A cron tick (aggregation, renewals,
-- retention) is claimed by inserting its row in the same transaction as the work, so each tick
-- runs once across the cluster: `INSERT ... ON CONFLICT DO NOTHING` and go on only if a row went in.
CREATE TABLE job_runs (
    job           text        NOT NULL,
    scheduled_for timestamptz NOT NULL,
    claimed_by    text        NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (job, scheduled_for)
);

-- Leases give one long-running owner to a thing (a monitor's checks, a leader role) at a time:
-- an instance takes or renews a lease only when it is free, expired, or already its own.
CREATE TABLE leases (
    name        text        PRIMARY KEY,
    owner       text        NOT NULL,
    lease_until timestamptz NOT NULL
);
