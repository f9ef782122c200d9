//! Projects: created within the organisation's tier limit, always read scoped by organisation.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Cursor, GenericClient, StoreError};
use crate::tiers::{LimitReached, Resource, Tier, TierPolicy};

#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub id: Uuid,
    pub organisation_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The numeric id Sentry DSNs carry (`/api/{numeric_id}/envelope/`).
    pub numeric_id: i64,
}

impl Project {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Limit(#[from] LimitReached),
    /// The organisation no longer exists (deleted while a token for it was still valid).
    #[error("the organisation does not exist")]
    NoOrganisation,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn project(row: &Row) -> Project {
    Project {
        id: row.get(0),
        organisation_id: row.get(1),
        name: row.get(2),
        created_at: row.get(3),
        numeric_id: row.get(4),
    }
}

/// Creates a project if the organisation's tier allows one more. Run it in a transaction: the
/// organisation row is locked, so two concurrent creations cannot both take the last slot.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "projects.create_within_limit", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn create_within_limit(
    client: &impl GenericClient,
    policy: &TierPolicy,
    org_id: Uuid,
    name: &str,
) -> Result<Project, CreateError> {
    let row = client
        .query_opt(
            "SELECT tier FROM organisations WHERE id = $1 FOR UPDATE",
            &[&org_id],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(CreateError::NoOrganisation)?;
    let tier: Tier = row.get::<_, &str>(0).parse().unwrap_or(Tier::Hobby);
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM projects WHERE organisation_id = $1",
            &[&org_id],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    policy.may_add(tier, Resource::Projects, count.max(0) as u64)?;
    let row = client
        .query_one(
            "INSERT INTO projects (id, organisation_id, name) VALUES ($1, $2, $3)
             RETURNING id, organisation_id, name, created_at, numeric_id",
            &[&Uuid::now_v7(), &org_id, &name],
        )
        .await
        .map_err(StoreError::from)?;
    Ok(project(&row))
}

/// Up to `limit + 1` projects of the organisation after `after`, oldest first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "projects.list", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn list(
    client: &impl GenericClient,
    org_id: Uuid,
    limit: usize,
    after: Option<Cursor>,
) -> Result<Vec<Project>, StoreError> {
    let (at, id) = after
        .map(|c| (Some(c.created_at), Some(c.id)))
        .unwrap_or((None, None));
    let rows = client
        .query(
            "SELECT id, organisation_id, name, created_at, numeric_id FROM projects
             WHERE organisation_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
             ORDER BY created_at, id LIMIT $4",
            &[&org_id, &at, &id, &((limit + 1) as i64)],
        )
        .await?;
    Ok(rows.iter().map(project).collect())
}

/// Like [`get`], and the project cannot be deleted until the caller's transaction ends.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "projects.get_locked", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn get_locked(
    client: &impl GenericClient,
    org_id: Uuid,
    id: Uuid,
) -> Result<Option<Project>, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, organisation_id, name, created_at, numeric_id FROM projects
             WHERE id = $1 AND organisation_id = $2 FOR SHARE",
            &[&id, &org_id],
        )
        .await?;
    Ok(row.as_ref().map(project))
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "projects.get", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn get(
    client: &impl GenericClient,
    org_id: Uuid,
    id: Uuid,
) -> Result<Option<Project>, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, organisation_id, name, created_at, numeric_id FROM projects
             WHERE id = $1 AND organisation_id = $2",
            &[&id, &org_id],
        )
        .await?;
    Ok(row.as_ref().map(project))
}

/// Like [`get`], with the organisation's tier (what read routes need for the retention cap).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "projects.get_with_tier", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn get_with_tier(
    client: &impl GenericClient,
    org_id: Uuid,
    id: Uuid,
) -> Result<Option<(Project, Tier)>, StoreError> {
    let row = client
        .query_opt(
            "SELECT p.id, p.organisation_id, p.name, p.created_at, p.numeric_id, o.tier FROM projects p
             JOIN organisations o ON o.id = p.organisation_id
             WHERE p.id = $1 AND p.organisation_id = $2",
            &[&id, &org_id],
        )
        .await?;
    Ok(row.map(|r| {
        let tier = r.get::<_, &str>(5).parse().unwrap_or(Tier::Hobby);
        (project(&r), tier)
    }))
}

/// Deletes a project of the organisation (and, by cascade, its keys, monitors, error groups
/// and people). Its raw rows are not deleted here: a trigger records a pending purge, which the
/// Purger carries out in bounded batches (migration 0007).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "projects.delete", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn delete(
    client: &impl GenericClient,
    org_id: Uuid,
    id: Uuid,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "DELETE FROM projects WHERE id = $1 AND organisation_id = $2",
            &[&id, &org_id],
        )
        .await?;
    Ok(n > 0)
}
