//! Users, organisations and memberships.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{GenericClient, StoreError};
use crate::tiers::Tier;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Organisation {
    pub id: Uuid,
    pub name: String,
    pub tier: Tier,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

const USER_COLUMNS: &str = "u.id, u.email, u.name, u.password_hash, u.email_verified, u.created_at";
const ORG_COLUMNS: &str = "o.id, o.name, o.tier, o.created_at";

fn user(row: &Row) -> User {
    User {
        id: row.get(0),
        email: row.get(1),
        name: row.get(2),
        password_hash: row.get(3),
        email_verified: row.get(4),
        created_at: row.get(5),
    }
}

/// An organisation from `ORG_COLUMNS` starting at column `at`.
fn organisation(row: &Row, at: usize) -> Organisation {
    let tier: String = row.get(at + 2);
    Organisation {
        id: row.get(at),
        name: row.get(at + 1),
        // The column's CHECK allows only these three.
        tier: tier.parse().unwrap_or(Tier::Hobby),
        created_at: row.get(at + 3),
    }
}

fn role(s: &str) -> Role {
    if s == "owner" {
        Role::Owner
    } else {
        Role::Member
    }
}

/// Creates a user and an organisation they own. A taken email is `Conflict("users_email_key")`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.create_user_with_organisation", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn create_user_with_organisation(
    client: &impl GenericClient,
    email: &str,
    name: &str,
    password_hash: Option<&str>,
    email_verified: bool,
    organisation_name: &str,
) -> Result<(User, Organisation), StoreError> {
    let user_id = Uuid::now_v7();
    let org_id = Uuid::now_v7();
    let row = client
        .query_one(
            &format!(
                "INSERT INTO users AS u (id, email, name, password_hash, email_verified)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
            ),
            &[&user_id, &email, &name, &password_hash, &email_verified],
        )
        .await?;
    let user = user(&row);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO organisations AS o (id, name) VALUES ($1, $2) RETURNING {ORG_COLUMNS}"
            ),
            &[&org_id, &organisation_name],
        )
        .await?;
    let org = organisation(&row, 0);
    client
        .execute(
            "INSERT INTO memberships (organisation_id, user_id, role) VALUES ($1, $2, 'owner')",
            &[&org_id, &user_id],
        )
        .await?;
    Ok((user, org))
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.user_by_email", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn user_by_email(
    client: &impl GenericClient,
    email: &str,
) -> Result<Option<User>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users u WHERE lower(u.email) = lower($1)"),
            &[&email],
        )
        .await?;
    Ok(row.as_ref().map(user))
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.user_by_id", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn user_by_id(client: &impl GenericClient, id: Uuid) -> Result<Option<User>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(user))
}

/// The organisation a user signs in to: the oldest one they own, else the oldest they belong to.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.primary_membership", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn primary_membership(
    client: &impl GenericClient,
    user_id: Uuid,
) -> Result<Option<(Organisation, Role)>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {ORG_COLUMNS}, m.role FROM memberships m
                 JOIN organisations o ON o.id = m.organisation_id
                 WHERE m.user_id = $1
                 ORDER BY (m.role = 'owner') DESC, o.created_at, o.id LIMIT 1"
            ),
            &[&user_id],
        )
        .await?;
    Ok(row.map(|r| (organisation(&r, 0), role(r.get::<_, &str>(4)))))
}

/// The user's membership of one organisation, if they have it.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.membership", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn membership(
    client: &impl GenericClient,
    user_id: Uuid,
    org_id: Uuid,
) -> Result<Option<(Organisation, Role)>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {ORG_COLUMNS}, m.role FROM memberships m
                 JOIN organisations o ON o.id = m.organisation_id
                 WHERE m.user_id = $1 AND m.organisation_id = $2"
            ),
            &[&user_id, &org_id],
        )
        .await?;
    Ok(row.map(|r| (organisation(&r, 0), role(r.get::<_, &str>(4)))))
}

#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.set_password", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn set_password(
    client: &impl GenericClient,
    user_id: Uuid,
    hash: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE users SET password_hash = $2, updated_at = now(), credentials_changed_at = now()
             WHERE id = $1",
            &[&user_id, &hash],
        )
        .await?;
    Ok(())
}

/// The user a GitHub account is linked to.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.user_by_github_id", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn user_by_github_id(
    client: &impl GenericClient,
    github_id: i64,
) -> Result<Option<User>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {USER_COLUMNS} FROM users u JOIN github_identities g ON g.user_id = u.id
                 WHERE g.github_id = $1"
            ),
            &[&github_id],
        )
        .await?;
    Ok(row.as_ref().map(user))
}

/// Links a GitHub account to a user (or refreshes the login name of an existing link).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.link_github", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn link_github(
    client: &impl GenericClient,
    github_id: i64,
    user_id: Uuid,
    login: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO github_identities (github_id, user_id, login) VALUES ($1, $2, $3)
             ON CONFLICT (github_id) DO UPDATE SET login = EXCLUDED.login",
            &[&github_id, &user_id, &login],
        )
        .await?;
    Ok(())
}

/// Takes over an account whose address was never proved, for someone who just proved it
/// (through GitHub): whatever password its registrant set stops working, and the address
/// counts as verified, and every emailed link made before stops working. The caller also
/// revokes its sessions and spends its tokens.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.claim_unverified", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn claim_unverified(
    client: &impl GenericClient,
    user_id: Uuid,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE users SET password_hash = NULL, email_verified = true, updated_at = now(),
                              credentials_changed_at = now()
             WHERE id = $1 AND NOT email_verified",
            &[&user_id],
        )
        .await?;
    Ok(())
}

/// Sets a user's email (confirmed by a link sent to it). A taken address is a `Conflict`. The
/// address is a credential (reset links go to it): every link emailed before, to the old
/// address above all, stops working, now and for any check made against
/// `credentials_changed_at` later.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.set_email", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn set_email(
    client: &impl GenericClient,
    user_id: Uuid,
    email: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE users SET email = $2, email_verified = true, updated_at = now(),
                              credentials_changed_at = now()
             WHERE id = $1",
            &[&user_id, &email],
        )
        .await?;
    super::tokens::spend_all_for_user(client, user_id).await?;
    Ok(())
}

/// Deletes a user; each organisation of which they are the last owner goes too, with all it
/// owns (the schema cascades). Run it in a transaction. Returns the organisations deleted.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "accounts.delete_user", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn delete_user(
    client: &impl GenericClient,
    user_id: Uuid,
) -> Result<Vec<Uuid>, StoreError> {
    let rows = client
        .query(
            "DELETE FROM organisations WHERE id IN (
                 SELECT m.organisation_id FROM memberships m
                 WHERE m.user_id = $1 AND m.role = 'owner'
                   AND NOT EXISTS (
                       SELECT 1 FROM memberships other
                       WHERE other.organisation_id = m.organisation_id
                         AND other.role = 'owner' AND other.user_id <> $1))
             RETURNING id",
            &[&user_id],
        )
        .await?;
    client
        .execute("DELETE FROM users WHERE id = $1", &[&user_id])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
