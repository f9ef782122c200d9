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

/// The organisation a token names is checked against the user's memberships. Memberships
/// change through no route yet, so nothing announces it: an instance that has the session
/// cached learns of it within `session_cache_ttl_secs`. With that at 0 every request looks, so
/// the same token is seen good, then refused for this reason.
#[actix_web::test]
async fn the_organisation_claim_is_checked_against_membership() {
    let app = spawn_app_with(|s| s.auth.session_cache_ttl_secs = 0, None).await;
    let account = register(&app).await;
    assert_eq!(projects(&app, &account.token).await, 200);
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
    let reply = call(&app, Method::GET, "/projects", Some(&account.token), None).await;
    assert_eq!(
        reply.status, 401,
        "a token for an organisation the user no longer belongs to still works"
    );
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "session_ended");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("no longer belongs to its organisation")),
        "refused for another reason than membership: {error}"
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
    assert_eq!(projects(&app, &token).await, 200);
    let session_id: uuid::Uuid = db
        .query_one("SELECT id FROM sessions", &[])
        .await
        .unwrap()
        .get(0);
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
    // This instance had the session cached as valid (the access token was used above, before
    // the lifetime ran out in the database), and the cached state says so until its TTL; a
    // fresh instance reads the session anew and refuses the token.
    assert!(
        app.state.sessions.is_cached(session_id),
        "the session was never cached here, so nothing below is about a cache"
    );
    assert_eq!(projects(&app, &token).await, 200, "answered from the cache");
    let shared = app.db_url.clone();
    let other = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(shared);
            s.auth.secret_key = SecretString::from(SHARED_SECRET);
        },
        None,
    )
    .await;
    let reply = call(&other, Method::GET, "/projects", Some(&token), None).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "session_ended");
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
    // B has the session in memory, so only the notification can end it there in time.
    assert_eq!(projects(&b, &account.token).await, 200);
    let db = a.state.db.get().await.unwrap();
    let session_id: uuid::Uuid = db
        .query_one("SELECT id FROM sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert!(b.state.sessions.is_cached(session_id));
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
    assert!(
        b.state.settings.auth.session_cache_ttl_secs > 10,
        "the cache's own expiry could have ended it: this test proves nothing about NOTIFY"
    );
}

/// Two tabs refresh with the same cookie at the same moment: both get the same new pair, and
/// the session lives on (neither request reads the other as a reuse).
#[actix_web::test]
async fn two_refreshes_with_the_same_cookie_at_once_get_the_same_pair() {
    let app = spawn_app().await;
    let account = register(&app).await;
    let replies =
        futures_util::future::join_all((0..2).map(|_| refresh_with(&app, &account.refresh))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let cookie = |r: &Reply| set_cookie(r, "refresh_token").unwrap().0;
    assert_eq!(
        cookie(&replies[0]),
        cookie(&replies[1]),
        "the same refresh token"
    );
    assert_eq!(
        access(&replies[0]),
        access(&replies[1]),
        "the same access token"
    );
    assert_ne!(cookie(&replies[0]), account.refresh, "rotated");
    let db = app.state.db.get().await.unwrap();
    let revoked: i64 = db
        .query_one(
            "SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(revoked, 0, "the family was revoked");
    assert_eq!(projects(&app, &access(&replies[0])).await, 200);
    let next = refresh_with(&app, &cookie(&replies[0])).await;
    assert_eq!(next.status, 200, "{}", next.text);
    assert_eq!(projects(&app, &access(&next)).await, 200);
}
