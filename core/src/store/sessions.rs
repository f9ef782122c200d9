//! Refresh-token families: login starts one, each refresh rotates within it, and presenting a
//! token that was already rotated revokes the whole family (it was copied: stolen-token
//! detection). Tokens are stored only as SHA-256 hashes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{GenericClient, StoreError};

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Valid: the old token is spent, the new one stored.
    Rotated {
        user_id: Uuid,
        org_id: Uuid,
        family_id: Uuid,
    },
    /// Already rotated once: the family is now revoked.
    Reused { family_id: Uuid },
    /// Unknown, expired or revoked.
    Invalid,
}

/// Stores a token that starts (or continues) `family_id`.
pub async fn create(
    client: &impl GenericClient,
    family_id: Uuid,
    user_id: Uuid,
    org_id: Uuid,
    hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO refresh_tokens (id, family_id, user_id, organisation_id, token_hash, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&Uuid::now_v7(), &family_id, &user_id, &org_id, &hash, &expires_at],
        )
        .await?;
    Ok(())
}

/// Exchanges the token hashed `old` for one hashed `new`. Run it in a transaction: the row lock
/// makes two concurrent uses of one token see each other.
pub async fn rotate(
    client: &impl GenericClient,
    old: &[u8],
    new: &[u8],
    new_expires_at: DateTime<Utc>,
) -> Result<Rotation, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, family_id, user_id, organisation_id, expires_at, rotated_at, revoked_at
             FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
            &[&old],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Rotation::Invalid);
    };
    let id: Uuid = row.get(0);
    let family_id: Uuid = row.get(1);
    let expires_at: DateTime<Utc> = row.get(4);
    let rotated_at: Option<DateTime<Utc>> = row.get(5);
    let revoked_at: Option<DateTime<Utc>> = row.get(6);
    if revoked_at.is_some() {
        return Ok(Rotation::Invalid);
    }
    if rotated_at.is_some() {
        revoke_family(client, family_id).await?;
        return Ok(Rotation::Reused { family_id });
    }
    if expires_at <= Utc::now() {
        return Ok(Rotation::Invalid);
    }
    let (user_id, org_id): (Uuid, Uuid) = (row.get(2), row.get(3));
    client
        .execute(
            "UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    create(client, family_id, user_id, org_id, new, new_expires_at).await?;
    Ok(Rotation::Rotated {
        user_id,
        org_id,
        family_id,
    })
}

pub async fn revoke_family(client: &impl GenericClient, family_id: Uuid) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
            &[&family_id],
        )
        .await?;
    Ok(())
}

/// The family of the token hashed `hash`, whatever its state.
pub async fn family_of(
    client: &impl GenericClient,
    hash: &[u8],
) -> Result<Option<Uuid>, StoreError> {
    let row = client
        .query_opt(
            "SELECT family_id FROM refresh_tokens WHERE token_hash = $1",
            &[&hash],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Revokes every session of a user but `keep` (the one changing the password).
pub async fn revoke_all_for_user(
    client: &impl GenericClient,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now()
             WHERE user_id = $1 AND revoked_at IS NULL AND family_id IS DISTINCT FROM $2",
            &[&user_id, &keep],
        )
        .await?)
}
