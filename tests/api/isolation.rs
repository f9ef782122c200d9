//! Tenant isolation: a user of organisation A gets 404 for every project-scoped route of
//! organisation B, and nothing of B changes. Each later issue adds its routes to `ROUTES`.

use awc::http::Method;
use serde_json::json;

use crate::helpers::{call, count, create_project, ingest, register, sdk, spawn_app};

/// (method, path with `{project}`, `{key}`, `{monitor}` and `{group}` placeholders, JSON body
/// if the route takes one)
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/projects/{project}", None),
    ("DELETE", "/projects/{project}", None),
    ("GET", "/projects/{project}/api-keys", None),
    (
        "POST",
        "/projects/{project}/api-keys",
        Some(r#"{"name": "intruder"}"#),
    ),
    ("DELETE", "/projects/{project}/api-keys/{key}", None),
    ("GET", "/projects/{project}/monitors", None),
    (
        "POST",
        "/projects/{project}/monitors",
        Some(r#"{"name": "intruder", "url": "https://example.com"}"#),
    ),
    ("GET", "/projects/{project}/monitors/{monitor}", None),
    (
        "PATCH",
        "/projects/{project}/monitors/{monitor}",
        Some(r#"{"name": "intruder"}"#),
    ),
    (
        "PATCH",
        "/projects/{project}/monitors/{monitor}/pause",
        Some(r#"{"paused": true}"#),
    ),
    ("DELETE", "/projects/{project}/monitors/{monitor}", None),
    ("GET", "/projects/{project}/stats", None),
    ("GET", "/projects/{project}/api-stats", None),
    ("GET", "/projects/{project}/events", None),
    ("GET", "/projects/{project}/errors", None),
    ("GET", "/projects/{project}/errors/{group}", None),
    ("POST", "/projects/{project}/errors/{group}/resolve", None),
    ("POST", "/projects/{project}/errors/{group}/unresolve", None),
    ("GET", "/projects/{project}/api-requests", None),
    (
        "GET",
        "/projects/{project}/metrics/query?name=revenue",
        None,
    ),
    ("GET", "/projects/{project}/metrics/export?format=csv", None),
    (
        "GET",
        "/projects/{project}/metrics/export?format=prometheus",
        None,
    ),
    (
        "GET",
        "/projects/{project}/metrics/export?format=json",
        None,
    ),
    ("GET", "/projects/{project}/costs", None),
];

#[actix_web::test]
async fn one_organisation_never_reaches_another_organisations_projects() {
    let app = spawn_app().await;
    let alice = register(&app).await;
    let bob = register(&app).await;
    let bobs_project = create_project(&app, &bob.token, "bob's").await;
    let reply = call(
        &app,
        Method::POST,
        &format!("/projects/{bobs_project}/api-keys"),
        Some(&bob.token),
        Some(json!({"name": "bob key"})),
    )
    .await;
    let bobs_key = reply.json()["id"].as_str().unwrap().to_string();
    let bobs_secret = reply.json()["key"].as_str().unwrap().to_string();
    let reply = call(
        &app,
        Method::POST,
        &format!("/projects/{bobs_project}/monitors"),
        Some(&bob.token),
        Some(json!({"name": "bob's monitor", "url": "https://example.com"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let bobs_monitor = reply.json();
    let bobs_monitor_id = bobs_monitor["id"].as_str().unwrap().to_string();
    // Bob's data: an event, a request and an error group.
    for (kind, body) in [
        ("events", json!({"event": "bob", "visitor_id": "v"})),
        ("errors", json!({"type": "BobError", "message": "m"})),
        (
            "requests",
            json!({"method": "GET", "route": "/bob", "status_code": 200, "duration_ms": 1}),
        ),
    ] {
        assert_eq!(ingest(&app, &bobs_secret, kind, body).await.status, 202);
    }
    let errors = call(
        &app,
        Method::GET,
        &format!("/projects/{bobs_project}/errors"),
        Some(&bob.token),
        None,
    )
    .await
    .json();
    let bobs_group = errors["items"][0]["id"].as_str().unwrap().to_string();

    for (method, template, body) in ROUTES {
        let path = template
            .replace("{project}", &bobs_project)
            .replace("{key}", &bobs_key)
            .replace("{monitor}", &bobs_monitor_id)
            .replace("{group}", &bobs_group);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = body.map(|b| serde_json::from_str(b).unwrap());
        let reply = call(
            &app,
            method.clone(),
            &path,
            Some(&alice.token),
            body.clone(),
        )
        .await;
        assert_eq!(
            reply.status, 404,
            "{method} {path} as another organisation: {}",
            reply.text
        );
        assert_eq!(reply.json()["error"]["code"], "not_found");
        let reply = call(&app, method.clone(), &path, None, body).await;
        assert_eq!(reply.status, 401, "{method} {path} without a token");
    }

    // Alice's own project with Bob's key id: still not Bob's key.
    let alices_project = create_project(&app, &alice.token, "alice's").await;
    let reply = call(
        &app,
        Method::DELETE,
        &format!("/projects/{alices_project}/api-keys/{bobs_key}"),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
    // Nor does Bob's monitor become reachable through Alice's own project.
    let theirs = format!("/projects/{alices_project}/monitors/{bobs_monitor_id}");
    for (method, path, body) in [
        (Method::GET, theirs.clone(), None),
        (
            Method::PATCH,
            theirs.clone(),
            Some(json!({"name": "intruder"})),
        ),
        (
            Method::PATCH,
            format!("{theirs}/pause"),
            Some(json!({"paused": true})),
        ),
        (Method::DELETE, theirs.clone(), None),
    ] {
        let reply = call(&app, method.clone(), &path, Some(&alice.token), body).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text);
    }
    // Nor Bob's error group through Alice's own project.
    for (method, path) in [
        (
            Method::GET,
            format!("/projects/{alices_project}/errors/{bobs_group}"),
        ),
        (
            Method::POST,
            format!("/projects/{alices_project}/errors/{bobs_group}/resolve"),
        ),
    ] {
        let reply = call(&app, method.clone(), &path, Some(&alice.token), None).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text);
    }
    // Alice's own lists hold nothing of Bob's.
    for list in ["events", "errors?status=all", "api-requests"] {
        let reply = call(
            &app,
            Method::GET,
            &format!("/projects/{alices_project}/{list}"),
            Some(&alice.token),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{list}: {}", reply.text);
        assert_eq!(reply.json()["items"], json!([]), "{list}");
    }
    // An API key is not a session: it opens no dashboard route, not even its own project's.
    let reply = call(
        &app,
        Method::POST,
        &format!("/projects/{alices_project}/api-keys"),
        Some(&alice.token),
        Some(json!({"name": "sdk"})),
    )
    .await;
    let alices_key = reply.json()["key"].as_str().unwrap().to_string();
    for path in [
        format!("/projects/{alices_project}"),
        format!("/projects/{bobs_project}"),
        "/projects".to_string(),
    ] {
        assert_eq!(
            call(&app, Method::GET, &path, Some(&alices_key), None)
                .await
                .status,
            401,
            "{path}"
        );
    }

    // Alice's list shows only her own; Bob's project and key are untouched.
    let list = call(&app, Method::GET, "/projects", Some(&alice.token), None)
        .await
        .json();
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("alice's")]);
    let reply = call(
        &app,
        Method::GET,
        &format!("/projects/{bobs_project}"),
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    let keys = call(
        &app,
        Method::GET,
        &format!("/projects/{bobs_project}/api-keys"),
        Some(&bob.token),
        None,
    )
    .await
    .json();
    let items = keys["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "no key was added by the intruder");
    assert!(
        items[0]["revoked_at"].is_null(),
        "the key was not revoked by the intruder"
    );
    // Bob's monitor is untouched, and the intruder added none.
    let monitors = call(
        &app,
        Method::GET,
        &format!("/projects/{bobs_project}/monitors"),
        Some(&bob.token),
        None,
    )
    .await
    .json();
    let items = monitors["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "no monitor was added by the intruder");
    assert_eq!(items[0]["name"], "bob's monitor");
    assert_eq!(items[0]["paused"], false);
    assert_eq!(items[0]["updated_at"], bobs_monitor["updated_at"]);
    let alices = call(
        &app,
        Method::GET,
        &format!("/projects/{alices_project}/monitors"),
        Some(&alice.token),
        None,
    )
    .await
    .json();
    assert_eq!(alices["items"], json!([]));
    // Bob's group was neither resolved nor reopened by the intruder.
    let group = call(
        &app,
        Method::GET,
        &format!("/projects/{bobs_project}/errors/{bobs_group}"),
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(group.status, 200, "{}", group.text);
    assert_eq!(group.json()["status"], "unresolved");
    assert!(group.json()["resolved_at"].is_null());
}

/// Ingest routes take no project in the path: the key decides the project. So a key of
/// project A writes into A, whatever the body says, and never into B.
#[actix_web::test]
async fn an_api_key_writes_only_into_its_own_project() {
    let app = spawn_app().await;
    let alice = sdk(&app).await;
    let bob = sdk(&app).await;
    for kind in ["events", "identify", "errors", "requests", "metrics"] {
        let body = match kind {
            "events" => json!({"event": "e", "visitor_id": "v", "project_id": bob.project}),
            "identify" => json!({"visitor_id": "v", "user_id": "u", "project_id": bob.project}),
            "errors" => json!({"type": "E", "message": "m", "project_id": bob.project}),
            "requests" => {
                json!({"method": "GET", "route": "/", "status_code": 200, "duration_ms": 1, "project_id": bob.project})
            }
            _ => json!({"name": "m", "value": 1, "project_id": bob.project}),
        };
        let reply = ingest(&app, &alice.key, kind, body).await;
        assert_eq!(reply.status, 202, "{kind}: {}", reply.text);
    }
    for table in [
        "events",
        "identities",
        "errors",
        "error_groups",
        "requests",
        "metrics",
    ] {
        let sql = format!("SELECT count(*) FROM {table} WHERE project_id = $1");
        assert_eq!(
            count(&app, &sql, &alice.project).await,
            1,
            "{table} of alice"
        );
        assert_eq!(count(&app, &sql, &bob.project).await, 0, "{table} of bob");
    }
    // Usage is counted against alice's organisation only.
    let usage = "SELECT coalesce(sum(count), 0)::int8 FROM usage u JOIN projects p
                 ON p.organisation_id = u.organisation_id WHERE p.id = $1";
    assert_eq!(count(&app, usage, &alice.project).await, 5);
    assert_eq!(count(&app, usage, &bob.project).await, 0);
}

/// The Sentry endpoints carry a project number in the path, and the key must be of that
/// project: a key of one organisation sent to another's project is refused (403), whichever
/// way it is sent, and nothing reaches either project.
#[actix_web::test]
async fn a_sentry_dsn_key_writes_only_into_its_own_project() {
    let app = spawn_app().await;
    let alice = sdk(&app).await;
    let bob = sdk(&app).await;
    let key_and_number = |dsn: &str| {
        let (_, rest) = dsn.split_once("://").unwrap();
        let (key, host) = rest.split_once('@').unwrap();
        (
            key.to_string(),
            host.rsplit('/').next().unwrap().to_string(),
        )
    };
    let (alice_key, _) = key_and_number(&alice.dsn);
    let (_, bob_number) = key_and_number(&bob.dsn);
    let event = r#"{"event_id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","message":"hello"}"#;
    let envelope = format!(
        "{{\"dsn\":\"{}\"}}\n{{\"type\":\"event\"}}\n{event}\n",
        alice.dsn
    );
    for (path, auth, body) in [
        (
            format!("/api/{bob_number}/envelope/"),
            Some(&alice_key),
            envelope.clone(),
        ),
        (
            format!("/api/{bob_number}/envelope/?sentry_key={alice_key}"),
            None,
            envelope.clone(),
        ),
        // The DSN in the envelope names alice's project, the path bob's.
        (
            format!("/api/{bob_number}/envelope/"),
            None,
            envelope.clone(),
        ),
        (
            format!("/api/{bob_number}/store/"),
            Some(&alice_key),
            event.to_string(),
        ),
        (
            format!("/api/{bob_number}/store/"),
            Some(&alice.key),
            event.to_string(),
        ),
    ] {
        let mut req = app.req(awc::http::Method::POST, &path);
        if let Some(key) = auth {
            req = req.insert_header(("X-Sentry-Auth", format!("Sentry sentry_key={key}")));
        }
        let reply = crate::helpers::send(req, Some(body.into_bytes())).await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.text);
    }
    for project in [&alice.project, &bob.project] {
        let sql = "SELECT count(*) FROM errors WHERE project_id = $1";
        assert_eq!(count(&app, sql, project).await, 0);
    }
}

/// The billing routes are the caller's organisation's, with no id in the path: (method, path,
/// body). Another organisation's subscription and history never show, and are never changed.
const BILLING_ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/billing/subscription", None),
    ("GET", "/billing/events", None),
    ("POST", "/billing/cancel", None),
    ("POST", "/billing/initiate", Some(r#"{"plan": "pro"}"#)),
];

#[actix_web::test]
async fn billing_routes_answer_only_for_the_callers_organisation() {
    let app = crate::helpers::spawn_app_with(
        |s| {
            s.squad.secret_key = secrecy::SecretString::from("sk_isolation_test");
            // Nothing listens here: initiate must fail at Squad, never touch Bob.
            s.squad.base_url = "http://127.0.0.1:9".into();
            s.billing.request_timeout_ms = 500;
        },
        None,
    )
    .await;
    let alice = register(&app).await;
    let bob = register(&app).await;
    let bobs_project = create_project(&app, &bob.token, "bob's").await;
    let db = app.state.db.get().await.unwrap();
    let bobs_org: uuid::Uuid = db
        .query_one(
            "SELECT organisation_id FROM projects WHERE id = $1::text::uuid",
            &[&bobs_project],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO subscriptions (organisation_id, plan, state, amount, current_period_start,
             current_period_end, email, card_last4)
         VALUES ($1, 'team', 'active', 1500000, now(), now() + interval '1 month', 'bob@x', '4242')",
        &[&bobs_org],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO billing_events (id, organisation_id, kind, reference, plan, amount)
         VALUES (gen_random_uuid(), $1, 'payment_succeeded', 'obs_c_bob', 'team', 1500000)",
        &[&bobs_org],
    )
    .await
    .unwrap();

    for (method, path, body) in BILLING_ROUTES {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = body.map(|b| serde_json::from_str(b).unwrap());
        let reply = call(&app, method.clone(), path, Some(&alice.token), body.clone()).await;
        match *path {
            "/billing/subscription" => {
                assert_eq!(reply.status, 200, "{}", reply.text);
                assert_eq!(reply.json()["state"], "none", "{}", reply.text);
            }
            "/billing/events" => {
                assert_eq!(reply.status, 200, "{}", reply.text);
                assert_eq!(reply.json()["items"], json!([]));
            }
            "/billing/cancel" => assert_eq!(reply.status, 404, "{}", reply.text),
            _ => assert_eq!(reply.status, 502, "{}", reply.text),
        }
        assert!(!reply.text.contains("obs_c_bob") && !reply.text.contains("4242"));
        let reply = call(&app, method.clone(), path, None, body).await;
        assert_eq!(reply.status, 401, "{method} {path} without a token");
    }
    let bobs: (String, bool, i64) = {
        let row = db
            .query_one(
                "SELECT s.state, s.cancel_at_period_end,
                        (SELECT count(*) FROM payments p WHERE p.organisation_id = s.organisation_id)
                 FROM subscriptions s WHERE organisation_id = $1",
                &[&bobs_org],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        bobs,
        ("active".to_string(), false, 0),
        "Bob's subscription untouched"
    );
}
