//! Sentry compatibility, the pure part: what existing Sentry SDKs send, turned into observe's
//! own ingest items, so an application keeps its Sentry SDK and points its DSN at observe.
//!
//! [`envelope`] splits an envelope body (`POST /api/{project}/envelope/`) into typed items
//! whose payloads borrow the body. [`event`] maps one Sentry event JSON (an `event` item, or a
//! `/store/` body) to an `/ingest/errors` item, and an HTTP server `transaction` to an
//! `/ingest/requests` item; both outputs pass [`crate::ingest::Items::validate`] like any item
//! an observe SDK sends, so Sentry traffic is validated, counted and stored by the same path.
//! Routes, authentication, storage and rate-limit headers live in the HTTP layer.
//!
//! # How an error event maps
//!
//! The primary exception is the last of `exception.values` (Sentry lists a chain oldest first,
//! so Python's `raise B from A` sends `[A, B]`): its `type` and `value` become `type` and
//! `message`, its `stacktrace.frames` the `stack_trace` (oldest call first, as observe keeps
//! frames too). An event without an exception is a message (`logentry`, or `message` as a
//! string or object): `type` is `Message`, `message` the formatted text, and it groups by its
//! template. `level` is Sentry's level (`warn` is `warning`, `critical` is `fatal`, `log` is
//! `info`, anything else `error`); `environment` and `release` carry over; `url` is
//! `request.url`; `user_id` is the first of `user.id`, `user.email`, `user.username` and
//! `user.ip_address`; `tags`, as an object or as pairs, become string tags; `timestamp`, a
//! float of Unix seconds or an RFC 3339 string, becomes RFC 3339. An SDK `fingerprint` becomes
//! observe's `fingerprint` with each `{{ default }}` replaced by observe's own group key, so
//! `["{{ default }}"]` alone groups exactly as a native observe error. What the columns do not
//! hold (event id, platform, SDK, user, how the error was caught, request with its secrets
//! removed, contexts, the last breadcrumbs, the rest of the exception chain, extra) goes into
//! `context`, one bounded JSON object kept with the occurrence.
//!
//! # How a transaction maps
//!
//! Only HTTP server transactions become requests (`contexts.trace.op` is `http.server`, or the
//! transaction has a request method and a known status): `method` from the request, tags,
//! trace data or the name; `route` is the transaction name without a leading method;
//! `status_code` from the response context, tags, trace data or the span status;
//! `duration_ms` is `timestamp` minus `start_timestamp`.

pub mod envelope;
pub mod event;
