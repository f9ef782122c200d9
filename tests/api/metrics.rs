//! `/metrics`: route templates (never raw paths), status classes, pool gauges.

use crate::helpers::{spawn_app_with, test_routes};

fn line_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[actix_web::test]
async fn requests_are_counted_by_route_template_method_and_status_class() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    for id in [1, 2, 3] {
        assert_eq!(app.get_text(&format!("/__test/items/{id}")).await.0, 200);
    }
    assert_eq!(app.get_text("/health/live").await.0, 200);
    assert_eq!(app.get_text("/no/such/thing/9").await.0, 404);

    let (status, text) = app.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        line_value(
            &text,
            r#"observe_http_requests_total{method="GET",route="/__test/items/{id}",status="2xx"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        line_value(
            &text,
            r#"observe_http_requests_total{method="GET",route="/health/live",status="2xx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        line_value(
            &text,
            r#"observe_http_requests_total{method="GET",route="unmatched",status="4xx"}"#
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("/__test/items/1"),
        "raw paths must not become labels"
    );
    assert!(
        !text.contains("/no/such/thing"),
        "raw paths must not become labels"
    );
    assert!(text.contains(
        r#"observe_http_request_duration_seconds_bucket{method="GET",route="/__test/items/{id}",status="2xx",le="0.005"}"#
    ));
    assert!(line_value(&text, r#"observe_db_pool_connections{state="max"}"#).unwrap() >= 1.0);
    assert!(text.contains(r#"observe_db_pool_connections{state="available"}"#));
    assert!(text.contains(r#"observe_db_pool_connections{state="size"}"#));
    assert_eq!(
        app.get_text("/metrics")
            .await
            .1
            .lines()
            .find(|l| l.starts_with("# TYPE observe_http_requests_total")),
        Some("# TYPE observe_http_requests_total counter")
    );
}

/// What an operator needs beyond requests (issue 15): the build, the process, the pool's
/// waiters and checkout waits, and the ingest flush retries.
#[actix_web::test]
async fn the_build_the_process_and_the_pools_waiters_are_exported() {
    let app = spawn_app_with(|_| {}, None).await;
    let (status, text) = app.get_text("/metrics").await;
    assert_eq!(status, 200);
    let build = text
        .lines()
        .find(|l| l.starts_with("observe_build_info{"))
        .unwrap_or_else(|| panic!("no observe_build_info: {text}"));
    assert!(build.ends_with(" 1"), "{build}");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.contains("commit=\""), "{build}");
    // The dependencies as of this scrape (no readiness probe was asked).
    for dependency in ["postgres", "redis"] {
        assert_eq!(
            line_value(
                &text,
                &format!("observe_dependency_up{{dependency=\"{dependency}\"}}")
            ),
            Some(1.0),
            "{dependency}"
        );
    }
    // The standard process series (Linux), with values a live process has.
    assert!(line_value(&text, "process_resident_memory_bytes").unwrap() > 1_000_000.0);
    assert!(line_value(&text, "process_open_fds").unwrap() >= 3.0);
    assert!(line_value(&text, "process_cpu_seconds_total").unwrap() >= 0.0);
    assert!(line_value(&text, "process_start_time_seconds").unwrap() > 1.7e9);
    // Requests waiting for a connection at this moment (a new pool's first users wait for
    // its connections to open): a count, never negative.
    assert!(line_value(&text, r#"observe_db_pool_connections{state="waiting"}"#).unwrap() >= 0.0);
    assert_eq!(
        line_value(&text, "observe_ingest_flush_retries_total"),
        Some(0.0)
    );
    // Every pool checkout is timed (registering an account took some), none timed out.
    crate::helpers::register(&app).await;
    let (_, text) = app.get_text("/metrics").await;
    assert!(line_value(&text, "observe_db_pool_wait_seconds_count").unwrap() >= 1.0);
    assert!(text.contains(r#"observe_db_pool_wait_seconds_bucket{le="0.001"}"#));
    assert_eq!(
        line_value(&text, "observe_db_pool_timeouts_total"),
        Some(0.0)
    );
}

#[actix_web::test]
async fn mailbox_depth_and_capacity_are_exported_per_actor_kind() {
    let app = spawn_app_with(|_| {}, None).await;
    let sdk = crate::helpers::sdk(&app).await;
    let reply = crate::helpers::ingest(
        &app,
        &sdk.key,
        "events",
        serde_json::json!({"event": "e", "visitor_id": "v"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let (_, text) = app.get_text("/metrics").await;
    // The project's IngestActor runs: its mailbox counts, and nothing waits in it (the request
    // was taken, committed and answered).
    assert_eq!(
        line_value(
            &text,
            r#"observe_actor_mailbox_capacity{actor="IngestActor"}"#
        ),
        Some(observe_actors::ingest::MAILBOX as f64)
    );
    assert_eq!(
        line_value(&text, r#"observe_actor_mailbox_depth{actor="IngestActor"}"#),
        Some(0.0)
    );
    // The Mailer and the CheckWriter run from the start.
    for (actor, mailbox) in [
        ("Mailer", observe_actors::mailer::MAILBOX),
        ("CheckWriter", observe_actors::monitor::writer::MAILBOX),
    ] {
        let capacity = line_value(
            &text,
            &format!("observe_actor_mailbox_capacity{{actor=\"{actor}\"}}"),
        );
        assert!(
            capacity.unwrap_or(0.0) >= mailbox as f64,
            "{actor}: {capacity:?}"
        );
    }
}
