//! API-key authentication as the ingest routes will use it: answered from memory after the
//! first use, revoked at once locally and within moments on another instance, last use
//! written in batches.

use awc::http::Method;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{
    call, create_project, eventually, register, send, spawn_app_with, test_routes, TestApp,
};

async fn new_key(app: &TestApp, token: &str, project: &str) -> (String, String) {
    let reply = call(
        app,
        Method::POST,
        &format!("/projects/{project}/api-keys"),
        Some(token),
        Some(json!({"name": "sdk"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let body = reply.json();
    (
        body["id"].as_str().unwrap().to_string(),
        body["key"].as_str().unwrap().to_string(),
    )
}

async fn whoami(app: &TestApp, key: &str) -> (u16, String) {
    let reply = send(
        app.req(Method::GET, "/__test/whoami")
            .insert_header(("X-API-Key", key)),
        None,
    )
    .await;
    (reply.status, reply.text)
}

fn lookups(metrics: &str, source: &str) -> u64 {
    let prefix = format!("observe_api_key_lookups_total{{source=\"{source}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[actix_web::test]
async fn a_key_is_looked_up_once_then_served_from_memory_and_revoked_at_once() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "sdk").await;
    let (key_id, key) = new_key(&app, &account.token, &project).await;

    for _ in 0..10 {
        assert_eq!(whoami(&app, &key).await, (200, project.clone()));
    }
    let bearer = send(
        app.req(Method::GET, "/__test/whoami")
            .insert_header(("Authorization", format!("Bearer {key}"))),
        None,
    )
    .await;
    assert_eq!((bearer.status, bearer.text), (200, project.clone()));
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(lookups(&metrics, "database"), 1, "{metrics}");
    assert_eq!(lookups(&metrics, "cache"), 10);

    let reply = call(
        &app,
        Method::DELETE,
        &format!("/projects/{project}/api-keys/{key_id}"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    let reply = send(
        app.req(Method::GET, "/__test/whoami")
            .insert_header(("X-API-Key", key.as_str())),
        None,
    )
    .await;
    assert_eq!(
        reply.status, 401,
        "revoked keys stop at once on the revoking instance"
    );
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");

    // Unknown, malformed, missing.
    for bad in [
        "obs_unknownkeyunknownkeyunknownkeyunknownkey1",
        "not-even-a-key",
    ] {
        assert_eq!(whoami(&app, bad).await.0, 401);
    }
    assert_eq!(app.get_text("/__test/whoami").await.0, 401);
}

#[actix_web::test]
async fn a_revocation_reaches_another_instance_within_moments() {
    let a = spawn_app_with(|_| {}, Some(test_routes())).await;
    let shared = a.db_url.clone();
    let b = spawn_app_with(
        move |s| s.database.url = SecretString::from(shared),
        Some(test_routes()),
    )
    .await;
    let account = register(&a).await;
    let project = create_project(&a, &account.token, "fleet").await;
    let (key_id, key) = new_key(&a, &account.token, &project).await;
    let (_, other_key) = new_key(&a, &account.token, &project).await;

    // B has both keys in memory.
    assert_eq!(whoami(&b, &key).await.0, 200);
    assert_eq!(whoami(&b, &other_key).await.0, 200);
    // Both instances' listeners are up (each logs once), so what follows is carried by
    // NOTIFY, not by a listener's start forgetting everything.
    assert!(crate::helpers::listeners_up(&b, 2).await);

    let reply = call(
        &a,
        Method::DELETE,
        &format!("/projects/{project}/api-keys/{key_id}"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    assert!(
        eventually(10, || async { whoami(&b, &key).await.0 == 401 }).await,
        "instance B still accepts the revoked key"
    );
    assert_eq!(
        whoami(&b, &other_key).await.0,
        200,
        "other keys are unaffected"
    );

    // Deleting the project ends its remaining keys everywhere too.
    assert_eq!(
        call(
            &a,
            Method::DELETE,
            &format!("/projects/{project}"),
            Some(&account.token),
            None
        )
        .await
        .status,
        204
    );
    assert!(eventually(10, || async { whoami(&b, &other_key).await.0 == 401 }).await);
}

#[actix_web::test]
async fn last_use_is_written_in_batches() {
    let app = spawn_app_with(|s| s.api_keys.last_used_flush_secs = 1, Some(test_routes())).await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "usage").await;
    let (_, key) = new_key(&app, &account.token, &project).await;
    for _ in 0..5 {
        assert_eq!(whoami(&app, &key).await.0, 200);
    }
    assert!(
        eventually(10, || async {
            let list = call(
                &app,
                Method::GET,
                &format!("/projects/{project}/api-keys"),
                Some(&account.token),
                None,
            )
            .await;
            list.json()["items"][0]["last_used_at"].is_string()
        })
        .await,
        "last_used_at was never written"
    );
}

/// A well-formed key that matches no stored key (`obs_` and 43 URL-safe characters).
fn made_up_key(i: usize) -> String {
    format!("obs_{:0>43}", format!("madeup{i}"))
}

#[actix_web::test]
async fn malformed_keys_are_refused_without_a_lookup() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    for bad in [
        "obs_short".to_string(),
        format!("obs_{}", "!".repeat(43)),
        format!("obs_{}", "a".repeat(44)),
    ] {
        assert_eq!(whoami(&app, &bad).await.0, 401, "{bad}");
    }
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        lookups(&metrics, "database"),
        0,
        "malformed keys were looked up"
    );
}

#[actix_web::test]
async fn a_flood_of_unknown_keys_from_one_ip_is_cut_off() {
    let app = spawn_app_with(
        |s| {
            s.api_keys.failed_lookups_per_ip = 5;
            s.api_keys.failed_lookup_window_secs = 60;
        },
        Some(test_routes()),
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(whoami(&app, &made_up_key(i)).await.0);
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(
        &statuses[5..],
        &[429; 15],
        "unknown keys are looked up without limit: {statuses:?}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(lookups(&metrics, "database"), 5, "{metrics}");
}

#[actix_web::test]
async fn concurrent_first_uses_of_one_key_share_one_query() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "burst").await;
    let (_, key) = new_key(&app, &account.token, &project).await;
    let replies = futures_util::future::join_all((0..20).map(|_| whoami(&app, &key))).await;
    assert!(replies.iter().all(|r| r.0 == 200), "{replies:?}");
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        lookups(&metrics, "database"),
        1,
        "concurrent misses each ran their own query"
    );
}

/// Item 1: a burst of made-up keys sent at once gets no more database lookups than the
/// client's budget: each lookup is paid for before it runs, not after it found nothing.
#[actix_web::test]
async fn a_parallel_flood_of_unknown_keys_gets_no_more_lookups_than_the_budget() {
    let app = spawn_app_with(
        |s| {
            s.api_keys.failed_lookups_per_ip = 5;
            s.api_keys.failed_lookup_window_secs = 60;
        },
        Some(test_routes()),
    )
    .await;
    let keys: Vec<String> = (0..30).map(made_up_key).collect();
    let replies = futures_util::future::join_all(keys.iter().map(|k| whoami(&app, k))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.0).collect();
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        lookups(&metrics, "database"),
        5,
        "a burst of unknown keys went past the lookup budget: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        25,
        "{statuses:?}"
    );
    assert_eq!(lookups(&metrics, "refused"), 25, "{metrics}");
}

/// Item 1: a valid key's first lookup is paid back, so an SDK's burst of first uses of its
/// own key (one shared query) costs its client nothing.
#[actix_web::test]
async fn valid_keys_spend_no_lookup_budget() {
    let app = spawn_app_with(
        |s| s.api_keys.failed_lookups_per_ip = 2,
        Some(test_routes()),
    )
    .await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "budget").await;
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(new_key(&app, &account.token, &project).await.1);
    }
    for key in &keys {
        let replies = futures_util::future::join_all((0..3).map(|_| whoami(&app, key))).await;
        assert!(replies.iter().all(|r| r.0 == 200), "{replies:?}");
    }
    // The budget is whole: unknown keys still get their two lookups.
    assert_eq!(whoami(&app, &made_up_key(1)).await.0, 401);
    assert_eq!(whoami(&app, &made_up_key(2)).await.0, 401);
    assert_eq!(whoami(&app, &made_up_key(3)).await.0, 429);
}

/// Item 6: answers of "no such key" are kept apart from valid keys, so a flood of made-up keys
/// spread over many clients cannot push valid keys out of the cache.
#[actix_web::test]
async fn a_spread_flood_of_unknown_keys_does_not_evict_valid_keys() {
    let app = spawn_app_with(
        |s| {
            s.api_keys.cache_max_entries = 4;
            s.api_keys.failed_lookups_per_ip = 10_000;
        },
        Some(test_routes()),
    )
    .await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "evict").await;
    let (_, a) = new_key(&app, &account.token, &project).await;
    let (_, b) = new_key(&app, &account.token, &project).await;
    assert_eq!(whoami(&app, &a).await.0, 200);
    assert_eq!(whoami(&app, &b).await.0, 200);
    for i in 0..50 {
        assert_eq!(whoami(&app, &made_up_key(i)).await.0, 401);
    }
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(lookups(&metrics, "database"), 52, "{metrics}");
    assert_eq!(whoami(&app, &a).await.0, 200);
    assert_eq!(whoami(&app, &b).await.0, 200);
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        lookups(&metrics, "database"),
        52,
        "valid keys were evicted by unknown ones and looked up again"
    );
}
