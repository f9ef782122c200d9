//! API errors and the one place they become HTTP responses.
//!
//! Every error a client sees has the SPEC §10 shape
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`. Handlers return
//! [`ApiError`]; extractor failures are turned into it by the configs in [`extractor_configs`];
//! and the request middleware rewrites every other error response (actix's own 404/405, a
//! panic) into the same shape, adding the request id. Messages are written for clients: no SQL,
//! panic text or internal detail is ever put in one; those go to the log.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request is invalid: {}", .0.iter().map(|f| format!("{}: {}", f.field, f.reason)).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
    /// Missing or bad credentials; the message says which, never why in detail.
    #[error("{message}")]
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    #[error("{0}")]
    Conflict(&'static str),
    /// A feature whose outside service is not configured (no GitHub client, say).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// A token from an email link that is unknown, used or expired.
    #[error("the link is invalid, already used or expired; ask for a new one")]
    InvalidToken,
    #[error("{0}")]
    TierLimit(observe_core::tiers::LimitReached),
    /// A monitor interval shorter than the organisation's tier allows (SPEC §5).
    #[error("the {tier} tier allows monitor intervals of at least {minimum_secs} seconds")]
    IntervalBelowTier {
        tier: observe_core::tiers::Tier,
        minimum_secs: u32,
    },
    #[error("too many attempts; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64, limit: u32 },
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body must be sent as application/json")]
    UnsupportedMediaType,
    #[error("a batch holds at most {max} items; send it in smaller batches")]
    BatchTooLarge { max: usize },
    /// Ingest items that failed validation: every problem, by item index and field.
    #[error("{} invalid item field(s); nothing from this request was stored", .0.len())]
    InvalidItems(Vec<observe_core::ingest::ItemError>),
    #[error(
        "Content-Encoding {0:?} is not supported; send gzip, deflate, br, zstd or no encoding"
    )]
    UnsupportedEncoding(String),
    /// The organisation's monthly cap for a category is reached (SPEC §5).
    #[error("the monthly {category} quota of this organisation's tier is used up; it renews on the 1st (UTC) or with an upgrade")]
    QuotaExceeded {
        category: &'static str,
        retry_after_secs: u64,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    #[error("not found")]
    NotFound,
    #[error("method {method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: String },
    /// The request body did not arrive in time (a slow or stalled sender).
    #[error("the request body did not arrive within {limit_ms} ms")]
    BodyTimeout { limit_ms: u64 },
    /// PostgreSQL refused the data of an ingest request (a SQLSTATE class 22 or 54 error
    /// validation could not foresee): nothing of it was stored, and a retry would fail too.
    #[error("the database refused this request's data (SQLSTATE {sqlstate}); nothing of it was stored, and sending it again will not help")]
    DataRefused { sqlstate: String },
    /// An ingest request's COMMIT was sent but PostgreSQL never said whether it happened.
    #[error("the items may or may not have been stored: the database did not confirm the commit in time; retrying may store them twice")]
    OutcomeUnknown { retry_after_secs: u32 },
    /// Signed in, but the organisation role does not allow it (an owner-only action).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Billing routes without Squad's keys.
    #[error("billing is not configured on this server: set SQUAD_SECRET_KEY (and SQUAD_BASE_URL) to enable it")]
    BillingDisabled,
    /// Squad failed or refused; nothing was charged by this request.
    #[error("the payment provider could not be reached or refused the request; nothing was charged, try again")]
    PaymentProvider,
    #[error("{what} is unavailable; retry later")]
    Unavailable {
        what: &'static str,
        retry_after_secs: u32,
    },
    /// Something broke inside. The source is logged; the client sees only a generic message.
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The stable `snake_case` code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Validation(_) => "validation_failed",
            ApiError::Unauthorized { code, .. } => code,
            ApiError::Conflict(_) => "conflict",
            ApiError::InvalidToken => "invalid_token",
            ApiError::NotConfigured(_) => "not_configured",
            ApiError::TierLimit(_) | ApiError::IntervalBelowTier { .. } => "tier_limit",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::MalformedJson(_) => "invalid_json",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::BatchTooLarge { .. } => "batch_too_large",
            ApiError::InvalidItems(_) => "validation_failed",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unavailable { .. } => "service_unavailable",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BillingDisabled => "billing_disabled",
            ApiError::PaymentProvider => "payment_provider_error",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::DataRefused { .. } => "invalid_data",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl ApiError {
    /// Structured detail for clients, where the error has any.
    pub fn details(&self) -> Option<serde_json::Value> {
        match self {
            ApiError::Validation(fields) => serde_json::to_value(fields).ok(),
            ApiError::InvalidItems(items) => serde_json::to_value(items).ok(),
            ApiError::QuotaExceeded { category, .. } => {
                Some(serde_json::json!({ "category": category }))
            }
            ApiError::TierLimit(l) => Some(serde_json::json!({
                "tier": l.tier,
                "resource": l.resource.as_str(),
                "limit": l.limit,
            })),
            ApiError::IntervalBelowTier { tier, minimum_secs } => Some(serde_json::json!({
                "tier": tier,
                "resource": "monitor_interval",
                "field": "interval_seconds",
                "limit": minimum_secs,
            })),
            _ => None,
        }
    }

    pub fn unauthorized() -> Self {
        ApiError::Unauthorized {
            code: "unauthorized",
            message: "authentication required: send a valid access token as `Authorization: Bearer <token>`",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::MalformedJson(_) | ApiError::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Validation(_) | ApiError::InvalidItems(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InvalidToken => StatusCode::BAD_REQUEST,
            ApiError::NotConfigured(_) => StatusCode::NOT_FOUND,
            ApiError::TierLimit(_) | ApiError::IntervalBelowTier { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable { .. } | ApiError::OutcomeUnknown { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BillingDisabled => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PaymentProvider => StatusCode::BAD_GATEWAY,
            ApiError::DataRefused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Status and headers only: the body (with the request id) is written by the middleware,
    /// which knows the request. See [`render`].
    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::OutcomeUnknown { retry_after_secs } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            // The connection is closed after this answer: the rest of the body is not read.
            ApiError::BodyTimeout { .. } => {
                res.insert_header((header::CONNECTION, "close"));
            }
            ApiError::MethodNotAllowed { allowed, .. } => {
                res.insert_header((header::ALLOW, allowed.clone()));
            }
            ApiError::RateLimited {
                retry_after_secs,
                limit,
            } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
                res.insert_header(("X-RateLimit-Limit", limit.to_string()));
                res.insert_header(("X-RateLimit-Remaining", "0"));
                res.insert_header(("X-RateLimit-Reset", retry_after_secs.to_string()));
            }
            ApiError::Unauthorized { .. } => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::QuotaExceeded {
                retry_after_secs, ..
            } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            _ => {}
        }
        res.finish()
    }
}

/// The SPEC §10 error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Structured detail: the invalid fields of a 422, the limit of a `tier_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    /// Stable, machine-readable, `snake_case`.
    #[schema(example = "not_found")]
    pub code: String,
    /// For people; never contains internal detail.
    pub message: String,
    /// The request's id, also in the `X-Request-Id` response header and in every log line.
    pub request_id: String,
}

/// The body for an error response: from the [`ApiError`] it carries if any, else from the
/// status alone (actix's own 404/405, errors of other middleware).
pub fn render(error: Option<&ApiError>, status: StatusCode, request_id: &str) -> Vec<u8> {
    let (code, message, details) = match error {
        Some(e) => (e.code().to_string(), e.to_string(), e.details()),
        None => (
            default_code(status).to_string(),
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase(),
            None,
        ),
    };
    let body = ErrorBody {
        error: ErrorDetail {
            details,
            code,
            message,
            request_id: request_id.to_string(),
        },
    };
    serde_json::to_vec(&body)
        .unwrap_or_else(|_| b"{\"error\":{\"code\":\"internal_error\"}}".to_vec())
}

fn default_code(status: StatusCode) -> &'static str {
    #[allow(clippy::match_overlapping_arm)] // specific codes first, then the class
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "validation_failed",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        400..=499 => "client_error",
        _ => "internal_error",
    }
}

impl From<JsonPayloadError> for ApiError {
    fn from(e: JsonPayloadError) -> Self {
        match e {
            JsonPayloadError::OverflowKnownLength { limit, .. }
            | JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge { limit },
            JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
            JsonPayloadError::Deserialize(e) if e.is_data() => {
                // Well-formed JSON of the wrong shape (a missing field, a wrong type): serde's
                // text names the field, not internals.
                ApiError::Validation(vec![FieldError::new("body", e.to_string())])
            }
            JsonPayloadError::Deserialize(e) => ApiError::MalformedJson(e.to_string()),
            other => ApiError::BadRequest(format!("could not read the request body: {other}")),
        }
    }
}

/// Extractor configs that turn JSON, query and path failures into [`ApiError`]s.
pub fn extractor_configs(
    body_limit: usize,
) -> (
    web::JsonConfig,
    web::QueryConfig,
    web::PathConfig,
    web::PayloadConfig,
) {
    let json = web::JsonConfig::default()
        .limit(body_limit)
        .error_handler(|e, _: &HttpRequest| ApiError::from(e).into());
    let query = web::QueryConfig::default().error_handler(|e, _: &HttpRequest| {
        let detail = match e {
            QueryPayloadError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        ApiError::InvalidQuery(detail).into()
    });
    // A path segment of the wrong type (e.g. not a UUID) names no resource.
    let path = web::PathConfig::default()
        .error_handler(|_: PathError, _: &HttpRequest| ApiError::NotFound.into());
    let payload = web::PayloadConfig::default().limit(body_limit);
    (json, query, path, payload)
}

impl From<observe_core::store::StoreError> for ApiError {
    fn from(e: observe_core::store::StoreError) -> Self {
        use observe_core::store::StoreError;
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable {
                what: "storage",
                retry_after_secs: 5,
            },
            other => ApiError::Internal(other.into()),
        }
    }
}

/// A pool checkout, a transaction or a commit that failed: storage trouble, said once here.
impl From<observe_core::db::PoolError> for ApiError {
    fn from(e: observe_core::db::PoolError) -> Self {
        observe_core::store::StoreError::from(e).into()
    }
}

impl From<observe_core::db::PgError> for ApiError {
    fn from(e: observe_core::db::PgError) -> Self {
        observe_core::store::StoreError::from(e).into()
    }
}

impl From<observe_core::auth::AuthError> for ApiError {
    fn from(e: observe_core::auth::AuthError) -> Self {
        match e {
            // Every password-hashing slot stayed busy: backpressure, not a fault.
            observe_core::auth::AuthError::Busy => ApiError::Unavailable {
                what: "password checking",
                retry_after_secs: 1,
            },
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<observe_core::db::DbError> for ApiError {
    fn from(e: observe_core::db::DbError) -> Self {
        match e {
            observe_core::db::DbError::Unavailable(_) => ApiError::Unavailable {
                what: "storage",
                retry_after_secs: 5,
            },
            other => ApiError::Internal(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn renders_the_spec_shape() {
        let v = parse(&render(
            Some(&ApiError::NotFound),
            StatusCode::NOT_FOUND,
            "rid-1",
        ));
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "not found");
        assert_eq!(v["error"]["request_id"], "rid-1");
    }

    #[test]
    fn internal_errors_hide_their_source() {
        let e = ApiError::Internal(anyhow::anyhow!("relation \"users\" does not exist"));
        let v = parse(&render(Some(&e), e.status_code(), "r"));
        assert_eq!(v["error"]["code"], "internal_error");
        assert_eq!(v["error"]["message"], "internal server error");
        assert!(!v.to_string().contains("relation"));
    }

    #[test]
    fn bare_statuses_get_codes() {
        let v = parse(&render(None, StatusCode::METHOD_NOT_ALLOWED, "r"));
        assert_eq!(v["error"]["code"], "method_not_allowed");
        assert_eq!(v["error"]["message"], "method not allowed");
        let v = parse(&render(None, StatusCode::BAD_GATEWAY, "r"));
        assert_eq!(v["error"]["code"], "internal_error");
    }

    #[test]
    fn json_overflow_is_413_and_syntax_is_400() {
        let e = ApiError::from(JsonPayloadError::Overflow { limit: 10 });
        assert_eq!(e.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
        let syntax = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = ApiError::from(JsonPayloadError::Deserialize(syntax));
        assert_eq!(e.code(), "invalid_json");
    }
}
