//! Single-use tokens sent by email (password reset, email change), stored as hashes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{GenericClient, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    PasswordReset,
    EmailChange,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::PasswordReset => "password_reset",
            Purpose::EmailChange => "email_change",
        }
    }
}

/// Stores a token; any earlier unused token of the same user and purpose stops working, so
/// only the latest email's link is good.
pub async fn create(
    client: &impl GenericClient,
    user_id: Uuid,
    purpose: Purpose,
    new_email: Option<&str>,
    hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE user_tokens SET used_at = now()
             WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
            &[&user_id, &purpose.as_str()],
        )
        .await?;
    client
        .execute(
            "INSERT INTO user_tokens (token_hash, user_id, purpose, new_email, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&hash, &user_id, &purpose.as_str(), &new_email, &expires_at],
        )
        .await?;
    Ok(())
}

/// Spends a valid token in one statement, so it works exactly once: unused, unexpired, and
/// made after the account's credentials last changed (a password reset or an account takeover
/// voids every link sent before it). Returns its user and, for an email change, the new address.
pub async fn spend(
    client: &impl GenericClient,
    hash: &[u8],
    purpose: Purpose,
) -> Result<Option<(Uuid, Option<String>)>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE user_tokens t SET used_at = now()
             FROM users u
             WHERE t.token_hash = $1 AND t.purpose = $2 AND t.used_at IS NULL
               AND t.expires_at > now()
               AND u.id = t.user_id AND t.created_at > u.credentials_changed_at
             RETURNING t.user_id, t.new_email",
            &[&hash, &purpose.as_str()],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Spends every outstanding token of a user (reset links, email-change links): what a
/// password change or reset, or a takeover of the account, must leave no way around.
pub async fn spend_all_for_user(
    client: &impl GenericClient,
    user_id: Uuid,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "UPDATE user_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL",
            &[&user_id],
        )
        .await?)
}

/// Locks the row of the user a token belongs to (whatever the token's state), so that what
/// the token does next cannot interleave with a takeover or reset of the same account.
pub async fn lock_owner(
    client: &impl GenericClient,
    hash: &[u8],
) -> Result<Option<Uuid>, StoreError> {
    let row = client
        .query_opt(
            "SELECT u.id FROM users u JOIN user_tokens t ON t.user_id = u.id
             WHERE t.token_hash = $1 FOR UPDATE OF u",
            &[&hash],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
