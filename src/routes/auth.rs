//! Accounts and sessions (SPEC §7): register, login, refresh, logout, me, change password,
//! delete account.
//!
//! A session is an access token (JWT, short-lived, sent as `Authorization: Bearer`) plus a
//! refresh token in an HttpOnly cookie scoped to `/auth`. Every refresh rotates the refresh
//! token; presenting an already-rotated one revokes its whole family. Endpoints that take a
//! password are rate limited per client IP.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use observe_core::auth::{self, random_token};
use observe_core::keys::{self, Scope};
use observe_core::store::accounts::{self, Organisation, Role, User};
use observe_core::store::sessions::{self, Rotation};
use observe_core::store::tokens;
use observe_core::store::{GenericClient, StoreError};
use observe_core::tiers::Tier;
use observe_core::{mail, outbox};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::session::{
    cleared_refresh_cookie, limit_auth_attempt, refresh_cookie, Session, REFRESH_COOKIE,
};
use crate::state::AppState;
use crate::validate::Problems;

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

const INVALID_CREDENTIALS: ApiError = ApiError::Unauthorized {
    code: "invalid_credentials",
    message: "email or password is incorrect",
};

/// A new session's secrets: the access token, and the refresh token for the cookie.
pub(crate) struct NewSession {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
}

/// Starts a session (a new refresh-token family) for a user acting for an organisation.
pub(crate) async fn start_session(
    client: &impl GenericClient,
    state: &AppState,
    user_id: Uuid,
    org_id: Uuid,
) -> Result<NewSession, ApiError> {
    let token = random_token();
    sessions::create(
        client,
        Uuid::now_v7(),
        user_id,
        org_id,
        &token.hash,
        refresh_expiry(state),
    )
    .await?;
    Ok(NewSession {
        access_token: state.tokens.issue(user_id, org_id)?,
        refresh_token: token.secret,
    })
}

fn refresh_expiry(state: &AppState) -> DateTime<Utc> {
    auth::expires_in(Duration::days(
        state.settings.auth.refresh_token_expire_days,
    ))
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

fn token_response(state: &AppState, access_token: String) -> TokenResponse {
    TokenResponse {
        access_token,
        token_type: "bearer",
        expires_in: state.tokens.ttl_secs(),
    }
}

/// Creates an account and its organisation (tier `hobby`) and signs in.
#[utoipa::path(
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, body = RegisterResponse, description = "signed in; the refresh token is in the `refresh_token` cookie"),
        (status = 409, body = crate::error::ErrorBody, description = "an account with this email exists"),
        (status = 422, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/register")]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut problems = Problems::default();
    let email = problems.email("email", &body.email);
    let name = problems.name("name", &body.name, 100);
    problems.password(
        "password",
        &body.password,
        state.settings.auth.password_min_length,
    );
    problems.finish()?;

    let hash = state.passwords.hash(body.password.clone()).await?;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let org_name = format!("{name}'s organisation");
    let (user, org) = match accounts::create_user_with_organisation(
        &tx,
        &email,
        &name,
        Some(&hash),
        false,
        &org_name,
    )
    .await
    {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(
                "an account with this email already exists",
            ))
        }
        other => other?,
    };
    let session = start_session(&tx, &state, user.id, org.id).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, org_id = %org.id, "account registered");

    Ok(HttpResponse::Created()
        .cookie(session_cookie(&state, session.refresh_token))
        .json(RegisterResponse {
            user: user.into(),
            organisation: org.into(),
            access_token: session.access_token,
            token_type: "bearer",
            expires_in: state.tokens.ttl_secs(),
        }))
}

/// Signs in with email and password. Answers alike, in about the same time, whether or not
/// the email exists.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = TokenResponse, description = "signed in; the refresh token is in the `refresh_token` cookie"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/login")]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut problems = Problems::default();
    let email = problems.email("email", &body.email);
    if body.password.is_empty() {
        problems.add("password", "must not be empty");
    }
    problems.finish()?;

    let client = state.db.get().await?;
    let user = accounts::user_by_email(&client, &email).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    // Verified even when the user is unknown (against a dummy hash), so timing says nothing.
    if !state.passwords.verify(body.password.clone(), hash).await {
        return Err(INVALID_CREDENTIALS);
    }
    let Some(user) = user else {
        return Err(INVALID_CREDENTIALS);
    };
    let Some((org, _)) = accounts::primary_membership(&client, user.id).await? else {
        return Err(INVALID_CREDENTIALS);
    };
    let session = start_session(&client, &state, user.id, org.id).await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&state, session.refresh_token))
        .json(token_response(&state, session.access_token)))
}

/// Exchanges the refresh-token cookie for a new access token and a new refresh token.
/// Presenting a refresh token that was already exchanged revokes every token of its session.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, body = crate::error::ErrorBody, description = "missing, invalid, expired or reused refresh token"),
    )
)]
#[post("/auth/refresh")]
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let secure = state.settings.auth.cookie_secure;
    let Some(cookie) = req.cookie(REFRESH_COOKIE).filter(|c| !c.value().is_empty()) else {
        return Err(ApiError::Unauthorized {
            code: "refresh_token_missing",
            message: "no refresh token cookie was sent",
        });
    };
    let old = auth::hash_secret(cookie.value());
    let new = random_token();
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let rotation = sessions::rotate(&tx, &old, &new.hash, refresh_expiry(&state)).await?;
    // Committed whatever the outcome: a detected reuse must stay revoked.
    tx.commit().await?;
    // The error stays attached to the response (the middleware renders its code), and the
    // browser is told to forget the dead token.
    let refused = |code, message| {
        let mut res = HttpResponse::from_error(ApiError::Unauthorized { code, message });
        let _ = res.add_cookie(&cleared_refresh_cookie(secure));
        Ok::<_, ApiError>(res)
    };
    match rotation {
        Rotation::Rotated {
            user_id, org_id, ..
        } => {
            let access = state.tokens.issue(user_id, org_id)?;
            Ok(HttpResponse::Ok()
                .cookie(session_cookie(&state, new.secret))
                .json(token_response(&state, access)))
        }
        Rotation::Reused { family_id } => {
            tracing::warn!(%family_id, "refresh token reused: session revoked");
            refused(
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked, sign in again",
            )
        }
        Rotation::Invalid => refused(
            "refresh_token_invalid",
            "the refresh token is invalid, expired or revoked; sign in again",
        ),
    }
}

/// Ends the session of the refresh-token cookie (all of its tokens are revoked).
#[utoipa::path(tag = "auth", responses((status = 204, description = "signed out")))]
#[post("/auth/logout")]
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(cookie) = req.cookie(REFRESH_COOKIE).filter(|c| !c.value().is_empty()) {
        let client = state.db.get().await?;
        if let Some(family) =
            sessions::family_of(&client, &auth::hash_secret(cookie.value())).await?
        {
            sessions::revoke_family(&client, family).await?;
        }
    }
    Ok(HttpResponse::NoContent()
        .cookie(cleared_refresh_cookie(state.settings.auth.cookie_secure))
        .finish())
}

/// The signed-in user, their organisation and role.
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = crate::error::ErrorBody))
)]
#[get("/auth/me")]
pub async fn me(
    session: Session,
    state: web::Data<AppState>,
) -> Result<web::Json<MeResponse>, ApiError> {
    let client = state.db.get().await?;
    let user = accounts::user_by_id(&client, session.user_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let (org, role) = accounts::membership(&client, session.user_id, session.org_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    Ok(web::Json(MeResponse {
        user: user.into(),
        organisation: org.into(),
        role,
    }))
}

/// Changes the password; every other session of the user is signed out.
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "changed"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/change-password")]
pub async fn change_password(
    req: HttpRequest,
    session: Session,
    state: web::Data<AppState>,
    body: web::Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut problems = Problems::default();
    problems.password(
        "new_password",
        &body.new_password,
        state.settings.auth.password_min_length,
    );
    problems.finish()?;

    let mut client = state.db.get().await?;
    let user = accounts::user_by_id(&client, session.user_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if !state
        .passwords
        .verify(body.current_password.clone(), user.password_hash.clone())
        .await
    {
        return Err(ApiError::Unauthorized {
            code: "invalid_credentials",
            message: "the current password is incorrect",
        });
    }
    let hash = state.passwords.hash(body.new_password.clone()).await?;
    let keep = match req.cookie(REFRESH_COOKIE) {
        Some(c) => sessions::family_of(&client, &auth::hash_secret(c.value())).await?,
        None => None,
    };
    let tx = client.transaction().await?;
    accounts::set_password(&tx, user.id, &hash).await?;
    let revoked = sessions::revoke_all_for_user(&tx, user.id, keep).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, sessions_revoked = revoked, "password changed");
    Ok(HttpResponse::NoContent().finish())
}

/// How recent a sign-in must be to delete an account that has no password.
const RECENT_SIGN_IN_SECS: i64 = 600;

/// Deletes the account. When the user is the last owner of an organisation, the organisation
/// and everything it owns (projects, keys, data) are deleted too, in the same transaction.
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    request_body = DeleteAccountRequest,
    responses((status = 204, description = "deleted"), (status = 401, body = crate::error::ErrorBody))
)]
#[post("/auth/delete-account")]
pub async fn delete_account(
    req: HttpRequest,
    session: Session,
    state: web::Data<AppState>,
    body: web::Json<DeleteAccountRequest>,
) -> Result<HttpResponse, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut client = state.db.get().await?;
    let user = accounts::user_by_id(&client, session.user_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if user.password_hash.is_some() {
        let given = body.password.clone().unwrap_or_default();
        if !state
            .passwords
            .verify(given, user.password_hash.clone())
            .await
        {
            return Err(ApiError::Unauthorized {
                code: "invalid_credentials",
                message: "the password is incorrect",
            });
        }
    } else if Utc::now().timestamp() - session.issued_at > RECENT_SIGN_IN_SECS {
        // No password to confirm with (a GitHub-only account): a fresh sign-in stands in for it.
        return Err(ApiError::Unauthorized {
            code: "reauthentication_required",
            message: "sign in again (within the last 10 minutes) to delete this account",
        });
    }
    let tx = client.transaction().await?;
    let organisations = accounts::delete_user(&tx, user.id).await?;
    for org in &organisations {
        keys::announce(&tx, Scope::Organisation(*org)).await?;
    }
    tx.commit().await?;
    for org in &organisations {
        state.keys.forget(Scope::Organisation(*org));
    }
    tracing::info!(user_id = %user.id, organisations_deleted = organisations.len(), "account deleted");
    Ok(HttpResponse::NoContent()
        .cookie(cleared_refresh_cookie(state.settings.auth.cookie_secure))
        .finish())
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
const EMAIL_TOKEN_MINUTES: i64 = 60;

/// `FRONTEND_URL` + `path` + `?token=`.
fn frontend_link(state: &AppState, path: &str, token: &str) -> String {
    format!(
        "{}{path}?token={token}",
        state.settings.frontend_url.trim_end_matches('/')
    )
}

/// Stores a token and its email in one transaction, then hands the email to the Mailer.
async fn send_token_email(
    state: &AppState,
    user_id: Uuid,
    purpose: tokens::Purpose,
    new_email: Option<&str>,
    make_email: impl FnOnce(&str) -> mail::Email,
) -> Result<(), ApiError> {
    let token = random_token();
    let email = make_email(&token.secret);
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    tokens::create(
        &tx,
        user_id,
        purpose,
        new_email,
        &token.hash,
        auth::expires_in(Duration::minutes(EMAIL_TOKEN_MINUTES)),
    )
    .await?;
    let id = outbox::enqueue(&tx, &email).await?;
    tx.commit().await?;
    observe_actors::mailer::deliver_soon(&state.mailer, id);
    Ok(())
}

/// Sends a password-reset link, valid for an hour, if the email belongs to an account.
/// Answers 202 either way, so it tells nobody which emails have accounts.
#[utoipa::path(
    tag = "auth",
    request_body = ForgotPasswordRequest,
    responses((status = 202, body = Accepted), (status = 429, body = crate::error::ErrorBody))
)]
#[post("/auth/forgot-password")]
pub async fn forgot_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ForgotPasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut problems = Problems::default();
    let email = problems.email("email", &body.email);
    problems.finish()?;
    // Looked up and sent off the request path: the answer, and its timing, are the same
    // whether or not the account exists.
    let state = state.into_inner();
    actix_web::rt::spawn(async move {
        if let Err(e) = send_reset_link(&state, &email).await {
            tracing::warn!(error = %e, "password reset email not queued");
        }
    });
    Ok(HttpResponse::Accepted().json(Accepted { status: "accepted" }))
}

async fn send_reset_link(state: &AppState, email: &str) -> Result<(), ApiError> {
    let client = state.db.get().await?;
    let user = accounts::user_by_email(&client, email).await?;
    drop(client);
    let Some(user) = user else {
        return Ok(());
    };
    send_token_email(
        state,
        user.id,
        tokens::Purpose::PasswordReset,
        None,
        |secret| {
            let link = frontend_link(state, "/reset-password", secret);
            mail::password_reset(&user.email, &user.name, &link, EMAIL_TOKEN_MINUTES)
        },
    )
    .await
}

/// Sets a new password with a token from a reset email (once). Signs out every session.
#[utoipa::path(
    tag = "auth",
    request_body = ResetPasswordRequest,
    responses(
        (status = 204, description = "password set"),
        (status = 400, body = crate::error::ErrorBody, description = "`invalid_token`: unknown, used or expired"),
        (status = 422, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/reset-password")]
pub async fn reset_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ResetPasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut problems = Problems::default();
    problems.password(
        "new_password",
        &body.new_password,
        state.settings.auth.password_min_length,
    );
    problems.finish()?;
    let hash = state.passwords.hash(body.new_password.clone()).await?;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let Some((user_id, _)) = tokens::spend(
        &tx,
        &auth::hash_secret(body.token.trim()),
        tokens::Purpose::PasswordReset,
    )
    .await?
    else {
        return Err(ApiError::InvalidToken);
    };
    accounts::set_password(&tx, user_id, &hash).await?;
    sessions::revoke_all_for_user(&tx, user_id, None).await?;
    tx.commit().await?;
    tracing::info!(%user_id, "password reset");
    Ok(HttpResponse::NoContent().finish())
}

/// Starts changing the account's email: needs the current password, and completes when the
/// link sent to the new address is opened (`POST /auth/confirm-email`).
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    request_body = ChangeEmailRequest,
    responses(
        (status = 202, body = Accepted, description = "a confirmation link was sent to the new address"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/change-email")]
pub async fn change_email(
    req: HttpRequest,
    session: Session,
    state: web::Data<AppState>,
    body: web::Json<ChangeEmailRequest>,
) -> Result<HttpResponse, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut problems = Problems::default();
    let new_email = problems.email("new_email", &body.new_email);
    problems.finish()?;
    let client = state.db.get().await?;
    let user = accounts::user_by_id(&client, session.user_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if !state
        .passwords
        .verify(body.password.clone(), user.password_hash.clone())
        .await
    {
        return Err(ApiError::Unauthorized {
            code: "invalid_credentials",
            message: "the password is incorrect",
        });
    }
    if accounts::user_by_email(&client, &new_email)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(
            "an account with this email already exists",
        ));
    }
    drop(client);
    let link_state = state.clone();
    let name = user.name.clone();
    let to = new_email.clone();
    send_token_email(
        &state,
        user.id,
        tokens::Purpose::EmailChange,
        Some(&new_email),
        |secret| {
            let link = frontend_link(&link_state, "/confirm-email", secret);
            mail::email_change(&name, &to, &link)
        },
    )
    .await?;
    Ok(HttpResponse::Accepted().json(Accepted { status: "accepted" }))
}

/// Completes an email change with the token from the link sent to the new address.
#[utoipa::path(
    tag = "auth",
    request_body = ConfirmEmailRequest,
    responses(
        (status = 200, body = UserView),
        (status = 400, body = crate::error::ErrorBody, description = "`invalid_token`: unknown, used or expired"),
        (status = 409, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/confirm-email")]
pub async fn confirm_email(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ConfirmEmailRequest>,
) -> Result<web::Json<UserView>, ApiError> {
    limit_auth_attempt(&req, &state).await?;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let Some((user_id, Some(new_email))) = tokens::spend(
        &tx,
        &auth::hash_secret(body.token.trim()),
        tokens::Purpose::EmailChange,
    )
    .await?
    else {
        return Err(ApiError::InvalidToken);
    };
    match accounts::set_email(&tx, user_id, &new_email).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(
                "an account with this email already exists",
            ))
        }
        other => other?,
    }
    let user = accounts::user_by_id(&tx, user_id)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    tx.commit().await?;
    Ok(web::Json(user.into()))
}
