//! Who is calling: the access-token extractor (checked against its session), the API-key
//! extractor, the refresh-token and device cookies, the client's IP, and the budgets of the
//! auth endpoints: an attempt at a secret is paid for before the secret is checked and paid
//! back when it was right ([`Attempt`]), so bursts of parallel guesses count in full.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use observe_core::keys::KeyLookup;
use observe_core::ratelimit::{client_of, AuthLimits, Budget, Decision, Device};
use observe_core::sessions::Ended;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The refresh token's cookie: HttpOnly, `SameSite=Lax`, sent only to `/auth`.
pub const REFRESH_COOKIE: &str = "refresh_token";

/// The device cookie of a browser that signed in (OWASP device cookies): HttpOnly,
/// `SameSite=Lax`, sent only to `/auth`.
pub const DEVICE_COOKIE: &str = "device";

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
            let budget = ClientLookups {
                limits: &state.auth_limits,
                client: &client,
            };
            match state
                .keys
                .authenticate(&state.db, &secret, &budget)
                .await?
                .0
            {
                KeyLookup::Owner(owner) => Ok(ApiKey(owner)),
                KeyLookup::Unknown => Err(unknown),
                KeyLookup::Refused(decision) => Err(rate_limited(decision)),
            }
        })
    }
}

/// The key behind `credential` (an `obs_` key or a DSN key), with the same cache, lookup
/// budget and refusals as the [`ApiKey`] extractor: `None` for an unknown or revoked key
/// (or one not of an issued shape, refused unlooked). For routes that find the credential in
/// the request themselves (the Sentry endpoints).
pub async fn authenticate_credential(
    state: &AppState,
    req: &HttpRequest,
    credential: observe_core::keys::Credential<'_>,
) -> Result<Option<observe_core::store::api_keys::KeyOwner>, ApiError> {
    if !credential.well_formed() {
        return Ok(None);
    }
    if let Some(answer) = state.keys.cached_credential(credential) {
        return Ok(answer);
    }
    let client = client_key(req, &state.settings.server.client_ip_header);
    let budget = ClientLookups {
        limits: &state.auth_limits,
        client: &client,
    };
    match state
        .keys
        .authenticate_credential(&state.db, credential, &budget)
        .await?
        .0
    {
        KeyLookup::Owner(owner) => Ok(Some(owner)),
        KeyLookup::Unknown => Ok(None),
        KeyLookup::Refused(decision) => Err(rate_limited(decision)),
    }
}

/// A client's budget of key lookups: paid before a lookup runs, paid back when it finds a key.
struct ClientLookups<'a> {
    limits: &'a AuthLimits,
    client: &'a str,
}

impl observe_core::keys::LookupBudget for ClientLookups<'_> {
    async fn spend(&self) -> Result<(), Decision> {
        let decision = self
            .limits
            .spend(Budget::KeyLookupsPerIp, self.client)
            .await;
        if decision.allowed {
            Ok(())
        } else {
            Err(decision)
        }
    }

    async fn refund(&self) {
        self.limits
            .refund(Budget::KeyLookupsPerIp, self.client)
            .await;
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

/// A new device cookie for a browser that just signed in to the account of `email`: from now
/// on it is a known device of that account, with a failure budget of its own.
pub fn device_cookie(state: &AppState, email: &str) -> Cookie<'static> {
    let subjects = state.auth_limits.subjects();
    let value = subjects.new_device_cookie(&subjects.account(email));
    let days = state.settings.auth.device_cookie_days;
    Cookie::build(DEVICE_COOKIE, value)
        .path("/auth")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.settings.auth.cookie_secure)
        .max_age(time::Duration::days(
            i64::try_from(days).unwrap_or(i64::MAX / 86_400),
        ))
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

/// 429 with `Retry-After` for a budget with no room.
fn rate_limited(decision: Decision) -> ApiError {
    let wait = decision.retry_after.max(Duration::from_secs(1));
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil() as u64,
        limit: decision.limit,
    }
}

/// 429 with `Retry-After` when a budget has no room.
fn refuse_if_spent(decision: Decision) -> Result<(), ApiError> {
    if decision.allowed {
        Ok(())
    } else {
        Err(rate_limited(decision))
    }
}

/// Whose failure budgets an attempt at a secret counts against, besides its client's.
#[derive(Debug, Clone, Copy)]
pub enum Against<'a> {
    /// The client only (an emailed token, a refresh cookie: no account is named).
    Client,
    /// The account of this email: its budget, or, from a browser holding a device cookie of
    /// that account, the device's own (OWASP device cookies: strangers spending the account's
    /// budget lock out unknown clients, not the owner's browser).
    Account(&'a str),
    /// A signed-in session confirming its password: a trusted client with a budget of its own.
    Session(Uuid),
}

/// What checking an attempt's secret gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Right,
    Wrong,
    /// Never checked (hashing slots busy, storage away).
    Unchecked,
}

/// An attempt at a secret (a password, an emailed token, a refresh cookie), paid for before
/// the secret is checked.
#[must_use = "settle the attempt with what checking the secret gave"]
pub struct Attempt {
    spent: Vec<(Budget, String)>,
}

impl Attempt {
    /// Spends one failure of the client's budget and of the one `against` names, atomically
    /// each: past either budget the attempt is refused (429) before the secret is checked, so
    /// guessing goes no faster, and what it took of the other is given back. Paying first means
    /// a burst of parallel attempts cannot all pass a check made before any of them failed; a
    /// request cancelled midway stays paid for.
    pub async fn begin(
        req: &HttpRequest,
        state: &AppState,
        against: Against<'_>,
    ) -> Result<Self, ApiError> {
        let limits = &state.auth_limits;
        let client = client_key(req, &state.settings.server.client_ip_header);
        let second = match against {
            Against::Client => None,
            Against::Account(email) => {
                let subjects = limits.subjects();
                let account = subjects.account(email);
                let device = req
                    .cookie(DEVICE_COOKIE)
                    .and_then(|c| subjects.device(c.value(), &account));
                Some(match device {
                    Some(device) => (Budget::FailuresPerDevice, device.as_str().to_string()),
                    None => (Budget::FailuresPerAccount, account),
                })
            }
            Against::Session(id) => Some((
                Budget::FailuresPerDevice,
                Device::session(id).as_str().to_string(),
            )),
        };
        let mut attempt = Self { spent: Vec::new() };
        for (budget, subject) in std::iter::once((Budget::FailuresPerIp, client)).chain(second) {
            let decision = limits.spend(budget, &subject).await;
            if !decision.allowed {
                attempt.give_back(state).await;
                return Err(rate_limited(decision));
            }
            attempt.spent.push((budget, subject));
        }
        Ok(attempt)
    }

    /// Settles the attempt with what checking its secret gave: right (`Ok(Some)`) gives the
    /// budgets back; wrong (`Ok(None)`) leaves them spent; an error means the secret was never
    /// checked (hashing slots busy, storage away), so they are given back too.
    pub async fn settle<T>(
        self,
        state: &AppState,
        checked: Result<Option<T>, ApiError>,
    ) -> Result<Option<T>, ApiError> {
        let outcome = match &checked {
            Ok(Some(_)) => Outcome::Right,
            Ok(None) => Outcome::Wrong,
            Err(_) => Outcome::Unchecked,
        };
        self.close(state, outcome).await;
        checked
    }

    /// Settles the attempt with its outcome: only a wrong secret stays paid for.
    pub async fn close(self, state: &AppState, outcome: Outcome) {
        if outcome != Outcome::Wrong {
            self.give_back(state).await;
        }
    }

    async fn give_back(&self, state: &AppState) {
        for (budget, subject) in &self.spent {
            state.auth_limits.refund(*budget, subject).await;
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
