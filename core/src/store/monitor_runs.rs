//! What the monitor engine reads and writes: monitors with their runtime state, check rows
//! (in batches), incidents with their alert emails, and the shard leases.
//!
//! Opening and closing an incident is one transaction with the monitor's state and, for
//! organisations whose tier has email alerts, the outbox rows of the alert emails (one per
//! owner), whose first id is stored in `down_alert_id` / `recovery_alert_id`. The partial unique
//! index `incidents_one_open` makes a second open incident impossible: a conflicting insert means
//! "already open" and sends nothing. A close only counts (and sends) if it is the one that set
//! `resolved_at`. So an alert is written once per incident, even across restarts and instances.
//!
//! **Fenced:** every state write (a monitor's state, an incident opened or closed, its alerts)
//! first takes a share lock on the monitor's shard row, and only while this instance holds a
//! live lease on it ([`Fence`]); otherwise it writes nothing and answers
//! [`StateError::Fenced`]. The share lock makes another instance's claim of the shard wait for
//! the write's commit, so a write from an instance that lost the shard (it stalled past its
//! lease, and another took the shard) can never land after the new owner took over.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::Row;
use uuid::Uuid;

use super::StoreError;
use crate::mail::{self, MonitorAlert};
#[cfg(test)]
use crate::monitor::{expected_status_from_json, headers_from_json, StatusRange};
use crate::monitor::{FailureKind, MonitorConfig, MonitorState, Status};
use crate::outbox;
use crate::tiers::{Tier, TierPolicy};

const COLUMNS: &str = concat!(
    super::monitors::config_columns!(),
    ", m.status, m.failure_streak, m.last_checked_at, m.next_check_at, \
     (SELECT i.id FROM incidents i WHERE i.monitor_id = m.id AND i.resolved_at IS NULL), \
     (SELECT p.organisation_id FROM projects p WHERE p.id = m.project_id)"
);

fn monitor(row: &Row) -> (MonitorConfig, MonitorState) {
    let status: String = row.get(14);
    let streak: i32 = row.get(15);
    let state = MonitorState {
        status: Status::parse(&status).unwrap_or(Status::Pending),
        failure_streak: u32::try_from(streak).unwrap_or(0),
        last_checked_at: row.get(16),
        next_check_at: row.get(17),
        open_incident: row.get(18),
    };
    (super::monitors::config_of(row), state)
}

/// Monitor `id` with its state, open incident, organisation and shard (of `total`), paused or
/// not.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.load", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn load(
    client: &impl GenericClient,
    id: Uuid,
    total: i32,
) -> Result<Option<Loaded>, StoreError> {
    let row = client
        .query_opt(
            format!(
                "SELECT {COLUMNS}, observe_monitor_shard(m.id, $2) FROM monitors m WHERE m.id = $1"
            )
            .as_str(),
            &[&id, &total],
        )
        .await?;
    Ok(row.as_ref().map(loaded))
}

/// A monitor loaded to run: configuration, state, its organisation (whose check slots it
/// shares) and shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: MonitorConfig,
    pub state: MonitorState,
    pub organisation_id: Uuid,
    pub shard: i32,
}

fn loaded(row: &Row) -> Loaded {
    let (config, state) = monitor(row);
    Loaded {
        config,
        state,
        // NULL only if the project vanished between the rows; its monitor is gone then too.
        organisation_id: row.get::<_, Option<Uuid>>(19).unwrap_or_default(),
        shard: row.get(20),
    }
}

/// The monitors (not paused) of `shards` out of `total`, with their state.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.load_shards", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn load_shards(
    client: &impl GenericClient,
    shards: &[i32],
    total: i32,
) -> Result<Vec<Loaded>, StoreError> {
    let rows = client
        .query(
            format!(
                "SELECT {COLUMNS}, observe_monitor_shard(m.id, $2) FROM monitors m \
                 WHERE NOT m.paused AND observe_monitor_shard(m.id, $2) = ANY($1)"
            )
            .as_str(),
            &[&shards, &total],
        )
        .await?;
    Ok(rows.iter().map(loaded).collect())
}

/// Monitors `ids` (paused ones included; deleted ones are missing), with state and shard.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.load_ids", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn load_ids(
    client: &impl GenericClient,
    ids: &[Uuid],
    total: i32,
) -> Result<Vec<Loaded>, StoreError> {
    let rows = client
        .query(
            format!(
                "SELECT {COLUMNS}, observe_monitor_shard(m.id, $2) FROM monitors m \
                 WHERE m.id = ANY($1)"
            )
            .as_str(),
            &[&ids, &total],
        )
        .await?;
    Ok(rows.iter().map(loaded).collect())
}

/// One monitor as the engine's bookkeeping sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub id: Uuid,
    pub shard: i32,
    pub paused: bool,
    pub updated_at: DateTime<Utc>,
}

/// Monitors changed (through the API) after `since`, of any shard.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.changed_since", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn changed_since(
    client: &impl GenericClient,
    since: DateTime<Utc>,
    total: i32,
) -> Result<Vec<Listed>, StoreError> {
    let rows = client
        .query(
            "SELECT id, observe_monitor_shard(id, $2), paused, updated_at FROM monitors \
             WHERE updated_at > $1::timestamptz ORDER BY updated_at",
            &[&since, &total],
        )
        .await?;
    Ok(rows.iter().map(listed).collect())
}

/// Every monitor of `shards`, paused ones included (to notice deletions).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.list_shards", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn list_shards(
    client: &impl GenericClient,
    shards: &[i32],
    total: i32,
) -> Result<Vec<Listed>, StoreError> {
    let rows = client
        .query(
            "SELECT id, observe_monitor_shard(id, $2), paused, updated_at FROM monitors \
             WHERE observe_monitor_shard(id, $2) = ANY($1)",
            &[&shards, &total],
        )
        .await?;
    Ok(rows.iter().map(listed).collect())
}

fn listed(row: &Row) -> Listed {
    Listed {
        id: row.get(0),
        shard: row.get(1),
        paused: row.get(2),
        updated_at: row.get(3),
    }
}

/// Who may write a monitor's state: the instance `instance`, while it holds the live lease of
/// the monitor's shard (of `shards`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub instance: String,
    pub shards: i32,
}

/// Why a state write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// This instance does not hold the monitor's shard (any more): nothing was written.
    #[error("this instance no longer holds the monitor's shard; nothing was written")]
    Fenced,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> Self {
        StateError::Store(e.into())
    }
}

/// Takes a share lock on monitor `id`'s shard row if `fence` holds its live lease (until the
/// caller's transaction ends): `false` when it does not.
async fn hold_shard(
    client: &impl GenericClient,
    fence: &Fence,
    id: Uuid,
) -> Result<bool, StoreError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM monitor_shards \
             WHERE shard = observe_monitor_shard($1, $2) AND owner = $3 AND lease_until > now() \
             FOR SHARE",
            &[&id, &fence.shards, &fence.instance],
        )
        .await?;
    Ok(row.is_some())
}

/// The database's clock (so instances with skewed clocks agree on "changed since").
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.db_now", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn db_now(client: &impl GenericClient) -> Result<DateTime<Utc>, StoreError> {
    Ok(client.query_one("SELECT now()", &[]).await?.get(0))
}

/// Writes a monitor's runtime state to its row (not `updated_at`: that marks API changes), if
/// `fence` holds its shard: one statement, the share lock on the shard row held for it.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.save_state", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn save_state(
    client: &impl GenericClient,
    fence: &Fence,
    id: Uuid,
    state: &MonitorState,
) -> Result<(), StateError> {
    let streak = i32::try_from(state.failure_streak).unwrap_or(i32::MAX);
    let written = client
        .query_opt(
            "WITH held AS ( \
                 SELECT 1 FROM monitor_shards \
                 WHERE shard = observe_monitor_shard($1, $6) AND owner = $7 \
                   AND lease_until > now() \
                 FOR SHARE) \
             UPDATE monitors SET status = $2, failure_streak = $3, last_checked_at = $4, \
                 next_check_at = $5 \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM held) \
             RETURNING 1",
            &[
                &id,
                &state.status.as_str(),
                &streak,
                &state.last_checked_at,
                &state.next_check_at,
                &fence.shards,
                &fence.instance,
            ],
        )
        .await?;
    if written.is_some() {
        return Ok(());
    }
    // Nothing updated: a deleted monitor (fine: nothing to write), or the shard is not ours.
    if hold_shard(client, fence, id).await? {
        Ok(())
    } else {
        Err(StateError::Fenced)
    }
}

/// [`save_state`] inside a transaction that already holds the shard ([`hold_shard`]).
async fn write_state(
    client: &impl GenericClient,
    id: Uuid,
    state: &MonitorState,
) -> Result<(), StoreError> {
    let streak = i32::try_from(state.failure_streak).unwrap_or(i32::MAX);
    client
        .execute(
            "UPDATE monitors SET status = $2, failure_streak = $3, last_checked_at = $4, \
                 next_check_at = $5 \
             WHERE id = $1",
            &[
                &id,
                &state.status.as_str(),
                &streak,
                &state.last_checked_at,
                &state.next_check_at,
            ],
        )
        .await?;
    Ok(())
}

/// One check as stored in `monitor_checks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub monitor_id: Uuid,
    pub project_id: Uuid,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub ok: bool,
    pub status_code: Option<i32>,
    pub response_ms: Option<i32>,
    pub failure: Option<FailureKind>,
    pub error: Option<String>,
}

/// Writes `rows` with one statement (arrays unnested server-side).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.write_checks", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn write_checks(
    client: &impl GenericClient,
    rows: &[CheckRow],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let mut monitor_ids = Vec::with_capacity(n);
    let mut project_ids = Vec::with_capacity(n);
    let mut scheduled = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut oks = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut failures: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    for r in rows {
        monitor_ids.push(r.monitor_id);
        project_ids.push(r.project_id);
        scheduled.push(r.scheduled_at);
        started.push(r.started_at);
        oks.push(r.ok);
        codes.push(r.status_code);
        times.push(r.response_ms);
        failures.push(r.failure.map(FailureKind::as_str));
        errors.push(r.error.as_deref());
    }
    let written = client
        .execute(
            "INSERT INTO monitor_checks (monitor_id, project_id, scheduled_at, started_at, ok, \
                 status_code, response_ms, failure, error) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[], \
                 $5::bool[], $6::int4[], $7::int4[], $8::text[], $9::text[])",
            &[
                &monitor_ids,
                &project_ids,
                &scheduled,
                &started,
                &oks,
                &codes,
                &times,
                &failures,
                &errors,
            ],
        )
        .await?;
    Ok(written)
}

/// What alert emails need besides the incident.
#[derive(Clone)]
pub struct AlertPolicy {
    pub tiers: TierPolicy,
    /// The dashboard's projects page (`Settings::dashboard_link("/projects")`), for the
    /// monitor's link in the email.
    pub projects_link: String,
}

/// An incident opened or closed, and the alert emails written with it (to deliver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentChange {
    pub incident_id: Uuid,
    /// Whether this call made the change (false: it was already so).
    pub changed: bool,
    pub emails: Vec<Uuid>,
}

/// The owners to alert for the project's organisation, or none if its tier has no email
/// alerts.
async fn alert_recipients(
    client: &impl GenericClient,
    project_id: Uuid,
    alerts: &AlertPolicy,
) -> Result<Vec<(String, String)>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT o.id, o.tier FROM projects p JOIN organisations o ON o.id = p.organisation_id \
             WHERE p.id = $1",
            &[&project_id],
        )
        .await?
    else {
        return Ok(Vec::new());
    };
    let organisation_id: Uuid = row.get(0);
    let tier: String = row.get(1);
    let tier = Tier::from_str(&tier).unwrap_or(Tier::Hobby);
    if !alerts.tiers.email_alerts(tier) {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT u.email, u.name FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.organisation_id = $1 AND m.role = 'owner' ORDER BY m.created_at, u.id",
            &[&organisation_id],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn link(alerts: &AlertPolicy, monitor: &MonitorConfig) -> String {
    format!(
        "{}/{}/monitors/{}",
        alerts.projects_link.trim_end_matches('/'),
        monitor.project_id,
        monitor.id
    )
}

/// Opens an incident for `monitor` (unless one is open), saves `state` and, for tiers with
/// email alerts, enqueues the down emails: one transaction, if `fence` holds the shard.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.open_incident", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn open_incident(
    client: &mut Client,
    fence: &Fence,
    monitor: &MonitorConfig,
    state: &MonitorState,
    started_at: DateTime<Utc>,
    cause: FailureKind,
    error: Option<&str>,
    alerts: &AlertPolicy,
) -> Result<IncidentChange, StateError> {
    let tx = client.transaction().await?;
    if !hold_shard(&tx, fence, monitor.id).await? {
        return Err(StateError::Fenced);
    }
    let inserted = tx
        .query_opt(
            "INSERT INTO incidents (monitor_id, project_id, started_at, cause, error) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (monitor_id) WHERE resolved_at IS NULL DO NOTHING \
             RETURNING id",
            &[
                &monitor.id,
                &monitor.project_id,
                &started_at,
                &cause.as_str(),
                &error,
            ],
        )
        .await?;
    let change = match inserted {
        Some(row) => {
            let incident_id: Uuid = row.get(0);
            let mut emails = Vec::new();
            let started = started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let link = link(alerts, monitor);
            let alert = MonitorAlert {
                monitor_name: &monitor.name,
                url: &monitor.url,
                cause: cause.as_str(),
                error,
                started_at: &started,
                resolved_at: None,
                link: &link,
            };
            for (to, name) in alert_recipients(&tx, monitor.project_id, alerts).await? {
                let email = mail::monitor_down(&to, &name, &alert);
                emails.push(outbox::enqueue(&tx, &email).await?);
            }
            if let Some(first) = emails.first() {
                tx.execute(
                    "UPDATE incidents SET down_alert_id = $2 WHERE id = $1",
                    &[&incident_id, first],
                )
                .await?;
            }
            IncidentChange {
                incident_id,
                changed: true,
                emails,
            }
        }
        None => {
            let row = tx
                .query_one(
                    "SELECT id FROM incidents WHERE monitor_id = $1 AND resolved_at IS NULL",
                    &[&monitor.id],
                )
                .await?;
            IncidentChange {
                incident_id: row.get(0),
                changed: false,
                emails: Vec::new(),
            }
        }
    };
    write_state(&tx, monitor.id, state).await?;
    tx.commit().await?;
    Ok(change)
}

/// Closes incident `incident_id` (if still open), saves `state` and, for tiers with email
/// alerts, enqueues the recovery emails: one transaction, if `fence` holds the shard.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.close_incident", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn close_incident(
    client: &mut Client,
    fence: &Fence,
    monitor: &MonitorConfig,
    state: &MonitorState,
    incident_id: Uuid,
    resolved_at: DateTime<Utc>,
    alerts: &AlertPolicy,
) -> Result<IncidentChange, StateError> {
    let tx = client.transaction().await?;
    if !hold_shard(&tx, fence, monitor.id).await? {
        return Err(StateError::Fenced);
    }
    let closed = tx
        .query_opt(
            "UPDATE incidents SET resolved_at = $2 \
             WHERE id = $1 AND resolved_at IS NULL \
             RETURNING started_at, cause",
            &[&incident_id, &resolved_at],
        )
        .await?;
    let mut emails = Vec::new();
    if let Some(row) = &closed {
        let started_at: DateTime<Utc> = row.get(0);
        let cause: String = row.get(1);
        let started = started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let resolved = resolved_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let link = link(alerts, monitor);
        let alert = MonitorAlert {
            monitor_name: &monitor.name,
            url: &monitor.url,
            cause: &cause,
            error: None,
            started_at: &started,
            resolved_at: Some(&resolved),
            link: &link,
        };
        for (to, name) in alert_recipients(&tx, monitor.project_id, alerts).await? {
            let email = mail::monitor_recovered(&to, &name, &alert);
            emails.push(outbox::enqueue(&tx, &email).await?);
        }
        if let Some(first) = emails.first() {
            tx.execute(
                "UPDATE incidents SET recovery_alert_id = $2 WHERE id = $1",
                &[&incident_id, first],
            )
            .await?;
        }
    }
    write_state(&tx, monitor.id, state).await?;
    tx.commit().await?;
    Ok(IncidentChange {
        incident_id,
        changed: closed.is_some(),
        emails,
    })
}

// ---------------------------------------------------------------------------------------------
// Shard leases
// ---------------------------------------------------------------------------------------------
//
// Rows 0..total of `monitor_shards` are the shards. Each instance also leases its row of
// `monitor_instances`, so instances that hold no shard yet are counted when the fair share is
// computed.

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Makes sure shard rows 0..total exist.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.ensure_shards", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn ensure_shards(client: &impl GenericClient, total: i32) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO monitor_shards (shard) SELECT generate_series(0, $1 - 1) \
             ON CONFLICT (shard) DO NOTHING",
            &[&total],
        )
        .await?;
    Ok(())
}

/// Renews this instance's lease and every shard it still owns; returns those shards and the
/// number of live instances (this one included).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.renew", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn renew(
    client: &impl GenericClient,
    me: &str,
    total: i32,
    lease: Duration,
) -> Result<(Vec<i32>, i64), StoreError> {
    client
        .execute(
            "INSERT INTO monitor_instances (id, lease_until) \
             VALUES ($1, now() + make_interval(secs => $2::float8)) \
             ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
            &[&me, &secs(lease)],
        )
        .await?;
    let rows = client
        .query(
            "UPDATE monitor_shards SET lease_until = now() + make_interval(secs => $3::float8) \
             WHERE owner = $1 AND shard >= 0 AND shard < $2 \
             RETURNING shard",
            &[&me, &total, &secs(lease)],
        )
        .await?;
    let live: i64 = client
        .query_one(
            "SELECT count(*) FROM monitor_instances WHERE lease_until > now()",
            &[],
        )
        .await?
        .get(0);
    Ok((rows.iter().map(|r| r.get(0)).collect(), live.max(1)))
}

/// Claims at most `n` shards whose lease ran out; returns them.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.claim", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn claim(
    client: &impl GenericClient,
    me: &str,
    total: i32,
    n: i64,
    lease: Duration,
) -> Result<Vec<i32>, StoreError> {
    if n <= 0 {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "UPDATE monitor_shards SET owner = $1, \
                 lease_until = now() + make_interval(secs => $4::float8) \
             WHERE shard IN ( \
                 SELECT shard FROM monitor_shards \
                 WHERE shard >= 0 AND shard < $2 AND lease_until < now() \
                 ORDER BY shard LIMIT $3 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING shard",
            &[&me, &total, &n, &secs(lease)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Gives up `shards` (all of this instance's, and its instance lease, when `None`).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "monitor_runs.release", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn release(
    client: &impl GenericClient,
    me: &str,
    shards: Option<&[i32]>,
) -> Result<u64, StoreError> {
    let n = match shards {
        Some(shards) => {
            client
                .execute(
                    "UPDATE monitor_shards SET owner = NULL, lease_until = '-infinity' \
                     WHERE owner = $1 AND shard = ANY($2)",
                    &[&me, &shards],
                )
                .await?
        }
        None => {
            client
                .execute("DELETE FROM monitor_instances WHERE id = $1", &[&me])
                .await?;
            client
                .execute(
                    "UPDATE monitor_shards SET owner = NULL, lease_until = '-infinity' \
                     WHERE owner = $1",
                    &[&me],
                )
                .await?
        }
    };
    // Instances that died long ago.
    client
        .execute(
            "DELETE FROM monitor_instances WHERE lease_until < now() - interval '1 hour'",
            &[],
        )
        .await?;
    Ok(n)
}

/// The fair share of `total` shards among `live` instances: ceil(total / live).
pub fn fair_share(total: i32, live: i64) -> i64 {
    let live = live.max(1);
    (i64::from(total) + live - 1) / live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_parses() {
        let v = serde_json::json!([200, "300-399", "bad", 42, true]);
        assert_eq!(
            expected_status_from_json(&v),
            vec![
                StatusRange { from: 200, to: 200 },
                StatusRange { from: 300, to: 399 }
            ]
        );
        let h = serde_json::json!({"X-A": "1", "X-B": 2});
        let headers = headers_from_json(&h);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers.get("X-A").map(String::as_str), Some("1"));
    }

    #[test]
    fn fair_shares() {
        assert_eq!(fair_share(64, 1), 64);
        assert_eq!(fair_share(64, 2), 32);
        assert_eq!(fair_share(64, 3), 22);
        assert_eq!(fair_share(64, 0), 64);
    }
}
