//! Accounts and sessions (SPEC §7), in three parts: [`session`] (register, login, refresh,
//! logout, me, delete account), [`password`] (change, forgot, reset) and [`email`] (change and
//! confirm the address). This file holds what they share: request and answer shapes, starting
//! a session, the refresh cookie, emailed links.
//!
//! A session is one sign-in (`core/src/store/sessions.rs`): an access token (JWT, short-lived,
//! sent as `Authorization: Bearer`, naming its session, checked against it on every request)
//! plus a refresh token in an HttpOnly cookie scoped to `/auth`. Every refresh rotates the
//! refresh token; presenting an already-rotated one revokes the session, unless it is a retry
//! within the grace window. Endpoints that check a password or a token are limited per client
//! and per account (or per known device), counting failures only: each attempt is paid for
//! before its secret is checked and paid back when it was right (`src/session.rs`,
//! `core/src/ratelimit.rs`). Every sign-in sets a device cookie, by which the browser is known
//! to the account from then on.

mod email;
mod password;
mod session;

pub use email::*;
pub use password::*;
pub use session::*;

use chrono::{DateTime, Duration, Utc};
use observe_core::auth::{self, random_token};
use observe_core::mail;
use observe_core::outbox;
use observe_core::store::accounts::{self, Organisation, Role, User};
use observe_core::store::sessions;
use observe_core::store::tokens;
use observe_core::store::GenericClient;
use observe_core::tiers::Tier;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::session::{refresh_cookie, Against, Attempt, Session};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    pub password: String,
    #[schema(example = "Ada Lovelace")]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteAccountRequest {
    /// Required when the account has a password.
    pub password: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrganisationView {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String, example = "hobby")]
    pub tier: Tier,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterResponse {
    pub user: UserView,
    pub organisation: OrganisationView,
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    pub user: UserView,
    pub organisation: OrganisationView,
    #[schema(value_type = String, example = "owner")]
    pub role: Role,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            name: u.name,
            email_verified: u.email_verified,
            created_at: u.created_at,
        }
    }
}

impl From<Organisation> for OrganisationView {
    fn from(o: Organisation) -> Self {
        Self {
            id: o.id,
            name: o.name,
            tier: o.tier,
            created_at: o.created_at,
        }
    }
}

pub(crate) const INVALID_CREDENTIALS: ApiError = ApiError::Unauthorized {
    code: "invalid_credentials",
    message: "email or password is incorrect",
};

/// A new session's secrets: the access token, and the refresh token for the cookie.
pub(crate) struct NewSession {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
}

/// Starts a session (a sign-in: a new refresh-token family) for a user acting for an
/// organisation.
pub(crate) async fn start_session(
    client: &impl GenericClient,
    state: &AppState,
    user_id: Uuid,
    org_id: Uuid,
) -> Result<NewSession, ApiError> {
    let token = random_token();
    let settings = &state.settings.auth;
    let session = sessions::create(
        client,
        user_id,
        org_id,
        settings.session_max_days,
        &token.hash,
        settings.refresh_token_expire_days,
    )
    .await?;
    Ok(NewSession {
        access_token: state.tokens.issue(&session, session.authenticated_at)?,
        refresh_token: token.secret,
    })
}

/// The user a session is signed in as (401 if the account is gone). No connection is kept.
pub(crate) async fn signed_in_user(state: &AppState, session: &Session) -> Result<User, ApiError> {
    let client = state.db.get().await?;
    accounts::user_by_id(&client, session.user_id)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// Checks the password a signed-in user gives to confirm a sensitive change; a wrong one counts
/// against the client's failure budget and the session's own (a signed-in session is a trusted
/// client: strangers spending the account's budget do not stop its owner here).
pub(crate) async fn confirm_password(
    req: &actix_web::HttpRequest,
    state: &AppState,
    session: &Session,
    user: &User,
    given: String,
    wrong: &'static str,
) -> Result<(), ApiError> {
    let attempt = Attempt::begin(req, state, Against::Session(session.session_id)).await?;
    let checked = state
        .passwords
        .verify(given, user.password_hash.clone())
        .await
        .map(|right| right.then_some(()))
        .map_err(ApiError::from);
    match attempt.settle(state, checked).await? {
        Some(()) => Ok(()),
        None => Err(ApiError::Unauthorized {
            code: "invalid_credentials",
            message: wrong,
        }),
    }
}

pub(crate) fn session_cookie(
    state: &AppState,
    value: String,
) -> actix_web::cookie::Cookie<'static> {
    let days = state.settings.auth.refresh_token_expire_days.max(0) as u64;
    refresh_cookie(
        value,
        std::time::Duration::from_secs(days * 86_400),
        state.settings.auth.cookie_secure,
    )
}

pub(crate) fn token_response(state: &AppState, access_token: String) -> TokenResponse {
    TokenResponse {
        access_token,
        token_type: "bearer",
        expires_in: state.tokens.ttl_secs(),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ForgotPasswordRequest {
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetPasswordRequest {
    /// The token from the reset link.
    pub token: String,
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangeEmailRequest {
    pub new_email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ConfirmEmailRequest {
    /// The token from the confirmation link.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    #[schema(example = "accepted")]
    pub status: &'static str,
}

/// How long emailed links work.
pub(crate) const EMAIL_TOKEN_MINUTES: i64 = 60;

/// The dashboard's page `path` with `?token=` (see `Settings::dashboard_link`).
pub(crate) fn frontend_link(state: &AppState, path: &str, token: &str) -> String {
    state
        .settings
        .dashboard_link(&format!("{path}?token={token}"))
}

/// Stores a token and its email in one transaction, then hands the email to the Mailer. The
/// token is stored under the account's row lock and only while `expect` still holds of it
/// (`tokens::create`), so a takeover, reset or password change racing this request either
/// comes first and stops it, or comes after and spends the token with the rest.
pub(crate) async fn send_token_email(
    state: &AppState,
    user_id: Uuid,
    expect: tokens::Expect<'_>,
    purpose: tokens::Purpose,
    new_email: Option<&str>,
    make_email: impl FnOnce(&str) -> mail::Email,
) -> Result<tokens::Issued, ApiError> {
    let token = random_token();
    let email = make_email(&token.secret);
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let issued = tokens::create(
        &tx,
        user_id,
        expect,
        purpose,
        new_email,
        &token.hash,
        auth::expires_in(Duration::minutes(EMAIL_TOKEN_MINUTES)),
    )
    .await?;
    if issued == tokens::Issued::AccountChanged {
        return Ok(issued);
    }
    let id = outbox::enqueue(&tx, &email).await?;
    tx.commit().await?;
    observe_actors::mailer::deliver_soon(&state.mailer, id);
    Ok(issued)
}
