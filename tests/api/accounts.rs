//! Accounts and sessions end to end through HTTP: register, login, me, refresh rotation and
//! reuse detection, logout, change password, delete account, rate limits, bad input.

use awc::http::Method;
use serde_json::json;

use crate::helpers::{
    call, change_password, create_project, login_from, refresh_with, register, send, set_cookie,
    spawn_app, spawn_app_with, test_routes, Reply, TestApp, TEST_PASSWORD,
};

async fn login(app: &TestApp, email: &str, password: &str) -> Reply {
    login_from(app, email, password, None).await
}

#[actix_web::test]
async fn register_login_me_refresh_reuse_and_logout() {
    // No grace window: any second use of a rotated token is reuse (the window has its own
    // tests in sessions.rs).
    let app = spawn_app_with(|s| s.auth.refresh_reuse_grace_secs = 0, None).await;
    let reply = call(
        &app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": "  Ada@Example.com ", "password": TEST_PASSWORD, "name": "Ada"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["organisation"]["tier"], "hobby");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["user"].get("password_hash").is_none());
    let (_, cookie) = set_cookie(&reply, "refresh_token").unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/auth", "Max-Age="] {
        assert!(
            cookie.contains(attribute),
            "{attribute} missing in {cookie}"
        );
    }

    // Login (email in any case) and me.
    let reply = login(&app, "ADA@example.com", TEST_PASSWORD).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let access = reply.json()["access_token"].as_str().unwrap().to_string();
    let first = set_cookie(&reply, "refresh_token").unwrap().0;
    let me = call(&app, Method::GET, "/auth/me", Some(&access), None).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json()["user"]["name"], "Ada");
    assert_eq!(me.json()["role"], "owner");
    assert_eq!(me.json()["organisation"]["id"], body["organisation"]["id"]);

    // Refresh rotates: a new access token and a new refresh token.
    let reply = refresh_with(&app, &first).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let second = set_cookie(&reply, "refresh_token").unwrap().0;
    assert_ne!(second, first);
    let access2 = reply.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        call(&app, Method::GET, "/auth/me", Some(&access2), None)
            .await
            .status,
        200
    );

    // The first token again: reuse, and the whole family is revoked.
    let reply = refresh_with(&app, &first).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "refresh_token_reused");
    let reply = refresh_with(&app, &second).await;
    assert_eq!(
        reply.status, 401,
        "the newer token of the family is revoked too"
    );
    assert_eq!(reply.json()["error"]["code"], "refresh_token_invalid");

    // Logout revokes the session it is called with.
    let reply = login(&app, "ada@example.com", TEST_PASSWORD).await;
    let third = set_cookie(&reply, "refresh_token").unwrap().0;
    let out = send(
        app.req(Method::POST, "/auth/logout")
            .insert_header(("Cookie", format!("refresh_token={third}"))),
        None,
    )
    .await;
    assert_eq!(out.status, 204);
    assert!(set_cookie(&out, "refresh_token")
        .unwrap()
        .1
        .contains("Max-Age=0"));
    assert_eq!(refresh_with(&app, &third).await.status, 401);
}

#[actix_web::test]
async fn login_failures_look_the_same_whether_or_not_the_email_exists() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let wrong_password = login(&app, &account.email, "not the password at all").await;
    let unknown_email = login(&app, "nobody-here@example.com", "not the password at all").await;
    for reply in [&wrong_password, &unknown_email] {
        assert_eq!(reply.status, 401);
        assert_eq!(reply.json()["error"]["code"], "invalid_credentials");
        assert_eq!(
            reply.json()["error"]["message"],
            "email or password is incorrect"
        );
        assert!(set_cookie(reply, "refresh_token").is_none());
    }
    // Access tokens: missing, garbage.
    let reply = call(&app, Method::GET, "/auth/me", None, None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "unauthorized");
    let reply = call(&app, Method::GET, "/auth/me", Some("not-a-jwt"), None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "invalid_token");
    // Refresh without a cookie.
    let reply = call(&app, Method::POST, "/auth/refresh", None, None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "refresh_token_missing");
}

#[actix_web::test]
async fn change_password_signs_out_other_sessions_only() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let other = set_cookie(
        &login(&app, &account.email, TEST_PASSWORD).await,
        "refresh_token",
    )
    .unwrap()
    .0;

    let wrong = change_password(&app, &account, "wrong one entirely", "a brand new password").await;
    assert_eq!(wrong.status, 401);

    let reply = change_password(&app, &account, TEST_PASSWORD, "a brand new password").await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert_eq!(
        refresh_with(&app, &account.refresh).await.status,
        200,
        "this session stays"
    );
    assert_eq!(
        refresh_with(&app, &other).await.status,
        401,
        "other sessions are signed out"
    );
    assert_eq!(login(&app, &account.email, TEST_PASSWORD).await.status, 401);
    assert_eq!(
        login(&app, &account.email, "a brand new password")
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn delete_account_removes_the_organisation_and_its_data() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "doomed").await;
    let key = call(
        &app,
        Method::POST,
        &format!("/projects/{project}/api-keys"),
        Some(&account.token),
        Some(json!({"name": "k"})),
    )
    .await;
    assert_eq!(key.status, 201);
    let secret = key.json()["key"].as_str().unwrap().to_string();
    let whoami = || {
        send(
            app.req(Method::GET, "/__test/whoami")
                .insert_header(("X-API-Key", secret.as_str())),
            None,
        )
    };
    assert_eq!(whoami().await.status, 200, "the key works and is cached");
    let org_id = call(&app, Method::GET, "/auth/me", Some(&account.token), None)
        .await
        .json()["organisation"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let reply = call(
        &app,
        Method::POST,
        "/auth/delete-account",
        Some(&account.token),
        Some(json!({"password": "wrong password here"})),
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = call(
        &app,
        Method::POST,
        "/auth/delete-account",
        Some(&account.token),
        Some(json!({"password": TEST_PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text);

    assert_eq!(login(&app, &account.email, TEST_PASSWORD).await.status, 401);
    assert_eq!(
        call(&app, Method::GET, "/auth/me", Some(&account.token), None)
            .await
            .status,
        401
    );
    assert_eq!(
        whoami().await.status,
        401,
        "the organisation's keys stop at once"
    );
    // A token still within its lifetime cannot create anything for the gone organisation.
    let reply = call(
        &app,
        Method::POST,
        "/projects",
        Some(&account.token),
        Some(json!({"name": "ghost"})),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    let db = app.state.db.get().await.unwrap();
    let org_id: uuid::Uuid = org_id.parse().unwrap();
    for (table, column) in [
        ("organisations", "id"),
        ("projects", "organisation_id"),
        ("memberships", "organisation_id"),
    ] {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE {column} = $1"),
                &[&org_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} still has rows of the organisation");
    }
    let keys: i64 = db
        .query_one("SELECT count(*) FROM api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0);
    let tokens: i64 = db
        .query_one("SELECT count(*) FROM refresh_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tokens, 0);
}

/// Failed attempts: SPEC §5's 5 per 15 minutes per client IP.
#[actix_web::test]
async fn auth_attempts_are_rate_limited_per_client_ip() {
    let app = spawn_app_with(|s| s.auth.rate_limit_attempts = 5, None).await;
    for _ in 0..5 {
        assert_eq!(
            login(&app, "someone@example.com", "wrong password x")
                .await
                .status,
            401
        );
    }
    let reply = login(&app, "someone@example.com", "wrong password x").await;
    assert_eq!(reply.status, 429, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "rate_limited");
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 900, "{retry}");
    assert_eq!(reply.header("x-ratelimit-limit").as_deref(), Some("5"));
    // Registration has a budget of its own (auth_limits.rs): failed sign-ins do not spend it.
    let reply = call(
        &app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": "x@example.com", "password": TEST_PASSWORD, "name": "X"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

#[actix_web::test]
async fn a_proxy_header_is_trusted_only_when_configured() {
    // Not configured: a client cannot get a fresh budget by sending X-Forwarded-For.
    let app = spawn_app_with(|s| s.auth.rate_limit_attempts = 2, None).await;
    let attempt = |ip: &'static str| {
        send(
            app.req(Method::POST, "/auth/login")
                .insert_header(("X-Forwarded-For", ip))
                .insert_header(("content-type", "application/json")),
            Some(
                json!({"email": "a@example.com", "password": "wrong password x"})
                    .to_string()
                    .into_bytes(),
            ),
        )
    };
    assert_eq!(attempt("10.0.0.1").await.status, 401);
    assert_eq!(attempt("10.0.0.2").await.status, 401);
    assert_eq!(attempt("10.0.0.3").await.status, 429);

    // Configured: each client IP the proxy reports has its own budget.
    let app = spawn_app_with(
        |s| {
            s.auth.rate_limit_attempts = 2;
            s.server.client_ip_header = "X-Forwarded-For".into();
        },
        None,
    )
    .await;
    let attempt = |ip: &'static str| {
        send(
            app.req(Method::POST, "/auth/login")
                .insert_header(("X-Forwarded-For", ip))
                .insert_header(("content-type", "application/json")),
            Some(
                json!({"email": "a@example.com", "password": "wrong password x"})
                    .to_string()
                    .into_bytes(),
            ),
        )
    };
    for _ in 0..2 {
        assert_eq!(attempt("forged, 10.0.0.1").await.status, 401);
    }
    assert_eq!(attempt("forged, 10.0.0.1").await.status, 429);
    assert_eq!(attempt("10.0.0.2").await.status, 401, "another client IP");
}

#[actix_web::test]
async fn bad_input_gets_the_error_shape_never_a_500() {
    let app = spawn_app_with(|s| s.server.body_limit_bytes = 4096, None).await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "inputs").await;
    let keys_path = format!("/projects/{project}/api-keys");
    // (path, needs a token)
    let endpoints = [
        ("/auth/register", false),
        ("/auth/login", false),
        ("/auth/change-password", true),
        ("/auth/delete-account", true),
        ("/auth/forgot-password", false),
        ("/auth/reset-password", false),
        ("/auth/change-email", true),
        ("/auth/confirm-email", false),
        ("/projects", true),
        (keys_path.as_str(), true),
    ];
    for (path, authed) in endpoints {
        let token = authed.then_some(account.token.as_str());
        let raw = |body: &[u8]| {
            let mut req = app
                .req(Method::POST, path)
                .insert_header(("content-type", "application/json"));
            if let Some(t) = token {
                req = req.insert_header(("Authorization", format!("Bearer {t}")));
            }
            send(req, Some(body.to_vec()))
        };
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"{\"email\": ".to_vec(), 400, "invalid_json"),
            (b"[1, 2]".to_vec(), 422, "validation_failed"),
            (b"{\"email\": 5, \"password\": true, \"name\": [], \"current_password\": 1, \"new_password\": 2}".to_vec(), 422, "validation_failed"),
            (format!("{{\"name\": \"{}\"}}", "x".repeat(8192)).into_bytes(), 413, "payload_too_large"),
        ];
        for (body, status, code) in cases {
            let reply = raw(&body).await;
            assert_eq!(reply.status, status, "{path}: {}", reply.text);
            assert_eq!(
                reply.json()["error"]["code"],
                code,
                "{path}: {}",
                reply.text
            );
            assert!(reply.json()["error"]["request_id"].is_string());
        }
    }
    // Control characters never reach the database as text (a 422, not a 500).
    for path in ["/auth/register", "/auth/login", "/auth/forgot-password"] {
        let reply = call(
            &app,
            Method::POST,
            path,
            None,
            Some(json!({"email": "nul\u{0}@example.com", "password": TEST_PASSWORD, "name": "N"})),
        )
        .await;
        assert_eq!(reply.status, 422, "{path}: {}", reply.text);
    }
    // Missing fields and weak values: 422 naming every field.
    let reply = call(
        &app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": "x@example.com"})),
    )
    .await;
    assert_eq!(reply.status, 422);
    let reply = call(
        &app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": "nope", "password": "short", "name": " "})),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let fields: Vec<String> = reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, vec!["email", "name", "password"]);
    // A taken email.
    let reply = call(&app, Method::POST, "/auth/register", None, Some(json!({"email": account.email.to_uppercase(), "password": TEST_PASSWORD, "name": "Twin"}))).await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.json()["error"]["code"], "conflict");
    // Query strings and path parameters.
    for path in [
        "/projects?limit=0",
        "/projects?limit=abc",
        "/projects?cursor=garbage",
    ] {
        let reply = call(&app, Method::GET, path, Some(&account.token), None).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert_eq!(reply.json()["error"]["code"], "invalid_query");
    }
    let reply = call(
        &app,
        Method::GET,
        "/projects/not-a-uuid",
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
}
