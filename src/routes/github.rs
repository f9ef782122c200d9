//! Sign in with GitHub: `/auth/github/login` sends the browser to GitHub with a `state` also
//! kept in an HttpOnly cookie; `/auth/github/callback` checks the two match (so the callback
//! cannot be forged into another browser's session), exchanges the code, finds or creates the
//! user, and ends by redirecting to `FRONTEND_URL` with the refresh-token cookie set. The
//! dashboard then calls `POST /auth/refresh` for an access token. Failures also end at the
//! frontend, as `FRONTEND_URL/login?error=<reason>`.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::header;
use actix_web::{get, web, HttpRequest, HttpResponse};
use observe_core::auth::random_token;
use observe_core::github::{self, GithubError};
use observe_core::keys::Scope;
use observe_core::store::sessions;
use observe_core::store::tokens;
use observe_core::store::{accounts, StoreError};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::routes::auth::{session_cookie, start_session};
use crate::session::device_cookie;
use crate::state::AppState;

const STATE_COOKIE: &str = "oauth_state";
const STATE_PATH: &str = "/auth/github";

fn state_cookie(value: String, secure: bool, max_age_secs: i64) -> Cookie<'static> {
    Cookie::build(STATE_COOKIE, value)
        .path(STATE_PATH)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(time::Duration::seconds(max_age_secs))
        .finish()
}

/// Starts GitHub sign-in: redirects to GitHub's consent page.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 302, description = "to GitHub, with the `oauth_state` cookie set"),
        (status = 404, body = crate::error::ErrorBody, description = "`not_configured`: no GitHub client configured"),
    )
)]
#[get("/auth/github/login")]
pub async fn github_login(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let settings = &state.settings.github;
    if !github::configured(settings) {
        return Err(ApiError::NotConfigured("GitHub sign-in is not configured"));
    }
    let oauth_state = random_token().secret;
    Ok(HttpResponse::Found()
        .insert_header((
            header::LOCATION,
            github::authorize_url(settings, &oauth_state),
        ))
        .cookie(state_cookie(
            oauth_state,
            state.settings.auth.cookie_secure,
            600,
        ))
        .finish())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set by GitHub when the user declined (`access_denied`).
    pub error: Option<String>,
}

/// Where GitHub sends the browser back. Ends with a redirect to `FRONTEND_URL`.
#[utoipa::path(
    tag = "auth",
    params(CallbackQuery),
    responses((status = 302, description = "to FRONTEND_URL signed in, or to FRONTEND_URL/login?error=<reason>"))
)]
#[get("/auth/github/callback")]
pub async fn github_callback(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<CallbackQuery>,
    http: web::Data<observe_core::mail::HttpClient>,
) -> Result<HttpResponse, ApiError> {
    let secure = state.settings.auth.cookie_secure;
    let fail = |reason: &str| {
        tracing::info!(reason, "GitHub sign-in failed");
        let back = state
            .settings
            .dashboard_link(&format!("/login?error={reason}"));
        Ok(HttpResponse::Found()
            .insert_header((header::LOCATION, back))
            .cookie(state_cookie(String::new(), secure, 0))
            .finish())
    };

    let expected = req.cookie(STATE_COOKIE).map(|c| c.value().to_string());
    let matches = match (&expected, &query.state) {
        (Some(expected), Some(given)) if !expected.is_empty() => {
            bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
        }
        _ => false,
    };
    if !matches {
        return fail("invalid_state");
    }
    if let Some(error) = &query.error {
        return fail(if error == "access_denied" {
            "access_denied"
        } else {
            "github_error"
        });
    }
    let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
        return fail("missing_code");
    };
    let gh = match github::user_for_code(&http, &state.settings.github, code).await {
        Ok(gh) => gh,
        Err(GithubError::NoVerifiedEmail) => return fail("github_email_unverified"),
        Err(GithubError::CodeRejected(_)) => return fail("invalid_code"),
        Err(GithubError::NotConfigured) => return fail("not_configured"),
        Err(e) => {
            tracing::warn!(error = %e, "GitHub sign-in could not complete");
            return fail("github_unavailable");
        }
    };

    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    let mut taken_over = None;
    let user = match accounts::user_by_github_id(&tx, gh.id).await? {
        Some(user) => user,
        None => match accounts::user_by_email(&tx, &gh.email).await? {
            // Same proven address: the same person; link the accounts.
            Some(user) if user.email_verified => user,
            // An account whose registrant never proved the address: GitHub just proved it
            // belongs to this person, so they get it, and whatever someone else may have set
            // up on it in advance stops working: the password, every session (access tokens
            // included), and every emailed link (a pending move to another address).
            Some(user) => {
                accounts::claim_unverified(&tx, user.id).await?;
                sessions::revoke_all_for_user(&tx, user.id, None).await?;
                tokens::spend_all_for_user(&tx, user.id).await?;
                taken_over = Some(user.id);
                tracing::warn!(user_id = %user.id, "unverified account taken over by the GitHub user who proved its address");
                user
            }
            None => {
                let name = gh
                    .name
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| gh.login.clone());
                let org_name = format!("{name}'s organisation");
                match accounts::create_user_with_organisation(
                    &tx, &gh.email, &name, None, true, &org_name,
                )
                .await
                {
                    Ok((user, _)) => user,
                    // A second callback for the same new account raced this one.
                    Err(StoreError::Conflict(_)) => return fail("try_again"),
                    Err(e) => return Err(e.into()),
                }
            }
        },
    };
    accounts::link_github(&tx, gh.id, user.id, &gh.login).await?;
    let Some((org, _)) = accounts::primary_membership(&tx, user.id).await? else {
        return fail("no_organisation");
    };
    let session = start_session(&tx, &state, user.id, org.id).await?;
    tx.commit().await?;
    if let Some(user_id) = taken_over {
        state.sessions.forget(Scope::User(user_id));
    }
    tracing::info!(user_id = %user.id, github_login = %gh.login, "signed in with GitHub");
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, state.settings.dashboard_link("")))
        .cookie(session_cookie(&state, session.refresh_token))
        .cookie(device_cookie(&state, &user.email))
        .cookie(state_cookie(String::new(), secure, 0))
        .finish())
}
