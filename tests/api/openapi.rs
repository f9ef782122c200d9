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
        ("/projects/{project_id}/events", "get"),
        ("/projects/{project_id}/errors", "get"),
        ("/projects/{project_id}/errors/{group_id}", "get"),
        ("/projects/{project_id}/errors/{group_id}/resolve", "post"),
        ("/projects/{project_id}/errors/{group_id}/unresolve", "post"),
        ("/projects/{project_id}/api-requests", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{path} {method} missing"
        );
    }
    // Every documented route is really routed: a request to it (placeholders filled in)
    // is logged under its template, never as `unmatched` (some answer 404 on purpose, e.g.
    // /admin/stats without a configured token, so the status alone cannot tell).
    let mut checked = 0;
    for (template, item) in paths {
        let path = template
            .replace("{project_id}", &uuid::Uuid::nil().to_string())
            .replace("{key_id}", &uuid::Uuid::nil().to_string())
            .replace("{group_id}", &uuid::Uuid::nil().to_string());
        for method in ["get", "post", "patch", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let request_id = format!("openapi-check-{checked}");
            let method = awc::http::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let req = app
                .req(method.clone(), &path)
                .insert_header(("X-Request-Id", request_id.as_str()));
            crate::helpers::send(req, None).await;
            let lines = app.lines_of_request(&request_id);
            let completed = lines
                .iter()
                .find(|l| l["message"] == "request completed")
                .unwrap_or_else(|| panic!("{method} {path}: no request line"));
            assert_eq!(
                completed["route"],
                template.as_str(),
                "{method} {template} is documented but not routed"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    let (status, html) = app.get_text("/docs").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("/openapi.json") || html.to_lowercase().contains("scalar"),
        "{html}"
    );
}
