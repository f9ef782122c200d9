//! The dashboard (SPEC §2: "dashboard via REST"): `/` serves the single-page app's shell, and
//! `/assets/{name}` its script and stylesheet, all compiled into the binary (no CDN, works
//! offline). The app itself (`src/assets/app/`) talks to the same REST API as every client.
//! Assets are revalidated by ETag on every load (`no-cache`), so a new build is picked up at
//! once; the shell carries a strict Content-Security-Policy (only this origin's scripts,
//! styles and API; no framing).

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{get, web, HttpRequest, HttpResponse};
use observe_core::github;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// What this server offers that a client may want to know before asking for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Features {
    /// "Sign in with GitHub" is configured (`/auth/github/login` works).
    pub github_sign_in: bool,
    /// Billing through Squad is configured (the `/billing/*` routes work).
    pub billing: bool,
}

/// The features this server has configured, so the dashboard shows only what works (and
/// asks no route that would answer "not configured").
#[utoipa::path(tag = "meta", responses((status = 200, body = Features)))]
#[get("/features")]
pub async fn features(state: web::Data<AppState>) -> web::Json<Features> {
    web::Json(Features {
        github_sign_in: github::configured(&state.settings.github),
        billing: state.settings.squad.enabled(),
    })
}

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
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../assets/app/favicon.svg"),
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
  <link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">
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

/// A file compiled into the binary, with its ETag (the start of its SHA-256) and, when larger
/// than a few kilobytes, its gzip: computed once per process. The snippet (`sdk.rs`) is served
/// the same way.
pub(crate) struct Static {
    body: &'static str,
    etag: String,
    gzip: Option<Vec<u8>>,
}

impl Static {
    pub(crate) fn new(body: &'static str) -> Self {
        let digest = observe_core::auth::hash_secret(body);
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        let gzip = (body.len() > 4096).then(|| {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing into a Vec cannot fail; an empty result is never served.
            gz.write_all(body.as_bytes())
                .and_then(|()| gz.finish())
                .unwrap_or_default()
        });
        Self {
            body,
            etag: format!("\"{hex}\""),
            gzip: gzip.filter(|g| !g.is_empty()),
        }
    }

    /// The answer to `req`: 304 when `If-None-Match` names the ETag, gzip when the client
    /// takes it, else the text; with `cache_control`.
    pub(crate) fn answer(
        &self,
        req: &HttpRequest,
        content_type: &str,
        cache_control: &'static str,
    ) -> HttpResponse {
        let header_has = |name: header::HeaderName, wanted: &dyn Fn(&str) -> bool| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| wanted(t.trim())))
        };
        let fresh = header_has(header::IF_NONE_MATCH, &|t| t == self.etag);
        let mut res = if fresh {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        res.insert_header((header::ETAG, self.etag.clone()))
            .insert_header((header::CACHE_CONTROL, cache_control))
            .insert_header((header::VARY, "Accept-Encoding"))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
        if fresh {
            return res.finish();
        }
        res.content_type(content_type);
        match &self.gzip {
            Some(gz) if header_has(header::ACCEPT_ENCODING, &|e| e.starts_with("gzip")) => res
                .insert_header((header::CONTENT_ENCODING, "gzip"))
                .body(gz.clone()),
            _ => res.body(self.body),
        }
    }
}

/// The shell, then every asset, in the order of [`ASSETS`].
fn files() -> &'static [Static] {
    static FILES: OnceLock<Vec<Static>> = OnceLock::new();
    FILES.get_or_init(|| {
        std::iter::once(INDEX)
            .chain(ASSETS.iter().map(|(_, _, body)| *body))
            .map(Static::new)
            .collect()
    })
}

/// `GET /`: the app's shell.
pub async fn index(req: HttpRequest) -> HttpResponse {
    let mut res = files()[0].answer(&req, "text/html; charset=utf-8", "no-cache");
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
        Some(i) => files()[i + 1].answer(&req, ASSETS[i].1, "no-cache"),
        None => HttpResponse::NotFound().finish(),
    }
}
