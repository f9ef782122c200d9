//! `GET /sdk/observe.js`: the browser snippet is served from the binary with caching headers
//! and CORS, gzip-compressed under 5 KB, revalidated by its ETag.

use std::io::Read;

use awc::http::Method;

use crate::helpers::{send, spawn_app, TestApp};

/// A GET whose answer is not decompressed by the client: status, headers, raw body.
async fn raw_get(
    app: &TestApp,
    headers: &[(&str, &str)],
) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
    let mut req = app.req(Method::GET, "/sdk/observe.js").no_decompress();
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let mut res = req.send().await.unwrap();
    let body = res.body().limit(1 << 20).await.unwrap();
    (res.status().as_u16(), res.headers().clone(), body.to_vec())
}

#[actix_web::test]
async fn the_snippet_is_served_cacheable_to_any_site_and_small() {
    let app = spawn_app().await;
    let plain = send(
        app.req(Method::GET, "/sdk/observe.js")
            .insert_header(("Origin", "https://shop.example")),
        None,
    )
    .await;
    assert_eq!(plain.status, 200);
    let header = |r: &crate::helpers::Reply, name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        header(&plain, "content-type").as_deref(),
        Some("application/javascript; charset=utf-8")
    );
    assert_eq!(
        header(&plain, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        header(&plain, "cache-control").as_deref(),
        Some("public, max-age=3600")
    );
    assert_eq!(
        header(&plain, "cross-origin-resource-policy").as_deref(),
        Some("cross-origin")
    );
    assert!(plain.text.contains("data-key") && plain.text.contains("/ingest/"));
    let etag = header(&plain, "etag").expect("an ETag");

    let (status, headers, gzipped) = raw_get(&app, &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    assert!(gzipped.len() < 5 * 1024, "{} bytes gzipped", gzipped.len());
    let mut unpacked = String::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_string(&mut unpacked)
        .unwrap();
    assert_eq!(unpacked, plain.text, "the same snippet");

    let (status, _, body) = raw_get(&app, &[("If-None-Match", etag.as_str())]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
}
