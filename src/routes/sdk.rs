//! `GET /sdk/observe.js`: the browser snippet (`src/assets/sdk/observe.js`), compiled into the
//! binary. Any site may load it (CORS, `Cross-Origin-Resource-Policy: cross-origin`); browsers
//! and CDNs keep it for an hour and revalidate with its ETag (the hash of its bytes, so a new
//! build is a new ETag); gzip when the browser takes it, compressed once per process.

use std::io::Write;
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{get, HttpRequest, HttpResponse};

/// The snippet, as in the repository.
pub const SNIPPET: &str = include_str!("../assets/sdk/observe.js");

struct Served {
    etag: String,
    gzip: Vec<u8>,
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        // SHA-256 of the bytes (the helper's name says what it is usually for).
        let digest = observe_core::auth::hash_secret(SNIPPET);
        let etag = format!("\"{}\"", hex_prefix(&digest, 16));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing into a Vec cannot fail; an empty gzip body is never served (see below).
        let gzip = gz
            .write_all(SNIPPET.as_bytes())
            .and_then(|()| gz.finish())
            .unwrap_or_default();
        Served { etag, gzip }
    })
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
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
    let served = served();
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == served.etag));
    let gzip = !served.gzip.is_empty()
        && req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, served.etag.clone()))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header(("Cross-Origin-Resource-Policy", "cross-origin"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if fresh {
        return res.finish();
    }
    res.content_type("application/javascript; charset=utf-8");
    if gzip {
        res.insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(served.gzip.clone())
    } else {
        res.body(SNIPPET)
    }
}
