-- What each run of a background job did, for the job log and operators: its result, the rows
-- it touched, how long it took, and why it failed. A claim whose run never finished (the
-- instance died) can be taken over once it is older than the job's lease.
ALTER TABLE job_runs
    ADD COLUMN result  text CHECK (result IN ('ok', 'failed')),
    ADD COLUMN rows    bigint,
    ADD COLUMN took_ms bigint,
    ADD COLUMN error   text;
