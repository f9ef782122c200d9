//! Sessions and their refresh tokens.
//!
//! A session is one sign-in: it starts with a password, GitHub or registration, records when
//! that authentication happened (`authenticated_at`, which refreshes keep) and ends at an
//! absolute deadline (`expires_at`, `auth.session_max_days` after the sign-in), at logout, or
//! when it is revoked (password change or reset, account takeover, a refresh token reused).
//! Access tokens carry the session's id (`sid`) and are checked against this row (through the
//! per-instance cache in [`crate::sessions`]).
//!
//! Its refresh tokens form a family: each refresh rotates to a new token, and presenting a
//! token that was already rotated revokes the whole session (it was copied: stolen-token
//! detection) — unless it comes back within the grace window and its successor is still
//! unused, which is a second tab or a retried request, not a thief (Okta's refresh-token grace
//! period; Auth0 calls it the reuse interval): then it gets the same new pair. Tokens are
//! stored only as SHA-256 hashes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{GenericClient, StoreError};
use crate::keys::{self, Scope};

/// What an access token of a session says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: Uuid,
    pub user_id: Uuid,
    pub organisation_id: Uuid,
    /// When the user really authenticated (refreshes keep it).
    pub authenticated_at: DateTime<Utc>,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Valid: the old token is spent, the new one stored; its access token is issued at
    /// `issued_at`.
    Rotated {
        session: SessionInfo,
        issued_at: DateTime<Utc>,
    },
    /// Rotated moments ago into the very token the caller derived again, still unused: answer
    /// with the same pair as then.
    Replayed {
        session: SessionInfo,
        issued_at: DateTime<Utc>,
    },
    /// Already rotated, outside the grace window: the session is now revoked.
    Reused { session_id: Uuid, user_id: Uuid },
    /// Unknown, expired or revoked.
    Invalid,
}

/// A session's state as access-token checks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionState {
    pub user_id: Uuid,
    pub organisation_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
    /// Whether the user still belongs to the organisation the session acts for.
    pub member: bool,
}

/// Starts a session for a user acting for an organisation, with its first refresh token.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "sessions.create", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn create(
    client: &impl GenericClient,
    user_id: Uuid,
    organisation_id: Uuid,
    max_days: i64,
    token_hash: &[u8],
    token_days: i64,
) -> Result<SessionInfo, StoreError> {
    let id = Uuid::now_v7();
    let row = client
        .query_one(
            "INSERT INTO sessions (id, user_id, organisation_id, authenticated_at, expires_at)
             VALUES ($1, $2, $3, now(), now() + make_interval(days => $4::int))
             RETURNING authenticated_at",
            &[&id, &user_id, &organisation_id, &(max_days as i32)],
        )
        .await?;
    client
        .execute(
            "INSERT INTO refresh_tokens (id, family_id, user_id, organisation_id, token_hash, expires_at)
             SELECT $1, s.id, s.user_id, s.organisation_id, $3,
                    least(now() + make_interval(days => $4::int), s.expires_at)
             FROM sessions s WHERE s.id = $2",
            &[&Uuid::now_v7(), &id, &token_hash, &(token_days as i32)],
        )
        .await?;
    Ok(SessionInfo {
        id,
        user_id,
        organisation_id,
        authenticated_at: row.get(0),
    })
}

/// Exchanges the token hashed `old` for one hashed `new` (derived from the old one, so a
/// retry derives the same). Run it in a transaction: the row lock makes two concurrent uses of
/// one token see each other.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "sessions.rotate", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn rotate(
    client: &impl GenericClient,
    old: &[u8],
    new: &[u8],
    token_days: i64,
    grace_secs: i64,
) -> Result<Rotation, StoreError> {
    let row = client
        .query_opt(
            "SELECT t.id, s.id, s.user_id, s.organisation_id, s.authenticated_at,
                    t.rotated_at,
                    t.revoked_at IS NOT NULL OR s.revoked_at IS NOT NULL,
                    t.expires_at <= now() OR s.expires_at <= now(),
                    now() - t.rotated_at <= make_interval(secs => $2::int)
             FROM refresh_tokens t JOIN sessions s ON s.id = t.family_id
             WHERE t.token_hash = $1 FOR UPDATE OF t",
            &[&old, &(grace_secs.clamp(0, i64::from(i32::MAX)) as i32)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Rotation::Invalid);
    };
    let id: Uuid = row.get(0);
    let session = SessionInfo {
        id: row.get(1),
        user_id: row.get(2),
        organisation_id: row.get(3),
        authenticated_at: row.get(4),
    };
    let rotated_at: Option<DateTime<Utc>> = row.get(5);
    let (revoked, expired): (bool, bool) = (row.get(6), row.get(7));
    let within_grace: Option<bool> = row.get(8);
    if revoked {
        return Ok(Rotation::Invalid);
    }
    if let Some(rotated_at) = rotated_at {
        if within_grace == Some(true) && !expired {
            let successor_unused = client
                .query_opt(
                    "SELECT 1 FROM refresh_tokens
                     WHERE token_hash = $1 AND family_id = $2
                       AND rotated_at IS NULL AND revoked_at IS NULL",
                    &[&new, &session.id],
                )
                .await?
                .is_some();
            if successor_unused {
                return Ok(Rotation::Replayed {
                    session,
                    issued_at: rotated_at,
                });
            }
        }
        revoke(client, session.id).await?;
        return Ok(Rotation::Reused {
            session_id: session.id,
            user_id: session.user_id,
        });
    }
    if expired {
        return Ok(Rotation::Invalid);
    }
    let issued_at: DateTime<Utc> = client
        .query_one(
            "UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1 RETURNING rotated_at",
            &[&id],
        )
        .await?
        .get(0);
    client
        .execute(
            "INSERT INTO refresh_tokens (id, family_id, user_id, organisation_id, token_hash, expires_at)
             SELECT $1, s.id, s.user_id, s.organisation_id, $3,
                    least(now() + make_interval(days => $4::int), s.expires_at)
             FROM sessions s WHERE s.id = $2",
            &[&Uuid::now_v7(), &session.id, &new, &(token_days as i32)],
        )
        .await?;
    Ok(Rotation::Rotated { session, issued_at })
}

/// Ends one session and its refresh tokens, and announces it to every instance (delivered at
/// commit). Returns its user if it was live.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "sessions.revoke", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn revoke(
    client: &impl GenericClient,
    session_id: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
             RETURNING user_id",
            &[&session_id],
        )
        .await?;
    client
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
            &[&session_id],
        )
        .await?;
    keys::announce(client, Scope::Session(session_id)).await?;
    Ok(row.map(|r| r.get(0)))
}

/// The session of the refresh token hashed `hash`, whatever its state.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "sessions.session_of", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn session_of(
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

/// Ends every session of a user but `keep` (the one changing the password), and announces it.
/// Returns how many were live.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "sessions.revoke_all_for_user", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn revoke_all_for_user(
    client: &impl GenericClient,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> Result<u64, StoreError> {
    let n = client
        .execute(
            "UPDATE sessions SET revoked_at = now()
             WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2",
            &[&user_id, &keep],
        )
        .await?;
    client
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now()
             WHERE user_id = $1 AND revoked_at IS NULL AND family_id IS DISTINCT FROM $2",
            &[&user_id, &keep],
        )
        .await?;
    keys::announce(client, Scope::User(user_id)).await?;
    Ok(n)
}

/// The state of a session, for checking its access tokens; `None` if there is no such session
/// (never was, or its user or organisation was deleted).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "sessions.state", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn state(
    client: &impl GenericClient,
    session_id: Uuid,
) -> Result<Option<SessionState>, StoreError> {
    let row = client
        .query_opt(
            "SELECT s.user_id, s.organisation_id, s.expires_at, s.revoked_at IS NOT NULL,
                    EXISTS (SELECT 1 FROM memberships m
                            WHERE m.user_id = s.user_id AND m.organisation_id = s.organisation_id)
             FROM sessions s WHERE s.id = $1",
            &[&session_id],
        )
        .await?;
    Ok(row.map(|r| SessionState {
        user_id: r.get(0),
        organisation_id: r.get(1),
        expires_at: r.get(2),
        revoked: r.get(3),
        member: r.get(4),
    }))
}
