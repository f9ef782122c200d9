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
    // One organisation paying for pro, one given team by hand (no revenue), a third cancelled
    // at period end (no revenue from the next month on).
    let db = app.state.db.get().await.unwrap();
    db.execute("UPDATE organisations SET tier = 'pro' WHERE id = (SELECT id FROM organisations ORDER BY created_at LIMIT 1)", &[])
        .await
        .unwrap();
    db.execute(
        "INSERT INTO subscriptions (organisation_id, plan, state, amount, current_period_start,
             current_period_end, email)
         SELECT id, 'pro', 'active', 500000, now(), now() + interval '1 month', 'a@example.com'
         FROM organisations ORDER BY created_at LIMIT 1",
        &[],
    )
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
    assert_eq!(
        stats["subscriptions"],
        json!({"active": 1, "grace": 0, "ended": 0})
    );
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

/// `/admin/stats` counts the events, errors and API requests of the last 24 hours: closed
/// hours from rollups, the current hour (and hours not rolled up yet) from raw rows, so the
/// figures are live and the same after the Aggregator ran; older items are not counted.
#[actix_web::test]
async fn admin_stats_count_the_last_24_hours_live_and_after_the_aggregator() {
    use chrono::{Duration, Utc};
    use observe_core::store::rollups::{aggregate, Kind};

    let token = "admin-token-for-tests-0123456789";
    let app = spawn_app_with(
        |s| {
            crate::helpers::roomy_limits(s);
            s.admin.token = SecretString::from(token);
        },
        None,
    )
    .await;
    let a = crate::helpers::sdk(&app).await;
    let b = crate::helpers::sdk(&app).await;
    let at = |hours: i64| (Utc::now() - Duration::hours(hours)).to_rfc3339();
    for (key, kind, body) in [
        (
            &a.key,
            "events",
            json!([
                {"event": "e", "visitor_id": "v"},
                {"event": "e", "visitor_id": "v", "timestamp": at(2)},
                {"event": "e", "visitor_id": "v", "timestamp": at(30)},
            ]),
        ),
        (&b.key, "events", json!({"event": "e", "visitor_id": "w"})),
        (
            &a.key,
            "errors",
            json!([
                {"type": "E", "message": "now"},
                {"type": "E", "message": "before", "timestamp": at(3)},
                {"type": "E", "message": "old", "timestamp": at(26)},
            ]),
        ),
        (
            &b.key,
            "requests",
            json!([
                {"method": "GET", "route": "/", "status_code": 200, "duration_ms": 1},
                {"method": "GET", "route": "/", "status_code": 500, "duration_ms": 2, "timestamp": at(5)},
                {"method": "GET", "route": "/", "status_code": 200, "duration_ms": 3, "timestamp": at(25)},
            ]),
        ),
    ] {
        let reply = crate::helpers::ingest(&app, key, kind, body).await;
        assert_eq!(reply.status, 202, "{kind}: {}", reply.text);
    }
    let last_24h = || async {
        let reply = send(
            app.req(Method::GET, "/admin/stats")
                .insert_header(("x-admin-token", token)),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()["last_24h"].clone()
    };
    let expected = json!({"events": 3, "errors": 2, "api_requests": 2});
    assert_eq!(last_24h().await, expected, "live, before any rollup");
    aggregate(
        &app.state.db,
        &[Kind::Events, Kind::Metrics, Kind::Errors, Kind::Requests],
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(last_24h().await, expected, "from rollups for closed hours");
}
