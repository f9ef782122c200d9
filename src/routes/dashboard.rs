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
];

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
            answer(&req, content_type, body, &etags()[i + 1])
        }
        None => HttpResponse::NotFound().finish(),
    }
}
