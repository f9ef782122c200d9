//! `GET /admin/stats`: absent without a configured token, refused with a wrong one, counts
//! with the right one.

use awc::http::Method;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{call, create_project, register, send, spawn_app, spawn_app_with};

#[actix_web::test]
async fn admin_stats_do_not_exist_without_a_configured_token() {
    let app = spawn_app().await;
    let reply = send(
        app.req(Method::GET, "/admin/stats")
            .insert_header(("x-admin-token", "")),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["code"], "not_found");
}

#[actix_web::test]
async fn admin_stats_count_what_exists_for_the_right_token_only() {
    let token = "admin-token-for-tests-0123456789";
    let app = spawn_app_with(|s| s.admin.token = SecretString::from(token), None).await;
    let a = register(&app).await;
    let _b = register(&app).await;
    let project = create_project(&app, &a.token, "p").await;
    for name in ["k1", "k2"] {
        let reply = call(
            &app,
            Method::POST,
            &format!("/projects/{project}/api-keys"),
            Some(&a.token),
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(reply.status, 201);
    }
    let key_id = call(
        &app,
        Method::GET,
        &format!("/projects/{project}/api-keys"),
        Some(&a.token),
        None,
    )
    .await
    .json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/projects/{project}/api-keys/{key_id}"),
            Some(&a.token),
            None
        )
        .await
        .status,
        204
    );
    // One organisation on pro, as billing will do.
    let db = app.state.db.get().await.unwrap();
    db.execute("UPDATE organisations SET tier = 'pro' WHERE id = (SELECT id FROM organisations ORDER BY created_at LIMIT 1)", &[])
        .await
        .unwrap();

    for wrong in [None, Some("wrong"), Some("admin-token-for-tests-012345678")] {
        let mut req = app.req(Method::GET, "/admin/stats");
        if let Some(w) = wrong {
            req = req.insert_header(("x-admin-token", w));
        }
        let reply = send(req, None).await;
        assert_eq!(reply.status, 401, "{wrong:?}");
        assert_eq!(reply.json()["error"]["code"], "invalid_admin_token");
    }

    let reply = send(
        app.req(Method::GET, "/admin/stats")
            .insert_header(("x-admin-token", token)),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let stats = reply.json();
    assert_eq!(stats["users"], 2);
    assert_eq!(
        stats["organisations"],
        json!({"total": 2, "hobby": 1, "pro": 1, "team": 0})
    );
    assert_eq!(stats["projects"], 1);
    assert_eq!(stats["api_keys"], json!({"active": 1, "revoked": 1}));
    assert_eq!(stats["mrr_kobo"], 500_000);
    assert!(stats["emails"]["pending"].is_number());
    assert_eq!(
        stats["ingested_this_month"],
        json!({"events": 0, "errors": 0, "api_requests": 0})
    );
    assert!(
        !app.logs.contents().contains(token),
        "the admin token is never logged"
    );
}
