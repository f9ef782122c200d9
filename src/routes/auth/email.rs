//! Changing the account's address: asked for with the password, completed by a link sent to
//! the new address. The link is stored only while the asking session stands, under the
//! account's row lock, so a takeover or reset racing the request cannot miss it. Confirming
//! re-checks the account: a link made before its credentials last changed (a password change
//! or reset, a takeover by the address's owner, an earlier change of address) no longer works;
//! and the change itself voids every link emailed before it, reset links sent to the old
//! address first of all.

use actix_web::{post, web, HttpRequest, HttpResponse};
use observe_core::auth;
use observe_core::mail;
use observe_core::ratelimit::Budget;
use observe_core::store::tokens;
use observe_core::store::{accounts, StoreError};

use super::{
    confirm_password, frontend_link, send_token_email, signed_in_user, Accepted,
    ChangeEmailRequest, ConfirmEmailRequest, UserView,
};
use crate::error::ApiError;
use crate::session::{spend_budget, Against, Attempt, Session};
use crate::state::AppState;
use crate::validate::Problems;

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
        (status = 429, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/change-email")]
pub async fn change_email(
    req: HttpRequest,
    session: Session,
    state: web::Data<AppState>,
    body: web::Json<ChangeEmailRequest>,
) -> Result<HttpResponse, ApiError> {
    let mut problems = Problems::default();
    let new_email = problems.email("new_email", &body.new_email);
    problems.finish()?;
    let user = signed_in_user(&state, &session).await?;
    confirm_password(
        &req,
        &state,
        &session,
        &user,
        body.password.clone(),
        "the password is incorrect",
    )
    .await?;
    {
        let client = state.db.get().await?;
        if accounts::user_by_email(&client, &new_email)
            .await?
            .is_some()
        {
            return Err(ApiError::Conflict(
                "an account with this email already exists",
            ));
        }
    }
    spend_budget(&req, &state, Budget::EmailsPerIp).await?;
    let link_state = state.clone();
    let name = user.name.clone();
    let to = new_email.clone();
    let issued = send_token_email(
        &state,
        user.id,
        tokens::Expect::LiveSession(session.session_id),
        tokens::Purpose::EmailChange,
        Some(&new_email),
        |secret| {
            let link = frontend_link(&link_state, "/confirm-email", secret);
            mail::email_change(&name, &to, &link)
        },
    )
    .await?;
    if issued == tokens::Issued::AccountChanged {
        // Revoked while this request ran (a takeover, a reset, a password change elsewhere).
        return Err(ApiError::Unauthorized {
            code: "session_ended",
            message: "this session has ended (signed out, expired or revoked); sign in again",
        });
    }
    Ok(HttpResponse::Accepted().json(Accepted { status: "accepted" }))
}

/// Completes an email change with the token from the link sent to the new address.
#[utoipa::path(
    tag = "auth",
    request_body = ConfirmEmailRequest,
    responses(
        (status = 200, body = UserView),
        (status = 400, body = crate::error::ErrorBody, description = "`invalid_token`: unknown, used, expired, or made before the account's credentials last changed"),
        (status = 409, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody),
    )
)]
#[post("/auth/confirm-email")]
pub async fn confirm_email(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ConfirmEmailRequest>,
) -> Result<web::Json<UserView>, ApiError> {
    let attempt = Attempt::begin(&req, &state, Against::Client).await?;
    let secret = body.token.trim();
    let confirmed = if auth::token_shaped(secret) {
        confirm(&state, &auth::hash_secret(secret)).await
    } else {
        Ok(None)
    };
    let user = attempt
        .settle(&state, confirmed)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    Ok(web::Json(user.into()))
}

/// Spends the email-change token hashed `token` and moves its account to the new address;
/// `None` for a token that is no good.
async fn confirm(state: &AppState, token: &[u8]) -> Result<Option<accounts::User>, ApiError> {
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    // The account's row is locked first, so a takeover or reset of it either comes before
    // (and the token is void by then) or waits for this change to finish.
    tokens::lock_owner(&tx, token).await?;
    let Some((user_id, Some(new_email))) =
        tokens::spend(&tx, token, tokens::Purpose::EmailChange).await?
    else {
        return Ok(None);
    };
    match accounts::set_email(&tx, user_id, &new_email).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(
                "an account with this email already exists",
            ))
        }
        other => other?,
    }
    let user = accounts::user_by_id(&tx, user_id).await?;
    tx.commit().await?;
    Ok(user)
}
