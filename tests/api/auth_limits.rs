//! Auth rate limits that protect without locking people out (issue 10, item 8): failures are
//! limited per client IP (IPv6 by /64) and per account, successes spend nothing, registration
//! has its own budget, and a Redis outage leaves each instance limiting by itself.

use awc::http::Method;
use serde_json::json;

use crate::helpers::{
    call, free_port, login_from, register, spawn_app_with, TestApp, TEST_PASSWORD,
};

async fn register_as(app: &TestApp, email: &str) -> u16 {
    call(
        app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": email, "password": TEST_PASSWORD, "name": "R"})),
    )
    .await
    .status
}

#[actix_web::test]
async fn successful_sign_ins_spend_no_budget() {
    let app = spawn_app_with(|s| s.auth.rate_limit_attempts = 2, None).await;
    let account = register(&app).await;
    for i in 0..6 {
        let reply = login_from(&app, &account.email, TEST_PASSWORD, None).await;
        assert_eq!(reply.status, 200, "sign-in {i}: {}", reply.text);
    }
    // Failures still count.
    for _ in 0..2 {
        let reply = login_from(&app, &account.email, "a wrong password", None).await;
        assert_eq!(reply.status, 401);
    }
    let reply = login_from(&app, &account.email, "a wrong password", None).await;
    assert_eq!(reply.status, 429, "{}", reply.text);
    assert!(reply.header("retry-after").is_some());
    // And once the IP is over its budget the right password is not even tried.
    let reply = login_from(&app, &account.email, TEST_PASSWORD, None).await;
    assert_eq!(reply.status, 429);
}

#[actix_web::test]
async fn failures_are_limited_per_account_from_any_ip() {
    let app = spawn_app_with(
        |s| {
            s.auth.rate_limit_attempts = 100;
            s.auth.account_rate_limit_attempts = 3;
            s.server.client_ip_header = "X-Forwarded-For".into();
        },
        None,
    )
    .await;
    let target = register(&app).await;
    let bystander = register(&app).await;
    for i in 0..3 {
        let ip = format!("203.0.113.{i}");
        let reply = login_from(&app, &target.email, "a wrong password", Some(&ip)).await;
        assert_eq!(reply.status, 401, "{}", reply.text);
    }
    let reply = login_from(
        &app,
        &target.email,
        "a wrong password",
        Some("198.51.100.7"),
    )
    .await;
    assert_eq!(
        reply.status, 429,
        "guesses at one account from many IPs are not limited: {}",
        reply.text
    );
    // Another account from the same addresses is unaffected.
    let reply = login_from(&app, &bystander.email, TEST_PASSWORD, Some("203.0.113.0")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[actix_web::test]
async fn register_and_login_have_separate_budgets() {
    let app = spawn_app_with(
        |s| {
            s.auth.rate_limit_attempts = 2;
            s.auth.register_rate_limit_attempts = 2;
        },
        None,
    )
    .await;
    for _ in 0..2 {
        let reply = login_from(&app, "nobody@example.com", "a wrong password", None).await;
        assert_eq!(reply.status, 401);
    }
    assert_eq!(
        login_from(&app, "nobody@example.com", "a wrong password", None)
            .await
            .status,
        429
    );
    assert_eq!(
        register_as(&app, "first@example.com").await,
        201,
        "failed sign-ins used up the registration budget"
    );
    assert_eq!(register_as(&app, "second@example.com").await, 201);
    assert_eq!(register_as(&app, "third@example.com").await, 429);
}

#[actix_web::test]
async fn ipv6_clients_are_limited_per_64_prefix() {
    let app = spawn_app_with(
        |s| {
            s.auth.rate_limit_attempts = 2;
            s.auth.account_rate_limit_attempts = 100;
            s.server.client_ip_header = "X-Forwarded-For".into();
        },
        None,
    )
    .await;
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        let reply = login_from(&app, "v6@example.com", "a wrong password", Some(ip)).await;
        assert_eq!(reply.status, 401, "{}", reply.text);
    }
    let reply = login_from(
        &app,
        "v6@example.com",
        "a wrong password",
        Some("2001:db8:1:2:ffff:ffff:ffff:ffff"),
    )
    .await;
    assert_eq!(
        reply.status, 429,
        "another address of the same /64 got a fresh budget"
    );
    let reply = login_from(
        &app,
        "v6@example.com",
        "a wrong password",
        Some("2001:db8:1:3::1"),
    )
    .await;
    assert_eq!(reply.status, 401, "another /64 is another client");
}

#[actix_web::test]
async fn without_redis_each_instance_still_limits_failures() {
    let port = free_port();
    let app = spawn_app_with(
        move |s| {
            s.redis.url = secrecy::SecretString::from(format!("redis://127.0.0.1:{port}/"));
            s.redis.connect_timeout_secs = 1;
            s.auth.rate_limit_attempts = 2;
        },
        None,
    )
    .await;
    for _ in 0..2 {
        let reply = login_from(&app, "down@example.com", "a wrong password", None).await;
        assert_eq!(reply.status, 401, "{}", reply.text);
    }
    let reply = login_from(&app, "down@example.com", "a wrong password", None).await;
    assert_eq!(
        reply.status, 429,
        "with Redis down every attempt is allowed: {}",
        reply.text
    );
}
