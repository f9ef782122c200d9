//! Logs: JSON lines, the request id on each line of a request, and no secrets.

use awc::http::Method;

use crate::helpers::{send, spawn_app};

#[actix_web::test]
async fn secrets_in_headers_and_query_never_reach_the_logs() {
    let app = spawn_app().await;
    let secrets = [
        "Bearer-tok-5f1e2d3c4b5a",
        "refresh-cookie-9a8b7c6d",
        "obs_live_key_1234abcd",
        "query-token-77aa88bb",
        "pw-in-header-hunter2",
    ];
    let reply = send(
        app.req(Method::GET, &format!("/health/live?token={}", secrets[3]))
            .insert_header(("Authorization", format!("Bearer {}", secrets[0])))
            .insert_header(("Cookie", format!("refresh_token={}", secrets[1])))
            .insert_header(("X-API-Key", secrets[2]))
            .insert_header(("X-Password", secrets[4]))
            .insert_header(("X-Request-Id", "secret-test-1")),
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    // Same on an error path.
    let reply = send(
        app.req(Method::GET, &format!("/nope?api_key={}", secrets[2]))
            .insert_header(("Authorization", format!("Bearer {}", secrets[0]))),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);

    let lines = app.lines_of_request("secret-test-1");
    let completed = lines
        .iter()
        .find(|l| l["message"] == "request completed")
        .expect("a request completed line");
    assert_eq!(completed["route"], "/health/live");
    assert_eq!(completed["status"], 200);
    assert!(completed["duration_ms"].is_number());

    let all = app.logs.contents();
    for secret in secrets {
        assert!(!all.contains(secret), "{secret} reached the logs");
    }
}

#[actix_web::test]
async fn every_log_line_is_json_with_a_level_and_message() {
    let app = spawn_app().await;
    let _ = app.get_text("/health/ready").await;
    let text = app.logs.contents();
    let mut count = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        count += 1;
    }
    assert!(count > 0);
}
