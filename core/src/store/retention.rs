//! Retention, the work itself: plain async functions the Retention job runs on its daily tick
//! (and tests call directly). What goes is decided in [`crate::retention`]; this does it, table
//! by table, within the run's bounds, and says what it did and what is left ([`Report`]).
//!
//! - Raw tables (and rollups, [`crate::retention::ROLLUP_TABLES`]): daily partitions wholly
//!   past the longest retention are dropped, one per transaction under a `lock_timeout` (a
//!   partition whose table stays locked is skipped, as [`super::partitions`] skips creations);
//!   the DEFAULT partitions' rows past it, and in every partition the rows of projects whose
//!   tier keeps less, are deleted through the purge's batch deleter ([`purge::delete_rows`]),
//!   each statement its own short transaction.
//! - Error groups go once their last occurrence is past their organisation's retention, with
//!   the people they counted. That is Sentry's rule: `sentry cleanup` deletes a `Group` by its
//!   `last_seen`, so a group lives exactly as long as some event of it is kept.
//! - Sessions ended (past their absolute lifetime, or revoked) `ended_sessions_keep_days` ago
//!   go with all their refresh tokens; refresh tokens that expired without being used go at
//!   once; rotated ones stay as long as their session, since presenting one again is how a
//!   stolen token is detected (and the session revoked). Emailed tokens go once used or
//!   expired (`sentry cleanup` deletes its expired `LostPasswordHash` rows likewise).
//! - `usage` rows are the monthly history of counts and are kept.
//!
//! Every run reads the tiers of the organisations afresh, so a tier change applies from the
//! next run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use serde::Serialize;
use uuid::Uuid;

use super::partitions::{self, Skipped};
use super::purge::{self, Rows};
use super::{GenericClient, StoreError};
use crate::config::RetentionSettings;
use crate::retention::{batch_finished, tables, Bounds, Budget, Horizon, Horizons, Table};
use crate::tiers::TierPolicy;

/// What is left of a table's work when a run stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Left {
    /// Partitions past the longest retention not dropped: over the run's cap, or skipped.
    pub partitions_to_drop: usize,
    /// Partitions (or the table itself, when it is not partitioned) whose expired rows the run
    /// did not get through, its row cap spent.
    pub unswept: usize,
}

/// What one run did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableReport {
    pub table: &'static str,
    pub partitions_dropped: Vec<String>,
    pub partitions_skipped: Vec<Skipped>,
    pub rows_deleted: u64,
    pub left: Left,
    /// The error that stopped this table's work (the other tables went on).
    pub error: Option<String>,
}

impl TableReport {
    fn new(table: &'static str) -> Self {
        Self {
            table,
            ..Self::default()
        }
    }

    /// Whether nothing is left to do in this table.
    pub fn finished(&self) -> bool {
        self.left == Left::default() && self.error.is_none()
    }
}

/// What one run did, table by table, for the job log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub tables: Vec<TableReport>,
}

impl Report {
    pub fn table(&self, name: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == name)
    }

    /// Rows deleted in every table.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_deleted).sum()
    }

    /// Partitions dropped in every table.
    pub fn partitions_dropped(&self) -> usize {
        self.tables.iter().map(|t| t.partitions_dropped.len()).sum()
    }

    /// Whether the run got through everything (else the next run goes on).
    pub fn finished(&self) -> bool {
        self.tables.iter().all(TableReport::finished)
    }
}

/// One run of retention, measured from `now` (the job's tick): expired partitions dropped,
/// expired rows deleted, stale sessions and tokens removed, each table within the run's bounds
/// (`settings`). Returns an error only when the database cannot be reached; any other failure
/// stops that table's work alone, named in its [`TableReport::error`], and the run goes on.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "retention.run", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn run(
    client: &mut Client,
    tiers: &TierPolicy,
    settings: &RetentionSettings,
    now: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let horizons = Horizons::new(tiers, now);
    let every = projects_by_horizon(&*client, &horizons).await?;
    let shorter = &every[..horizons.shorter.len()];
    let mut report = Report::default();

    for table in tables() {
        let mut done = TableReport::new(table.name);
        let result = sweep_table(client, &table, &horizons, shorter, settings, &mut done).await;
        record(&mut report, done, result, client.is_closed())?;
    }

    let mut groups = TableReport::new("error_groups");
    let mut people = TableReport::new("error_group_people");
    let result = error_groups(&*client, &every, settings, &mut groups, &mut people).await;
    record(&mut report, groups, result, client.is_closed())?;
    report.tables.push(people);

    let mut sessions = TableReport::new("sessions");
    let mut refresh = TableReport::new("refresh_tokens");
    let keep = now - chrono::Duration::days(i64::from(settings.ended_sessions_keep_days));
    let result = ended_sessions(&*client, keep, settings, &mut sessions, &mut refresh).await;
    record(&mut report, sessions, result, client.is_closed())?;
    let result = expired_rows(&*client, UNUSED_REFRESH_TOKENS, now, settings, &mut refresh).await;
    record(&mut report, refresh, result, client.is_closed())?;

    let mut emailed = TableReport::new("user_tokens");
    let result = expired_rows(&*client, SPENT_EMAIL_TOKENS, now, settings, &mut emailed).await;
    record(&mut report, emailed, result, client.is_closed())?;
    Ok(report)
}

/// One table's retention alone, as [`run`] does it for each of [`crate::retention::tables`]:
/// for checking a table before it joins the rollup hook, and for its tests.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "retention.sweep", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn sweep(
    client: &mut Client,
    tiers: &TierPolicy,
    settings: &RetentionSettings,
    now: DateTime<Utc>,
    table: &Table,
) -> Result<TableReport, StoreError> {
    let horizons = Horizons::new(tiers, now);
    let every = projects_by_horizon(&*client, &horizons).await?;
    let shorter = &every[..horizons.shorter.len()];
    let mut done = TableReport::new(table.name);
    sweep_table(client, table, &horizons, shorter, settings, &mut done).await?;
    Ok(done)
}

/// Adds a table's report; a failure of its work is noted in it and the run goes on, unless the
/// connection is gone (then nothing else could be done either). A statement that timed out on
/// one table (`statement_timeout`, a lock) must not starve the others, token cleanup included.
fn record(
    report: &mut Report,
    mut table: TableReport,
    result: Result<(), StoreError>,
    connection_lost: bool,
) -> Result<(), StoreError> {
    match result {
        Ok(()) => {}
        Err(e) if connection_lost => return Err(e),
        Err(e) => {
            tracing::warn!(table = table.table, error = %e, "retention of a table failed; the next run tries again");
            table.error = Some(e.to_string());
        }
    }
    report.tables.push(table);
    Ok(())
}

/// Each horizon (shortest first) with the projects of the organisations whose tier has its
/// retention: raw rows carry the project, the tier is the organisation's. Read afresh every
/// run, so a tier changed since the last one applies now.
async fn projects_by_horizon<'h>(
    client: &impl GenericClient,
    horizons: &'h Horizons,
) -> Result<Vec<(&'h Horizon, Vec<Uuid>)>, StoreError> {
    let mut every = Vec::new();
    for horizon in horizons.all() {
        let rows = client
            .query(
                "SELECT p.id FROM projects p JOIN organisations o ON o.id = p.organisation_id
                 WHERE o.tier = ANY($1) ORDER BY p.id",
                &[&horizon.tier_names()],
            )
            .await?;
        every.push((horizon, rows.iter().map(|r| r.get(0)).collect()));
    }
    Ok(every)
}

/// A partition of a table (or the table itself when it is not partitioned) and its bounds.
struct Partition {
    /// Quoted and qualified as needed (from `regclass`), never from input.
    name: String,
    bounds: Bounds,
}

/// The partitions of `table` (the table itself when it is not partitioned), DEFAULT first and
/// then oldest first. The bounds are read from the catalog (`pg_get_expr` of `relpartbound`,
/// as pg_partman reads them), not from the names, so a partition made by hand counts too.
async fn partitions_of(
    client: &impl GenericClient,
    table: &str,
) -> Result<Vec<Partition>, StoreError> {
    let rows = client
        .query(
            r#"SELECT c.oid::regclass::text,
                      (regexp_match(b.expr, 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
                      (regexp_match(b.expr, 'TO \(''([^'']+)''\)'))[1]::timestamptz
               FROM pg_class c, LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS expr) b
               WHERE c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::text::regclass)
                  OR (c.oid = $1::text::regclass AND c.relkind <> 'p')
               ORDER BY 3 NULLS FIRST, 1"#,
            &[&table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Partition {
            name: r.get(0),
            bounds: Bounds {
                from: r.get(1),
                to: r.get(2),
            },
        })
        .collect())
}

/// One table's retention: its partitions past the longest retention dropped, the rows past it
/// in DEFAULT deleted, and in every partition the rows of the projects of `shorter` horizons.
async fn sweep_table(
    client: &mut Client,
    table: &Table,
    horizons: &Horizons,
    shorter: &[(&Horizon, Vec<Uuid>)],
    settings: &RetentionSettings,
    report: &mut TableReport,
) -> Result<(), StoreError> {
    let longest = table.cutoff(horizons.longest.cutoff);
    let lock_timeout = Duration::from_millis(settings.lock_timeout_ms);
    let mut budget = Budget::new(
        settings.batch_rows,
        settings.max_rows_per_table,
        settings.max_partitions_per_table,
    );
    for partition in partitions_of(&*client, table.name).await? {
        if partition.bounds.wholly_before(longest) {
            if !budget.take_partition() {
                report.left.partitions_to_drop += 1;
                continue;
            }
            match drop_partition(client, &partition.name, lock_timeout).await? {
                None => {
                    tracing::info!(table = table.name, partition = %partition.name, "partition past the longest retention dropped");
                    report.partitions_dropped.push(partition.name);
                }
                Some(skipped) => {
                    tracing::warn!(table = table.name, partition = %partition.name, reason = %skipped.reason, "partition past retention not dropped; the next run tries again");
                    report.left.partitions_to_drop += 1;
                    report.partitions_skipped.push(skipped);
                }
            }
            continue;
        }
        let mut targets = Vec::new();
        if partition.bounds.swept_for_longest() {
            targets.push(Rows::Before {
                time_column: table.time_column,
                before: longest,
                projects: None,
            });
        }
        for (horizon, projects) in shorter {
            let cutoff = table.cutoff(horizon.cutoff);
            if !projects.is_empty() && partition.bounds.reaches_before(cutoff) {
                targets.push(Rows::Before {
                    time_column: table.time_column,
                    before: cutoff,
                    projects: Some(projects),
                });
            }
        }
        for rows in targets {
            let deleted = &mut report.rows_deleted;
            let finished = in_batches(&mut budget, async |limit| {
                let n = purge::delete_rows(&*client, &partition.name, rows, limit).await?;
                *deleted += n;
                Ok(n)
            })
            .await?;
            if !finished {
                report.left.unswept += 1;
                break;
            }
        }
    }
    Ok(())
}

/// Drops one partition, waiting at most `lock_timeout` for its table's lock (dropping a
/// partition takes ACCESS EXCLUSIVE on its parent, so every write to the table would queue
/// behind a drop waiting for a long reader). `Some` when it was skipped.
async fn drop_partition(
    client: &mut Client,
    name: &str,
    lock_timeout: Duration,
) -> Result<Option<Skipped>, StoreError> {
    let ddl = format!("DROP TABLE IF EXISTS {name}");
    Ok(partitions::bounded_ddl(client, &ddl, lock_timeout)
        .await?
        .map(|reason| Skipped {
            partition: name.to_string(),
            reason,
        }))
}

/// Runs `batch(limit)` (which deletes at most `limit` rows and says how many) while rows are
/// left and the budget lasts; `false` when the budget ran out first.
async fn in_batches(
    budget: &mut Budget,
    mut batch: impl AsyncFnMut(i64) -> Result<u64, StoreError>,
) -> Result<bool, StoreError> {
    loop {
        let Some(limit) = budget.next_batch() else {
            return Ok(false);
        };
        let n = batch(limit).await?;
        budget.spend_rows(n);
        if batch_finished(limit, n) {
            return Ok(true);
        }
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Error groups whose last occurrence is past their organisation's retention, with the people
/// they counted, batch by batch. One statement deletes a batch of groups and their people, so
/// a group is never left without the people it counted. The outer `last_seen` test is checked
/// again on rows a concurrent flush updated meanwhile: a group that just had a new occurrence
/// stays.
async fn error_groups(
    client: &impl GenericClient,
    horizons: &[(&Horizon, Vec<Uuid>)],
    settings: &RetentionSettings,
    groups: &mut TableReport,
    people: &mut TableReport,
) -> Result<(), StoreError> {
    let mut budget = Budget::new(settings.batch_rows, settings.max_rows_per_table, 0);
    for (horizon, projects) in horizons {
        if projects.is_empty() {
            continue;
        }
        let finished = in_batches(&mut budget, async |limit| {
            let row = client
                .query_one(
                    "WITH gone AS (
                         DELETE FROM error_groups WHERE id = ANY(ARRAY(
                             SELECT id FROM error_groups
                             WHERE project_id = ANY($1) AND last_seen < $2 LIMIT $3))
                           AND last_seen < $2
                         RETURNING project_id, fingerprint),
                     people AS (
                         DELETE FROM error_group_people p USING gone
                         WHERE p.project_id = gone.project_id AND p.fingerprint = gone.fingerprint
                         RETURNING 1)
                     SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM people)",
                    &[projects, &horizon.cutoff, &limit],
                )
                .await?;
            let (gone, counted) = (count(row.get(0)), count(row.get(1)));
            groups.rows_deleted += gone;
            people.rows_deleted += counted;
            Ok(gone)
        })
        .await?;
        if !finished {
            groups.left.unswept = 1;
            break;
        }
    }
    Ok(())
}

/// Sessions that ended before `keep` (past their absolute lifetime, or revoked), with all their
/// refresh tokens: nothing checks them any more (an access token whose session is missing is
/// refused like a revoked one; so is a refresh token). Sessions being changed right now are
/// skipped, for the next run.
async fn ended_sessions(
    client: &impl GenericClient,
    keep: DateTime<Utc>,
    settings: &RetentionSettings,
    sessions: &mut TableReport,
    refresh: &mut TableReport,
) -> Result<(), StoreError> {
    let mut budget = Budget::new(settings.batch_rows, settings.max_rows_per_table, 0);
    let finished = in_batches(&mut budget, async |limit| {
        let row = client
            .query_one(
                "WITH ended AS (
                     SELECT id FROM sessions WHERE expires_at < $1 OR revoked_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED),
                 tokens AS (
                     DELETE FROM refresh_tokens t USING ended WHERE t.family_id = ended.id
                     RETURNING 1),
                 gone AS (
                     DELETE FROM sessions s USING ended WHERE s.id = ended.id RETURNING 1)
                 SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM tokens)",
                &[&keep, &limit],
            )
            .await?;
        let (gone, tokens) = (count(row.get(0)), count(row.get(1)));
        sessions.rows_deleted += gone;
        refresh.rows_deleted += tokens;
        Ok(gone)
    })
    .await?;
    if !finished {
        sessions.left.unswept = 1;
    }
    Ok(())
}

/// Refresh tokens that expired without ever being used. A rotated one stays while its session
/// does: presenting it again is a reuse, which revokes the session (stolen-token detection), and
/// that needs it found. An unused expired one can neither be used nor detect anything.
const UNUSED_REFRESH_TOKENS: &str = "DELETE FROM refresh_tokens WHERE id = ANY(ARRAY(
        SELECT id FROM refresh_tokens WHERE expires_at < $1 AND rotated_at IS NULL LIMIT $2))
      AND expires_at < $1 AND rotated_at IS NULL";

/// Emailed tokens (password reset, email change) once used or expired: a link works once and
/// until it expires, so nothing reads them after.
const SPENT_EMAIL_TOKENS: &str = "DELETE FROM user_tokens WHERE token_hash = ANY(ARRAY(
        SELECT token_hash FROM user_tokens WHERE used_at IS NOT NULL OR expires_at < $1 LIMIT $2))
      AND (used_at IS NOT NULL OR expires_at < $1)";

/// Deletes with `sql` (`$1`: now, `$2`: the batch size; the outer condition repeats the inner
/// one, so a row changed meanwhile is checked again) batch by batch within the run's bounds.
async fn expired_rows(
    client: &impl GenericClient,
    sql: &str,
    now: DateTime<Utc>,
    settings: &RetentionSettings,
    report: &mut TableReport,
) -> Result<(), StoreError> {
    let mut budget = Budget::new(settings.batch_rows, settings.max_rows_per_table, 0);
    let finished = in_batches(&mut budget, async |limit| {
        let n = client.execute(sql, &[&now, &limit]).await?;
        report.rows_deleted += n;
        Ok(n)
    })
    .await?;
    if !finished {
        report.left.unswept = 1;
    }
    Ok(())
}
