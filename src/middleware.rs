//! The request middleware: what every request goes through, whatever route it hits.
//!
//! In order: give the request an id (the client's `X-Request-Id` if it is sane, else a new
//! UUIDv7) and open a tracing span carrying it, so every log line of the request has it; run
//! the rest of the app, catching a panic as a 500 instead of a dropped connection; rewrite
//! error responses (an error, or a bare error status) into the SPEC §10 JSON shape; echo the id in `X-Request-Id`; record the
//! request in `/metrics` under its route *template*; log one `request completed` line.
//!
//! Nothing here logs headers, query strings or bodies, which is how `Authorization`, cookies,
//! API keys and tokens stay out of the logs.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use futures_util::FutureExt;
use tracing::Instrument;

use observe_core::trace;

use crate::error::{self, ApiError};
use crate::state::AppState;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a client-supplied id only if it is short and plain, so it cannot forge log lines.
fn acceptable_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_string())
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = metric_method(req.method());
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // With traces on, a server span continuing the caller's `traceparent`.
    let span = trace::server_span(&request_id, method, req.headers());

    // No clone of the request may be held across this call: actix's router needs sole
    // ownership of it to record the matched route.
    let outcome = AssertUnwindSafe(next.call(req))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    let (status, route, result) = match outcome {
        Ok(Ok(res)) => {
            let status = res.status();
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string());
            let res = finish(res.map_into_boxed_body(), &request_id, &span);
            (status, route, Ok(res))
        }
        // An error from a middleware or service below that never became a response, or a
        // panic (already logged by the panic hook, inside the span, so with the request id).
        // There is no request left to build a response on, so the error renders itself.
        Ok(Err(err)) => {
            let rendered = Rendered::from_error(&err, &request_id, &span);
            (rendered.status, "unknown".to_string(), Err(rendered.into()))
        }
        Err(_) => {
            // The panic hook recorded the message for actor supervision; no actor died here.
            let _ = observe_core::telemetry::take_last_panic();
            let err = ApiError::Internal(anyhow::anyhow!("handler panicked")).into();
            let rendered = Rendered::from_error(&err, &request_id, &span);
            (rendered.status, "unknown".to_string(), Err(rendered.into()))
        }
    };

    let elapsed = started.elapsed();
    trace::finish_server_span(&span, method, &route, status.as_u16());
    if let Some(state) = state {
        state
            .metrics
            .observe_request(&route, method, status.as_u16(), elapsed.as_secs_f64());
    }
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(route = %route, status = status.as_u16(), duration_ms, "request completed");
        } else {
            tracing::info!(route = %route, status = status.as_u16(), duration_ms, "request completed");
        }
    });
    result
}

/// The method as a label: the standard ones by name, anything else as `OTHER`, since actix
/// accepts any token and each would otherwise become a new series.
fn metric_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Puts an error response into the JSON shape and echoes the request id.
fn finish(
    res: ServiceResponse<BoxBody>,
    request_id: &str,
    span: &tracing::Span,
) -> ServiceResponse<BoxBody> {
    let status = res.status();
    // A handler that chose its own error body (readiness's 503 with its checks) keeps it;
    // errors and bare statuses get the standard shape.
    let is_error = status.is_client_error() || status.is_server_error();
    let rewrite = is_error
        && (res.response().error().is_some()
            || matches!(
                res.response().body().size(),
                BodySize::None | BodySize::Sized(0)
            ));
    let mut res = if rewrite {
        let api_error = res
            .response()
            .error()
            .and_then(|e| e.as_error::<ApiError>());
        log_internal(api_error, span);
        let body = error::render(api_error, status, request_id);
        res.map_body(|head, _| {
            head.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            BoxBody::new(body)
        })
    } else {
        res
    };
    if let Ok(value) = HeaderValue::from_str(request_id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    res
}

fn log_internal(api_error: Option<&ApiError>, span: &tracing::Span) {
    if let Some(ApiError::Internal(source)) = api_error {
        span.in_scope(|| tracing::error!(error = %format!("{source:#}"), "internal error"));
    }
}

/// A complete error response (status, headers, JSON body with the request id), for the cases
/// where no `ServiceResponse` exists to rewrite.
#[derive(Debug)]
struct Rendered {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
}

impl Rendered {
    fn from_error(err: &actix_web::Error, request_id: &str, span: &tracing::Span) -> Self {
        let api_error = err.as_error::<ApiError>();
        log_internal(api_error, span);
        let response = err.error_response();
        let status = response.status();
        let mut headers: Vec<(HeaderName, HeaderValue)> = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != header::CONTENT_TYPE && *name != header::CONTENT_LENGTH)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.push((REQUEST_ID_HEADER, value));
        }
        Self {
            status,
            headers,
            body: error::render(api_error, status, request_id),
        }
    }
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)
    }
}

impl ResponseError for Rendered {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        for (name, value) in &self.headers {
            res.insert_header((name.clone(), value.clone()));
        }
        res.body(self.body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(metric_method(&Method::GET), "GET");
        assert_eq!(
            metric_method(&Method::from_bytes(b"RAND1").unwrap()),
            "OTHER"
        );
        assert_eq!(
            metric_method(&Method::from_bytes(b"RAND2").unwrap()),
            "OTHER"
        );
    }

    #[test]
    fn request_ids_must_be_short_and_plain() {
        let ok = |s: &str| acceptable_request_id(&HeaderValue::from_str(s).unwrap());
        assert_eq!(ok("abc-123_x.y:z"), Some("abc-123_x.y:z".into()));
        assert_eq!(ok(""), None);
        assert_eq!(ok("has space"), None);
        assert_eq!(ok("quote\"inject"), None);
        assert_eq!(ok(&"a".repeat(129)), None);
    }
}
