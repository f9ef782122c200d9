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

/// Spends a valid (unused, unexpired) token in one statement, so it works exactly once.
/// Returns its user and, for an email change, the new address.
pub async fn spend(
    client: &impl GenericClient,
    hash: &[u8],
    purpose: Purpose,
) -> Result<Option<(Uuid, Option<String>)>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE user_tokens SET used_at = now()
             WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now()
             RETURNING user_id, new_email",
            &[&hash, &purpose.as_str()],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}
