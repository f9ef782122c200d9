//! Sign in with GitHub end to end against a local fake GitHub (real HTTP both ways): a new
//! account, linking by verified email, a forged `state`, a denied authorisation, a bad code.

use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::Method;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{
    call, eventually, send, set_cookie, spawn_app_with, token_in_log, Reply, TestApp, TEST_PASSWORD,
};

const GOOD_CODE: &str = "good-code";
const TOKEN: &str = "gho_fake_token";

#[derive(Default)]
struct Calls {
    exchanges: Vec<serde_json::Value>,
    lookups: usize,
}

/// Serves the three GitHub endpoints observe uses.
struct FakeGithub {
    url: String,
    calls: Arc<Mutex<Calls>>,
    _server: ServerHandle,
}

impl FakeGithub {
    async fn start(email: &'static str, verified: bool) -> Self {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let data = web::Data::from(calls.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/login/oauth/access_token",
                    web::post().to(|calls: web::Data<Mutex<Calls>>, body: web::Json<serde_json::Value>| async move {
                        let ok = body["code"] == GOOD_CODE && body["client_secret"] == "github-secret";
                        calls.lock().unwrap().exchanges.push(body.into_inner());
                        if ok {
                            HttpResponse::Ok().json(json!({"access_token": TOKEN, "token_type": "bearer", "scope": "read:user,user:email"}))
                        } else {
                            HttpResponse::Ok().json(json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."}))
                        }
                    }),
                )
                .route(
                    "/user",
                    web::get().to(|calls: web::Data<Mutex<Calls>>, req: HttpRequest| async move {
                        calls.lock().unwrap().lookups += 1;
                        if !authorised(&req) {
                            return HttpResponse::Unauthorized().finish();
                        }
                        HttpResponse::Ok().json(json!({"id": 4242, "login": "octocat", "name": "The Octocat", "email": null}))
                    }),
                )
                .route(
                    "/user/emails",
                    web::get().to(move |req: HttpRequest| async move {
                        if !authorised(&req) {
                            return HttpResponse::Unauthorized().finish();
                        }
                        HttpResponse::Ok().json(json!([
                            {"email": "old-unverified@example.com", "primary": false, "verified": false},
                            {"email": email, "primary": true, "verified": verified},
                        ]))
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            calls,
            _server: handle,
        }
    }
}

fn authorised(req: &HttpRequest) -> bool {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let agent = req.headers().get("user-agent").is_some();
    auth == Some(&format!("Bearer {TOKEN}")) && agent
}

async fn app_for(fake: &FakeGithub) -> TestApp {
    let url = fake.url.clone();
    spawn_app_with(
        move |s| {
            s.github.client_id = "github-client".into();
            s.github.client_secret = SecretString::from("github-secret");
            s.github.redirect_uri = "http://127.0.0.1:8000/auth/github/callback".into();
            s.github.oauth_base_url = url.clone();
            s.github.api_base_url = url;
            s.frontend_url = "http://dashboard.test".into();
        },
        None,
    )
    .await
}

/// `GET /auth/github/login`: the state from the redirect and from the cookie.
async fn begin(app: &TestApp, fake: &FakeGithub) -> (String, String) {
    let reply = send(app.req(Method::GET, "/auth/github/login"), None).await;
    assert_eq!(reply.status, 302, "{}", reply.text);
    let location = reply.header("location").unwrap();
    assert!(
        location.starts_with(&format!(
            "{}/login/oauth/authorize?client_id=github-client&",
            fake.url
        )),
        "{location}"
    );
    let from_url = location
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let (from_cookie, attributes) = set_cookie(&reply, "oauth_state").unwrap();
    assert!(
        attributes.contains("HttpOnly") && attributes.contains("Path=/auth/github"),
        "{attributes}"
    );
    (from_url, from_cookie)
}

async fn callback(app: &TestApp, query: &str, cookie: Option<&str>) -> Reply {
    let mut req = app.req(Method::GET, &format!("/auth/github/callback?{query}"));
    if let Some(c) = cookie {
        req = req.insert_header(("Cookie", format!("oauth_state={c}")));
    }
    send(req, None).await
}

/// Follows the session the callback established: refresh, then me.
async fn me_after(app: &TestApp, reply: &Reply) -> serde_json::Value {
    let refresh = set_cookie(reply, "refresh_token")
        .expect("a session cookie")
        .0;
    let refreshed = send(
        app.req(Method::POST, "/auth/refresh")
            .insert_header(("Cookie", format!("refresh_token={refresh}"))),
        None,
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let token = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    call(app, Method::GET, "/auth/me", Some(&token), None)
        .await
        .json()
}

#[actix_web::test]
async fn a_new_github_user_gets_an_account_and_a_session_and_comes_back_to_it() {
    let fake = FakeGithub::start("octo@example.com", true).await;
    let app = app_for(&fake).await;
    // The dashboard learns that the GitHub button works.
    let (_, features) = app.get_json("/features").await;
    assert_eq!(features["github_sign_in"], true, "{features}");
    let (state, cookie) = begin(&app, &fake).await;
    assert_eq!(state, cookie);

    let reply = callback(
        &app,
        &format!("code={GOOD_CODE}&state={state}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(reply.status, 302, "{}", reply.text);
    assert_eq!(
        reply.header("location").as_deref(),
        Some("http://dashboard.test")
    );
    let me = me_after(&app, &reply).await;
    assert_eq!(me["user"]["email"], "octo@example.com");
    assert_eq!(me["user"]["name"], "The Octocat");
    assert_eq!(me["user"]["email_verified"], true);
    assert_eq!(me["organisation"]["tier"], "hobby");
    let exchange = fake.calls.lock().unwrap().exchanges[0].clone();
    assert_eq!(exchange["client_id"], "github-client");
    assert_eq!(exchange["code"], GOOD_CODE);

    // Signing in again finds the same account.
    let (state, cookie) = begin(&app, &fake).await;
    let reply = callback(
        &app,
        &format!("code={GOOD_CODE}&state={state}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(me_after(&app, &reply).await["user"]["id"], me["user"]["id"]);
    assert!(
        !app.logs.contents().contains("github-secret"),
        "the client secret is never logged"
    );
    assert!(
        !app.logs.contents().contains(TOKEN),
        "GitHub's token is never logged"
    );
}

#[actix_web::test]
async fn an_existing_account_with_the_same_verified_email_is_linked() {
    let fake = FakeGithub::start("linked@example.com", true).await;
    let app = app_for(&fake).await;
    let reply = call(
        &app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": "linked@example.com", "password": TEST_PASSWORD, "name": "Linda"})),
    )
    .await;
    assert_eq!(reply.status, 201);
    let user_id = reply.json()["user"]["id"].clone();
    // The owner proved the address (as a confirmed email change does).
    let db = app.state.db.get().await.unwrap();
    db.execute("UPDATE users SET email_verified = true", &[])
        .await
        .unwrap();

    let (state, cookie) = begin(&app, &fake).await;
    let reply = callback(
        &app,
        &format!("code={GOOD_CODE}&state={state}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(reply.status, 302);
    let me = me_after(&app, &reply).await;
    assert_eq!(me["user"]["id"], user_id, "linked, not a second account");
    assert_eq!(me["user"]["name"], "Linda");
    // The password still works too.
    let login = call(
        &app,
        Method::POST,
        "/auth/login",
        None,
        Some(json!({"email": "linked@example.com", "password": TEST_PASSWORD})),
    )
    .await;
    assert_eq!(login.status, 200);
}

#[actix_web::test]
async fn an_unproven_account_with_the_address_cannot_be_used_to_take_over_the_github_user() {
    let fake = FakeGithub::start("victim@example.com", true).await;
    let app = app_for(&fake).await;
    // Someone registers the victim's address first, with a password of their own.
    let reply = call(
        &app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": "victim@example.com", "password": TEST_PASSWORD, "name": "Squatter"})),
    )
    .await;
    assert_eq!(reply.status, 201);
    let squatter_refresh = set_cookie(&reply, "refresh_token").unwrap().0;

    // The victim signs in with GitHub, which proves the address is theirs.
    let (state, cookie) = begin(&app, &fake).await;
    let reply = callback(
        &app,
        &format!("code={GOOD_CODE}&state={state}"),
        Some(&cookie),
    )
    .await;
    assert_eq!(
        reply.header("location").as_deref(),
        Some("http://dashboard.test")
    );
    let me = me_after(&app, &reply).await;
    assert_eq!(me["user"]["email_verified"], true);

    // The squatter's password and session are gone.
    let login = call(
        &app,
        Method::POST,
        "/auth/login",
        None,
        Some(json!({"email": "victim@example.com", "password": TEST_PASSWORD})),
    )
    .await;
    assert_eq!(login.status, 401);
    let refreshed = send(
        app.req(Method::POST, "/auth/refresh")
            .insert_header(("Cookie", format!("refresh_token={squatter_refresh}"))),
        None,
    )
    .await;
    assert_eq!(refreshed.status, 401);
}

#[actix_web::test]
async fn forged_state_denied_consent_bad_code_and_unverified_email_end_without_a_session() {
    let fake = FakeGithub::start("nope@example.com", false).await;
    let app = app_for(&fake).await;
    let (state, cookie) = begin(&app, &fake).await;

    let cases: Vec<(String, Option<&str>, &str)> = vec![
        // An attacker's state, or none, or no cookie in this browser.
        (
            format!("code={GOOD_CODE}&state=forged-state"),
            Some(&cookie),
            "invalid_state",
        ),
        (format!("code={GOOD_CODE}"), Some(&cookie), "invalid_state"),
        (
            format!("code={GOOD_CODE}&state={state}"),
            None,
            "invalid_state",
        ),
        // The user said no on GitHub.
        (
            format!("error=access_denied&error_description=denied&state={state}"),
            Some(&cookie),
            "access_denied",
        ),
        // A code GitHub does not accept.
        (
            format!("code=stolen-code&state={state}"),
            Some(&cookie),
            "invalid_code",
        ),
        // This account's only address is unverified.
        (
            format!("code={GOOD_CODE}&state={state}"),
            Some(&cookie),
            "github_email_unverified",
        ),
    ];
    for (query, cookie, reason) in cases {
        let reply = callback(&app, &query, cookie).await;
        assert_eq!(reply.status, 302, "{query}");
        assert_eq!(
            reply.header("location"),
            Some(format!("http://dashboard.test/login?error={reason}")),
            "{query}"
        );
        assert!(
            set_cookie(&reply, "refresh_token").is_none(),
            "{query}: no session"
        );
    }
    // The forged and denied attempts never reached GitHub's token endpoint.
    assert_eq!(fake.calls.lock().unwrap().exchanges.len(), 2);
    let db = app.state.db.get().await.unwrap();
    let users: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 0, "no account was created");
}

#[actix_web::test]
async fn a_github_only_account_is_deleted_with_a_recent_sign_in_only() {
    let fake = FakeGithub::start("gone@example.com", true).await;
    let app = app_for(&fake).await;
    let reply = sign_in(&app, &fake).await;
    let refresh = set_cookie(&reply, "refresh_token").unwrap().0;

    // The sign-in was an hour ago; refreshing gives a new access token, but not a new
    // sign-in: the refresh keeps the time of the real authentication.
    let db = app.state.db.get().await.unwrap();
    db.execute(
        "UPDATE sessions SET authenticated_at = now() - interval '1 hour'",
        &[],
    )
    .await
    .unwrap();
    let refreshed = crate::helpers::refresh_with(&app, &refresh).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let token = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = call(
        &app,
        Method::POST,
        "/auth/delete-account",
        Some(&token),
        Some(json!({})),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "reauthentication_required");

    // A new sign-in is recent enough.
    let reply = sign_in(&app, &fake).await;
    let refresh = set_cookie(&reply, "refresh_token").unwrap().0;
    let refreshed = crate::helpers::refresh_with(&app, &refresh).await;
    let token = refreshed.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = call(
        &app,
        Method::POST,
        "/auth/delete-account",
        Some(&token),
        Some(json!({})),
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
}

#[actix_web::test]
async fn without_a_github_client_sign_in_is_not_offered() {
    let app = spawn_app_with(|_| {}, None).await;
    let reply = send(app.req(Method::GET, "/auth/github/login"), None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["code"], "not_configured");
}

/// Item 6: someone registers the victim's address and starts moving the account to an
/// address of their own; the victim then proves the address through GitHub and takes the
/// account over. The squatter's pending confirmation link and access token must die with it.
#[actix_web::test]
async fn a_github_takeover_ends_the_squatters_email_change_link_and_access_token() {
    let fake = FakeGithub::start("taken@example.com", true).await;
    let app = app_for(&fake).await;
    let reply = call(
        &app,
        Method::POST,
        "/auth/register",
        None,
        Some(json!({"email": "taken@example.com", "password": TEST_PASSWORD, "name": "Squatter"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let squatter = reply.json()["access_token"].as_str().unwrap().to_string();
    let reply = call(
        &app,
        Method::POST,
        "/auth/change-email",
        Some(&squatter),
        Some(json!({"new_email": "squatter@example.net", "password": TEST_PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert!(
        eventually(10, || async {
            token_in_log(&app, "/confirm-email").is_some()
        })
        .await,
        "the confirmation link was never written to the log"
    );
    let link = token_in_log(&app, "/confirm-email").unwrap();

    let reply = sign_in(&app, &fake).await;
    assert_eq!(
        reply.header("location").as_deref(),
        Some("http://dashboard.test")
    );
    let me = me_after(&app, &reply).await;
    assert_eq!(me["user"]["email"], "taken@example.com");

    let confirm = call(
        &app,
        Method::POST,
        "/auth/confirm-email",
        None,
        Some(json!({"token": link})),
    )
    .await;
    assert_eq!(
        confirm.status, 400,
        "the squatter's confirm link still works after the takeover: {}",
        confirm.text
    );
    assert_eq!(confirm.json()["error"]["code"], "invalid_token");
    for path in ["/auth/me", "/projects"] {
        let reply = call(&app, Method::GET, path, Some(&squatter), None).await;
        assert_eq!(
            reply.status, 401,
            "{path}: the squatter's access token still works after the takeover"
        );
    }
    let me = me_after(&app, &sign_in(&app, &fake).await).await;
    assert_eq!(
        me["user"]["email"], "taken@example.com",
        "address unchanged"
    );
}

/// A whole GitHub sign-in: its callback's reply.
async fn sign_in(app: &TestApp, fake: &FakeGithub) -> Reply {
    let (state, cookie) = begin(app, fake).await;
    callback(
        app,
        &format!("code={GOOD_CODE}&state={state}"),
        Some(&cookie),
    )
    .await
}
