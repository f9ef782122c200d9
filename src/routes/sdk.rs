//! `GET /sdk/observe.js`: the browser snippet (`src/assets/sdk/observe.js`), compiled into the
//! binary. Any site may load it (CORS, `Cross-Origin-Resource-Policy: cross-origin`); browsers
//! and CDNs keep it for an hour and revalidate with its ETag (the hash of its bytes, so a new
//! build is a new ETag); gzip when the browser takes it, compressed once per process.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{get, HttpRequest, HttpResponse};

use crate::routes::dashboard::Static;

/// The snippet, as in the repository.
pub const SNIPPET: &str = include_str!("../assets/sdk/observe.js");

fn file() -> &'static Static {
    static FILE: OnceLock<Static> = OnceLock::new();
    FILE.get_or_init(|| Static::new(SNIPPET))
}

/// The browser snippet: page views (SPA navigation too), `observe.track`, `observe.identify`
/// and uncaught errors, batched to `/ingest/*`. Use it as
/// `<script src="https://your-observe/sdk/observe.js" data-key="obs_…" defer></script>`.
#[utoipa::path(
    tag = "ingest",
    responses(
        (status = 200, description = "The snippet (JavaScript)", content_type = "application/javascript"),
        (status = 304, description = "Not modified (If-None-Match)"),
    )
)]
#[get("/sdk/observe.js")]
pub async fn snippet(req: HttpRequest) -> HttpResponse {
    let mut res = file().answer(
        &req,
        "application/javascript; charset=utf-8",
        "public, max-age=3600",
    );
    let headers = res.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        header::HeaderValue::from_static("cross-origin"),
    );
    res
}
