//! `POST /ingest/{events,identify,errors,requests,metrics}`: where SDKs send everything.
//!
//! One request, in order: the API key is authenticated from memory (`session::ApiKey`); a key
//! whose per-minute budget is spent gets 429 before its body is read; the body is read up to
//! `ingest.max_body_bytes` within `ingest.body_timeout_ms` (408), its bytes taken from the
//! process-wide budget (503 when spent), and inflated if gzip/deflate-encoded, never past that
//! limit (413); it is split into items (one object, an array, or `{"batch": [...]}`; 400
//! if it is not JSON) and every item is validated (422 listing every problem, nothing stored);
//! the key's per-minute limit for the category is taken in Redis for the whole batch (429);
//! a cap already known to be reached this month is answered 429 `quota_exceeded` at once;
//! then the items go to the project's IngestActor (`try_send`: a full mailbox is 503) and the
//! request waits for its flush: 202 `{"accepted": N}` once committed (`ingest.ack =
//! "commit"`), 429 `quota_exceeded` if the monthly cap had no room, 503 with `Retry-After` if
//! the database stayed away past the deadline or the buffer is full.
//!
//! Every response after authentication carries `X-RateLimit-Limit`, `-Remaining` and
//! `-Reset` (seconds until the budget is whole). CORS is open to any origin (browser SDKs
//! send the key in a header, never a cookie).

use std::io::Read;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use futures_util::StreamExt;
use observe_actors::ingest::{Ingest, Outcome, SendFailure};
use observe_core::batch::Reservation;
use observe_core::config::Limit;
use observe_core::gcra::Decision;
use observe_core::ingest::{self as domain, BodyError, Category, Context, Items, Kind};
use observe_core::store::api_keys::KeyOwner;
use observe_core::store::ingest::month_of;
use observe_core::store::Refusal;
use serde::Serialize;
use tokio::sync::oneshot;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::session::ApiKey;
use crate::state::AppState;

/// Rate limits are per key, per category, per minute (SPEC §5).
const RATE_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Items stored (as sent: one LLM usage item counts once).
    #[schema(example = 100)]
    pub accepted: usize,
}

/// CORS for the ingest scope: any origin, POST, the key in a header.
pub fn cors() -> Cors {
    Cors::default()
        .allow_any_origin()
        .send_wildcard()
        .allowed_methods(["POST"])
        .allowed_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
        ])
        .max_age(86_400)
}

macro_rules! endpoint {
    ($name:ident, $path:literal, $kind:expr, $what:literal) => {
        #[doc = $what]
        #[utoipa::path(
            post,
            path = $path,
            tag = "ingest",
            description = $what,
            request_body(content = Object, description = "One item, an array of items, or `{\"batch\": [...]}` (at most 1000 items). May be gzip-encoded."),
            responses(
                (status = 202, description = "Stored (committed)", body = Accepted),
                (status = 400, description = "Not JSON, or not a batch of items", body = crate::error::ErrorBody),
                (status = 401, description = "Unknown or revoked API key, or the project was deleted", body = crate::error::ErrorBody),
                (status = 408, description = "The body did not arrive in time (`body_timeout`)", body = crate::error::ErrorBody),
                (status = 413, description = "Body or batch too large", body = crate::error::ErrorBody),
                (status = 415, description = "Unsupported Content-Encoding", body = crate::error::ErrorBody),
                (status = 422, description = "Invalid items (`validation_failed`: every problem, by index and field path), or data the database refused (`invalid_data`); nothing stored", body = crate::error::ErrorBody),
                (status = 429, description = "Rate limit (`rate_limited`) or monthly quota (`quota_exceeded`)", body = crate::error::ErrorBody),
                (status = 500, description = "The database refused the request with an integrity error (`internal_error`); nothing stored", body = crate::error::ErrorBody),
                (status = 503, description = "Storage unavailable, buffer or memory budget full (`service_unavailable`, nothing stored), or the commit was not confirmed in time (`outcome_unknown`: the items may be stored); retry after `Retry-After`", body = crate::error::ErrorBody),
            ),
            security(("api_key" = []))
        )]
        #[post($path)]
        pub async fn $name(
            req: HttpRequest,
            key: ApiKey,
            payload: web::Payload,
            state: web::Data<AppState>,
        ) -> HttpResponse {
            ingest($kind, req, key.0, payload, state).await
        }
    };
}

endpoint!(events, "/events", Kind::Events, "Product-analytics events.");
endpoint!(
    identify,
    "/identify",
    Kind::Identify,
    "Link a visitor to a user, with traits."
);
endpoint!(
    errors,
    "/errors",
    Kind::Errors,
    "Errors and exceptions, grouped by fingerprint."
);
endpoint!(requests, "/requests", Kind::Requests, "API request logs.");
endpoint!(
    metrics,
    "/metrics",
    Kind::Metrics,
    "Custom metrics and LLM usage."
);

/// Runs one ingest request and puts the rate-limit headers on whatever it answers.
async fn ingest(
    kind: Kind,
    req: HttpRequest,
    owner: KeyOwner,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut decision = None;
    let result = handle(kind, &req, owner, payload, &state, &mut decision).await;
    let category = kind.category();
    let decision = match decision {
        Some(d) => d,
        // Rejected before the limit was taken: report the budget without spending any.
        None => rate_check(&state, owner, category, 0).await,
    };
    let mut response = match result {
        Ok(accepted) => HttpResponse::Accepted().json(Accepted { accepted }),
        Err((error, reason, items)) => {
            if items > 0 {
                state.metrics.ingest.rejected(kind.as_str(), reason, items);
            }
            HttpResponse::from_error(error)
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", decision.limit.to_string()),
        ("x-ratelimit-remaining", decision.remaining.to_string()),
        (
            "x-ratelimit-reset",
            ceil_secs(decision.reset_after).to_string(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// A rejection: the error, its reason label in `/metrics`, and how many items it covers.
pub(crate) type Rejection = (ApiError, &'static str, usize);

async fn handle(
    kind: Kind,
    req: &HttpRequest,
    owner: KeyOwner,
    payload: web::Payload,
    state: &AppState,
    decision: &mut Option<Decision>,
) -> Result<usize, Rejection> {
    let received_at = Utc::now();
    let settings = &state.settings.ingest;
    let category = kind.category();

    // A key whose budget is spent is refused before its body is read or parsed, so a flood of
    // large bodies costs no decompression and no JSON parsing (Sentry Relay likewise checks
    // rate limits on an envelope's headers before it expands the payload).
    let peek = rate_check(state, owner, category, 0).await;
    if peek.remaining == 0 {
        *decision = Some(peek);
        let interval = RATE_PERIOD.as_millis() as u64 / u64::from(peek.limit.max(1));
        return Err((
            ApiError::RateLimited {
                retry_after_secs: interval.div_ceil(1000).max(1),
                limit: peek.limit,
            },
            "rate_limited",
            1,
        ));
    }

    let mut reservation = state.ingest.budget.reserve();
    let body = read_body(req, payload, settings, &mut reservation).await?;
    let values = domain::split(&body).map_err(|e| match e {
        BodyError::Malformed(detail) => (ApiError::MalformedJson(detail), "malformed", 1),
        BodyError::TooMany => (
            ApiError::BatchTooLarge {
                max: domain::MAX_BATCH,
            },
            "too_large",
            1,
        ),
        other => (ApiError::BadRequest(other.to_string()), "malformed", 1),
    })?;
    drop(body);
    let ctx = Context {
        received_at,
        retention_days: state.tiers.retention_days(owner.tier),
    };
    let items = Items::validate(kind, &values, &ctx, &settings.llm_prices)
        .map_err(|problems| (ApiError::InvalidItems(problems), "invalid", values.len()))?;
    drop(values);
    submit(state, owner, items, received_at, reservation, decision).await
}

/// Sends validated items to the project's IngestActor, once the key's per-minute budget for
/// their category and the organisation's monthly cap allow them, and waits for the commit:
/// the number stored, or why not. `decision` receives the rate limit taken (the headers'
/// figures). Shared by `/ingest/*` and the Sentry endpoints.
pub(crate) async fn submit(
    state: &AppState,
    owner: KeyOwner,
    items: Items,
    received_at: DateTime<Utc>,
    reservation: Reservation,
    decision: &mut Option<Decision>,
) -> Result<usize, Rejection> {
    let settings = &state.settings.ingest;
    let category = items.kind().category();
    let n = items.len();

    let taken = rate_check(state, owner, category, n).await;
    *decision = Some(taken);
    if !taken.allowed {
        return Err((
            ApiError::RateLimited {
                retry_after_secs: ceil_secs(taken.retry_after),
                limit: taken.limit,
            },
            "rate_limited",
            n,
        ));
    }

    let cap = monthly_cap(state, owner, category);
    let quota_exceeded = || {
        (
            ApiError::QuotaExceeded {
                category: category.as_str(),
                retry_after_secs: secs_to_next_month(received_at),
            },
            "quota_exceeded",
            n,
        )
    };
    if matches!(cap, Limit::Max(_))
        && state
            .ingest
            .quota
            .exhausted(owner.organisation_id, category, month_of(received_at))
    {
        return Err(quota_exceeded());
    }

    let (reply, answer) = oneshot::channel();
    let unavailable = |retry_after_secs| {
        (
            ApiError::Unavailable {
                what: "ingestion",
                retry_after_secs,
            },
            "unavailable",
            n,
        )
    };
    state
        .ingest
        .send(
            owner.project_id,
            owner.organisation_id,
            Ingest {
                items,
                received_at,
                cap,
                reservation,
                reply,
                trace: observe_core::trace::Parent::current(),
            },
        )
        .await
        .map_err(|failure| {
            let mut rejection = unavailable(1);
            if failure == SendFailure::MailboxFull {
                rejection.1 = "buffer_full";
            }
            rejection
        })?;
    // The actor answers within its own bounds (deadline, flush timeout, outcome deadline);
    // this one only catches an actor that broke them. It may have been mid-commit then.
    let outcome_unknown = || ApiError::OutcomeUnknown {
        retry_after_secs: 5,
    };
    let answer = match tokio::time::timeout(answer_timeout(settings), answer).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::error!(
                project_id = %owner.project_id,
                "no answer from the IngestActor within every bound it has"
            );
            return Err((outcome_unknown(), "outcome_unknown", n));
        }
    };
    match answer {
        Ok(Outcome::Stored(accepted)) => Ok(accepted),
        Ok(Outcome::OverQuota) => Err(quota_exceeded()),
        // Counted by the actor already; the route only answers.
        Ok(Outcome::Unavailable) => Err((unavailable(5).0, "unavailable", 0)),
        Ok(Outcome::BufferFull) => Err((unavailable(1).0, "buffer_full", 0)),
        Ok(Outcome::ProjectGone) => Err((
            ApiError::Unauthorized {
                code: "invalid_api_key",
                message: "the API key's project was deleted",
            },
            "project_deleted",
            n,
        )),
        Ok(Outcome::Refused {
            refusal: Refusal::Data,
            sqlstate,
        }) => Err((ApiError::DataRefused { sqlstate }, "refused", 0)),
        Ok(Outcome::Refused {
            refusal: Refusal::Constraint,
            sqlstate,
        }) => Err((
            ApiError::Internal(anyhow::anyhow!(
                "PostgreSQL refused an ingest request with SQLSTATE {sqlstate} (integrity constraint)"
            )),
            "refused",
            0,
        )),
        Ok(Outcome::OutcomeUnknown) => Err((outcome_unknown(), "outcome_unknown", 0)),
        // The actor went away with the request (a panic): nothing of it was committed.
        Err(_) => Err(unavailable(1)),
    }
}

/// The longest an IngestActor may take to answer a request it accepted: its deadline, a
/// flush attempt begun just before it, the wait for an uncertain commit and a last look.
fn answer_timeout(settings: &observe_core::config::IngestSettings) -> Duration {
    Duration::from_millis(
        settings.retry_deadline_ms + 2 * settings.flush_timeout_ms + settings.outcome_deadline_ms,
    ) + Duration::from_secs(5)
}

/// Takes `cost` items from the key's per-minute budget for `category` (0: only looks).
pub(crate) async fn rate_check(
    state: &AppState,
    owner: KeyOwner,
    category: Category,
    cost: usize,
) -> Decision {
    let limits = state.tiers.rate_limits(owner.tier);
    let limit = match category {
        Category::Events => limits.events,
        Category::Errors => limits.errors,
        Category::ApiRequests => limits.api_requests,
    };
    let key = format!("ingest:{}:{}", owner.key_id, category.as_str());
    let cost = u32::try_from(cost).unwrap_or(u32::MAX);
    state.limiter.check_n(&key, limit, RATE_PERIOD, cost).await
}

fn monthly_cap(state: &AppState, owner: KeyOwner, category: Category) -> Limit {
    let tier = state.tiers.limits(owner.tier);
    match category {
        Category::Events => tier.events_per_month,
        Category::Errors => tier.errors_per_month,
        Category::ApiRequests => tier.api_requests_per_month,
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// Seconds until the next calendar month (UTC), when quotas renew.
fn secs_to_next_month(now: DateTime<Utc>) -> u64 {
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|next| (next - now).num_seconds().max(1) as u64)
        .unwrap_or(86_400)
}

/// Reads the body, at most `ingest.max_body_bytes` on the wire and after decompression,
/// within `ingest.body_timeout_ms`, taking its bytes from the process-wide budget as they
/// arrive (503 when it is spent).
pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    settings: &observe_core::config::IngestSettings,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, Rejection> {
    let limit_ms = settings.body_timeout_ms;
    let read = read_body_untimed(req, payload, settings.max_body_bytes, reservation);
    match tokio::time::timeout(Duration::from_millis(limit_ms), read).await {
        Ok(body) => body,
        Err(_) => Err((ApiError::BodyTimeout { limit_ms }, "body_timeout", 1)),
    }
}

async fn read_body_untimed(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, Rejection> {
    let too_large = || (ApiError::PayloadTooLarge { limit }, "too_large", 1);
    let spent = || {
        (
            ApiError::Unavailable {
                what: "ingestion (memory budget)",
                retry_after_secs: 1,
            },
            "inflight_budget",
            1,
        )
    };
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    if let Some(encoding) = &encoding {
        if !matches!(
            encoding.as_str(),
            "gzip" | "x-gzip" | "deflate" | "br" | "zstd" | "identity"
        ) {
            return Err((
                ApiError::UnsupportedEncoding(encoding.clone()),
                "unsupported_encoding",
                1,
            ));
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut raw = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            (
                ApiError::BadRequest(format!("could not read the request body: {e}")),
                "malformed",
                1,
            )
        })?;
        if raw.len() + chunk.len() > limit {
            return Err(too_large());
        }
        if !reservation.grow(chunk.len()) {
            return Err(spent());
        }
        raw.extend_from_slice(&chunk);
    }
    let malformed = |message: String| (ApiError::BadRequest(message), "malformed", 1);
    // Brotli and zstd decoders set aside the window the body declares before they produce a
    // byte, beyond what `inflate` counts: that memory is taken from the budget too, for as
    // long as the decoding lasts, and a window larger than a decoder needs is refused.
    let mut window = reservation.another();
    let inflated = match encoding.as_deref() {
        Some("gzip" | "x-gzip") => inflate(flate2::read::GzDecoder::new(&raw[..]), limit)?,
        Some("deflate") => inflate(flate2::read::ZlibDecoder::new(&raw[..]), limit)?,
        // Brotli and zstd: what some Sentry SDKs send (Python's with `transport_compression`).
        Some("br") => {
            let size = brotli_window(&raw).ok_or_else(|| {
                malformed("the body is not brotli (or asks for a large window)".into())
            })?;
            if !window.grow(size) {
                return Err(spent());
            }
            inflate(
                brotli_decompressor::Decompressor::new(&raw[..], 4096),
                limit,
            )?
        }
        Some("zstd") => {
            let size = zstd_window(&raw)
                .ok_or_else(|| malformed("the body is not a zstd frame".into()))?;
            if size > MAX_ZSTD_WINDOW {
                return Err(malformed(format!(
                    "the zstd frame asks for a window of {size} bytes; at most {MAX_ZSTD_WINDOW} are decoded"
                )));
            }
            // The decoder rounds its buffer up to a power of two.
            let size = usize::try_from(size.next_power_of_two()).unwrap_or(usize::MAX);
            if !window.grow(size) {
                return Err(spent());
            }
            let decoder = ruzstd::decoding::StreamingDecoder::new(&raw[..])
                .map_err(|e| malformed(format!("the body is not zstd: {e}")))?;
            inflate(decoder, limit)?
        }
        _ => return Ok(raw),
    };
    drop(window);
    // The decompressed body is what is held from here on.
    if !reservation.grow(inflated.len().saturating_sub(raw.len())) {
        return Err(spent());
    }
    Ok(inflated)
}

/// The largest zstd window decoded: 8 MiB, what the zstd format asks every decoder to support
/// (RFC 8878 §3.1.1.1.2); compressors stay within it unless told otherwise.
const MAX_ZSTD_WINDOW: u64 = 8 * 1024 * 1024;

/// The window a zstd frame declares in its header (RFC 8878 §3.1.1.1), in bytes: the
/// Window_Descriptor, or for a single-segment frame its content size. None when the body does
/// not start with a zstd frame header. (The decoder, ruzstd, does not say it before it sets
/// the window aside.)
fn zstd_window(raw: &[u8]) -> Option<u64> {
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let (magic, rest) = raw.split_at_checked(4)?;
    if magic != MAGIC {
        return None;
    }
    let (&descriptor, rest) = rest.split_first()?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let &window = rest.first()?;
        let log = 10 + u32::from(window >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(window & 7));
    }
    let dictionary_id_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let content_size_len = [1, 2, 4, 8][usize::from(descriptor >> 6)];
    let field = rest.get(dictionary_id_len..dictionary_id_len + content_size_len)?;
    let mut bytes = [0u8; 8];
    bytes[..field.len()].copy_from_slice(field);
    let size = u64::from_le_bytes(bytes);
    // A two-byte field counts from 256 (RFC 8878 §3.1.1.1.4).
    Some(if content_size_len == 2 {
        size + 256
    } else {
        size
    })
}

/// The window a brotli stream declares in its first bits (RFC 7932 §9.1), in bytes; None for
/// an empty body or the large-window extension.
fn brotli_window(raw: &[u8]) -> Option<usize> {
    let first = *raw.first()?;
    let bits = if first & 1 == 0 {
        16
    } else {
        match (first >> 1) & 7 {
            0 => match (first >> 4) & 7 {
                0 => 17,
                1 => return None,
                m => 8 + u32::from(m),
            },
            n => 17 + u32::from(n),
        }
    };
    Some((1usize << bits) - 16)
}

/// Decompresses, stopping one byte past `limit`: a gzip bomb costs `limit` bytes, not more.
fn inflate(reader: impl Read, limit: usize) -> Result<Vec<u8>, Rejection> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| {
            (
                ApiError::BadRequest("the body could not be decompressed".into()),
                "malformed",
                1,
            )
        })?;
    if out.len() > limit {
        return Err((ApiError::PayloadTooLarge { limit }, "too_large", 1));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_renew_on_the_first() {
        let at = Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 0)
            .single()
            .unwrap();
        assert_eq!(secs_to_next_month(at), 60);
        let at = Utc.with_ymd_and_hms(2026, 2, 28, 0, 0, 0).single().unwrap();
        assert_eq!(secs_to_next_month(at), 86_400);
    }

    #[test]
    fn zstd_windows_are_read_from_the_frame_header() {
        // What a compressor writes: single-segment frames of small inputs, declaring their size.
        let small = ruzstd::encoding::compress_to_vec(
            &[7u8; 5000][..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let declared = zstd_window(&small).unwrap();
        assert!(declared <= MAX_ZSTD_WINDOW, "{declared}");
        // A Window_Descriptor of 0x83: 2^26 + 3/8 of it (88 MiB), as a bomb would declare.
        let bomb = [0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x83, 0, 0, 0];
        assert_eq!(zstd_window(&bomb), Some((1 << 26) + (1 << 23) * 3));
        // Single segment with a 2-byte content size (+256) after a 1-byte dictionary id.
        let single = [0x28, 0xB5, 0x2F, 0xFD, 0b0110_0001, 9, 0x10, 0x00];
        assert_eq!(zstd_window(&single), Some(0x10 + 256));
        // Not zstd, a skippable frame, or cut short.
        assert_eq!(zstd_window(b"{\"a\":1}"), None);
        assert_eq!(zstd_window(&[0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0]), None);
        assert_eq!(zstd_window(&[0x28, 0xB5, 0x2F, 0xFD, 0x00]), None);
        assert_eq!(zstd_window(&[0x28, 0xB5, 0x2F, 0xFD, 0xE0, 1, 2]), None);
    }

    #[test]
    fn brotli_windows_are_read_from_the_stream_header() {
        // WBITS 16 (first bit 0), 22 (n = 5), 24 (n = 7), 10 (m = 2), 17 (n = m = 0).
        assert_eq!(brotli_window(&[0b0000_0000]), Some((1 << 16) - 16));
        assert_eq!(brotli_window(&[0b0000_1011]), Some((1 << 22) - 16));
        assert_eq!(brotli_window(&[0b0000_1111]), Some((1 << 24) - 16));
        assert_eq!(brotli_window(&[0b0010_0001]), Some((1 << 10) - 16));
        assert_eq!(brotli_window(&[0b0000_0001]), Some((1 << 17) - 16));
        // The large-window extension, and nothing at all.
        assert_eq!(brotli_window(&[0b0001_0001]), None);
        assert_eq!(brotli_window(&[]), None);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'a'; 10 * 1024 * 1024]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(
            bomb.len() < 64 * 1024,
            "10 MiB of one byte compresses small"
        );
        let err = inflate(flate2::read::GzDecoder::new(&bomb[..]), 1024 * 1024).unwrap_err();
        assert_eq!(err.1, "too_large");
        let ok = inflate(flate2::read::GzDecoder::new(&bomb[..]), 20 * 1024 * 1024).unwrap();
        assert_eq!(ok.len(), 10 * 1024 * 1024);
    }
}
