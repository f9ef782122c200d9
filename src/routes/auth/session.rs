//! Signing in and out: register, login, refresh, logout, me, and deleting the account.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use observe_core::auth;
use observe_core::keys::{self, Scope};
use observe_core::ratelimit::Budget;
use observe_core::store::accounts::{self, User};
use observe_core::store::sessions::{self, Rotation};
use observe_core::store::StoreError;
use uuid::Uuid;

use super::{
    confirm_password, session_cookie, signed_in_user, start_session, token_response,
    DeleteAccountRequest, LoginRequest, MeResponse, RegisterRequest, RegisterResponse,
    INVALID_CREDENTIALS,
};
use crate::error::ApiError;
use crate::session::{
    cleared_refresh_cookie, device_cookie, spend_budget, Against, Attempt, Outcome, Session,
    REFRESH_COOKIE,
};
use crate::state::AppState;
use crate::validate::Problems;

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
    // A budget of its own: every registration counts, and sign-in failures do not eat it.
    spend_budget(&req, &state, Budget::RegistrationsPerIp).await?;
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
        .cookie(device_cookie(&state, &user.email))
        .json(RegisterResponse {
            user: user.into(),
            organisation: org.into(),
            access_token: session.access_token,
            token_type: "bearer",
            expires_in: state.tokens.ttl_secs(),
        }))
}

/// Signs in with email and password. Answers alike, in about the same time, whether or not
/// the email exists. A sign-in sets the device cookie: from then on this browser's failures
/// count against a budget of its own, not the account's.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = super::TokenResponse, description = "signed in; the refresh token is in the `refresh_token` cookie"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody, description = "too many failed attempts from this client or on this account"),
        (status = 503, body = crate::error::ErrorBody, description = "every password-checking slot is busy"),
    )
)]
#[post("/auth/login")]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let email = problems.email("email", &body.email);
    if body.password.is_empty() {
        problems.add("password", "must not be empty");
    }
    problems.finish()?;
    let attempt = Attempt::begin(&req, &state, Against::Account(&email)).await?;
    let checked = user_with_password(&state, &email, body.password.clone()).await;
    let Some(user) = attempt.settle(&state, checked).await? else {
        return Err(INVALID_CREDENTIALS);
    };
    let client = state.db.get().await?;
    let Some((org, _)) = accounts::primary_membership(&client, user.id).await? else {
        return Err(INVALID_CREDENTIALS);
    };
    let session = start_session(&client, &state, user.id, org.id).await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&state, session.refresh_token))
        .cookie(device_cookie(&state, &user.email))
        .json(token_response(&state, session.access_token)))
}

/// The user of `email` if `password` is theirs. No pooled connection is held while the
/// password is hashed (that may queue).
async fn user_with_password(
    state: &AppState,
    email: &str,
    password: String,
) -> Result<Option<User>, ApiError> {
    let user = {
        let client = state.db.get().await?;
        accounts::user_by_email(&client, email).await?
    };
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    // Verified even when the user is unknown (against a dummy hash), so timing says nothing.
    if state.passwords.verify(password, hash).await? {
        Ok(user)
    } else {
        Ok(None)
    }
}

/// Exchanges the refresh-token cookie for a new access token and a new refresh token.
/// The same cookie sent again within `auth.refresh_reuse_grace_secs` (a second tab, a retry)
/// gets the same pair; later, presenting a refresh token that was already exchanged revokes
/// its session. A cookie that is not a refresh token, or not a live one, counts against the
/// client's failure budget like a wrong password; one not even of a token's shape is refused
/// without a lookup.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 200, body = super::TokenResponse),
        (status = 401, body = crate::error::ErrorBody, description = "missing, invalid, expired or reused refresh token"),
        (status = 429, body = crate::error::ErrorBody, description = "too many invalid refresh tokens from this client"),
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
    let attempt = Attempt::begin(&req, &state, Against::Client).await?;
    // Derived, not random: a retry of this refresh derives the same successor.
    let new = state.tokens.successor(cookie.value());
    let rotation = if auth::token_shaped(cookie.value()) {
        rotate(&state, cookie.value(), &new.hash).await
    } else {
        Ok(Rotation::Invalid)
    };
    let outcome = match &rotation {
        Ok(Rotation::Rotated { .. } | Rotation::Replayed { .. }) => Outcome::Right,
        Ok(Rotation::Reused { .. } | Rotation::Invalid) => Outcome::Wrong,
        Err(_) => Outcome::Unchecked,
    };
    attempt.close(&state, outcome).await;
    let rotation = rotation?;
    // The error stays attached to the response (the middleware renders its code), and the
    // browser is told to forget the dead token.
    let refused = |code, message| {
        let mut res = HttpResponse::from_error(ApiError::Unauthorized { code, message });
        let _ = res.add_cookie(&cleared_refresh_cookie(secure));
        Ok::<_, ApiError>(res)
    };
    match rotation {
        Rotation::Rotated { session, issued_at } | Rotation::Replayed { session, issued_at } => {
            let access = state.tokens.issue(&session, issued_at)?;
            Ok(HttpResponse::Ok()
                .cookie(session_cookie(&state, new.secret))
                .json(token_response(&state, access)))
        }
        Rotation::Reused {
            session_id,
            user_id,
        } => {
            state.sessions.forget(Scope::Session(session_id));
            tracing::warn!(%session_id, %user_id, "refresh token reused: session revoked");
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

/// Rotates the refresh token `secret` into the one hashed `new`, in a transaction committed
/// whatever the outcome: a detected reuse must stay revoked.
async fn rotate(state: &AppState, secret: &str, new: &[u8]) -> Result<Rotation, ApiError> {
    let settings = &state.settings.auth;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let rotation = sessions::rotate(
        &tx,
        &auth::hash_secret(secret),
        new,
        settings.refresh_token_expire_days,
        settings.refresh_reuse_grace_secs,
    )
    .await?;
    tx.commit().await?;
    Ok(rotation)
}

/// Ends the session of the refresh-token cookie: its refresh and access tokens stop working.
/// A cookie of no session counts against the client's failure budget (429 past it); one not
/// even of a token's shape is not looked up.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 204, description = "signed out"),
        (status = 429, body = crate::error::ErrorBody, description = "too many invalid refresh tokens from this client"),
    )
)]
#[post("/auth/logout")]
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(cookie) = req.cookie(REFRESH_COOKIE).filter(|c| !c.value().is_empty()) {
        let attempt = Attempt::begin(&req, &state, Against::Client).await?;
        let ended = if auth::token_shaped(cookie.value()) {
            end_session(&state, cookie.value()).await
        } else {
            Ok(None)
        };
        attempt.settle(&state, ended).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(cleared_refresh_cookie(state.settings.auth.cookie_secure))
        .finish())
}

/// Revokes the session of the refresh token `secret`, if it has one.
async fn end_session(state: &AppState, secret: &str) -> Result<Option<Uuid>, ApiError> {
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let session = sessions::session_of(&tx, &auth::hash_secret(secret)).await?;
    if let Some(session) = session {
        sessions::revoke(&tx, session).await?;
    }
    tx.commit().await?;
    if let Some(session) = session {
        state.sessions.forget(Scope::Session(session));
    }
    Ok(session)
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

/// How recent the real sign-in must be to delete an account that has no password to confirm
/// with (OWASP ASVS V3.7.1: re-authenticate before sensitive operations).
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
    let user = signed_in_user(&state, &session).await?;
    if user.password_hash.is_some() {
        let given = body.password.clone().unwrap_or_default();
        confirm_password(
            &req,
            &state,
            &session,
            &user,
            given,
            "the password is incorrect",
        )
        .await?;
    } else if Utc::now().timestamp() - session.auth_time > RECENT_SIGN_IN_SECS {
        // No password to confirm with (a GitHub-only account): a fresh sign-in stands in for
        // it. The time of the sign-in itself, which refreshing does not renew.
        return Err(ApiError::Unauthorized {
            code: "reauthentication_required",
            message: "sign in again (within the last 10 minutes) to delete this account",
        });
    }
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let organisations = accounts::delete_user(&tx, user.id).await?;
    for org in &organisations {
        keys::announce(&tx, Scope::Organisation(*org)).await?;
    }
    keys::announce(&tx, Scope::User(user.id)).await?;
    tx.commit().await?;
    for org in &organisations {
        state.keys.forget(Scope::Organisation(*org));
        state.sessions.forget(Scope::Organisation(*org));
    }
    state.sessions.forget(Scope::User(user.id));
    tracing::info!(user_id = %user.id, organisations_deleted = organisations.len(), "account deleted");
    Ok(HttpResponse::NoContent()
        .cookie(cleared_refresh_cookie(state.settings.auth.cookie_secure))
        .finish())
}
