//! Who is calling: the access-token extractor (checked against its session), the API-key
//! extractor, the refresh-token cookie, the client's IP, and the budgets of the auth
//! endpoints.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use observe_core::cache::Source;
use observe_core::ratelimit::{account_of, client_of, Budget, Decision};
use observe_core::sessions::Ended;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The refresh token's cookie: HttpOnly, `SameSite=Lax`, sent only to `/auth`.
pub const REFRESH_COOKIE: &str = "refresh_token";

/// A caller authenticated by an access token (`Authorization: Bearer <jwt>`) whose session
/// still stands: not signed out or revoked, within its lifetime, and its user still a member
/// of the organisation the token names.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub user_id: Uuid,
    pub org_id: Uuid,
    /// When the access token was issued (seconds since the epoch).
    pub issued_at: i64,
    /// The session (refresh family) the token belongs to.
    pub session_id: Uuid,
    /// When the user really authenticated (seconds since the epoch); refreshes keep it.
    pub auth_time: i64,
}

impl FromRequest for Session {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req).map(str::to_string);
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("app state missing")))?;
            session(&state, token.as_deref()).await
        })
    }
}

async fn session(state: &AppState, token: Option<&str>) -> Result<Session, ApiError> {
    let token = token.ok_or_else(ApiError::unauthorized)?;
    let claims = state
        .tokens
        .verify(token)
        .map_err(|_| ApiError::Unauthorized {
            code: "invalid_token",
            message:
                "the access token is invalid or expired; refresh it through POST /auth/refresh",
        })?;
    match state.sessions.check(&state.db, &claims).await? {
        Ok(()) => Ok(Session {
            user_id: claims.sub,
            org_id: claims.org,
            issued_at: claims.iat,
            session_id: claims.sid,
            auth_time: claims.auth_time,
        }),
        Err(why) => {
            tracing::info!(session_id = %claims.sid, reason = ?why, "access token of an ended session refused");
            Err(ApiError::Unauthorized {
                code: "session_ended",
                message: match why {
                    Ended::NotAMember => {
                        "this session's user no longer belongs to its organisation; sign in again"
                    }
                    _ => "this session has ended (signed out, expired or revoked); sign in again",
                },
            })
        }
    }
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
/// `X-API-Key: <key>`. Answered from memory after the first use of a key. A key that is not
/// of the issued shape is refused without a lookup; a client whose lookups keep finding
/// nothing is refused (429) before it can reach the database again.
#[derive(Debug, Clone, Copy)]
pub struct ApiKey(pub observe_core::store::api_keys::KeyOwner);

impl FromRequest for ApiKey {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let secret = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| bearer(req))
            .map(str::to_string);
        let client = state
            .as_ref()
            .map(|s| client_key(req, &s.settings.server.client_ip_header));
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("app state missing")))?;
            let secret = secret
                .filter(|s| observe_core::keys::well_formed(s))
                .ok_or(ApiError::Unauthorized {
                    code: "invalid_api_key",
                    message: "send a valid project API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                })?;
            let unknown = ApiError::Unauthorized {
                code: "invalid_api_key",
                message: "the API key is unknown or revoked",
            };
            if let Some(answer) = state.keys.cached(&secret) {
                return answer.map(ApiKey).ok_or(unknown);
            }
            let client = client.unwrap_or_default();
            let limits = &state.auth_limits;
            refuse_if_spent(limits.peek(Budget::KeyLookupsPerIp, &client).await)?;
            let (owner, source) = state.keys.authenticate(&state.db, &secret).await?;
            if owner.is_none() && source == Source::Database {
                limits.spend(Budget::KeyLookupsPerIp, &client).await;
            }
            owner.map(ApiKey).ok_or(unknown)
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

/// The client a request's budgets are kept for: its IPv4 address or its IPv6 /64.
pub fn client_key(req: &HttpRequest, trusted_header: &str) -> String {
    let ip = client_ip(req, trusted_header);
    // A proxy may write `[v6]:port` or `v4:port`; the address is what counts.
    let bare = ip
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .unwrap_or(&ip);
    match bare.parse::<IpAddr>() {
        Ok(addr) => client_of(addr),
        Err(_) => match bare
            .rsplit_once(':')
            .map(|(host, _)| host.parse::<IpAddr>())
        {
            Some(Ok(addr)) => client_of(addr),
            _ => ip,
        },
    }
}

/// 429 with `Retry-After` when a budget has no room.
fn refuse_if_spent(decision: Decision) -> Result<(), ApiError> {
    if decision.allowed {
        return Ok(());
    }
    let wait = decision.retry_after.max(Duration::from_secs(1));
    Err(ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil() as u64,
        limit: decision.limit,
    })
}

/// An attempt that checks a secret (a password, an emailed token): who it counts against if
/// it fails.
pub struct Attempt {
    client: String,
    account: Option<String>,
}

impl Attempt {
    /// Refuses (429) an attempt from a client or on an account whose failure budget is spent,
    /// before the secret is checked: past the budget, not even the right password gets in, so
    /// guessing goes no faster. Nothing is spent yet.
    pub async fn begin(
        req: &HttpRequest,
        state: &AppState,
        account_email: Option<&str>,
    ) -> Result<Self, ApiError> {
        let attempt = Self {
            client: client_key(req, &state.settings.server.client_ip_header),
            account: account_email.map(account_of),
        };
        let limits = &state.auth_limits;
        refuse_if_spent(limits.peek(Budget::FailuresPerIp, &attempt.client).await)?;
        if let Some(account) = &attempt.account {
            refuse_if_spent(limits.peek(Budget::FailuresPerAccount, account).await)?;
        }
        Ok(attempt)
    }

    /// Counts the attempt as failed against its client and account.
    pub async fn failed(&self, state: &AppState) {
        let limits = &state.auth_limits;
        limits.spend(Budget::FailuresPerIp, &self.client).await;
        if let Some(account) = &self.account {
            limits.spend(Budget::FailuresPerAccount, account).await;
        }
    }
}

/// Spends one unit of a budget every attempt uses (registration, outgoing email): 429 past it.
pub async fn spend_budget(
    req: &HttpRequest,
    state: &AppState,
    budget: Budget,
) -> Result<(), ApiError> {
    let client = client_key(req, &state.settings.server.client_ip_header);
    refuse_if_spent(state.auth_limits.spend(budget, &client).await)
}
