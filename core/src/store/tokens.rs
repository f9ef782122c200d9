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

/// What must still hold of an account, under its row lock, for a link to be made for it.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// The address the link is sent to is still the account's (a reset).
    Email(&'a str),
    /// The session asking for it still stands (an email change): a password change or reset,
    /// or a takeover of the account, revokes it.
    LiveSession(Uuid),
}

/// Whether a token was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    Stored,
    /// The account is gone or changed since the request was allowed: nothing stored.
    AccountChanged,
}

/// Stores a token; any earlier unused token of the same user and purpose stops working, so
/// only the latest email's link is good. Run it in a transaction: it holds the account's row
/// (`FOR SHARE`) until commit, so a takeover, reset or password change of the account either
/// committed before (and `expect` sees it) or waits and then spends this token with the rest.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "tokens.create", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn create(
    client: &impl GenericClient,
    user_id: Uuid,
    expect: Expect<'_>,
    purpose: Purpose,
    new_email: Option<&str>,
    hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<Issued, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT email FROM users WHERE id = $1 FOR SHARE",
            &[&user_id],
        )
        .await?
    else {
        return Ok(Issued::AccountChanged);
    };
    // A statement of its own, so under READ COMMITTED it sees what committed while the lock
    // above waited.
    let still = match expect {
        Expect::Email(email) => row.get::<_, &str>(0) == email,
        Expect::LiveSession(session_id) => client
            .query_opt(
                "SELECT 1 FROM sessions
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now()",
                &[&session_id, &user_id],
            )
            .await?
            .is_some(),
    };
    if !still {
        return Ok(Issued::AccountChanged);
    }
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
    Ok(Issued::Stored)
}

/// The user of a token that [`spend`] would accept now, without spending it: a cheap look
/// before anything costly (a password hash) is done for it.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "tokens.valid", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn valid(
    client: &impl GenericClient,
    hash: &[u8],
    purpose: Purpose,
) -> Result<Option<Uuid>, StoreError> {
    let row = client
        .query_opt(
            "SELECT t.user_id FROM user_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1 AND t.purpose = $2 AND t.used_at IS NULL
               AND t.expires_at > now() AND t.created_at > u.credentials_changed_at",
            &[&hash, &purpose.as_str()],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Spends a valid token in one statement, so it works exactly once: unused, unexpired, and
/// made after the account's credentials last changed (a password reset or an account takeover
/// voids every link sent before it). Returns its user and, for an email change, the new address.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "tokens.spend", otel.kind = "client", db.system.name = "postgresql"))]
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "tokens.spend_all_for_user", otel.kind = "client", db.system.name = "postgresql"))]
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "tokens.lock_owner", otel.kind = "client", db.system.name = "postgresql"))]
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
