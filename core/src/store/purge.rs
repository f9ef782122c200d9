//! Purges: the raw rows of deleted projects and monitors, deleted in bounded batches off the
//! request path.
//!
//! A deletion records a pending purge in `purges` (a trigger of migration 0007, so a project's
//! own deletion, its organisation's cascade and a monitor's deletion are all covered) and
//! announces it on [`CHANNEL`]. Any instance [`claim`]s a pending purge for a while, deletes
//! its rows partition by partition with [`delete_batch`] (`purge_batch_rows` rows per
//! statement, each statement its own transaction, so no lock is held for long and a crash
//! loses at most one batch), and [`settle`]s it once nothing is left. A purge is kept until
//! `settle` time after its request and swept once more then: a flush that was already under
//! way on another instance when the project was deleted can still commit rows after the first
//! sweep. This is how Sentry deletes (a scheduled-deletion row, then chunked deletes by a
//! background task that resumes after restarts).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{GenericClient, StoreError};

/// The PostgreSQL channel deletions are announced on: `project:<id>`, `monitor:<id>`.
pub const CHANNEL: &str = "observe_purges";

/// The raw tables a project's purge covers (each carries `project_id`, without a foreign key:
/// a per-row check would slow their batched writes down).
pub const PROJECT_TABLES: [&str; 5] = ["events", "errors", "requests", "metrics", "monitor_checks"];

/// What a notification on [`CHANNEL`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Project(Uuid),
    Monitor(Uuid),
}

impl Deleted {
    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(':')?;
        let id = id.parse().ok()?;
        match kind {
            "project" => Some(Deleted::Project(id)),
            "monitor" => Some(Deleted::Monitor(id)),
            _ => None,
        }
    }
}

/// A pending purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub id: i64,
    pub project_id: Uuid,
    /// `Some`: only this monitor's checks.
    pub monitor_id: Option<Uuid>,
    pub requested_at: DateTime<Utc>,
}

impl Purge {
    /// The tables this purge deletes from, and the column its rows are found by.
    pub fn targets(&self) -> Vec<(&'static str, &'static str)> {
        match self.monitor_id {
            Some(_) => vec![("monitor_checks", "monitor_id")],
            None => PROJECT_TABLES.iter().map(|t| (*t, "project_id")).collect(),
        }
    }

    /// The id the rows of [`Purge::targets`] are found by.
    pub fn key(&self) -> Uuid {
        self.monitor_id.unwrap_or(self.project_id)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Claims the oldest pending purge nobody works on (or whose claim ran out) for `hold`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.claim", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn claim(
    client: &impl GenericClient,
    instance: &str,
    hold: Duration,
) -> Result<Option<Purge>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE purges SET claimed_by = $1, \
                 claimed_until = now() + make_interval(secs => $2::float8) \
             WHERE id = ( \
                 SELECT id FROM purges WHERE claimed_until < now() \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, project_id, monitor_id, requested_at",
            &[&instance, &secs(hold)],
        )
        .await?;
    Ok(row.map(|r| Purge {
        id: r.get(0),
        project_id: r.get(1),
        monitor_id: r.get(2),
        requested_at: r.get(3),
    }))
}

/// Extends this instance's claim on purge `id` by `hold`, and adds `deleted` rows to its count.
/// `false` when the claim is no longer this instance's.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.extend", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn extend(
    client: &impl GenericClient,
    instance: &str,
    id: i64,
    hold: Duration,
    deleted: i64,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE purges SET claimed_until = now() + make_interval(secs => $3::float8), \
                 deleted_rows = deleted_rows + $4 \
             WHERE id = $1 AND claimed_by = $2",
            &[&id, &instance, &secs(hold), &deleted],
        )
        .await?;
    Ok(n > 0)
}

/// The partitions of `table` (its DEFAULT one included), as quoted, qualified names; the table
/// itself when it is not partitioned.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.partitions", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn partitions(
    client: &impl GenericClient,
    table: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::text::regclass ORDER BY c.relname",
            &[&table],
        )
        .await?;
    let mut names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if names.is_empty() {
        names.push(table.to_string());
    }
    Ok(names)
}

/// Deletes at most `limit` rows of `partition` whose `column` is `key`; returns how many.
/// `partition` and `column` must come from [`partitions`] and [`Purge::targets`], never from
/// input. The rows are picked by `ctid` through the index on `column`, so one batch is one index
/// range and a TID scan, whatever the table's size.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.delete_batch", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn delete_batch(
    client: &impl GenericClient,
    partition: &str,
    column: &str,
    key: Uuid,
    limit: i64,
) -> Result<u64, StoreError> {
    delete_rows(client, partition, Rows::Of { column, key }, limit).await
}

/// Which rows of a partition one batch deletes. Column names come from constants, never from
/// input.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// Every row whose `column` is `key`: a deleted project's or monitor's (a purge).
    Of { column: &'a str, key: Uuid },
    /// The rows whose `time_column` is before `before`, of `projects` only when given
    /// (retention, [`super::retention`]).
    Before {
        time_column: &'a str,
        before: DateTime<Utc>,
        projects: Option<&'a [Uuid]>,
    },
}

/// Deletes at most `limit` of `rows` from `partition` in one statement (so, on a client outside
/// a transaction, one short transaction of its own); returns how many. Like
/// [`delete_batch`], the rows are picked by `ctid` through the index their filter starts with.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.delete_rows", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn delete_rows(
    client: &impl GenericClient,
    partition: &str,
    rows: Rows<'_>,
    limit: i64,
) -> Result<u64, StoreError> {
    use tokio_postgres::types::ToSql;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&limit];
    let picked = match &rows {
        Rows::Of { column, key } => {
            params.push(key);
            format!("SELECT ctid FROM ONLY {partition} WHERE {column} = $2 LIMIT $1")
        }
        Rows::Before {
            time_column,
            before,
            projects: None,
        } => {
            params.push(before);
            format!("SELECT ctid FROM ONLY {partition} WHERE {time_column} < $2 LIMIT $1")
        }
        // One index probe per project, whatever the planner thinks of the list: with
        // `project_id = ANY($3)` it estimated thousands of ids (most with no rows in the
        // partition) to match much of it and scanned the whole partition: 64 ms on 202,500 rows,
        // against 3 ms for the 2,000 probes (measured, PostgreSQL 15).
        Rows::Before {
            time_column,
            before,
            projects: Some(projects),
        } => {
            params.push(before);
            params.push(projects);
            format!(
                "SELECT r.ctid FROM unnest($3::uuid[]) AS wanted(id) \
                 CROSS JOIN LATERAL ( \
                     SELECT t.ctid FROM ONLY {partition} AS t \
                     WHERE t.project_id = wanted.id AND t.{time_column} < $2 LIMIT $1) r \
                 LIMIT $1"
            )
        }
    };
    let sql = format!("DELETE FROM ONLY {partition} WHERE ctid = ANY(ARRAY({picked}))");
    Ok(client.execute(sql.as_str(), &params).await?)
}

/// What to do with a purge whose sweep found nothing left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done and forgotten.
    Finished,
    /// Kept for a last sweep at `requested_at + settle`.
    SweepAgain,
}

/// Forgets purge `id` if `settle` has passed since it was requested; otherwise sets it aside
/// until then, for a last sweep.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.settle", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn settle(
    client: &impl GenericClient,
    instance: &str,
    id: i64,
    settle: Duration,
) -> Result<Settled, StoreError> {
    let finished = client
        .execute(
            "DELETE FROM purges WHERE id = $1 AND claimed_by = $2 \
               AND requested_at + make_interval(secs => $3::float8) <= now()",
            &[&id, &instance, &secs(settle)],
        )
        .await?;
    if finished > 0 {
        return Ok(Settled::Finished);
    }
    client
        .execute(
            "UPDATE purges SET claimed_by = NULL, \
                 claimed_until = requested_at + make_interval(secs => $3::float8) \
             WHERE id = $1 AND claimed_by = $2",
            &[&id, &instance, &secs(settle)],
        )
        .await?;
    Ok(Settled::SweepAgain)
}

/// Gives purge `id` back (this instance stops), to be claimed again after `after`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.release", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn release(
    client: &impl GenericClient,
    instance: &str,
    id: i64,
    after: Duration,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE purges SET claimed_by = NULL, \
                 claimed_until = now() + make_interval(secs => $3::float8) \
             WHERE id = $1 AND claimed_by = $2",
            &[&id, &instance, &secs(after)],
        )
        .await?;
    Ok(())
}

/// The projects with a pending purge (deleted ones whose actors must not run).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.deleted_projects", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn deleted_projects(client: &impl GenericClient) -> Result<Vec<Uuid>, StoreError> {
    let rows = client
        .query(
            "SELECT DISTINCT project_id FROM purges WHERE monitor_id IS NULL",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Listens on [`CHANNEL`] over a dedicated connection and hands every deletion announced to
/// `deleted`, until the connection fails (the caller starts it again; deletions announced
/// meanwhile are found in `purges` by [`deleted_projects`]).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "purge.listen", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn listen(
    settings: &crate::config::DatabaseSettings,
    deleted: tokio::sync::mpsc::UnboundedSender<Deleted>,
) -> Result<(), StoreError> {
    use futures_util::StreamExt;
    use tokio_postgres::AsyncMessage;

    let (client, mut connection) = crate::db::connect_dedicated(settings)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => match Deleted::parse(n.payload()) {
                    Some(d) => {
                        if deleted.send(d).is_err() {
                            return "the listener was dropped".to_string();
                        }
                    }
                    None => {
                        tracing::warn!(payload = %n.payload(), "unknown purge notification")
                    }
                },
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_string()
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let reason = driver.await.unwrap_or_else(|e| e.to_string());
    drop(client);
    Err(StoreError::Unavailable(format!(
        "purge listener stopped: {reason}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse() {
        let id = Uuid::new_v4();
        assert_eq!(
            Deleted::parse(&format!("project:{id}")),
            Some(Deleted::Project(id))
        );
        assert_eq!(
            Deleted::parse(&format!("monitor:{id}")),
            Some(Deleted::Monitor(id))
        );
        assert_eq!(Deleted::parse("project:nope"), None);
        assert_eq!(Deleted::parse(&format!("team:{id}")), None);
    }

    #[test]
    fn a_monitors_purge_covers_only_its_checks() {
        let (project, monitor) = (Uuid::new_v4(), Uuid::new_v4());
        let purge = Purge {
            id: 1,
            project_id: project,
            monitor_id: Some(monitor),
            requested_at: Utc::now(),
        };
        assert_eq!(purge.targets(), vec![("monitor_checks", "monitor_id")]);
        assert_eq!(purge.key(), monitor);
        let whole = Purge {
            monitor_id: None,
            ..purge
        };
        assert_eq!(whole.targets().len(), 5);
        assert_eq!(whole.key(), project);
    }
}
