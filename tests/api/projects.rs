//! Projects and API keys: tier limit, pagination, keys shown once and stored as hashes,
//! revocation.

use awc::http::Method;
use serde_json::json;

use crate::helpers::{call, create_project, register, spawn_app};

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
