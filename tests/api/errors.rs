//! Every error a client can meet has the SPEC §10 shape, with the request id.

use awc::http::Method;

use crate::helpers::{send, spawn_app, spawn_app_with, test_routes};

fn assert_error_shape(body: &serde_json::Value, code: &str, request_id: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["error"]["request_id"], request_id, "{body}");
}

#[actix_web::test]
async fn unknown_route_is_a_json_404_with_the_request_id() {
    let app = spawn_app().await;
    let reply = send(app.req(Method::GET, "/no/such/route"), None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    let id = reply.header("x-request-id").expect("request id header");
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "generated ids are UUIDs: {id}"
    );
    assert_error_shape(&reply.json(), "not_found", &id);
}

#[actix_web::test]
async fn a_client_request_id_is_echoed_and_a_bad_one_replaced() {
    let app = spawn_app().await;
    let reply = send(
        app.req(Method::GET, "/nope")
            .insert_header(("X-Request-Id", "trace-abc_123")),
        None,
    )
    .await;
    assert_eq!(
        reply.header("x-request-id").as_deref(),
        Some("trace-abc_123")
    );
    assert_error_shape(&reply.json(), "not_found", "trace-abc_123");

    let ok = send(
        app.req(Method::GET, "/health/live")
            .insert_header(("X-Request-Id", "trace-ok")),
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-request-id").as_deref(), Some("trace-ok"));

    let forged = "x\"}{\"level\":\"ERROR";
    let reply = send(
        app.req(Method::GET, "/nope")
            .insert_header(("X-Request-Id", forged)),
        None,
    )
    .await;
    let id = reply.header("x-request-id").unwrap();
    assert_ne!(id, forged);
    assert!(uuid::Uuid::parse_str(&id).is_ok());
}

#[actix_web::test]
async fn wrong_method_is_a_json_405_with_allow() {
    let app = spawn_app().await;
    let reply = send(app.req(Method::POST, "/health/ready"), None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow").as_deref(), Some("GET"));
    let id = reply.header("x-request-id").unwrap();
    assert_error_shape(&reply.json(), "method_not_allowed", &id);

    // Routes outside the document too.
    for path in ["/docs", "/openapi.json"] {
        let reply = send(app.req(Method::DELETE, path), None).await;
        assert_eq!(reply.status, 405, "{path}");
        assert_eq!(reply.header("allow").as_deref(), Some("GET"));
    }
}

#[actix_web::test]
async fn oversized_body_is_a_json_413() {
    let app = spawn_app_with(|s| s.server.body_limit_bytes = 2048, Some(test_routes())).await;
    let big = format!("{{\"data\":\"{}\"}}", "x".repeat(4096));
    let reply = send(
        app.req(Method::POST, "/__test/echo")
            .insert_header(("content-type", "application/json")),
        Some(big.into_bytes()),
    )
    .await;
    assert_eq!(reply.status, 413);
    let id = reply.header("x-request-id").unwrap();
    assert_error_shape(&reply.json(), "payload_too_large", &id);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2048"));

    // Under the limit the same route works.
    let reply = send(
        app.req(Method::POST, "/__test/echo")
            .insert_header(("content-type", "application/json")),
        Some(br#"{"data":"small"}"#.to_vec()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["data"], "small");
}

#[actix_web::test]
async fn json_and_query_extractor_failures_are_json_400s() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    let json_post = || {
        app.req(Method::POST, "/__test/echo")
            .insert_header(("content-type", "application/json"))
    };

    let reply = send(json_post(), Some(b"{\"broken\":".to_vec())).await;
    assert_eq!(reply.status, 400);
    assert_error_shape(
        &reply.json(),
        "invalid_json",
        &reply.header("x-request-id").unwrap(),
    );

    let reply = send(
        app.req(Method::POST, "/__test/echo")
            .insert_header(("content-type", "text/plain")),
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(reply.status, 415);
    assert_error_shape(
        &reply.json(),
        "unsupported_media_type",
        &reply.header("x-request-id").unwrap(),
    );

    let reply = send(app.req(Method::GET, "/__test/page?limit=lots"), None).await;
    assert_eq!(reply.status, 400);
    assert_error_shape(
        &reply.json(),
        "invalid_query",
        &reply.header("x-request-id").unwrap(),
    );

    // A path parameter of the wrong type names no resource.
    let reply = send(app.req(Method::GET, "/__test/items/not-a-number"), None).await;
    assert_eq!(reply.status, 404);
    assert_error_shape(
        &reply.json(),
        "not_found",
        &reply.header("x-request-id").unwrap(),
    );
}

#[actix_web::test]
async fn a_panicking_handler_is_a_json_500_without_its_text_and_the_server_keeps_serving() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    let reply = send(app.req(Method::GET, "/__test/panic"), None).await;
    assert_eq!(reply.status, 500);
    let id = reply.header("x-request-id").unwrap();
    assert_error_shape(&reply.json(), "internal_error", &id);
    assert!(!reply.text.contains("disk 7"), "{}", reply.text);
    assert!(
        !reply.text.contains("secret internal detail"),
        "{}",
        reply.text
    );
    assert!(
        !reply.text.contains(".rs"),
        "no source locations: {}",
        reply.text
    );

    // The panic was logged, with the request id.
    let lines = app.lines_of_request(&id);
    assert!(lines.iter().any(|l| l["message"] == "panic"), "{lines:?}");

    for _ in 0..3 {
        let (status, _) = app.get_text("/health/live").await;
        assert_eq!(status, 200);
    }
}
