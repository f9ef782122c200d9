//! The endpoints Sentry SDKs send to: `POST /api/{numeric_id}/envelope/` and the older
//! `POST /api/{numeric_id}/store/`. A user sets `SENTRY_DSN` to the DSN a key shows
//! (`{scheme}://{dsn_key}@{host}/{numeric_id}`), and the official SDKs' errors become observe
//! error groups and their HTTP server transactions observe API requests.
//!
//! One request, in order: the credential is found where SDKs put it — the `X-Sentry-Auth`
//! header (`Sentry sentry_key=…, sentry_version=7, …`, or the same in `Authorization`), the
//! `sentry_key` query parameter (browser SDKs), or else the `dsn` of the envelope's header —
//! and it may be a key's DSN key or the `obs_` key itself; the body is read as for
//! `/ingest/*` (same size limits, budget and timeout; gzip, deflate, br or zstd); the envelope
//! is parsed ([`observe_core::sentry::envelope`]) and its items translated
//! ([`observe_core::sentry::event`]) into observe's own items, which are validated like any
//! other; then errors and requests each go through [`super::ingest::submit`]: the key's rate
//! limit and the organisation's monthly cap for the category, the project's IngestActor and
//! its group commit. `200 {"id": "<event_id>"}` is answered only once they are committed.
//!
//! Sessions, client reports, attachments, user reports, transactions that are not HTTP server
//! requests and unknown item types are accepted and dropped, counted in
//! `observe_sentry_items_total{type, outcome="dropped"}`.
//!
//! Refusals use observe's error shape with the status SDKs act on: 401 for an unknown or
//! revoked key, 403 for a key of another project, 429 with `Retry-After` and
//! `X-Sentry-Rate-Limits` (`{seconds}:{categories}:{scope}[:{reason}]`, categories `error` and
//! `transaction`) so each SDK backs off per category, 503 with `Retry-After` when ingestion is
//! unavailable.

use actix_cors::Cors;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use observe_core::ingest::{Category, Context, Items, Kind};
use observe_core::keys::Credential;
use observe_core::sentry::envelope::{self as parser, EnvelopeHeader, ItemType, Limits};
use observe_core::sentry::event::{self, EventContext};
use observe_core::store::api_keys::KeyOwner;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ingest::{rate_check, read_body, submit, Rejection};
use crate::error::ApiError;
use crate::session::{authenticate_credential, client_ip};
use crate::state::AppState;

/// What a Sentry SDK is answered when its items are stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stored {
    /// The event's id (32 hex digits), as the SDK sent it.
    #[schema(example = "fc6d8c0c43fc4630ad850ee518f1b9d0")]
    pub id: Option<String>,
}

/// CORS for the Sentry endpoints: the ingest scope's (any origin, POST), with the header SDKs
/// authenticate with and the one they back off by.
pub fn cors() -> Cors {
    super::ingest::cors()
        .allowed_header(HeaderName::from_static("x-sentry-auth"))
        .expose_headers([HeaderName::from_static("x-sentry-rate-limits")])
}

/// Which endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Envelope,
    Store,
}

/// An envelope of items (Sentry's envelope format): events become errors, HTTP server
/// transactions become API requests; other items are accepted and dropped.
#[utoipa::path(
    tag = "sentry",
    params(
        ("project_id" = i64, Path, description = "The project's `numeric_id` (the DSN's last part)"),
        ("sentry_key" = Option<String>, Query, description = "The DSN's key, when not in `X-Sentry-Auth`"),
    ),
    request_body(content = String, content_type = "application/x-sentry-envelope", description = "An envelope; may be gzip, deflate, br or zstd encoded"),
    responses(
        (status = 200, description = "Committed", body = Stored),
        (status = 400, description = "Not an envelope, or an event observe cannot read", body = crate::error::ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = crate::error::ErrorBody),
        (status = 403, description = "The key belongs to another project", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 422, description = "Items that fail observe's validation; nothing stored", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limit or monthly quota: `Retry-After` and `X-Sentry-Rate-Limits`", body = crate::error::ErrorBody),
        (status = 503, description = "Ingestion unavailable; retry after `Retry-After`", body = crate::error::ErrorBody),
    )
)]
#[post("/{project_id}/envelope/")]
pub async fn envelope(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(Endpoint::Envelope, req, path.into_inner(), payload, state).await
}

/// One event as a JSON body (the endpoint of older SDKs): it becomes an error.
#[utoipa::path(
    tag = "sentry",
    params(
        ("project_id" = i64, Path, description = "The project's `numeric_id` (the DSN's last part)"),
        ("sentry_key" = Option<String>, Query, description = "The DSN's key, when not in `X-Sentry-Auth`"),
    ),
    request_body(content = Object, description = "A Sentry event; may be gzip, deflate, br or zstd encoded"),
    responses(
        (status = 200, description = "Committed", body = Stored),
        (status = 400, description = "Not JSON, or an event observe cannot read", body = crate::error::ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked one", body = crate::error::ErrorBody),
        (status = 403, description = "The key belongs to another project", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limit or monthly quota: `Retry-After` and `X-Sentry-Rate-Limits`", body = crate::error::ErrorBody),
        (status = 503, description = "Ingestion unavailable; retry after `Retry-After`", body = crate::error::ErrorBody),
    )
)]
#[post("/{project_id}/store/")]
pub async fn store(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(Endpoint::Store, req, path.into_inner(), payload, state).await
}

/// A refusal, and the Sentry category it concerns when it is a rate limit or quota.
struct Refusal {
    rejection: Rejection,
    category: Option<&'static str>,
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Refusal {
            rejection,
            category: None,
        }
    }
}

impl From<ApiError> for Refusal {
    /// A refusal before any item was read: a bad body counts as one malformed item in
    /// `observe_ingest_items_total`, as on `/ingest/*`; a refused key or project names no item
    /// (there, the key extractor refuses before the route counts anything).
    fn from(error: ApiError) -> Self {
        let counted = match error {
            ApiError::Unauthorized { .. } | ApiError::Forbidden(_) | ApiError::NotFound => 0,
            _ => 1,
        };
        Refusal::from((error, "malformed", counted))
    }
}

async fn respond(
    endpoint: Endpoint,
    req: HttpRequest,
    project: String,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    match handle(endpoint, &req, &project, payload, &state).await {
        Ok(id) => HttpResponse::Ok().json(Stored { id }),
        Err(Refusal {
            rejection: (error, reason, items),
            category,
        }) => {
            if items > 0 {
                state.metrics.ingest.rejected("sentry", reason, items);
            }
            let limit = sentry_rate_limit(&error, category);
            let mut response = HttpResponse::from_error(error);
            if let Some(value) = limit.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static("x-sentry-rate-limits"), value);
            }
            response
        }
    }
}

/// `X-Sentry-Rate-Limits` for a rate limit or quota refusal: `{seconds}:{category}:{scope}`,
/// and `:quota_exceeded` as the reason of a monthly cap (the organisation's).
fn sentry_rate_limit(error: &ApiError, category: Option<&'static str>) -> Option<String> {
    let category = category?;
    match error {
        ApiError::RateLimited {
            retry_after_secs, ..
        } => Some(format!("{retry_after_secs}:{category}:key")),
        ApiError::QuotaExceeded {
            retry_after_secs, ..
        } => Some(format!(
            "{retry_after_secs}:{category}:organization:quota_exceeded"
        )),
        _ => None,
    }
}

/// Sentry's name of an observe category.
fn sentry_category(kind: Kind) -> &'static str {
    match kind {
        Kind::Requests => "transaction",
        _ => "error",
    }
}

async fn handle(
    endpoint: Endpoint,
    req: &HttpRequest,
    project: &str,
    payload: web::Payload,
    state: &AppState,
) -> Result<Option<String>, Refusal> {
    let received_at = Utc::now();
    // Sentry's DSN parsers accept only digits here; anything else names no project.
    let number: i64 = project.parse().map_err(|_| ApiError::NotFound)?;

    // A key sent with the request is checked before the body is read, as `/ingest/*` does: an
    // unknown key costs no body, and a key whose budgets are both spent is refused at once.
    let given = credential_in_request(req)?;
    let mut owner = None;
    if let Some(key) = &given {
        let known = authenticate(state, req, key, number).await?;
        refuse_if_both_spent(state, known).await?;
        owner = Some(known);
    }

    let mut reservation = state.ingest.budget.reserve();
    let body = read_body(req, payload, &state.settings.ingest, &mut reservation).await?;

    let limits = Limits {
        max_item_bytes: state.settings.ingest.max_body_bytes,
        ..Limits::default()
    };
    // The envelope (or the store body as one event item), its event id and DSN.
    let (header, items): (EnvelopeHeader, Vec<(ItemType, &[u8])>) = match endpoint {
        Endpoint::Envelope => {
            let parsed = parser::parse(&body, &limits).map_err(|e| {
                ApiError::BadRequest(format!("the body is not a Sentry envelope: {e}"))
            })?;
            let items = parsed
                .items
                .iter()
                .map(|i| (i.item_type.clone(), i.payload))
                .collect();
            (parsed.header, items)
        }
        Endpoint::Store => (
            EnvelopeHeader::default(),
            vec![(ItemType::Event, &body[..])],
        ),
    };

    // Else the DSN in the envelope's header (what a tunnel forwards).
    let owner = match owner {
        Some(owner) => owner,
        None => {
            let key = header
                .dsn
                .as_deref()
                .and_then(dsn_public_key)
                .ok_or(ApiError::Unauthorized {
                    code: "invalid_api_key",
                    message: "send the DSN's key as `X-Sentry-Auth: Sentry sentry_key=<key>`, as `?sentry_key=<key>`, or in the envelope's `dsn`",
                })?;
            authenticate(state, req, &key, number).await?
        }
    };

    // Translate: events into errors, HTTP server transactions into requests; the rest dropped.
    let client_ip = client_ip(req, &state.settings.server.client_ip_header);
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let ctx = EventContext {
        client_ip: Some(client_ip.as_str()),
        user_agent,
    };
    let dropped = |item: &ItemType| {
        state
            .metrics
            .ingest
            .sentry_items
            .with_label_values(&[item.as_str(), "dropped"])
            .inc();
    };
    let mut errors = Vec::new();
    let mut requests = Vec::new();
    let mut event_id = header.event_id.clone();
    // Items are numbered from 1, as the envelope parser names them.
    for (n, (item_type, payload)) in (1..).zip(items.iter()) {
        match item_type {
            ItemType::Event | ItemType::Transaction => {
                let doc: Value = serde_json::from_slice(payload).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "item {n} ({}) is not JSON: {e}",
                        item_type.as_str()
                    ))
                })?;
                if event_id.is_none() {
                    event_id = event::event_id(&doc);
                }
                if *item_type == ItemType::Event {
                    let item = event::error_item(&doc, &ctx)
                        .map_err(|e| ApiError::BadRequest(format!("item {n} (event): {e}")))?;
                    errors.push(item);
                } else if let Some(item) = event::request_item(&doc, &ctx) {
                    requests.push(item);
                } else {
                    dropped(item_type);
                }
            }
            other => dropped(other),
        }
    }
    drop(body);
    // One envelope, one commit: two categories would be two commits, one of which could fail
    // after the other (the official SDKs send events and transactions in envelopes of their
    // own, as far as we know).
    if !errors.is_empty() && !requests.is_empty() {
        return Err(ApiError::BadRequest(
            "an envelope holds events or transactions, not both (as the Sentry SDKs send them); send them in separate envelopes".into(),
        )
        .into());
    }
    let (kind, values, item_type) = if requests.is_empty() {
        (Kind::Errors, errors, ItemType::Event)
    } else {
        (Kind::Requests, requests, ItemType::Transaction)
    };
    if values.is_empty() {
        return Ok(event_id.map(|id| id.replace('-', "").to_ascii_lowercase()));
    }

    let ctx = Context {
        received_at,
        retention_days: state.tiers.retention_days(owner.tier),
    };
    let n = values.len();
    let items = Items::validate(kind, &values, &ctx, &state.settings.ingest.llm_prices)
        .map_err(|problems| Refusal::from((ApiError::InvalidItems(problems), "invalid", n)))?;
    drop(values);
    // Through the same limits, caps and group commit as `/ingest/*`, with the body's bytes.
    let mut decision = None;
    submit(state, owner, items, received_at, reservation, &mut decision)
        .await
        .map_err(|rejection| Refusal {
            rejection,
            category: Some(sentry_category(kind)),
        })?;
    state
        .metrics
        .ingest
        .sentry_items
        .with_label_values(&[item_type.as_str(), "accepted"])
        .inc_by(n as u64);
    Ok(event_id.map(|id| id.replace('-', "").to_ascii_lowercase()))
}

/// The key behind `credential`, which must speak for the project numbered `number`.
async fn authenticate(
    state: &AppState,
    req: &HttpRequest,
    credential: &str,
    number: i64,
) -> Result<KeyOwner, Refusal> {
    let credential = if credential.starts_with(observe_core::auth::API_KEY_PREFIX) {
        Credential::Secret(credential)
    } else {
        Credential::DsnKey(credential)
    };
    let owner = authenticate_credential(state, req, credential)
        .await?
        .ok_or(ApiError::Unauthorized {
            code: "invalid_api_key",
            message: "the DSN's key is unknown or revoked",
        })?;
    if owner.project_number != number {
        return Err(ApiError::Forbidden("the DSN's key belongs to another project").into());
    }
    Ok(owner)
}

/// The key sent with the request itself: `X-Sentry-Auth` (or `Authorization`) of the form
/// `Sentry sentry_key=<key>, …`, else the `sentry_key` query parameter — where only a DSN key
/// is taken: an `obs_` key in a URL would land in every proxy's access log.
fn credential_in_request(req: &HttpRequest) -> Result<Option<String>, Refusal> {
    let from_header = [
        HeaderName::from_static("x-sentry-auth"),
        header::AUTHORIZATION,
    ]
    .iter()
    .filter_map(|name| req.headers().get(name)?.to_str().ok())
    .find_map(sentry_key_in_auth);
    if from_header.is_some() {
        return Ok(from_header);
    }
    let from_query = req
        .query_string()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "sentry_key")
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty());
    if from_query
        .as_deref()
        .is_some_and(|k| k.starts_with(observe_core::auth::API_KEY_PREFIX))
    {
        return Err(ApiError::Unauthorized {
            code: "invalid_api_key",
            message: "an `obs_` key is never taken from the URL; send the DSN's key there, or the `obs_` key in `X-Sentry-Auth`",
        }
        .into());
    }
    Ok(from_query)
}

/// 429 before the body is read when the key has no room left in either category an envelope
/// may hold (errors and transactions); `X-Sentry-Rate-Limits` names both.
async fn refuse_if_both_spent(state: &AppState, owner: KeyOwner) -> Result<(), Refusal> {
    let errors = rate_check(state, owner, Category::Errors, 0).await;
    let requests = rate_check(state, owner, Category::ApiRequests, 0).await;
    if errors.remaining > 0 || requests.remaining > 0 {
        return Ok(());
    }
    let wait = errors.retry_after.min(requests.retry_after);
    Err(Refusal {
        rejection: (
            ApiError::RateLimited {
                retry_after_secs: (wait.as_millis().div_ceil(1000) as u64).max(1),
                limit: errors.limit,
            },
            "rate_limited",
            1,
        ),
        category: Some("error;transaction"),
    })
}

/// `sentry_key` of a `Sentry sentry_key=…, sentry_version=7, …` header value.
fn sentry_key_in_auth(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("sentry") {
        return None;
    }
    rest.split(',')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(name, _)| name.trim() == "sentry_key")
        .map(|(_, key)| key.trim().to_string())
        .filter(|k| !k.is_empty())
}

/// The public key of a DSN, `{scheme}://{key}[:{secret}]@{host}/…`.
fn dsn_public_key(dsn: &str) -> Option<String> {
    let (_, rest) = dsn.split_once("://")?;
    let (user, _) = rest.split_once('@')?;
    let key = user.split(':').next()?;
    (!key.is_empty()).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_found_where_sdks_put_it() {
        assert_eq!(
            sentry_key_in_auth(
                "Sentry sentry_key=abc123, sentry_version=7, sentry_client=sentry.python/2.19.0"
            )
            .as_deref(),
            Some("abc123")
        );
        assert_eq!(
            sentry_key_in_auth("Sentry sentry_version=7,sentry_key=k_1").as_deref(),
            Some("k_1")
        );
        assert_eq!(sentry_key_in_auth("Bearer obs_x"), None);
        assert_eq!(sentry_key_in_auth("Sentry sentry_version=7"), None);
        assert_eq!(sentry_key_in_auth("Sentry sentry_key="), None);
        assert_eq!(
            dsn_public_key("https://0123abcd@observe.example/42").as_deref(),
            Some("0123abcd")
        );
        assert_eq!(
            dsn_public_key("http://pub:secret@127.0.0.1:8000/7").as_deref(),
            Some("pub")
        );
        assert_eq!(dsn_public_key("observe.example/42"), None);
        assert_eq!(dsn_public_key("https://@observe.example/42"), None);
    }

    #[test]
    fn rate_limit_headers_name_the_category_and_scope() {
        let rate = ApiError::RateLimited {
            retry_after_secs: 7,
            limit: 100,
        };
        assert_eq!(
            sentry_rate_limit(&rate, Some("error")).as_deref(),
            Some("7:error:key")
        );
        let quota = ApiError::QuotaExceeded {
            category: "errors",
            retry_after_secs: 3600,
        };
        assert_eq!(
            sentry_rate_limit(&quota, Some("transaction")).as_deref(),
            Some("3600:transaction:organization:quota_exceeded")
        );
        assert_eq!(sentry_rate_limit(&rate, None), None);
        assert_eq!(sentry_rate_limit(&ApiError::NotFound, Some("error")), None);
    }
}
