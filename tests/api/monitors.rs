//! The monitor API (SPEC §7): create, list, detail with its figures, update, pause/resume,
//! delete; input validation; tier limits on count and interval; pagination.

use awc::http::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    call, count, create_project, register, set_tier, spawn_app, spawn_app_with, TestApp,
};

/// Creates a monitor, asserting 201; returns its JSON.
async fn create_monitor(app: &TestApp, token: &str, project: &str, body: Value) -> Value {
    let reply = call(
        app,
        Method::POST,
        &format!("/projects/{project}/monitors"),
        Some(token),
        Some(body),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()
}

/// A timestamp of a reply.
fn at(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp")).expect("RFC 3339")
}

/// A monitor's JSON without what the engine may change at any moment (it may check a
/// monitor as soon as it exists).
fn config_of(monitor: &Value) -> Value {
    let mut m = monitor.clone();
    let obj = m.as_object_mut().expect("an object");
    obj.remove("status");
    obj.remove("last_checked_at");
    // The list's 24-hour bar (the list alone has it).
    obj.remove("last_24h");
    m
}

fn id_of(monitor: &Value) -> String {
    monitor["id"].as_str().expect("monitor id").to_string()
}

/// The `field`s of a 422's details, sorted.
fn invalid_fields(reply: &crate::helpers::Reply) -> Vec<String> {
    assert_eq!(reply.status, 422, "{}", reply.text);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "validation_failed");
    let mut fields: Vec<String> = error["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| {
            assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()), "{d}");
            d["field"].as_str().expect("field").to_string()
        })
        .collect();
    fields.sort();
    fields
}

/// A paused monitor written straight into the database: the engine never checks it, so the
/// only check rows it has are the ones a test writes.
async fn paused_monitor(app: &TestApp, project: &str, name: &str) -> String {
    let conn = app.state.db.get().await.unwrap();
    let project: Uuid = project.parse().unwrap();
    let id: Uuid = conn
        .query_one(
            "INSERT INTO monitors (project_id, name, url, interval_seconds, timeout_seconds, paused)
             VALUES ($1, $2, 'http://e.com', 300, 30, true) RETURNING id",
            &[&project, &name],
        )
        .await
        .unwrap()
        .get(0);
    id.to_string()
}

/// A check row, `ago_secs` seconds ago, straight into `monitor_checks`.
#[allow(clippy::too_many_arguments)]
async fn insert_check(
    app: &TestApp,
    monitor: &str,
    project: &str,
    ago_secs: f64,
    ok: bool,
    status_code: Option<i32>,
    response_ms: Option<i32>,
    failure: Option<&str>,
) {
    let conn = app.state.db.get().await.unwrap();
    let monitor: Uuid = monitor.parse().unwrap();
    let project: Uuid = project.parse().unwrap();
    let error = failure.map(|f| format!("{f} failure"));
    conn.execute(
        "INSERT INTO monitor_checks (monitor_id, project_id, scheduled_at, started_at, ok,
             status_code, response_ms, failure, error)
         VALUES ($1, $2, now() - $3::float8 * interval '1 second',
                 now() - $3::float8 * interval '1 second', $4, $5, $6, $7, $8)",
        &[
            &monitor,
            &project,
            &ago_secs,
            &ok,
            &status_code,
            &response_ms,
            &failure,
            &error,
        ],
    )
    .await
    .unwrap();
}

/// An incident row that started `ago_secs` ago (resolved `resolved_after` later, if given).
async fn insert_incident(
    app: &TestApp,
    monitor: &str,
    project: &str,
    ago_secs: f64,
    resolved_after: Option<f64>,
    cause: &str,
) -> Uuid {
    let conn = app.state.db.get().await.unwrap();
    let monitor: Uuid = monitor.parse().unwrap();
    let project: Uuid = project.parse().unwrap();
    conn.query_one(
        "INSERT INTO incidents (monitor_id, project_id, started_at, resolved_at, cause, error)
         VALUES ($1, $2, now() - $3::float8 * interval '1 second',
                 now() - $3::float8 * interval '1 second' + $4::float8 * interval '1 second',
                 $5, 'it broke')
         RETURNING id",
        &[&monitor, &project, &ago_secs, &resolved_after, &cause],
    )
    .await
    .unwrap()
    .get(0)
}

/// Pauses a monitor through the API (so the engine never checks it during a test that
/// counts check rows).
async fn pause(app: &TestApp, token: &str, project: &str, monitor: &str, paused: bool) -> Value {
    let reply = call(
        app,
        Method::PATCH,
        &format!("/projects/{project}/monitors/{monitor}/pause"),
        Some(token),
        Some(json!({ "paused": paused })),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()
}

#[actix_web::test]
async fn a_monitor_is_created_listed_read_updated_paused_resumed_and_deleted() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "shop").await;

    // Only name and url: the rest are defaults (hobby: the 5-minute minimum).
    let minimal = create_monitor(
        &app,
        &account.token,
        &project,
        json!({"name": "Shop front", "url": "https://shop.example.com/health"}),
    )
    .await;
    assert_eq!(minimal["name"], "Shop front");
    assert_eq!(minimal["url"], "https://shop.example.com/health");
    assert_eq!(minimal["project_id"], project.as_str());
    assert_eq!(minimal["method"], "GET");
    assert_eq!(minimal["interval_seconds"], 300);
    assert_eq!(minimal["timeout_seconds"], 30);
    assert_eq!(minimal["expected_status"], json!(["200-399"]));
    assert_eq!(minimal["keyword"], Value::Null);
    assert_eq!(minimal["keyword_absent"], false);
    assert_eq!(minimal["headers"], json!({}));
    assert_eq!(minimal["send_traceparent"], false);
    assert_eq!(minimal["paused"], false);
    assert_eq!(minimal["status"], "pending");
    assert!(minimal["last_checked_at"].is_null());
    assert!(minimal["created_at"].as_str().is_some());
    assert_eq!(minimal["created_at"], minimal["updated_at"]);

    // Every field.
    let full = create_monitor(
        &app,
        &account.token,
        &project,
        json!({
            "name": "API", "url": "http://api.example.com:8080/status?x=1", "method": "post",
            "interval_seconds": 900, "timeout_seconds": 25,
            "expected_status": [200, "204", "300-302"], "keyword": "healthy",
            "keyword_absent": true, "headers": {"X-Probe": "observe", "Accept": "application/json"},
            "send_traceparent": true
        }),
    )
    .await;
    assert_eq!(full["method"], "POST");
    assert_eq!(full["send_traceparent"], true);
    assert_eq!(full["interval_seconds"], 900);
    assert_eq!(full["timeout_seconds"], 25);
    assert_eq!(full["expected_status"], json!([200, 204, "300-302"]));
    assert_eq!(full["keyword"], "healthy");
    assert_eq!(full["keyword_absent"], true);
    assert_eq!(
        full["headers"],
        json!({"X-Probe": "observe", "Accept": "application/json"})
    );
    let full_id = id_of(&full);
    // Stored as given.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1 AND expected_status = '[200, 204, \"300-302\"]'::jsonb AND headers->>'X-Probe' = 'observe' AND timeout_seconds = 25",
            &project
        )
        .await,
        1
    );

    // The list, oldest first.
    let reply = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/monitors"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let list = reply.json();
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("Shop front"), json!("API")]);
    assert!(list["next_cursor"].is_null());
    assert_eq!(config_of(&list["items"][1]), config_of(&full));
    let bar = list["items"][1]["last_24h"].as_array().unwrap();
    assert_eq!(bar.len(), 24, "the last 24 hours");
    assert!(bar.iter().all(|h| h["checks"] == 0), "never checked yet");

    // The detail of a monitor never checked: its fields, and no figures yet.
    let reply = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/monitors/{full_id}"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let detail = reply.json();
    for (k, v) in config_of(&full).as_object().unwrap() {
        assert_eq!(&detail[k], v, "{k}");
    }
    assert_eq!(
        detail["uptime"],
        json!({"24h": null, "7d": null, "30d": null})
    );
    assert_eq!(detail["response_ms"], json!({"avg": null, "p95": null}));
    assert_eq!(detail["recent_checks"], json!([]));
    assert_eq!(detail["incidents"], json!([]));

    // A partial update: what is named changes, the rest stays; updated_at moves.
    let reply = call(
        &app,
        Method::PATCH,
        &format!("/projects/{project}/monitors/{full_id}"),
        Some(&account.token),
        Some(json!({"name": "API v2", "keyword": null, "headers": {"X-Other": "1"}, "interval_seconds": 300})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let updated = reply.json();
    assert_eq!(updated["name"], "API v2");
    assert_eq!(updated["keyword"], Value::Null);
    assert_eq!(updated["headers"], json!({"X-Other": "1"}));
    assert_eq!(updated["interval_seconds"], 300);
    assert_eq!(updated["timeout_seconds"], 25);
    assert_eq!(updated["url"], full["url"]);
    assert_eq!(updated["method"], "POST");
    assert_eq!(updated["expected_status"], full["expected_status"]);
    assert_eq!(updated["keyword_absent"], true);
    assert_eq!(updated["created_at"], full["created_at"]);
    assert!(
        at(&updated["updated_at"]) > at(&full["updated_at"]),
        "{} !> {}",
        updated["updated_at"],
        full["updated_at"]
    );
    let detail = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/monitors/{full_id}"),
        Some(&account.token),
        None,
    )
    .await
    .json();
    assert_eq!(detail["name"], "API v2");
    assert_eq!(detail["headers"], json!({"X-Other": "1"}));

    // Pause and resume.
    let paused = pause(&app, &account.token, &project, &full_id, true).await;
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["status"], "paused");
    assert!(at(&paused["updated_at"]) > at(&updated["updated_at"]));
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1 AND paused",
            &project
        )
        .await,
        1
    );
    let detail = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/monitors/{full_id}"),
        Some(&account.token),
        None,
    )
    .await
    .json();
    assert_eq!(detail["status"], "paused");
    let resumed = pause(&app, &account.token, &project, &full_id, false).await;
    assert_eq!(resumed["paused"], false);
    assert_ne!(resumed["status"], "paused");
    assert!(["pending", "up", "down"].contains(&resumed["status"].as_str().unwrap()));
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1 AND paused",
            &project
        )
        .await,
        0
    );

    // Delete: gone from the detail and the list; a second delete finds nothing.
    let path = format!("/projects/{project}/monitors/{full_id}");
    let reply = call(&app, Method::DELETE, &path, Some(&account.token), None).await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    let reply = call(&app, Method::GET, &path, Some(&account.token), None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["code"], "not_found");
    for method in [Method::DELETE, Method::PATCH] {
        let body = (method == Method::PATCH).then(|| json!({"name": "x"}));
        let reply = call(&app, method.clone(), &path, Some(&account.token), body).await;
        assert_eq!(reply.status, 404, "{method}");
    }
    let reply = call(
        &app,
        Method::PATCH,
        &format!("{path}/pause"),
        Some(&account.token),
        Some(json!({"paused": true})),
    )
    .await;
    assert_eq!(reply.status, 404);
    let list = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/monitors"),
        Some(&account.token),
        None,
    )
    .await
    .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], minimal["id"]);

    // Deleting the project takes its monitors with it.
    let reply = call(
        &app,
        Method::DELETE,
        &format!("/projects/{project}"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1",
            &project
        )
        .await,
        0
    );
}

#[actix_web::test]
async fn invalid_monitors_are_refused_with_every_field_named() {
    // The timeout cap raised above the shortest interval, so a stored timeout can outlast a
    // shorter interval (what the update rules below are about).
    let app = spawn_app_with(|s| s.monitors.max_timeout_secs = 600, None).await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "p").await;
    let monitors = format!("/projects/{project}/monitors");
    let post = |body: Value| {
        let app = &app;
        let token = account.token.clone();
        let monitors = monitors.clone();
        async move { call(app, Method::POST, &monitors, Some(&token), Some(body)).await }
    };

    let reply = post(json!({})).await;
    assert_eq!(invalid_fields(&reply), vec!["name", "url"]);

    let reply = post(json!({
        "name": "x".repeat(201), "url": "ftp://example.com/file", "method": "TRACE",
        "interval_seconds": 120, "timeout_seconds": 0,
        "expected_status": [200, "399-200", 99], "keyword": "k".repeat(1025),
        "keyword_absent": "no",
        "headers": {"X-Evil": "a\r\nSet-Cookie: x=1", "Bad Name": "v", "X-Num": 5},
        "send_traceparent": "yes",
        "paused": true
    }))
    .await;
    assert_eq!(
        invalid_fields(&reply),
        vec![
            "expected_status[1]",
            "expected_status[2]",
            "headers.Bad Name",
            "headers.X-Evil",
            "headers.X-Num",
            "interval_seconds",
            "keyword",
            "keyword_absent",
            "method",
            "name",
            "paused",
            "send_traceparent",
            "timeout_seconds",
            "url",
        ]
    );

    // URLs: http(s) with a host, at most 2048 characters.
    for url in [
        "example.com",
        "http://",
        "https://exa mple.com/",
        "javascript:alert(1)",
        "http://user:secret@example.com/",
    ] {
        let reply = post(json!({"name": "n", "url": url})).await;
        assert_eq!(invalid_fields(&reply), vec!["url"], "{url}");
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let reply = post(json!({"name": "n", "url": long})).await;
    assert_eq!(invalid_fields(&reply), vec!["url"]);

    // The timeout must be under the interval; expected_status not empty; headers at most 20.
    let reply = post(json!({"name": "n", "url": "http://e.com", "interval_seconds": 300, "timeout_seconds": 300})).await;
    assert_eq!(invalid_fields(&reply), vec!["timeout_seconds"]);
    let reply = post(json!({"name": "n", "url": "http://e.com", "expected_status": []})).await;
    assert_eq!(invalid_fields(&reply), vec!["expected_status"]);
    let headers: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("X-{i}"), json!("v"))).collect();
    let reply = post(json!({"name": "n", "url": "http://e.com", "headers": headers})).await;
    assert_eq!(invalid_fields(&reply), vec!["headers"]);
    let reply = post(json!(["not", "an", "object"])).await;
    assert_eq!(invalid_fields(&reply), vec!["body"]);
    // Not JSON at all: 400.
    let reply = crate::helpers::send(
        app.req(Method::POST, &monitors)
            .insert_header(("Authorization", format!("Bearer {}", account.token)))
            .insert_header(("content-type", "application/json")),
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], "invalid_json");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1",
            &project
        )
        .await,
        0,
        "nothing invalid was stored"
    );

    // Updates are validated the same way, and leave the monitor as it was.
    let monitor = create_monitor(
        &app,
        &account.token,
        &project,
        json!({"name": "ok", "url": "http://e.com", "interval_seconds": 900, "timeout_seconds": 400}),
    )
    .await;
    let path = format!("{monitors}/{}", id_of(&monitor));
    let reply = call(
        &app,
        Method::PATCH,
        &path,
        Some(&account.token),
        Some(json!({"name": "", "url": "mailto:a@b.c", "method": null})),
    )
    .await;
    assert_eq!(invalid_fields(&reply), vec!["method", "name", "url"]);
    // Shortening the interval under the stored timeout names the timeout.
    let reply = call(
        &app,
        Method::PATCH,
        &path,
        Some(&account.token),
        Some(json!({"interval_seconds": 300, "timeout_seconds": 0})),
    )
    .await;
    assert_eq!(invalid_fields(&reply), vec!["timeout_seconds"]);
    let reply = call(
        &app,
        Method::PATCH,
        &path,
        Some(&account.token),
        Some(json!({"interval_seconds": 300})),
    )
    .await;
    assert_eq!(invalid_fields(&reply), vec!["timeout_seconds"]);
    let reply = call(&app, Method::GET, &path, Some(&account.token), None).await;
    let unchanged = reply.json();
    assert_eq!(unchanged["name"], "ok");
    assert_eq!(unchanged["interval_seconds"], 900);
    assert_eq!(unchanged["updated_at"], monitor["updated_at"]);
    // Both together are fine.
    let reply = call(
        &app,
        Method::PATCH,
        &path,
        Some(&account.token),
        Some(json!({"interval_seconds": 300, "timeout_seconds": 20})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["timeout_seconds"], 20);

    // Pause takes a boolean.
    for body in [json!({"paused": "yes"}), json!({})] {
        let reply = call(
            &app,
            Method::PATCH,
            &format!("{path}/pause"),
            Some(&account.token),
            Some(body),
        )
        .await;
        assert_eq!(reply.status, 422, "{}", reply.text);
        assert_eq!(reply.json()["error"]["code"], "validation_failed");
    }

    // A monitor id that is not a UUID names nothing.
    let reply = call(
        &app,
        Method::GET,
        &format!("{monitors}/not-a-uuid"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
}

/// A URL whose host is a literal private, loopback or link-local address can only be an attempt
/// to reach observe's own network (SSRF): it is refused when the monitor is written, naming the
/// setting that allows it. Host names are allowed here and checked at every check (DNS can
/// change). The timeout is capped (30 s by default), so one tenant's hanging targets cannot
/// hold check slots for minutes.
#[actix_web::test]
async fn literal_private_addresses_and_timeouts_over_the_cap_are_refused() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "p").await;
    let monitors = format!("/projects/{project}/monitors");
    let post = |body: Value| {
        let app = &app;
        let token = account.token.clone();
        let monitors = monitors.clone();
        async move { call(app, Method::POST, &monitors, Some(&token), Some(body)).await }
    };
    let names_the_setting = |reply: &crate::helpers::Reply| {
        let details = &reply.json()["error"]["details"];
        details[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("monitors.allow_private_targets"))
    };

    for url in [
        "http://127.0.0.1:8080/health",
        "http://[::1]:3000/",
        "http://10.0.0.8/",
        "http://172.16.4.4/",
        "http://192.168.1.1/admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0:8000/",
        "http://[::ffff:192.168.0.1]/",
        "http://[fd00:ec2::254]/",
        // Other spellings of 127.0.0.1 that resolvers accept.
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
    ] {
        let reply = post(json!({"name": "n", "url": url})).await;
        assert_eq!(invalid_fields(&reply), vec!["url"], "{url}");
        assert!(names_the_setting(&reply), "{url}: {}", reply.text);
    }
    // A name is checked at every check, not here.
    let named = create_monitor(
        &app,
        &account.token,
        &project,
        json!({"name": "n", "url": "http://localhost:8080/"}),
    )
    .await;
    // Updates are held to the same rule.
    let reply = call(
        &app,
        Method::PATCH,
        &format!("{monitors}/{}", id_of(&named)),
        Some(&account.token),
        Some(json!({"url": "http://192.168.0.10/"})),
    )
    .await;
    assert_eq!(invalid_fields(&reply), vec!["url"]);
    assert!(names_the_setting(&reply), "{}", reply.text);

    // Timeouts: at most monitors.max_timeout_secs (30).
    let reply = post(
        json!({"name": "n", "url": "http://e.com", "interval_seconds": 300, "timeout_seconds": 31}),
    )
    .await;
    assert_eq!(invalid_fields(&reply), vec!["timeout_seconds"]);
    let reason = reply.json()["error"]["details"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("30") && reason.contains("monitors.max_timeout_secs"),
        "{reason}"
    );
    let capped = create_monitor(
        &app,
        &account.token,
        &project,
        json!({"name": "n", "url": "http://e.com", "interval_seconds": 300, "timeout_seconds": 30}),
    )
    .await;
    assert_eq!(capped["timeout_seconds"], 30);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1",
            &project
        )
        .await,
        2,
        "nothing refused was stored"
    );

    // Self-hosters watching their own network lift the rule.
    let open = spawn_app_with(|s| s.monitors.allow_private_targets = true, None).await;
    let account = register(&open).await;
    let project = create_project(&open, &account.token, "lan").await;
    create_monitor(
        &open,
        &account.token,
        &project,
        json!({"name": "router", "url": "http://192.168.1.1/"}),
    )
    .await;
}

#[actix_web::test]
async fn tiers_limit_the_number_of_monitors_and_their_interval() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let first = create_project(&app, &account.token, "one").await;
    let second = create_project(&app, &account.token, "two").await;

    // Hobby: nothing under 5 minutes.
    let reply = call(
        &app,
        Method::POST,
        &format!("/projects/{first}/monitors"),
        Some(&account.token),
        Some(json!({"name": "fast", "url": "http://e.com", "interval_seconds": 60})),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "tier_limit");
    assert_eq!(error["details"]["tier"], "hobby");
    assert_eq!(error["details"]["resource"], "monitor_interval");
    assert_eq!(error["details"]["limit"], 300);
    assert!(
        error["message"].as_str().unwrap().contains("300"),
        "{error}"
    );

    // Five monitors per organisation, over all its projects.
    let mut ids = Vec::new();
    for n in 0..5 {
        let project = if n % 2 == 0 { &first } else { &second };
        let m = create_monitor(
            &app,
            &account.token,
            project,
            json!({"name": format!("m{n}"), "url": "http://e.com"}),
        )
        .await;
        assert_eq!(m["interval_seconds"], 300);
        ids.push((project.clone(), id_of(&m)));
    }
    let reply = call(
        &app,
        Method::POST,
        &format!("/projects/{second}/monitors"),
        Some(&account.token),
        Some(json!({"name": "sixth", "url": "http://e.com"})),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "tier_limit");
    assert_eq!(error["details"]["resource"], "monitors");
    assert_eq!(error["details"]["limit"], 5);
    assert_eq!(error["details"]["tier"], "hobby");

    // An update cannot go under the minimum either; the monitor keeps its interval.
    let (project, id) = &ids[0];
    let path = format!("/projects/{project}/monitors/{id}");
    let reply = call(
        &app,
        Method::PATCH,
        &path,
        Some(&account.token),
        Some(json!({"interval_seconds": 60})),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(
        reply.json()["error"]["details"]["resource"],
        "monitor_interval"
    );
    let reply = call(&app, Method::GET, &path, Some(&account.token), None).await;
    assert_eq!(reply.json()["interval_seconds"], 300);

    // Deleting one frees its slot.
    let reply = call(&app, Method::DELETE, &path, Some(&account.token), None).await;
    assert_eq!(reply.status, 204);
    create_monitor(
        &app,
        &account.token,
        &second,
        json!({"name": "again", "url": "http://e.com"}),
    )
    .await;

    // Pro: one-minute intervals (the default too), and 50 monitors.
    set_tier(&app, &first, "pro").await;
    let fast = create_monitor(
        &app,
        &account.token,
        &first,
        json!({"name": "fast", "url": "http://e.com"}),
    )
    .await;
    assert_eq!(fast["interval_seconds"], 60);
    assert_eq!(fast["timeout_seconds"], 30);
    let reply = call(
        &app,
        Method::PATCH,
        &format!("/projects/{first}/monitors/{}", ids[2].1),
        Some(&account.token),
        Some(json!({"interval_seconds": 60})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["interval_seconds"], 60);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors m JOIN projects p ON p.id = m.project_id
             WHERE p.organisation_id = (SELECT organisation_id FROM projects WHERE id = $1)",
            &first
        )
        .await,
        6
    );
}

#[actix_web::test]
async fn monitor_lists_are_paginated() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "p").await;
    let other = create_project(&app, &account.token, "other").await;
    for n in 1..=4 {
        create_monitor(
            &app,
            &account.token,
            &project,
            json!({"name": format!("m{n}"), "url": "http://e.com"}),
        )
        .await;
    }
    create_monitor(
        &app,
        &account.token,
        &other,
        json!({"name": "elsewhere", "url": "http://e.com"}),
    )
    .await;

    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/projects/{project}/monitors?limit=3&cursor={c}"),
            None => format!("/projects/{project}/monitors?limit=3"),
        };
        let reply = call(&app, Method::GET, &path, Some(&account.token), None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let body = reply.json();
        pages += 1;
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), if pages == 1 { 3 } else { 1 });
        names.extend(
            items
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(names, vec!["m1", "m2", "m3", "m4"]);

    for query in ["limit=0", "limit=201", "cursor=garbage"] {
        let reply = call(
            &app,
            Method::GET,
            &format!("/projects/{project}/monitors?{query}"),
            Some(&account.token),
            None,
        )
        .await;
        assert_eq!(reply.status, 400, "{query}");
        assert_eq!(reply.json()["error"]["code"], "invalid_query");
    }
    // A project that does not exist has no list.
    let reply = call(
        &app,
        Method::GET,
        &format!("/projects/{}/monitors", Uuid::new_v4()),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
}

#[actix_web::test]
async fn the_detail_computes_uptime_response_times_and_lists_checks_and_incidents() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "p").await;
    let id = paused_monitor(&app, &project, "watched").await;
    let other = paused_monitor(&app, &project, "other").await;

    const HOUR: f64 = 3600.0;
    const DAY: f64 = 24.0 * HOUR;
    // Last 24 h: 3 ok (100, 200, 300 ms), 1 failed with a slow 5000 ms answer.
    insert_check(&app, &id, &project, 60.0, true, Some(200), Some(100), None).await;
    insert_check(&app, &id, &project, HOUR, true, Some(200), Some(200), None).await;
    insert_check(
        &app,
        &id,
        &project,
        2.0 * HOUR,
        true,
        Some(204),
        Some(300),
        None,
    )
    .await;
    insert_check(
        &app,
        &id,
        &project,
        3.0 * HOUR,
        false,
        Some(500),
        Some(5000),
        Some("status"),
    )
    .await;
    // 3 days ago: 1 failed (timeout). 10 days ago: 1 ok. 40 days ago: 1 failed (outside 30 d).
    insert_check(
        &app,
        &id,
        &project,
        3.0 * DAY,
        false,
        None,
        None,
        Some("timeout"),
    )
    .await;
    insert_check(
        &app,
        &id,
        &project,
        10.0 * DAY,
        true,
        Some(200),
        Some(50),
        None,
    )
    .await;
    insert_check(
        &app,
        &id,
        &project,
        40.0 * DAY,
        false,
        None,
        None,
        Some("dns"),
    )
    .await;
    // Another monitor's checks count for it, not for this one.
    for _ in 0..5 {
        insert_check(
            &app,
            &other,
            &project,
            30.0,
            false,
            None,
            None,
            Some("connect"),
        )
        .await;
    }
    let resolved = insert_incident(&app, &id, &project, 3.0 * DAY, Some(600.0), "timeout").await;
    let open = insert_incident(&app, &id, &project, 3.0 * HOUR, None, "status").await;
    insert_incident(&app, &other, &project, HOUR, None, "connect").await;

    let path = format!("/projects/{project}/monitors/{id}");
    let reply = call(&app, Method::GET, &path, Some(&account.token), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let detail = reply.json();
    assert_eq!(detail["name"], "watched");
    assert_eq!(detail["status"], "paused");
    // 24 h: 3 of 4; 7 d: 3 of 5; 30 d: 4 of 6.
    assert_eq!(
        detail["uptime"],
        json!({"24h": 75.0, "7d": 60.0, "30d": 66.667})
    );
    // Successful checks of the last 24 h only: avg of 100, 200, 300; p95 interpolated.
    assert_eq!(detail["response_ms"], json!({"avg": 200.0, "p95": 290.0}));

    let checks = detail["recent_checks"].as_array().unwrap();
    assert_eq!(
        checks.len(),
        7,
        "all of this monitor's checks, none of the other's"
    );
    let started: Vec<_> = checks.iter().map(|c| at(&c["started_at"])).collect();
    let mut sorted = started.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(started, sorted, "newest first");
    assert_eq!(
        checks[0],
        json!({"started_at": checks[0]["started_at"], "ok": true, "status_code": 200,
               "response_ms": 100, "failure": null, "error": null})
    );
    assert_eq!(checks[3]["ok"], false);
    assert_eq!(checks[3]["status_code"], 500);
    assert_eq!(checks[3]["failure"], "status");
    assert_eq!(checks[3]["error"], "status failure");
    assert_eq!(checks[6]["failure"], "dns");

    let incidents = detail["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 2);
    assert_eq!(incidents[0]["id"], open.to_string());
    assert!(incidents[0]["resolved_at"].is_null());
    assert_eq!(incidents[0]["cause"], "status");
    assert_eq!(incidents[0]["error"], "it broke");
    assert_eq!(incidents[1]["id"], resolved.to_string());
    assert!(incidents[1]["resolved_at"].as_str().is_some());
    assert_eq!(incidents[1]["cause"], "timeout");

    // The other monitor: 0 % up, no response times (no successful check).
    let reply = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/monitors/{other}"),
        Some(&account.token),
        None,
    )
    .await;
    let detail = reply.json();
    assert_eq!(detail["uptime"], json!({"24h": 0.0, "7d": 0.0, "30d": 0.0}));
    assert_eq!(detail["response_ms"], json!({"avg": null, "p95": null}));
    assert_eq!(detail["incidents"].as_array().unwrap().len(), 1);

    // At most the last 50 checks and the last 20 incidents.
    for n in 0..60 {
        insert_check(
            &app,
            &id,
            &project,
            4.0 * DAY + f64::from(n),
            true,
            Some(200),
            Some(10),
            None,
        )
        .await;
    }
    for n in 0..25 {
        insert_incident(
            &app,
            &id,
            &project,
            20.0 * DAY + f64::from(n) * HOUR,
            Some(60.0),
            "dns",
        )
        .await;
    }
    let detail = call(&app, Method::GET, &path, Some(&account.token), None)
        .await
        .json();
    let checks = detail["recent_checks"].as_array().unwrap();
    assert_eq!(checks.len(), 50);
    assert_eq!(checks[0]["response_ms"], 100, "still the newest first");
    let incidents = detail["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 20);
    assert_eq!(incidents[0]["id"], open.to_string());
    // 7 d now: 63 of 65 ok.
    assert_eq!(detail["uptime"]["7d"], json!(96.923));
}

#[actix_web::test]
async fn deleting_a_monitor_deletes_its_checks_and_incidents() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "p").await;
    let doomed = paused_monitor(&app, &project, "doomed").await;
    let kept = paused_monitor(&app, &project, "kept").await;
    for id in [&doomed, &kept] {
        insert_check(&app, id, &project, 60.0, true, Some(200), Some(10), None).await;
        insert_check(
            &app,
            id,
            &project,
            9.0 * 86400.0,
            false,
            None,
            None,
            Some("tls"),
        )
        .await;
        insert_incident(&app, id, &project, 3600.0, None, "tls").await;
    }
    let reply = call(
        &app,
        Method::DELETE,
        &format!("/projects/{project}/monitors/{doomed}"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    let conn = app.state.db.get().await.unwrap();
    // The checks are purged in the background (a purge recorded with the delete).
    let doomed_id: Uuid = doomed.parse().unwrap();
    assert!(
        crate::helpers::eventually(20, || async {
            let n: i64 = conn
                .query_one(
                    "SELECT count(*) FROM monitor_checks WHERE monitor_id = $1",
                    &[&doomed_id],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await,
        "the deleted monitor's checks are purged"
    );
    for (table, id, expected) in [
        ("monitor_checks", &doomed, 0i64),
        ("incidents", &doomed, 0),
        ("monitor_checks", &kept, 2),
        ("incidents", &kept, 1),
    ] {
        let id: Uuid = id.parse().unwrap();
        let n: i64 = conn
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE monitor_id = $1"),
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, expected, "{table} of {id}");
    }
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1",
            &project
        )
        .await,
        1
    );
}

#[actix_web::test]
async fn concurrent_creations_never_pass_the_tier_limit() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let first = create_project(&app, &account.token, "one").await;
    let second = create_project(&app, &account.token, "two").await;
    let paths: Vec<String> = (0..12)
        .map(|n| {
            let project = if n % 2 == 0 { &first } else { &second };
            format!("/projects/{project}/monitors")
        })
        .collect();
    let sends = paths.iter().enumerate().map(|(n, path)| {
        call(
            &app,
            Method::POST,
            path,
            Some(&account.token),
            Some(json!({"name": format!("m{n}"), "url": "http://e.com"})),
        )
    });
    let replies = futures_util::future::join_all(sends).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let refused = replies
        .iter()
        .filter(|r| r.status == 403 && r.json()["error"]["code"] == "tier_limit")
        .count();
    assert_eq!((created, refused), (5, 7));
    let in_db = count(
        &app,
        "SELECT count(*) FROM monitors WHERE project_id = $1",
        &first,
    )
    .await
        + count(
            &app,
            "SELECT count(*) FROM monitors WHERE project_id = $1",
            &second,
        )
        .await;
    assert_eq!(in_db, 5);
}
