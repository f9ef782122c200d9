//! Changing the account's address: asked for with the password, completed by a link sent to
//! the new address. Confirming re-checks the account: a link made before its credentials last
//! changed (a password change or reset, a takeover by the address's owner) no longer works.

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
use crate::session::{spend_budget, Attempt, Session};
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
    let attempt = Attempt::begin(&req, &state, None).await?;
    let token = auth::hash_secret(body.token.trim());
    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    // The account's row is locked first, so a takeover or reset of it either comes before
    // (and the token is void by then) or waits for this change to finish.
    tokens::lock_owner(&tx, &token).await?;
    let Some((user_id, Some(new_email))) =
        tokens::spend(&tx, &token, tokens::Purpose::EmailChange).await?
    else {
        drop(tx);
        attempt.failed(&state).await;
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
