//! Auth rate limits that protect without locking people out (issue 10, item 8): failures are
//! limited per client IP (IPv6 by /64) and per account, successes spend nothing, registration
//! has its own budget, and a Redis outage leaves each instance limiting by itself.

use awc::http::Method;
use serde_json::json;

use crate::helpers::{
    call, change_password, free_port, login_from, register, send, set_cookie, spawn_app_with,
    Reply, TestApp, TEST_PASSWORD,
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
    let app = behind_proxy(100, 3).await;
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
    let app = behind_proxy(2, 100).await;
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

/// `POST /auth/login` from `ip` (behind the configured proxy), with the `device` cookie of an
/// earlier sign-in if given.
async fn login_on(
    app: &TestApp,
    email: &str,
    password: &str,
    ip: &str,
    device: Option<&str>,
) -> Reply {
    let mut req = app
        .req(Method::POST, "/auth/login")
        .insert_header(("content-type", "application/json"))
        .insert_header(("X-Forwarded-For", ip));
    if let Some(device) = device {
        req = req.insert_header(("Cookie", format!("device={device}")));
    }
    send(
        req,
        Some(
            json!({"email": email, "password": password})
                .to_string()
                .into_bytes(),
        ),
    )
    .await
}

/// An app behind a proxy (`X-Forwarded-For` names the client) with these failure budgets per
/// client and per account.
async fn behind_proxy(per_client: u32, per_account: u32) -> TestApp {
    spawn_app_with(
        move |s| {
            s.auth.rate_limit_attempts = per_client;
            s.auth.account_rate_limit_attempts = per_account;
            s.server.client_ip_header = "X-Forwarded-For".into();
        },
        None,
    )
    .await
}

/// `n` wrong passwords at `email` from strangers, one by one, each from an address of its own
/// (203.0.113.`first`…); their statuses.
async fn strangers_fail(app: &TestApp, email: &str, first: usize, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in first..first + n {
        let ip = format!("203.0.113.{i}");
        statuses.push(
            login_on(app, email, "a wrong password", &ip, None)
                .await
                .status,
        );
    }
    statuses
}

/// Wrong passwords at `email`, all sent at once, one from each of `ips` (`None`: the peer).
async fn wrong_passwords_at_once(app: &TestApp, email: &str, ips: &[Option<String>]) -> Vec<u16> {
    let replies = futures_util::future::join_all(
        ips.iter()
            .map(|ip| login_from(app, email, "a wrong password", ip.as_deref())),
    )
    .await;
    replies.iter().map(|r| r.status).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Item 1: a burst of wrong passwords sent at once counts every one. The budget is spent
/// before the password is checked, so no request of the burst can pass a check made before
/// any of them had failed.
#[actix_web::test]
async fn parallel_wrong_passwords_from_one_client_each_spend_its_budget() {
    let app = spawn_app_with(
        |s| {
            s.auth.rate_limit_attempts = 5;
            s.auth.account_rate_limit_attempts = 1000;
        },
        None,
    )
    .await;
    let account = register(&app).await;
    let statuses = wrong_passwords_at_once(&app, &account.email, &vec![None; 20]).await;
    assert_eq!(
        (count(&statuses, 401), count(&statuses, 429)),
        (5, 15),
        "more passwords were checked than the client's budget: {statuses:?}"
    );
}

/// Item 1, per account: a burst at one account from many addresses at once.
#[actix_web::test]
async fn parallel_wrong_passwords_at_one_account_each_spend_its_budget() {
    let app = behind_proxy(100, 3).await;
    let account = register(&app).await;
    let ips: Vec<Option<String>> = (0..12).map(|i| Some(format!("203.0.113.{i}"))).collect();
    let statuses = wrong_passwords_at_once(&app, &account.email, &ips).await;
    assert_eq!(
        (count(&statuses, 401), count(&statuses, 429)),
        (3, 9),
        "more passwords were checked than the account's budget: {statuses:?}"
    );
}

/// Item 2 (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"): strangers who spend
/// an account's failure budget lock out the clients the account has never signed in from, not
/// the owner's browser, which holds the device cookie of an earlier sign-in.
#[actix_web::test]
async fn the_owner_on_a_known_device_signs_in_while_strangers_spend_the_account_budget() {
    let app = behind_proxy(100, 3).await;
    let account = register(&app).await;
    let owner_ip = "192.0.2.10";
    let earlier = login_on(&app, &account.email, TEST_PASSWORD, owner_ip, None).await;
    assert_eq!(earlier.status, 200, "{}", earlier.text);
    let device = set_cookie(&earlier, "device").map(|(value, _)| value);

    assert_eq!(strangers_fail(&app, &account.email, 0, 3).await, [401; 3]);
    let reply = login_on(
        &app,
        &account.email,
        "a wrong password",
        "198.51.100.7",
        None,
    )
    .await;
    assert_eq!(
        reply.status, 429,
        "the account's budget is spent: {}",
        reply.text
    );

    let reply = login_on(
        &app,
        &account.email,
        TEST_PASSWORD,
        owner_ip,
        device.as_deref(),
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "strangers locked the owner out of their own account: {}",
        reply.text
    );
    // Unknown clients stay locked out, right password or not, until the window refills.
    let reply = login_on(&app, &account.email, TEST_PASSWORD, "198.51.100.8", None).await;
    assert_eq!(reply.status, 429, "{}", reply.text);
    // The cookie is good for its own account only.
    let other = register(&app).await;
    assert_eq!(strangers_fail(&app, &other.email, 10, 3).await, [401; 3]);
    let reply = login_on(
        &app,
        &other.email,
        TEST_PASSWORD,
        owner_ip,
        device.as_deref(),
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text);
}

/// Item 2: a trusted device is limited by itself (its own budget), like a client.
#[actix_web::test]
async fn a_known_device_has_a_failure_budget_of_its_own() {
    let app = behind_proxy(2, 100).await;
    let account = register(&app).await;
    let earlier = login_on(&app, &account.email, TEST_PASSWORD, "192.0.2.1", None).await;
    let device = set_cookie(&earlier, "device")
        .map(|(value, _)| value)
        .expect("a sign-in sets the device cookie");
    // From a new address each time, so only the device's own budget can stop it.
    for i in 0..2 {
        let ip = format!("192.0.2.{}", 20 + i);
        let reply = login_on(&app, &account.email, "a wrong password", &ip, Some(&device)).await;
        assert_eq!(reply.status, 401, "{}", reply.text);
    }
    let reply = login_on(
        &app,
        &account.email,
        TEST_PASSWORD,
        "192.0.2.30",
        Some(&device),
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text);
}

/// Item 2: a signed-in owner confirms their password (here to change it) whatever strangers
/// did to the account's budget: the session is a trusted client.
#[actix_web::test]
async fn a_signed_in_owner_confirms_their_password_while_strangers_spend_the_account_budget() {
    let app = behind_proxy(100, 3).await;
    let account = register(&app).await;
    assert_eq!(
        strangers_fail(&app, &account.email, 0, 4).await,
        [401, 401, 401, 429]
    );
    let reply = change_password(&app, &account, TEST_PASSWORD, "a brand new password").await;
    assert_eq!(
        reply.status, 204,
        "strangers kept the owner from changing their password: {}",
        reply.text
    );
}

/// `POST {path}` with a refresh-token cookie, from `ip`.
async fn with_refresh_cookie(app: &TestApp, path: &str, cookie: &str, ip: &str) -> Reply {
    send(
        app.req(Method::POST, path)
            .insert_header(("Cookie", format!("refresh_token={cookie}")))
            .insert_header(("X-Forwarded-For", ip)),
        None,
    )
    .await
}

/// Item 8: refresh and logout look at a cookie's shape before any lookup, and an invalid
/// cookie (malformed, or of no session) spends the client's failure budget.
#[actix_web::test]
async fn invalid_refresh_and_logout_cookies_spend_the_client_budget() {
    let app = spawn_app_with(
        |s| {
            s.auth.rate_limit_attempts = 2;
            s.server.client_ip_header = "X-Forwarded-For".into();
        },
        None,
    )
    .await;
    let unknown = "A".repeat(43);
    for (cookie, ip) in [("garbage", "192.0.2.1"), (unknown.as_str(), "192.0.2.2")] {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(
                with_refresh_cookie(&app, "/auth/refresh", cookie, ip)
                    .await
                    .status,
            );
        }
        assert_eq!(seen, [401, 401, 429], "refresh with {cookie:?}");
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            with_refresh_cookie(&app, "/auth/logout", "garbage", "192.0.2.3")
                .await
                .status,
        );
    }
    assert_eq!(seen, [204, 204, 429], "logout with a garbage cookie");
    // A real session's refresh spends nothing.
    let account = register(&app).await;
    let mut cookie = account.refresh.clone();
    for _ in 0..4 {
        let reply = with_refresh_cookie(&app, "/auth/refresh", &cookie, "192.0.2.4").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        cookie = set_cookie(&reply, "refresh_token").unwrap().0;
    }
}

/// Item 10: with Redis stuck (up, but answering no script), a sign-in still gets its answer,
/// limited per instance.
#[actix_web::test]
async fn a_stalled_redis_does_not_hang_sign_in() {
    let stalled = crate::support::stalled_redis::StalledRedis::start().await;
    let url = stalled.url();
    let app = spawn_app_with(
        move |s| {
            s.redis.url = secrecy::SecretString::from(url);
            s.redis.connect_timeout_secs = 1;
            s.auth.rate_limit_attempts = 2;
        },
        None,
    )
    .await;
    for expected in [401, 401, 429] {
        let reply = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            login_from(&app, "stuck@example.com", "a wrong password", None),
        )
        .await
        .expect("sign-in hung on a stalled Redis");
        assert_eq!(reply.status, expected, "{}", reply.text);
    }
    assert!(
        stalled.scripts_received() >= 1,
        "the stall was never reached"
    );
}
