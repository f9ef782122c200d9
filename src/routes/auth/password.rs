//! Passwords: change (signed in), forgot (a link by email) and reset (with that link). A
//! change or reset ends the account's other sessions and voids every link emailed before it.
//! A reset looks at its token before it hashes anything, so made-up tokens cost one index
//! probe, not a hashing slot.

use actix_web::{post, web, HttpRequest, HttpResponse};
use observe_core::auth;
use observe_core::keys::Scope;
use observe_core::mail;
use observe_core::ratelimit::Budget;
use observe_core::store::accounts;
use observe_core::store::sessions;
use observe_core::store::tokens;

use super::{
    confirm_password, frontend_link, send_token_email, signed_in_user, Accepted,
    ChangePasswordRequest, ForgotPasswordRequest, ResetPasswordRequest, EMAIL_TOKEN_MINUTES,
};
use crate::error::ApiError;
use crate::session::{device_cookie, spend_budget, Against, Attempt, Session};
use crate::state::AppState;
use crate::validate::Problems;

/// Changes the password; every other session of the user is signed out (their access tokens
/// too), and links emailed before (reset, email change) stop working.
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "changed"),
        (status = 401, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/change-password")]
pub async fn change_password(
    req: HttpRequest,
    session: Session,
    state: web::Data<AppState>,
    body: web::Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    problems.password(
        "new_password",
        &body.new_password,
        state.settings.auth.password_min_length,
    );
    problems.finish()?;

    let user = signed_in_user(&state, &session).await?;
    confirm_password(
        &req,
        &state,
        &session,
        &user,
        body.current_password.clone(),
        "the current password is incorrect",
    )
    .await?;
    let hash = state.passwords.hash(body.new_password.clone()).await?;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    accounts::set_password(&tx, user.id, &hash).await?;
    // The session making the change stays; every other one ends.
    let revoked = sessions::revoke_all_for_user(&tx, user.id, Some(session.session_id)).await?;
    tokens::spend_all_for_user(&tx, user.id).await?;
    tx.commit().await?;
    state.sessions.forget(Scope::User(user.id));
    tracing::info!(user_id = %user.id, sessions_revoked = revoked, "password changed");
    Ok(HttpResponse::NoContent().finish())
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
    let mut problems = Problems::default();
    let email = problems.email("email", &body.email);
    problems.finish()?;
    spend_budget(&req, &state, Budget::EmailsPerIp).await?;
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
    let issued = send_token_email(
        state,
        user.id,
        tokens::Expect::Email(&user.email),
        tokens::Purpose::PasswordReset,
        None,
        |secret| {
            let link = frontend_link(state, "/reset-password", secret);
            mail::password_reset(&user.email, &user.name, &link, EMAIL_TOKEN_MINUTES)
        },
    )
    .await?;
    if issued == tokens::Issued::AccountChanged {
        tracing::info!(user_id = %user.id, "account changed meanwhile: no reset link sent");
    }
    Ok(())
}

/// Sets a new password with a token from a reset email (once). Signs out every session and
/// voids every other link emailed before. The browser that did it becomes a known device of
/// the account (it proved the mailbox: OWASP issues a device cookie for a valid reset link),
/// which is how an owner locked out by strangers gets back in from a new device.
#[utoipa::path(
    tag = "auth",
    request_body = ResetPasswordRequest,
    responses(
        (status = 204, description = "password set"),
        (status = 400, body = crate::error::ErrorBody, description = "`invalid_token`: unknown, used or expired"),
        (status = 422, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/reset-password")]
pub async fn reset_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ResetPasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    problems.password(
        "new_password",
        &body.new_password,
        state.settings.auth.password_min_length,
    );
    problems.finish()?;
    let attempt = Attempt::begin(&req, &state, Against::Client).await?;
    let secret = body.token.trim();
    let token = auth::hash_secret(secret);
    // The token first (one index probe), the password hash only for a token that is good.
    let checked = if auth::token_shaped(secret) {
        match state.db.get().await {
            Ok(client) => tokens::valid(&client, &token, tokens::Purpose::PasswordReset)
                .await
                .map_err(ApiError::from),
            Err(e) => Err(e.into()),
        }
    } else {
        Ok(None)
    };
    if attempt.settle(&state, checked).await?.is_none() {
        return Err(ApiError::InvalidToken);
    }
    let hash = state.passwords.hash(body.new_password.clone()).await?;
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    tokens::lock_owner(&tx, &token).await?;
    // Spent for good here: a concurrent reset with the same link may have come first.
    let Some((user_id, _)) = tokens::spend(&tx, &token, tokens::Purpose::PasswordReset).await?
    else {
        return Err(ApiError::InvalidToken);
    };
    accounts::set_password(&tx, user_id, &hash).await?;
    sessions::revoke_all_for_user(&tx, user_id, None).await?;
    tokens::spend_all_for_user(&tx, user_id).await?;
    let user = accounts::user_by_id(&tx, user_id).await?;
    tx.commit().await?;
    state.sessions.forget(Scope::User(user_id));
    tracing::info!(%user_id, "password reset");
    let mut reply = HttpResponse::NoContent();
    if let Some(user) = user {
        reply.cookie(device_cookie(&state, &user.email));
    }
    Ok(reply.finish())
}
