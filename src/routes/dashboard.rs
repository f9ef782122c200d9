//! The dashboard (SPEC §2: "dashboard via REST"): `/` serves the single-page app's shell, and
//! `/assets/{name}` its script and stylesheet, all compiled into the binary (no CDN, works
//! offline). The app itself (`src/assets/app/`) talks to the same REST API as every client.
//! Assets are revalidated by ETag on every load (`no-cache`), so a new build is picked up at
//! once; the shell carries a strict Content-Security-Policy (only this origin's scripts,
//! styles and API; no framing).

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

/// (name, content type, bytes) of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "application/javascript; charset=utf-8",
        include_str!("../assets/app/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app/app.css"),
    ),
    // uPlot 1.6.32 (MIT, src/assets/vendor/UPLOT-LICENSE): the charts, 50 KB, no CDN.
    (
        "uplot.js",
        "application/javascript; charset=utf-8",
        include_str!("../assets/vendor/uplot.min.js"),
    ),
    (
        "uplot.css",
        "text/css; charset=utf-8",
        include_str!("../assets/vendor/uplot.min.css"),
    ),
    // Scalar API Reference 1.40.0 (MIT): the interactive `/docs`, offline.
    (
        "scalar.js",
        "application/javascript; charset=utf-8",
        include_str!("../assets/vendor/scalar.standalone.js"),
    ),
];

/// The `/docs` page: Scalar from this binary, reading `/openapi.json`, with no web fonts or
/// other requests to Scalar's servers.
pub const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>observe API</title>
</head>
<body>
  <script id="api-reference" data-url="/openapi.json"
    data-configuration='{"withDefaultFonts": false, "hideClientButton": true}'></script>
  <script src="/assets/scalar.js"></script>
</body>
</html>
"#;

const INDEX: &str = include_str!("../assets/app/index.html");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The ETag of some bytes: the start of their SHA-256, computed once per asset.
fn etag(body: &str) -> String {
    let digest = observe_core::auth::hash_secret(body);
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn etags() -> &'static Vec<String> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        std::iter::once(INDEX)
            .chain(ASSETS.iter().map(|(_, _, body)| *body))
            .map(etag)
            .collect()
    })
}

/// Gzip of the assets larger than a few kilobytes, compressed once per process.
fn gzipped(i: usize) -> Option<&'static [u8]> {
    static GZ: OnceLock<Vec<Option<Vec<u8>>>> = OnceLock::new();
    let all = GZ.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, body)| {
                (body.len() > 4096).then(|| {
                    use std::io::Write;
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    // Writing into a Vec cannot fail; an empty result is never served.
                    gz.write_all(body.as_bytes())
                        .and_then(|()| gz.finish())
                        .unwrap_or_default()
                })
            })
            .collect()
    });
    all.get(i)?.as_deref().filter(|b| !b.is_empty())
}

fn answer(req: &HttpRequest, content_type: &str, body: &'static str, tag: &str) -> HttpResponse {
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, tag.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if fresh {
        return res.finish();
    }
    res.content_type(content_type).body(body)
}

/// `GET /`: the app's shell.
pub async fn index(req: HttpRequest) -> HttpResponse {
    let mut res = answer(&req, "text/html; charset=utf-8", INDEX, &etags()[0]);
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    res
}

/// `GET /assets/{name}`: one of the app's files; 404 for anything else.
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().position(|(n, _, _)| *n == name.as_str()) {
        Some(i) => {
            let (_, content_type, body) = ASSETS[i];
            let mut res = answer(&req, content_type, body, &etags()[i + 1]);
            let takes_gzip = req
                .headers()
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
            res.headers_mut().insert(
                header::VARY,
                header::HeaderValue::from_static("Accept-Encoding"),
            );
            match gzipped(i) {
                Some(gz) if takes_gzip && res.status() == actix_web::http::StatusCode::OK => {
                    res.headers_mut().insert(
                        header::CONTENT_ENCODING,
                        header::HeaderValue::from_static("gzip"),
                    );
                    res.set_body(actix_web::body::BoxBody::new(gz))
                }
                _ => res,
            }
        }
        None => HttpResponse::NotFound().finish(),
    }
}
