//! The OpenAPI document lists every route, and the docs page is served.

use crate::helpers::spawn_app;

#[actix_web::test]
async fn openapi_lists_every_route_and_docs_are_served() {
    let app = spawn_app().await;
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{path} {method} missing"
        );
    }
    // Every documented GET route without parameters answers (is really routed).
    for (path, item) in paths {
        if item.get("get").is_some() && !path.contains('{') {
            let (status, _) = app.get_text(path).await;
            assert_ne!(status, 404, "{path} is documented but not routed");
        }
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    let (status, html) = app.get_text("/docs").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("/openapi.json") || html.to_lowercase().contains("scalar"),
        "{html}"
    );
}
