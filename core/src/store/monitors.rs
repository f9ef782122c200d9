//! Uptime monitors as the API manages them: created within the organisation's tier limit,
//! always read and changed scoped by project and organisation, and the figures of a monitor's
//! detail page (uptime, response times, recent checks, incidents).

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Cursor, GenericClient, StoreError};
use crate::monitor::{
    expected_status_from_json, headers_from_json, MonitorConfig, MonitorSpec, Status,
};
use crate::tiers::Tier;

/// A monitor with its runtime state, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    pub config: MonitorConfig,
    pub status: Status,
    pub failure_streak: u32,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Monitor {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.config.id,
        }
    }
}

/// The configuration columns of `monitors` aliased `m`, which [`config_of`] reads; every
/// monitor query starts with them (followed by what else it needs, from column 14 on).
macro_rules! config_columns {
    () => {
        "m.id, m.project_id, m.name, m.url, m.method, m.interval_seconds, \
         m.timeout_seconds, m.expected_status, m.keyword, m.keyword_absent, m.headers, \
         m.paused, m.updated_at, m.send_traceparent"
    };
}
pub(crate) use config_columns;

/// The columns [`monitor`] reads.
pub const COLUMNS: &str = concat!(
    config_columns!(),
    ", m.status, m.failure_streak, m.last_checked_at, m.next_check_at, m.created_at"
);

fn non_negative(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// A monitor's configuration from the first 14 columns of a row ([`config_columns`]).
pub(crate) fn config_of(row: &Row) -> MonitorConfig {
    let expected: serde_json::Value = row.get(7);
    let headers: serde_json::Value = row.get(10);
    MonitorConfig {
        id: row.get(0),
        project_id: row.get(1),
        name: row.get(2),
        url: row.get(3),
        method: row.get(4),
        interval_seconds: non_negative(row.get(5)),
        timeout_seconds: non_negative(row.get(6)),
        expected_status: expected_status_from_json(&expected),
        keyword: row.get(8),
        keyword_absent: row.get(9),
        headers: headers_from_json(&headers),
        paused: row.get(11),
        updated_at: row.get(12),
        send_traceparent: row.get(13),
    }
}

/// A row of [`COLUMNS`].
pub fn monitor(row: &Row) -> Monitor {
    let status: &str = row.get(14);
    Monitor {
        config: config_of(row),
        status: Status::parse(status).unwrap_or(Status::Pending),
        failure_streak: non_negative(row.get(15)),
        last_checked_at: row.get(16),
        next_check_at: row.get(17),
        created_at: row.get(18),
    }
}

/// The tier of the organisation, whose row is locked until the transaction ends: monitor
/// creations of one organisation are serialised, so two cannot both take the last slot.
/// `None` when the organisation no longer exists.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.lock_organisation", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn lock_organisation(
    client: &impl GenericClient,
    org_id: Uuid,
) -> Result<Option<Tier>, StoreError> {
    let row = client
        .query_opt(
            "SELECT tier FROM organisations WHERE id = $1 FOR UPDATE",
            &[&org_id],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, &str>(0).parse().unwrap_or(Tier::Hobby)))
}

/// The tier of the organisation, without a lock; `None` when it no longer exists.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.organisation_tier", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn organisation_tier(
    client: &impl GenericClient,
    org_id: Uuid,
) -> Result<Option<Tier>, StoreError> {
    let row = client
        .query_opt("SELECT tier FROM organisations WHERE id = $1", &[&org_id])
        .await?;
    Ok(row.map(|r| r.get::<_, &str>(0).parse().unwrap_or(Tier::Hobby)))
}

/// How many monitors the organisation has, over all its projects (the tier limit counts
/// monitors per organisation, like projects).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.count_in_organisation", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn count_in_organisation(
    client: &impl GenericClient,
    org_id: Uuid,
) -> Result<u64, StoreError> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM monitors m JOIN projects p ON p.id = m.project_id
             WHERE p.organisation_id = $1",
            &[&org_id],
        )
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A monitor's checks in one hour: (monitor, hour, checks, successful checks).
pub type HourlyChecks = (Uuid, DateTime<Utc>, i64, i64);

/// Checks and successful checks per monitor and hour since `since` (hours with none are
/// missing), for the monitors' 24-hour bars: one index range per monitor.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.hourly_checks", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn hourly_checks(
    client: &impl GenericClient,
    project_id: Uuid,
    monitor_ids: &[Uuid],
    since: DateTime<Utc>,
) -> Result<Vec<HourlyChecks>, StoreError> {
    if monitor_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            "SELECT monitor_id, date_trunc('hour', started_at, 'UTC'), count(*),
                    count(*) FILTER (WHERE ok)
             FROM monitor_checks
             WHERE project_id = $1 AND monitor_id = ANY($2) AND started_at >= $3
             GROUP BY 1, 2",
            &[&project_id, &monitor_ids, &since],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// How many of the organisation's monitors run (are not paused), `except` one.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.count_running_in_organisation", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn count_running_in_organisation(
    client: &impl GenericClient,
    org_id: Uuid,
    except: Uuid,
) -> Result<u64, StoreError> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM monitors m JOIN projects p ON p.id = m.project_id
             WHERE p.organisation_id = $1 AND NOT m.paused AND m.id <> $2",
            &[&org_id, &except],
        )
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Stores a new monitor of a project the caller has checked (and locked) is its
/// organisation's.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.insert", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn insert(
    client: &impl GenericClient,
    project_id: Uuid,
    spec: &MonitorSpec,
) -> Result<Monitor, StoreError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO monitors AS m (id, project_id, name, url, method, interval_seconds,
                     timeout_seconds, expected_status, keyword, keyword_absent, headers,
                     send_traceparent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &project_id,
                &spec.name,
                &spec.url,
                &spec.method,
                &int(spec.interval_seconds),
                &int(spec.timeout_seconds),
                &spec.expected_status_json(),
                &spec.keyword,
                &spec.keyword_absent,
                &spec.headers_json(),
                &spec.send_traceparent,
            ],
        )
        .await?;
    Ok(monitor(&row))
}

/// Up to `limit + 1` monitors of a project of the organisation after `after`, oldest first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.list", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn list(
    client: &impl GenericClient,
    org_id: Uuid,
    project_id: Uuid,
    limit: usize,
    after: Option<Cursor>,
) -> Result<Vec<Monitor>, StoreError> {
    let (at, id) = after
        .map(|c| (Some(c.created_at), Some(c.id)))
        .unwrap_or((None, None));
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM monitors m JOIN projects p ON p.id = m.project_id
                 WHERE m.project_id = $1 AND p.organisation_id = $2
                   AND ($3::timestamptz IS NULL OR (m.created_at, m.id) > ($3, $4::uuid))
                 ORDER BY m.created_at, m.id LIMIT $5"
            ),
            &[
                &project_id,
                &org_id,
                &at,
                &id,
                &i64::try_from(limit + 1).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    Ok(rows.iter().map(monitor).collect())
}

/// A monitor of a project of the organisation.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.get", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn get(
    client: &impl GenericClient,
    org_id: Uuid,
    project_id: Uuid,
    id: Uuid,
) -> Result<Option<Monitor>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM monitors m JOIN projects p ON p.id = m.project_id
                 WHERE m.id = $1 AND m.project_id = $2 AND p.organisation_id = $3"
            ),
            &[&id, &project_id, &org_id],
        )
        .await?;
    Ok(row.as_ref().map(monitor))
}

/// Like [`get`], with the monitor's row locked until the transaction ends (an update reads,
/// merges and writes it without losing a concurrent change).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.get_for_update", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn get_for_update(
    client: &impl GenericClient,
    org_id: Uuid,
    project_id: Uuid,
    id: Uuid,
) -> Result<Option<Monitor>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM monitors m JOIN projects p ON p.id = m.project_id
                 WHERE m.id = $1 AND m.project_id = $2 AND p.organisation_id = $3
                 FOR UPDATE OF m"
            ),
            &[&id, &project_id, &org_id],
        )
        .await?;
    Ok(row.as_ref().map(monitor))
}

/// Writes a monitor's user-set fields (read with [`get_for_update`]) and bumps `updated_at`.
/// The runtime state (status, streak, open incident) is the engine's and is left alone.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.update", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn update(
    client: &impl GenericClient,
    id: Uuid,
    spec: &MonitorSpec,
) -> Result<Monitor, StoreError> {
    let row = client
        .query_one(
            &format!(
                "UPDATE monitors AS m SET name = $2, url = $3, method = $4,
                     interval_seconds = $5, timeout_seconds = $6, expected_status = $7,
                     keyword = $8, keyword_absent = $9, headers = $10, send_traceparent = $11,
                     updated_at = now()
                 WHERE m.id = $1
                 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &spec.name,
                &spec.url,
                &spec.method,
                &int(spec.interval_seconds),
                &int(spec.timeout_seconds),
                &spec.expected_status_json(),
                &spec.keyword,
                &spec.keyword_absent,
                &spec.headers_json(),
                &spec.send_traceparent,
            ],
        )
        .await?;
    Ok(monitor(&row))
}

/// Pauses or resumes a monitor of a project of the organisation; `None` if there is no such
/// monitor.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.set_paused", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn set_paused(
    client: &impl GenericClient,
    org_id: Uuid,
    project_id: Uuid,
    id: Uuid,
    paused: bool,
) -> Result<Option<Monitor>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE monitors AS m SET paused = $4, updated_at = now()
                 FROM projects p
                 WHERE m.id = $1 AND m.project_id = $2
                   AND p.id = m.project_id AND p.organisation_id = $3
                 RETURNING {COLUMNS}"
            ),
            &[&id, &project_id, &org_id, &paused],
        )
        .await?;
    Ok(row.as_ref().map(monitor))
}

/// Deletes a monitor of a project of the organisation, with its incidents (cascade); its
/// checks are purged in the background (a trigger records the purge, migration 0007). `false`
/// if there was no such monitor.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.delete", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn delete(
    client: &impl GenericClient,
    org_id: Uuid,
    project_id: Uuid,
    id: Uuid,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "DELETE FROM monitors m USING projects p
             WHERE m.id = $1 AND m.project_id = $2
               AND p.id = m.project_id AND p.organisation_id = $3",
            &[&id, &project_id, &org_id],
        )
        .await?;
    Ok(n > 0)
}

/// Share of successful checks, in percent (3 decimals), per window; `None` without checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uptime {
    pub day: Option<f64>,
    pub week: Option<f64>,
    pub month: Option<f64>,
}

/// Response times of the successful checks of the last 24 hours, in milliseconds (1 decimal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseTimes {
    pub avg: Option<f64>,
    pub p95: Option<f64>,
}

/// The figures of a monitor's detail page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub uptime: Uptime,
    pub response_ms: ResponseTimes,
}

/// Uptime over 24 h, 7 d and 30 d and the response times over 24 h, from `monitor_checks`, of
/// a monitor the caller has checked is its organisation's.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.summary", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn summary(
    client: &impl GenericClient,
    project_id: Uuid,
    id: Uuid,
) -> Result<Summary, StoreError> {
    let row = client
        .query_one(
            "WITH c AS (
                 SELECT ok, response_ms, started_at > now() - interval '24 hours' AS day,
                        started_at > now() - interval '7 days' AS week
                 FROM monitor_checks
                 WHERE monitor_id = $1 AND project_id = $2
                   AND started_at > now() - interval '30 days'
             )
             SELECT
                 round(100.0 * count(*) FILTER (WHERE ok AND day)
                       / nullif(count(*) FILTER (WHERE day), 0), 3)::float8,
                 round(100.0 * count(*) FILTER (WHERE ok AND week)
                       / nullif(count(*) FILTER (WHERE week), 0), 3)::float8,
                 round(100.0 * count(*) FILTER (WHERE ok) / nullif(count(*), 0), 3)::float8,
                 round(avg(response_ms) FILTER (WHERE ok AND day), 1)::float8,
                 round((percentile_cont(0.95) WITHIN GROUP (ORDER BY response_ms)
                        FILTER (WHERE ok AND day))::numeric, 1)::float8
             FROM c",
            &[&id, &project_id],
        )
        .await?;
    Ok(Summary {
        uptime: Uptime {
            day: row.get(0),
            week: row.get(1),
            month: row.get(2),
        },
        response_ms: ResponseTimes {
            avg: row.get(3),
            p95: row.get(4),
        },
    })
}

/// One check run, as the detail page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub started_at: DateTime<Utc>,
    pub ok: bool,
    pub status_code: Option<i32>,
    pub response_ms: Option<i32>,
    pub failure: Option<String>,
    pub error: Option<String>,
}

/// The monitor's last `limit` checks, newest first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.recent_checks", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn recent_checks(
    client: &impl GenericClient,
    project_id: Uuid,
    id: Uuid,
    limit: i64,
) -> Result<Vec<Check>, StoreError> {
    let rows = client
        .query(
            "SELECT started_at, ok, status_code, response_ms, failure, error
             FROM monitor_checks WHERE monitor_id = $1 AND project_id = $2
             ORDER BY started_at DESC LIMIT $3",
            &[&id, &project_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Check {
            started_at: r.get(0),
            ok: r.get(1),
            status_code: r.get(2),
            response_ms: r.get(3),
            failure: r.get(4),
            error: r.get(5),
        })
        .collect())
}

/// An outage of a monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub cause: String,
    pub error: Option<String>,
}

/// The monitor's last `limit` incidents, newest first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitors.recent_incidents", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn recent_incidents(
    client: &impl GenericClient,
    project_id: Uuid,
    id: Uuid,
    limit: i64,
) -> Result<Vec<Incident>, StoreError> {
    let rows = client
        .query(
            "SELECT id, started_at, resolved_at, cause, error
             FROM incidents WHERE monitor_id = $1 AND project_id = $2
             ORDER BY started_at DESC, id DESC LIMIT $3",
            &[&id, &project_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Incident {
            id: r.get(0),
            started_at: r.get(1),
            resolved_at: r.get(2),
            cause: r.get(3),
            error: r.get(4),
        })
        .collect())
}
