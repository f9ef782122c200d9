//! Password reset and email change, with the emails really sent through the Mailer to a
//! local fake Resend server and the links taken from what it received.

use awc::http::Method;
use serde_json::json;

use crate::helpers::{call, eventually, register, send, spawn_app_with, TestApp, TEST_PASSWORD};
use crate::mailer::{api_key, towards, FakeResend};

/// Asks for a reset link for `email` and waits for it to reach the fake: its token.
async fn reset_link(app: &TestApp, fake: &FakeResend, email: &str) -> String {
    let reply = call(
        app,
        Method::POST,
        "/auth/forgot-password",
        None,
        Some(json!({ "email": email })),
    )
    .await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["status"], "accepted");
    assert!(
        eventually(10, || async { token_sent_to(fake, email).is_some() }).await,
        "no reset email arrived"
    );
    token_sent_to(fake, email).unwrap()
}

/// The token in the link of the last email sent to `to`.
fn token_sent_to(fake: &FakeResend, to: &str) -> Option<String> {
    let received = fake.received();
    let email = received.iter().rev().find(|r| r.body["to"][0] == to)?;
    let text = email.body["text"].as_str()?;
    let (_, rest) = text.split_once("token=")?;
    Some(
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect(),
    )
}

#[actix_web::test]
async fn forgot_password_emails_a_single_use_link_that_resets_it() {
    let fake = FakeResend::start(&[], 200).await;
    let app = spawn_app_with(towards(&fake, &api_key()), None).await;
    let account = register(&app).await;

    // An unknown address is answered the same, and nothing is sent.
    let reply = call(
        &app,
        Method::POST,
        "/auth/forgot-password",
        None,
        Some(json!({"email": "nobody@example.com"})),
    )
    .await;
    assert_eq!(reply.status, 202);
    let token = reset_link(&app, &fake, &account.email).await;
    assert_eq!(
        fake.received().len(),
        1,
        "only the real account got an email"
    );
    let email = &fake.received()[0].body;
    assert!(email["subject"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("password"));
    // observe's own dashboard, at the address it serves on, unless FRONTEND_URL names another.
    assert!(
        email["text"]
            .as_str()
            .unwrap()
            .contains(&format!("{}/#/reset-password?token=", app.address)),
        "{email}"
    );
    // The token never reached the logs: only its email body carries it.
    assert!(!app.logs.contents().contains(&token));

    let reset = |token: String, password: &'static str| {
        call(
            &app,
            Method::POST,
            "/auth/reset-password",
            None,
            Some(json!({"token": token, "new_password": password})),
        )
    };
    let reply = reset(token.clone(), "short").await;
    assert_eq!(reply.status, 422);
    let reply = reset(token.clone(), "a fresh new password").await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    let reply = reset(token, "another new password").await;
    assert_eq!(reply.status, 400, "single use");
    assert_eq!(reply.json()["error"]["code"], "invalid_token");
    let reply = reset("made-up-token".into(), "another new password").await;
    assert_eq!(reply.status, 400);

    let login = |password: &'static str| {
        call(
            &app,
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": account.email, "password": password})),
        )
    };
    assert_eq!(
        login(TEST_PASSWORD).await.status,
        401,
        "the old password no longer works"
    );
    assert_eq!(login("a fresh new password").await.status, 200);
    let old_session = send(
        app.req(Method::POST, "/auth/refresh")
            .insert_header(("Cookie", format!("refresh_token={}", account.refresh))),
        None,
    )
    .await;
    assert_eq!(old_session.status, 401, "a reset signs out every session");
}

#[actix_web::test]
async fn an_email_change_needs_the_password_and_a_link_sent_to_the_new_address() {
    let fake = FakeResend::start(&[], 200).await;
    let app = spawn_app_with(towards(&fake, &api_key()), None).await;
    let account = register(&app).await;
    let other = register(&app).await;
    let new_email = format!("moved-{}@example.com", uuid::Uuid::new_v4().simple());

    let change = |body: serde_json::Value| {
        call(
            &app,
            Method::POST,
            "/auth/change-email",
            Some(&account.token),
            Some(body),
        )
    };
    assert_eq!(
        change(json!({"new_email": new_email, "password": "wrong password here"}))
            .await
            .status,
        401
    );
    assert_eq!(
        change(json!({"new_email": other.email, "password": TEST_PASSWORD}))
            .await
            .status,
        409
    );
    assert_eq!(
        change(json!({"new_email": "not-an-email", "password": TEST_PASSWORD}))
            .await
            .status,
        422
    );
    let reply = change(json!({"new_email": new_email, "password": TEST_PASSWORD})).await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    assert!(
        eventually(10, || async { token_sent_to(&fake, &new_email).is_some() }).await,
        "no confirmation email arrived"
    );
    let token = token_sent_to(&fake, &new_email).unwrap();
    // Not changed until confirmed.
    let me = call(&app, Method::GET, "/auth/me", Some(&account.token), None)
        .await
        .json();
    assert_eq!(me["user"]["email"], account.email.as_str());

    let confirm = |token: String| {
        call(
            &app,
            Method::POST,
            "/auth/confirm-email",
            None,
            Some(json!({"token": token})),
        )
    };
    let reply = confirm(token.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["email"], new_email.as_str());
    assert_eq!(reply.json()["email_verified"], true);
    assert_eq!(confirm(token).await.status, 400, "single use");

    let login = |email: String| {
        call(
            &app,
            Method::POST,
            "/auth/login",
            None,
            Some(json!({"email": email, "password": TEST_PASSWORD})),
        )
    };
    assert_eq!(login(new_email.clone()).await.status, 200);
    assert_eq!(login(account.email.clone()).await.status, 401);
}

/// The body of the log mailer's line for the email sent to `to`.
fn logged_body(app: &crate::helpers::TestApp, to: &str) -> Option<String> {
    app.logs.json_lines().iter().rev().find_map(|l| {
        let fields = if l["fields"].is_object() {
            &l["fields"]
        } else {
            l
        };
        (fields["to"] == to).then(|| fields["body"].as_str().map(str::to_string))?
    })
}

/// Item 9: with no mail provider, production writes emails to the log with their tokens
/// redacted; development keeps them (it is how a developer gets the link).
#[actix_web::test]
async fn the_log_mailer_redacts_tokens_in_production_only() {
    let production = spawn_app_with(
        |s| {
            s.server.mode = observe_core::config::Mode::Production;
            s.auth.secret_key = secrecy::SecretString::from("p".repeat(40));
            s.auth.cookie_secure = true;
            s.server.direct_connections = true;
        },
        None,
    )
    .await;
    let development = spawn_app_with(|_| {}, None).await;
    let mut bodies = Vec::new();
    for app in [&production, &development] {
        let account = register(app).await;
        let reply = call(
            app,
            Method::POST,
            "/auth/forgot-password",
            None,
            Some(json!({"email": account.email})),
        )
        .await;
        assert_eq!(reply.status, 202);
        assert!(
            eventually(10, || async { logged_body(app, &account.email).is_some() }).await,
            "no reset email in the log"
        );
        bodies.push(logged_body(app, &account.email).unwrap());
    }
    let token_after = |body: &str| -> String {
        let (_, rest) = body.split_once("/reset-password?token=").unwrap();
        rest.chars().take_while(|c| !c.is_whitespace()).collect()
    };
    assert_eq!(
        token_after(&bodies[0]),
        "[redacted]",
        "production logged the reset token: {}",
        bodies[0]
    );
    let kept = token_after(&bodies[1]);
    assert_eq!(kept.len(), 43, "development keeps the link whole: {kept:?}");
}

/// Item 7: a reset link sent to the old address dies with the address: whoever still reads
/// the old mailbox must not take the account back after it moved.
#[actix_web::test]
async fn an_address_change_voids_reset_links_sent_to_the_old_address() {
    let fake = FakeResend::start(&[], 200).await;
    let app = spawn_app_with(towards(&fake, &api_key()), None).await;
    let account = register(&app).await;
    let old_link = reset_link(&app, &fake, &account.email).await;

    let new_email = format!("moved-{}@example.com", uuid::Uuid::new_v4().simple());
    let reply = call(
        &app,
        Method::POST,
        "/auth/change-email",
        Some(&account.token),
        Some(json!({"new_email": new_email, "password": TEST_PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert!(
        eventually(10, || async { token_sent_to(&fake, &new_email).is_some() }).await,
        "no confirmation email arrived"
    );
    let confirm = token_sent_to(&fake, &new_email).unwrap();
    let reply = call(
        &app,
        Method::POST,
        "/auth/confirm-email",
        None,
        Some(json!({"token": confirm})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let reply = call(
        &app,
        Method::POST,
        "/auth/reset-password",
        None,
        Some(json!({"token": old_link, "new_password": "taken back by the old mailbox"})),
    )
    .await;
    assert_eq!(
        reply.status, 400,
        "a reset link sent to the old address still works after the move: {}",
        reply.text
    );
    assert_eq!(reply.json()["error"]["code"], "invalid_token");
}

/// Item 7: a change of address asked for while a takeover of the account is committing (its
/// row locked, its sessions revoked and links spent, not yet committed) must not leave a link
/// that escaped the purge: the link is stored under the account's row lock and only while the
/// asking session still stands.
#[actix_web::test]
async fn an_email_change_racing_a_takeover_leaves_no_live_link() {
    let app = spawn_app_with(|_| {}, None).await;
    let account = register(&app).await;
    let db = app.state.db.get().await.unwrap();
    let user_id: uuid::Uuid = db
        .query_one("SELECT id FROM users WHERE email = $1", &[&account.email])
        .await
        .unwrap()
        .get(0);
    // The takeover, as `accounts::claim_unverified` and the callback run it, held open.
    let (mut takeover, connection) = tokio_postgres::connect(&app.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    let tx = takeover.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "UPDATE users SET password_hash = NULL, email_verified = true,
                          credentials_changed_at = now() WHERE id = '{user_id}';
         UPDATE sessions SET revoked_at = now() WHERE user_id = '{user_id}';
         UPDATE user_tokens SET used_at = now() WHERE user_id = '{user_id}' AND used_at IS NULL;"
    ))
    .await
    .unwrap();

    let new_email = format!("squatter-{}@example.net", uuid::Uuid::new_v4().simple());
    let token = account.token.clone();
    let address = app.address.clone();
    let change = actix_web::rt::spawn(async move {
        let client = awc::Client::default();
        let reply = crate::helpers::send(
            client
                .post(format!("{address}/auth/change-email"))
                .insert_header(("Authorization", format!("Bearer {token}")))
                .insert_header(("content-type", "application/json")),
            Some(
                json!({"new_email": new_email, "password": TEST_PASSWORD})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
        reply.status
    });
    // Until the request waits on the account's row lock, or has answered without waiting.
    let waiting = eventually(10, || async {
        change.is_finished()
            || db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                > 0
    })
    .await;
    assert!(waiting, "the change neither waited nor answered");
    tx.commit().await.unwrap();
    let status = change.await.unwrap();

    let live: i64 = db
        .query_one(
            "SELECT count(*) FROM user_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.user_id = $1 AND t.used_at IS NULL
               AND t.created_at > u.credentials_changed_at",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        live, 0,
        "the change-email link escaped the takeover (the request answered {status})"
    );
    assert_ne!(
        status, 202,
        "the change was accepted for a taken-over account"
    );
}

/// Item 3: a reset with a token that is no good is refused before any password is hashed, so
/// garbage tokens cannot keep the hashing slots (and the cores behind them) busy.
#[actix_web::test]
async fn a_reset_with_a_bad_token_hashes_nothing() {
    let app = spawn_app_with(|_| {}, None).await;
    let before = app.state.passwords.computed();
    for token in ["made-up-token", &"A".repeat(43)] {
        let reply = call(
            &app,
            Method::POST,
            "/auth/reset-password",
            None,
            Some(json!({"token": token, "new_password": "a long enough password"})),
        )
        .await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.json()["error"]["code"], "invalid_token");
    }
    assert_eq!(
        app.state.passwords.computed(),
        before,
        "a password was hashed for a token that was no good"
    );
}
