//! Operator-wide counts for `GET /admin/stats`. Each later feature adds its own figures here.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::store::ingest::hour_of;

use super::{GenericClient, StoreError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub users: i64,
    pub organisations_hobby: i64,
    pub organisations_pro: i64,
    pub organisations_team: i64,
    pub projects: i64,
    pub api_keys_active: i64,
    pub api_keys_revoked: i64,
    pub emails_pending: i64,
    pub emails_sent: i64,
    pub emails_failed: i64,
    /// Items accepted this calendar month (UTC), all organisations.
    pub events_this_month: i64,
    pub errors_this_month: i64,
    pub api_requests_this_month: i64,
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "admin.counts", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn counts(client: &impl GenericClient) -> Result<Counts, StoreError> {
    let row = client
        .query_one(
            "SELECT
                (SELECT count(*) FROM users),
                (SELECT count(*) FROM organisations WHERE tier = 'hobby'),
                (SELECT count(*) FROM organisations WHERE tier = 'pro'),
                (SELECT count(*) FROM organisations WHERE tier = 'team'),
                (SELECT count(*) FROM projects),
                (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL),
                (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL),
                (SELECT count(*) FROM email_outbox WHERE status = 'pending'),
                (SELECT count(*) FROM email_outbox WHERE status = 'sent'),
                (SELECT count(*) FROM email_outbox WHERE status = 'failed'),
                (SELECT coalesce(sum(count), 0)::int8 FROM usage
                  WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND category = 'events'),
                (SELECT coalesce(sum(count), 0)::int8 FROM usage
                  WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND category = 'errors'),
                (SELECT coalesce(sum(count), 0)::int8 FROM usage
                  WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND category = 'api_requests')",
            &[],
        )
        .await?;
    Ok(Counts {
        users: row.get(0),
        organisations_hobby: row.get(1),
        organisations_pro: row.get(2),
        organisations_team: row.get(3),
        projects: row.get(4),
        api_keys_active: row.get(5),
        api_keys_revoked: row.get(6),
        emails_pending: row.get(7),
        emails_sent: row.get(8),
        emails_failed: row.get(9),
        events_this_month: row.get(10),
        errors_this_month: row.get(11),
        api_requests_this_month: row.get(12),
    })
}

/// Items of every project in the last 24 hours.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastDay {
    pub events: i64,
    pub errors: i64,
    pub api_requests: i64,
}

/// The items of `[now - 24 h, now)` in existing projects. Events and API requests: closed
/// hours from their rollups, unless a flush marked the hour dirty since (late data the
/// Aggregator has not folded in yet), which, like the current hour and the partial first one,
/// are counted from raw rows — so the figures are live and exact whatever the Aggregator's
/// progress, as `/stats` is. Errors have no hourly rollup (their groups keep running
/// counts): they are counted from raw rows, within the two daily partitions the day spans.
/// Each project is one index range probe per table, however many projects and hours.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "admin.last_24h", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn last_24h(
    client: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<LastDay, StoreError> {
    let from = now - Duration::hours(24);
    let first_whole = if hour_of(from) == from {
        from
    } else {
        hour_of(from) + Duration::hours(1)
    };
    let current = hour_of(now);
    let rolled = |rollup: &str, column: &str, kind: &str, raw: &str| {
        format!(
            "SELECT coalesce(sum(x.n), 0)::int8 FROM projects p CROSS JOIN LATERAL (
                 SELECT sum(r.{column})::int8 AS n FROM {rollup} r
                 WHERE r.project_id = p.id AND r.hour >= $2 AND r.hour < $3
                   AND NOT EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.kind = '{kind}'
                                   AND d.project_id = r.project_id AND d.hour = r.hour)
                 UNION ALL
                 SELECT count(*) FROM {raw} t
                 WHERE t.project_id = p.id AND t.ts >= $1 AND t.ts < $2
                 UNION ALL
                 SELECT count(*) FROM {raw} t
                 WHERE t.project_id = p.id AND t.ts >= $3 AND t.ts < $4
                 UNION ALL
                 SELECT count(*) FROM rollup_dirty d JOIN {raw} t
                   ON t.project_id = d.project_id AND t.ts >= d.hour
                  AND t.ts < d.hour + interval '1 hour'
                 WHERE d.kind = '{kind}' AND d.project_id = p.id AND d.hour >= $2 AND d.hour < $3
             ) x"
        )
    };
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&from, &first_whole, &current, &now];
    let events = client
        .query_one(
            &rolled("rollup_events", "events", "events", "events"),
            &params,
        )
        .await?
        .get(0);
    let api_requests = client
        .query_one(
            &rolled("rollup_requests", "count", "requests", "requests"),
            &params,
        )
        .await?
        .get(0);
    let errors = client
        .query_one(
            "SELECT coalesce(sum(x.n), 0)::int8 FROM projects p CROSS JOIN LATERAL (
                 SELECT count(*) AS n FROM errors e
                 WHERE e.project_id = p.id AND e.ts >= $1 AND e.ts < $2
             ) x",
            &[&from, &now],
        )
        .await?
        .get(0);
    Ok(LastDay {
        events,
        errors,
        api_requests,
    })
}
