//! Revocable access tokens (issue 10, item 7): an access token names its session, and every
//! request checks that session, so logout, a password change, a revoked family or a lost
//! membership end it at once, on every instance. Refresh retries within the grace window get
//! the same pair; sessions end at their absolute lifetime.

use awc::http::Method;
use secrecy::SecretString;

use crate::helpers::{
    call, change_password, eventually, listeners_up, login_from, refresh_with, register, send,
    set_cookie, spawn_app, spawn_app_with, Reply, TestApp, TEST_PASSWORD,
};

/// One SECRET_KEY for instances that must accept each other's tokens.
const SHARED_SECRET: &str = "shared-secret-key-of-the-test-fleet-0123456789";

async fn projects(app: &TestApp, token: &str) -> u16 {
    call(app, Method::GET, "/projects", Some(token), None)
        .await
        .status
}

fn access(reply: &Reply) -> String {
    reply.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

#[actix_web::test]
async fn logout_ends_the_sessions_access_token_at_once() {
    let app = spawn_app().await;
    let account = register(&app).await;
    assert_eq!(projects(&app, &account.token).await, 200);
    let out = send(
        app.req(Method::POST, "/auth/logout")
            .insert_header(("Cookie", format!("refresh_token={}", account.refresh))),
        None,
    )
    .await;
    assert_eq!(out.status, 204);
    let reply = call(&app, Method::GET, "/projects", Some(&account.token), None).await;
    assert_eq!(
        reply.status, 401,
        "the access token outlives its logged-out session"
    );
    assert_eq!(reply.json()["error"]["code"], "session_ended");
}

#[actix_web::test]
async fn a_password_change_ends_the_other_sessions_access_tokens() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let other = access(&login_from(&app, &account.email, TEST_PASSWORD, None).await);
    assert_eq!(projects(&app, &other).await, 200);
    let reply = change_password(&app, &account, TEST_PASSWORD, "a brand new password").await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert_eq!(
        projects(&app, &other).await,
        401,
        "another session's access token outlives the password change"
    );
    assert_eq!(projects(&app, &account.token).await, 200, "this one stays");
}

#[actix_web::test]
async fn reuse_outside_the_grace_window_ends_the_familys_access_tokens() {
    let app = spawn_app_with(|s| s.auth.refresh_reuse_grace_secs = 0, None).await;
    let account = register(&app).await;
    let reply = refresh_with(&app, &account.refresh).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let newer = access(&reply);
    assert_eq!(projects(&app, &newer).await, 200);
    let reply = refresh_with(&app, &account.refresh).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "refresh_token_reused");
    assert_eq!(
        projects(&app, &newer).await,
        401,
        "the revoked family's access token still works"
    );
    assert_eq!(projects(&app, &account.token).await, 401);
}

#[actix_web::test]
async fn a_refresh_retried_within_the_grace_window_gets_the_same_pair() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let first = refresh_with(&app, &account.refresh).await;
    assert_eq!(first.status, 200, "{}", first.text);
    // A second tab, or a retry after a lost answer, sends the same cookie again.
    let again = refresh_with(&app, &account.refresh).await;
    assert_eq!(
        again.status, 200,
        "a retried refresh revoked the session: {}",
        again.text
    );
    let cookie = |r: &Reply| set_cookie(r, "refresh_token").unwrap().0;
    assert_eq!(cookie(&again), cookie(&first), "the same refresh token");
    assert_eq!(access(&again), access(&first), "the same access token");
    // The family lives on.
    assert_eq!(projects(&app, &access(&again)).await, 200);
    let next = refresh_with(&app, &cookie(&again)).await;
    assert_eq!(next.status, 200, "{}", next.text);
    assert_eq!(projects(&app, &access(&next)).await, 200);
}

#[actix_web::test]
async fn the_organisation_claim_is_checked_against_membership() {
    let app = spawn_app().await;
    let account = register(&app).await;
    // The user leaves (is removed from) the organisation the token names.
    let db = app.state.db.get().await.unwrap();
    let n = db
        .execute(
            "DELETE FROM memberships WHERE user_id = (SELECT id FROM users WHERE email = $1)",
            &[&account.email],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        projects(&app, &account.token).await,
        401,
        "a token for an organisation the user no longer belongs to still works"
    );
}

#[actix_web::test]
async fn sessions_end_at_their_absolute_lifetime() {
    let app = spawn_app_with(
        |s| {
            s.auth.session_max_days = 90;
            s.auth.secret_key = SecretString::from(SHARED_SECRET);
        },
        None,
    )
    .await;
    let account = register(&app).await;
    let db = app.state.db.get().await.unwrap();
    let days: f64 = db
        .query_one(
            "SELECT extract(epoch FROM expires_at - authenticated_at)::float8 / 86400 FROM sessions",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((days - 90.0).abs() < 0.01, "{days}");
    let refreshed = refresh_with(&app, &account.refresh).await;
    assert_eq!(refreshed.status, 200);
    let cookie = set_cookie(&refreshed, "refresh_token").unwrap().0;
    let token = access(&refreshed);
    // 91 days after the sign-in, refreshed or not, the session is over.
    db.execute(
        "UPDATE sessions SET authenticated_at = authenticated_at - interval '91 days',
                             expires_at = expires_at - interval '91 days'",
        &[],
    )
    .await
    .unwrap();
    let reply = refresh_with(&app, &cookie).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "refresh_token_invalid");
    // Cached as valid on this instance until told otherwise: a fresh instance checks anew.
    let shared = app.db_url.clone();
    let other = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(shared);
            s.auth.secret_key = SecretString::from(SHARED_SECRET);
        },
        None,
    )
    .await;
    assert_eq!(projects(&other, &token).await, 401);
}

#[actix_web::test]
async fn a_logout_reaches_another_instance_within_moments() {
    let a = spawn_app_with(
        |s| s.auth.secret_key = SecretString::from(SHARED_SECRET),
        None,
    )
    .await;
    let shared = a.db_url.clone();
    let b = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(shared);
            s.auth.secret_key = SecretString::from(SHARED_SECRET);
        },
        None,
    )
    .await;
    let account = register(&a).await;
    // B has the session in memory.
    assert_eq!(projects(&b, &account.token).await, 200);
    assert!(listeners_up(&b, 2).await);
    let out = send(
        a.req(Method::POST, "/auth/logout")
            .insert_header(("Cookie", format!("refresh_token={}", account.refresh))),
        None,
    )
    .await;
    assert_eq!(out.status, 204);
    assert!(
        eventually(10, || async { projects(&b, &account.token).await == 401 }).await,
        "instance B still accepts the logged-out session's access token"
    );
}
