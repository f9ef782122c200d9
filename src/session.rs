//! Who is calling: the access-token extractor, the refresh-token cookie, the client's IP and
//! the auth endpoints' rate limit.

use std::future::{ready, Ready};
use std::time::Duration;

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The refresh token's cookie: HttpOnly, `SameSite=Lax`, sent only to `/auth`.
pub const REFRESH_COOKIE: &str = "refresh_token";

/// A caller authenticated by an access token (`Authorization: Bearer <jwt>`).
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub user_id: Uuid,
    pub org_id: Uuid,
    /// When the access token was issued (seconds since the epoch).
    pub issued_at: i64,
}

impl FromRequest for Session {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(session(req))
    }
}

fn session(req: &HttpRequest) -> Result<Session, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("app state missing")))?;
    let token = bearer(req).ok_or_else(ApiError::unauthorized)?;
    let claims = state
        .tokens
        .verify(token)
        .map_err(|_| ApiError::Unauthorized {
            code: "invalid_token",
            message:
                "the access token is invalid or expired; refresh it through POST /auth/refresh",
        })?;
    Ok(Session {
        user_id: claims.sub,
        org_id: claims.org,
        issued_at: claims.iat,
    })
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An SDK authenticated by a project API key: `Authorization: Bearer <key>` or
/// `X-API-Key: <key>`. Answered from memory after the first use of a key.
#[derive(Debug, Clone, Copy)]
pub struct ApiKey(pub observe_core::store::api_keys::KeyOwner);

impl FromRequest for ApiKey {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let secret = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| bearer(req))
            .map(str::to_string);
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("app state missing")))?;
            let invalid = ApiError::Unauthorized {
                code: "invalid_api_key",
                message: "send a valid project API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            };
            let secret = secret
                .filter(|s| s.starts_with(observe_core::auth::API_KEY_PREFIX))
                .ok_or(invalid)?;
            let owner = state.keys.authenticate(&state.db, &secret).await?;
            owner.map(ApiKey).ok_or(ApiError::Unauthorized {
                code: "invalid_api_key",
                message: "the API key is unknown or revoked",
            })
        })
    }
}

/// The refresh-token cookie carrying `value`, valid for `max_age`.
pub fn refresh_cookie(value: String, max_age: Duration, secure: bool) -> Cookie<'static> {
    Cookie::build(REFRESH_COOKIE, value)
        .path("/auth")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(time::Duration::seconds(max_age.as_secs() as i64))
        .finish()
}

/// A cookie that makes the browser forget the refresh token.
pub fn cleared_refresh_cookie(secure: bool) -> Cookie<'static> {
    let mut cookie = refresh_cookie(String::new(), Duration::ZERO, secure);
    cookie.make_removal();
    cookie
}

/// The client's IP: the TCP peer, unless configuration names a header set by a trusted
/// proxy. From such a header the last entry is taken: the one the proxy itself appended, as
/// everything before it came from the client and can be forged.
pub fn client_ip(req: &HttpRequest, trusted_header: &str) -> String {
    let from_header = (!trusted_header.is_empty())
        .then(|| req.headers().get(trusted_header))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    match from_header {
        Some(ip) => ip.to_string(),
        None => req
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "unknown".to_string()),
    }
}

/// Counts one attempt on an auth endpoint against the client's IP: 429 past the limit. When
/// Redis is down the attempt is let through (logged): signing in must not depend on Redis.
pub async fn limit_auth_attempt(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let auth = &state.settings.auth;
    let ip = client_ip(req, &state.settings.server.client_ip_header);
    let key = format!("{}ratelimit:auth:{ip}", state.settings.redis.key_prefix);
    let window = Duration::from_secs(auth.rate_limit_window_secs);
    match observe_core::ratelimit::hit(&state.redis, &key, auth.rate_limit_attempts, window).await {
        Ok(d) if !d.allowed => Err(ApiError::RateLimited {
            retry_after_secs: d.reset_after.as_secs_f64().ceil().max(1.0) as u64,
            limit: d.limit,
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "auth rate limit unavailable; attempt allowed");
            Ok(())
        }
    }
}
