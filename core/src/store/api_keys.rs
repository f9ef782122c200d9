//! API keys of projects: stored as hashes, listed by their shown prefix, revocable.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Cursor, GenericClient, StoreError};
use crate::tiers::Tier;

#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The public part of the key's Sentry DSN (not a secret: see migration 0015).
    pub dsn_key: String,
}

impl ApiKey {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// Who a valid key speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub key_id: Uuid,
    pub project_id: Uuid,
    /// The project's numeric id (`projects.numeric_id`): the one Sentry DSNs carry.
    pub project_number: i64,
    pub organisation_id: Uuid,
    pub tier: Tier,
}

const COLUMNS: &str =
    "k.id, k.project_id, k.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at, k.dsn_key";

fn api_key(row: &Row) -> ApiKey {
    ApiKey {
        id: row.get(0),
        project_id: row.get(1),
        name: row.get(2),
        prefix: row.get(3),
        created_at: row.get(4),
        last_used_at: row.get(5),
        revoked_at: row.get(6),
        dsn_key: row.get(7),
    }
}

/// Stores a key for a project the caller has already checked belongs to its organisation.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "api_keys.create", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn create(
    client: &impl GenericClient,
    project_id: Uuid,
    name: &str,
    prefix: &str,
    hash: &[u8],
    dsn_key: &str,
) -> Result<ApiKey, StoreError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO api_keys AS k (id, project_id, name, prefix, key_hash, dsn_key)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::now_v7(),
                &project_id,
                &name,
                &prefix,
                &hash,
                &dsn_key,
            ],
        )
        .await?;
    Ok(api_key(&row))
}

/// Up to `limit + 1` keys of a project of the organisation, oldest first.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "api_keys.list", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn list(
    client: &impl GenericClient,
    org_id: Uuid,
    project_id: Uuid,
    limit: usize,
    after: Option<Cursor>,
) -> Result<Vec<ApiKey>, StoreError> {
    let (at, id) = after
        .map(|c| (Some(c.created_at), Some(c.id)))
        .unwrap_or((None, None));
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id
                 WHERE k.project_id = $1 AND p.organisation_id = $2
                   AND ($3::timestamptz IS NULL OR (k.created_at, k.id) > ($3, $4::uuid))
                 ORDER BY k.created_at, k.id LIMIT $5"
            ),
            &[&project_id, &org_id, &at, &id, &((limit + 1) as i64)],
        )
        .await?;
    Ok(rows.iter().map(api_key).collect())
}

/// The project's newest key that is not revoked (the project detail shows its DSN).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "api_keys.newest_active", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn newest_active(
    client: &impl GenericClient,
    project_id: Uuid,
) -> Result<Option<ApiKey>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM api_keys k
                 WHERE k.project_id = $1 AND k.revoked_at IS NULL
                 ORDER BY k.created_at DESC, k.id DESC LIMIT 1"
            ),
            &[&project_id],
        )
        .await?;
    Ok(row.as_ref().map(api_key))
}

/// Revokes a key of a project of the organisation; false when there is no such key.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "api_keys.revoke", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn revoke(
    client: &impl GenericClient,
    org_id: Uuid,
    project_id: Uuid,
    key_id: Uuid,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
             FROM projects p
             WHERE k.id = $1 AND k.project_id = $2 AND p.id = k.project_id AND p.organisation_id = $3",
            &[&key_id, &project_id, &org_id],
        )
        .await?;
    Ok(n > 0)
}

/// The owner of an unrevoked key, by the key's hash.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "api_keys.owner_by_hash", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn owner_by_hash(
    client: &impl GenericClient,
    hash: &[u8],
) -> Result<Option<KeyOwner>, StoreError> {
    owner_where(client, "k.key_hash = $1", &hash).await
}

/// The owner of an unrevoked key, by its public DSN key.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "api_keys.owner_by_dsn_key", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn owner_by_dsn_key(
    client: &impl GenericClient,
    dsn_key: &str,
) -> Result<Option<KeyOwner>, StoreError> {
    owner_where(client, "k.dsn_key = $1", &dsn_key).await
}

async fn owner_where(
    client: &impl GenericClient,
    condition: &str,
    value: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<Option<KeyOwner>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT k.id, k.project_id, p.organisation_id, o.tier, p.numeric_id
                 FROM api_keys k JOIN projects p ON p.id = k.project_id
                 JOIN organisations o ON o.id = p.organisation_id
                 WHERE {condition} AND k.revoked_at IS NULL"
            ),
            &[value],
        )
        .await?;
    Ok(row.map(|r| KeyOwner {
        key_id: r.get(0),
        project_id: r.get(1),
        organisation_id: r.get(2),
        tier: r.get::<_, &str>(3).parse().unwrap_or(Tier::Hobby),
        project_number: r.get(4),
    }))
}
