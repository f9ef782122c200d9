//! Projects and API keys: tier limit, pagination, keys shown once and stored as hashes,
//! revocation; deleting a project (its actors stopped at once, on every instance; its raw rows
//! purged in bounded batches off the request path, across restarts).

use std::time::Duration;

use awc::http::Method;
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    call, create_project, eventually, ingest, register, sdk, spawn_app, spawn_app_with, TestApp,
    TEST_PASSWORD,
};

#[actix_web::test]
async fn hobby_organisations_get_three_projects_then_a_tier_limit() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(create_project(&app, &account.token, &format!("project {n}")).await);
    }
    let reply = call(
        &app,
        Method::POST,
        "/projects",
        Some(&account.token),
        Some(json!({"name": "one too many"})),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "tier_limit");
    assert_eq!(error["details"]["limit"], 3);
    assert_eq!(error["details"]["tier"], "hobby");
    assert_eq!(error["details"]["resource"], "projects");

    // Pages of two.
    let first = call(
        &app,
        Method::GET,
        "/projects?limit=2",
        Some(&account.token),
        None,
    )
    .await
    .json();
    let names: Vec<_> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("project 1"), json!("project 2")]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = call(
        &app,
        Method::GET,
        &format!("/projects?limit=2&cursor={cursor}"),
        Some(&account.token),
        None,
    )
    .await
    .json();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["name"], "project 3");
    assert!(second["next_cursor"].is_null());

    // Get, delete, and the freed slot can be used again.
    let reply = call(
        &app,
        Method::GET,
        &format!("/projects/{}", ids[0]),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["name"], "project 1");
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/projects/{}", ids[0]),
            Some(&account.token),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        call(
            &app,
            Method::GET,
            &format!("/projects/{}", ids[0]),
            Some(&account.token),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/projects/{}", ids[0]),
            Some(&account.token),
            None
        )
        .await
        .status,
        404
    );
    create_project(&app, &account.token, "project 4").await;
}

#[actix_web::test]
async fn api_keys_are_shown_once_stored_hashed_and_revocable() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "keys").await;
    let reply = call(
        &app,
        Method::POST,
        &format!("/projects/{project}/api-keys"),
        Some(&account.token),
        Some(json!({"name": "backend"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let created = reply.json();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("obs_") && key.len() >= 40, "{key}");
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));

    let list = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/api-keys"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(list.status, 200);
    assert!(!list.text.contains(&key), "the secret is never listed");
    let item = &list.json()["items"][0];
    assert_eq!(item["name"], "backend");
    assert_eq!(item["prefix"], created["prefix"]);
    assert!(item["last_used_at"].is_null() && item["revoked_at"].is_null());

    // Only a hash is stored.
    let db = app.state.db.get().await.unwrap();
    let row = db
        .query_one("SELECT key_hash FROM api_keys", &[])
        .await
        .unwrap();
    let stored: Vec<u8> = row.get(0);
    assert_eq!(stored, observe_core::auth::hash_secret(&key));
    let owner = observe_core::store::api_keys::owner_by_hash(&db, &stored)
        .await
        .unwrap();
    assert!(owner.is_some());

    let key_id = created["id"].as_str().unwrap();
    let reply = call(
        &app,
        Method::DELETE,
        &format!("/projects/{project}/api-keys/{key_id}"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    let list = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/api-keys"),
        Some(&account.token),
        None,
    )
    .await
    .json();
    assert!(list["items"][0]["revoked_at"].is_string());
    assert!(
        observe_core::store::api_keys::owner_by_hash(&db, &stored)
            .await
            .unwrap()
            .is_none(),
        "a revoked key authenticates nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Deleting a project
// ---------------------------------------------------------------------------------------------

/// The raw tables, and the column a project's rows are found by.
const RAW: [&str; 5] = ["events", "errors", "requests", "metrics", "monitor_checks"];

/// `n` rows of `project` in every raw table, spread over three days (so over partitions).
async fn fill(app: &TestApp, project: &str, n: i64) {
    let conn = app.state.db.get().await.unwrap();
    let project: Uuid = project.parse().unwrap();
    let day = "now() - (g % 3) * interval '1 day'";
    let monitor: Uuid = conn
        .query_one(
            "INSERT INTO monitors (project_id, name, url, interval_seconds, timeout_seconds, paused)
             VALUES ($1, 'm', 'http://e.com', 300, 30, true) RETURNING id",
            &[&project],
        )
        .await
        .unwrap()
        .get(0);
    for sql in [
        format!("INSERT INTO events (project_id, ts, received_at, name, visitor_id, properties)
                 SELECT $1, {day}, now(), 'e', 'v' || g, '{{}}' FROM generate_series(1, $2::int8) g"),
        format!("INSERT INTO errors (project_id, ts, received_at, fingerprint, type, message, level, tags)
                 SELECT $1, {day}, now(), 'f', 'E', 'm', 'error', '{{}}' FROM generate_series(1, $2::int8) g"),
        format!("INSERT INTO requests (project_id, ts, received_at, method, route, status_code, duration_ms)
                 SELECT $1, {day}, now(), 'GET', '/', 200, 1.5 FROM generate_series(1, $2::int8) g"),
        format!("INSERT INTO metrics (project_id, ts, received_at, name, kind, value, labels)
                 SELECT $1, {day}, now(), 'n', 'counter', 1, '{{}}' FROM generate_series(1, $2::int8) g"),
    ] {
        conn.execute(sql.as_str(), &[&project, &n]).await.unwrap();
    }
    conn.execute(
        format!(
            "INSERT INTO monitor_checks (monitor_id, project_id, scheduled_at, started_at, ok)
             SELECT $3, $1, {day}, {day}, true FROM generate_series(1, $2::int8) g"
        )
        .as_str(),
        &[&project, &n, &monitor],
    )
    .await
    .unwrap();
}

/// Rows of `project` left in each raw table.
async fn raw_rows(db: &observe_core::db::PgPool, project: &str) -> Vec<i64> {
    let conn = db.get().await.unwrap();
    let project: Uuid = project.parse().unwrap();
    let mut counts = Vec::new();
    for table in RAW {
        let sql = format!("SELECT count(*) FROM {table} WHERE project_id = $1");
        counts.push(
            conn.query_one(sql.as_str(), &[&project])
                .await
                .unwrap()
                .get(0),
        );
    }
    counts
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The value of a series in a `/metrics` text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn small_batches(s: &mut observe_core::config::Settings) {
    s.maintenance.purge_batch_rows = 500;
    s.maintenance.purge_settle_secs = 0;
    // A claim the stopped instance could not give back (a statement of its own was still
    // blocked) runs out quickly, as a dead instance's would.
    s.maintenance.purge_claim_secs = 3;
}

#[actix_web::test]
async fn deleting_a_project_answers_at_once_and_purges_its_raw_rows_in_bounded_batches() {
    let app = spawn_app_with(small_batches, None).await;
    let account = register(&app).await;
    let doomed = create_project(&app, &account.token, "doomed").await;
    let kept = create_project(&app, &account.token, "kept").await;
    fill(&app, &doomed, 2000).await;
    fill(&app, &kept, 300).await;

    // Someone holds a lock that any DELETE on `events` must wait for (a long report, say): the
    // request must not depend on it.
    let mut locker = connect(&app.db_url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        call(
            &app,
            Method::DELETE,
            &format!("/projects/{doomed}"),
            Some(&account.token),
            None,
        ),
    )
    .await
    .expect("DELETE /projects/{id} waited for the raw tables");
    assert_eq!(reply.status, 204, "{}", reply.text);
    // The purge is remembered (one, for the project: its monitors' checks are part of it).
    let pending: i64 = lock
        .query_one(
            "SELECT count(*) FROM purges WHERE project_id = $1",
            &[&doomed.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1);
    assert_eq!(
        raw_rows(&app.state.db, &doomed).await[0],
        2000,
        "events wait for the lock"
    );

    lock.rollback().await.unwrap();
    assert!(
        eventually(30, || async {
            raw_rows(&app.state.db, &doomed)
                .await
                .iter()
                .all(|n| *n == 0)
        })
        .await,
        "the raw rows are purged: {:?}",
        raw_rows(&app.state.db, &doomed).await
    );
    assert_eq!(
        raw_rows(&app.state.db, &kept).await,
        vec![300; 5],
        "another project's rows stay"
    );
    assert!(
        eventually(10, || async {
            let conn = app.state.db.get().await.unwrap();
            conn.query_one("SELECT count(*) FROM purges", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        })
        .await,
        "a finished purge is forgotten"
    );
    // In batches of at most 500 rows: 2000 rows of each of 5 tables take at least 20.
    let (_, text) = app.get_text("/metrics").await;
    let batches = metric(&text, "observe_purge_batches_total").unwrap_or(0.0);
    assert!(batches >= 20.0, "{batches} batches\n{text}");
    for table in RAW {
        let rows = metric(
            &text,
            &format!("observe_purge_rows_total{{table=\"{table}\"}}"),
        );
        assert_eq!(rows, Some(2000.0), "{table}");
    }
}

#[actix_web::test]
async fn deleting_a_project_stops_its_monitors_and_ingest_actor_at_once() {
    let target = actix_web::HttpServer::new(|| {
        actix_web::App::new().default_service(actix_web::web::to(|| async { "up" }))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = target.addrs()[0].port();
    actix_web::rt::spawn(target.run());
    let app = spawn_app_with(
        |s| {
            s.monitors.allow_private_targets = true;
            s.monitors.interval_divisor = 200;
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    crate::helpers::set_tier(&app, &sdk.project, "pro").await;
    let reply = ingest(
        &app,
        &sdk.key,
        "events",
        json!({"event": "e", "visitor_id": "v"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let reply = call(
        &app,
        Method::POST,
        &format!("/projects/{}/monitors", sdk.project),
        Some(&sdk.account.token),
        Some(json!({"name": "m", "url": format!("http://127.0.0.1:{port}/"), "interval_seconds": 60})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(eventually(10, || async { app.state.monitors.running() == 1 }).await);
    assert_eq!(app.state.ingest.running(), 1);

    let reply = call(
        &app,
        Method::DELETE,
        &format!("/projects/{}", sdk.project),
        Some(&sdk.account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    // Stopped by the time the request is answered, not at the next poll or idle timeout.
    assert_eq!(app.state.monitors.running(), 0, "the monitor still runs");
    assert_eq!(app.state.ingest.running(), 0, "the IngestActor still runs");
}

/// Another instance learns of the deletion from PostgreSQL (`LISTEN`), not from its next poll.
#[actix_web::test]
async fn other_instances_stop_a_deleted_projects_actors_too() {
    let first = spawn_app().await;
    let url = first.db_url.clone();
    let second = spawn_app_with(move |s| s.database.url = SecretString::from(url), None).await;
    let sdk = sdk(&first).await;
    // Its IngestActor runs on the second instance.
    let reply = ingest(
        &second,
        &sdk.key,
        "events",
        json!({"event": "e", "visitor_id": "v"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(second.state.ingest.running(), 1);

    let reply = call(
        &first,
        Method::DELETE,
        &format!("/projects/{}", sdk.project),
        Some(&sdk.account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    assert!(
        eventually(3, || async { second.state.ingest.running() == 0 }).await,
        "the other instance's IngestActor still runs"
    );
}

#[actix_web::test]
async fn a_pending_purge_survives_a_restart() {
    let app = spawn_app_with(small_batches, None).await;
    let account = register(&app).await;
    let doomed = create_project(&app, &account.token, "doomed").await;
    fill(&app, &doomed, 1000).await;
    let mut locker = connect(&app.db_url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(
        "LOCK TABLE events, errors, requests, metrics, monitor_checks IN SHARE MODE",
    )
    .await
    .unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        call(
            &app,
            Method::DELETE,
            &format!("/projects/{doomed}"),
            Some(&account.token),
            None,
        ),
    )
    .await
    .expect("DELETE /projects/{id} waited for the raw tables");
    assert_eq!(reply.status, 204);

    // The instance stops before it could purge anything (a statement it had sent may still
    // run once the lock is gone: at most one batch).
    let db_url = app.db_url.clone();
    app.server.stop(true).await;
    app.stopped.await.unwrap().unwrap();
    assert_eq!(raw_rows(&app.state.db, &doomed).await, vec![1000; 5]);
    lock.rollback().await.unwrap();

    let restarted = spawn_app_with(
        move |s| {
            small_batches(s);
            s.database.url = SecretString::from(db_url);
        },
        None,
    )
    .await;
    assert!(
        eventually(30, || async {
            raw_rows(&restarted.state.db, &doomed)
                .await
                .iter()
                .all(|n| *n == 0)
        })
        .await,
        "the restarted instance finishes the purge: {:?}",
        raw_rows(&restarted.state.db, &doomed).await
    );
    let (_, text) = restarted.get_text("/metrics").await;
    let purged: f64 = RAW
        .iter()
        .filter_map(|t| metric(&text, &format!("observe_purge_rows_total{{table=\"{t}\"}}")))
        .sum();
    assert!(
        purged >= 4500.0,
        "the restarted instance purged {purged} rows"
    );
}

/// Deleting an organisation (its last owner deletes their account) deletes its projects by
/// cascade: their raw rows are purged the same way.
#[actix_web::test]
async fn an_organisations_deletion_purges_its_projects_raw_rows() {
    let app = spawn_app_with(small_batches, None).await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "p").await;
    fill(&app, &project, 700).await;
    let reply = call(
        &app,
        Method::POST,
        "/auth/delete-account",
        Some(&account.token),
        Some(json!({"password": TEST_PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert!(
        eventually(30, || async {
            raw_rows(&app.state.db, &project)
                .await
                .iter()
                .all(|n| *n == 0)
        })
        .await,
        "{:?}",
        raw_rows(&app.state.db, &project).await
    );
}
