//! `job_runs`: the claims that make each cron tick run once across a cluster, and what each
//! run did.

use chrono::{DateTime, Utc};

use super::{GenericClient, StoreError};

/// Claims `job`'s `tick` for `instance`: true when this instance may run it — nobody had
/// claimed it, or a claim older than `lease_secs` never finished (its instance died).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "jobs.claim", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn claim(
    client: &impl GenericClient,
    job: &str,
    tick: DateTime<Utc>,
    instance: &str,
    lease_secs: i64,
) -> Result<bool, StoreError> {
    let row = client
        .query_opt(
            "INSERT INTO job_runs (job, scheduled_for, claimed_by) VALUES ($1, $2, $3)
             ON CONFLICT (job, scheduled_for) DO UPDATE
                 SET claimed_by = EXCLUDED.claimed_by, claimed_at = now()
                 WHERE job_runs.finished_at IS NULL
                   AND job_runs.claimed_at < now() - make_interval(secs => $4)
             RETURNING 1",
            &[&job, &tick, &instance, &(lease_secs as f64)],
        )
        .await?;
    Ok(row.is_some())
}

/// Whether any instance has claimed `job`'s `tick`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "jobs.claimed", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn claimed(
    client: &impl GenericClient,
    job: &str,
    tick: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM job_runs WHERE job = $1 AND scheduled_for = $2",
            &[&job, &tick],
        )
        .await?
        .is_some())
}

/// When a run of `job` last ended well, on any instance: what a starting instance reports as
/// `observe_job_last_success_timestamp_seconds` before it runs the job itself.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "jobs.last_success", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn last_success(
    client: &impl GenericClient,
    job: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(client
        .query_one(
            "SELECT max(finished_at) FROM job_runs WHERE job = $1 AND result = 'ok'",
            &[&job],
        )
        .await?
        .get(0))
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok { rows: u64 },
    Failed { error: String },
}

/// Records how `instance`'s run of `job`'s `tick` ended.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "jobs.finish", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn finish(
    client: &impl GenericClient,
    job: &str,
    tick: DateTime<Utc>,
    instance: &str,
    outcome: &Outcome,
    took_ms: u64,
) -> Result<(), StoreError> {
    let (result, rows, error) = match outcome {
        Outcome::Ok { rows } => ("ok", Some(i64::try_from(*rows).unwrap_or(i64::MAX)), None),
        Outcome::Failed { error } => ("failed", None, Some(error.as_str())),
    };
    client
        .execute(
            "UPDATE job_runs SET finished_at = now(), result = $4, rows = $5, took_ms = $6,
                                 error = $7
             WHERE job = $1 AND scheduled_for = $2 AND claimed_by = $3",
            &[
                &job,
                &tick,
                &instance,
                &result,
                &rows,
                &i64::try_from(took_ms).unwrap_or(i64::MAX),
                &error,
            ],
        )
        .await?;
    Ok(())
}
