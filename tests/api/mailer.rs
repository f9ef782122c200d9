//! Mailer end to end: outbox rows reach a local fake Resend (real HTTP, started by each test)
//! with the right JSON and key, retryable failures come back with backoff until sent or out of
//! attempts, refusals fail at once, the log provider writes the email to the log, rows survive
//! a Mailer that was not running, the drain sends what is due, and two deliverers never send
//! one row twice. The API key never reaches the logs.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse};
use observe_actors::mailer::{self, Mailer};
use observe_actors::Supervised;
use observe_core::config::Settings;
use observe_core::mail::{self, Email};
use observe_core::outbox::{self, OutboxRow, Status};
use secrecy::SecretString;
use uuid::Uuid;

use crate::helpers::{eventually, metric_value, spawn_app_with, TestApp};

/// One request the fake Resend received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) at: Instant,
    pub(crate) authorization: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) content_type: Option<String>,
    /// W3C trace context, sent when observe exports traces.
    pub(crate) traceparent: Option<String>,
    pub(crate) body: serde_json::Value,
}

#[derive(Default)]
struct FakeState {
    /// Statuses for the first requests, in order; then `then`.
    script: VecDeque<u16>,
    then: u16,
    /// Time taken before each answer.
    delay: Duration,
    received: Vec<Received>,
}

/// A stand-in for `POST /emails` of the Resend API on 127.0.0.1.
pub(crate) struct FakeResend {
    pub(crate) url: String,
    state: Arc<Mutex<FakeState>>,
    server: ServerHandle,
}

impl FakeResend {
    /// Answers the first requests with `script`, then every other one with `then`.
    pub(crate) async fn start(script: &[u16], then: u16) -> Self {
        Self::start_with_delay(script, then, Duration::ZERO).await
    }

    async fn start_with_delay(script: &[u16], then: u16, delay: Duration) -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            script: script.iter().copied().collect(),
            then,
            delay,
            received: Vec::new(),
        }));
        let data = web::Data::from(state.clone());
        let (url, handle) = crate::support::serve!("the fake Resend", move || {
            App::new()
                .app_data(data.clone())
                .route("/emails", web::post().to(fake_emails))
        });
        Self {
            url,
            state,
            server: handle,
        }
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub(crate) async fn stop(self) {
        self.server.stop(false).await;
    }
}

async fn fake_emails(
    state: web::Data<Mutex<FakeState>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, n, delay) = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            at: Instant::now(),
            authorization: header("authorization"),
            idempotency_key: header("idempotency-key"),
            content_type: header("content-type"),
            traceparent: header("traceparent"),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        });
        let status = s.script.pop_front().unwrap_or(s.then);
        (status, s.received.len(), s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let code = actix_web::http::StatusCode::from_u16(status).unwrap();
    match status {
        200 => HttpResponse::Ok().json(serde_json::json!({ "id": format!("fake-msg-{n}") })),
        422 => HttpResponse::build(code).json(serde_json::json!({
            "statusCode": 422,
            "name": "validation_error",
            "message": "Invalid `to` field. The email address needs to follow the `email@example.com` format.",
        })),
        _ => HttpResponse::build(code).json(serde_json::json!({
            "statusCode": status,
            "name": "internal_server_error",
            "message": "Something went wrong.",
        })),
    }
}

/// A distinct, recognisable API key for one test.
pub(crate) fn api_key() -> String {
    format!("re_test_{}", Uuid::new_v4().simple())
}

/// Settings pointing at `fake` with `key`, retries and polls every second.
pub(crate) fn towards(fake: &FakeResend, key: &str) -> impl FnOnce(&mut Settings) {
    let url = fake.url.clone();
    let key = key.to_string();
    move |s: &mut Settings| {
        s.resend.base_url = url;
        s.resend.api_key = SecretString::from(key);
        s.resend.from_email = "observe tests <tests@observe.invalid>".into();
        s.mail.retry_base_secs = 1;
        s.mail.poll_interval_secs = 1;
    }
}

fn start_mailer(app: &TestApp) -> Supervised<Mailer> {
    mailer::start(
        &app.state.supervisor,
        &Arbiter::current(),
        app.state.settings.clone(),
        app.state.db.clone(),
    )
}

/// A password-reset email to a unique address, with a unique link.
fn reset_email() -> (Email, String) {
    let token = Uuid::new_v4().simple().to_string();
    let link = format!("http://localhost:3000/reset-password?token={token}");
    let to = format!("user-{}@example.com", &token[..8]);
    (mail::password_reset(&to, "Ada <Lovelace>", &link, 60), link)
}

/// Enqueues `email` in a transaction of its own, as a route does with its token row.
async fn enqueue(app: &TestApp, email: &Email) -> Uuid {
    let mut conn = app.state.db.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let id = outbox::enqueue(&tx, email).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn row(app: &TestApp, id: Uuid) -> OutboxRow {
    let conn = app.state.db.get().await.unwrap();
    outbox::get(&conn, id).await.unwrap().expect("outbox row")
}

async fn status_becomes(app: &TestApp, id: Uuid, status: Status, secs: u64) -> bool {
    eventually(secs, || async { row(app, id).await.status == status }).await
}

#[actix_web::test]
async fn an_enqueued_email_reaches_resend_with_its_json_and_key_and_is_marked_sent() {
    let fake = FakeResend::start(&[], 200).await;
    let key = api_key();
    let app = spawn_app_with(towards(&fake, &key), None).await;
    let mailer = start_mailer(&app);

    let (email, link) = reset_email();
    let id = enqueue(&app, &email).await;
    let pending = row(&app, id).await;
    assert_eq!(pending.kind, "password_reset");
    assert_eq!(pending.to_address, email.to);
    mailer::deliver_soon(&mailer, id);

    assert!(status_becomes(&app, id, Status::Sent, 15).await, "sent");
    let sent = row(&app, id).await;
    assert_eq!(sent.provider.as_deref(), Some("resend"));
    assert_eq!(sent.provider_message_id.as_deref(), Some("fake-msg-1"));
    assert_eq!(sent.attempts, 1);
    assert!(sent.sent_at.is_some());
    assert!(sent.last_error.is_none());

    let received = fake.received();
    assert_eq!(received.len(), 1, "sent once");
    let req = &received[0];
    assert_eq!(
        req.authorization.as_deref(),
        Some(&*format!("Bearer {key}"))
    );
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        req.idempotency_key.as_deref(),
        Some(&*format!("observe-email/{id}"))
    );
    assert_eq!(
        req.body,
        serde_json::json!({
            "from": "observe tests <tests@observe.invalid>",
            "to": [email.to],
            "subject": "Reset your observe password",
            "text": email.text,
            "html": email.html,
        })
    );
    let text = req.body["text"].as_str().unwrap();
    assert!(text.contains(&link), "{text}");
    assert!(text.contains("Ada <Lovelace>"), "plain text stays plain");
    let html = req.body["html"].as_str().unwrap();
    assert!(html.contains("Ada &lt;Lovelace&gt;"), "{html}");

    let logs = app.logs.contents();
    assert!(!logs.contains(&key), "the API key never reaches the logs");
    assert!(
        !logs.contains(&link),
        "Resend emails are not written to the log"
    );
    fake.stop().await;
}

#[actix_web::test]
async fn server_errors_are_retried_with_backoff_until_the_email_is_sent() {
    let fake = FakeResend::start(&[500, 503], 200).await;
    let key = api_key();
    let app = spawn_app_with(towards(&fake, &key), None).await;
    let mailer = start_mailer(&app);

    let (email, _) = reset_email();
    let id = enqueue(&app, &email).await;
    mailer::deliver_soon(&mailer, id);

    assert!(
        eventually(15, || async {
            let r = row(&app, id).await;
            r.status == Status::Pending
                && r.attempts >= 1
                && r.last_error.as_deref().is_some_and(|e| e.contains("50"))
        })
        .await,
        "a failed attempt leaves the row pending with its error"
    );
    assert!(
        status_becomes(&app, id, Status::Sent, 30).await,
        "sent at last"
    );
    let sent = row(&app, id).await;
    assert_eq!(sent.attempts, 3, "two failures, then success");
    assert_eq!(sent.provider_message_id.as_deref(), Some("fake-msg-3"));
    // `/metrics` counts each attempt by outcome, and the backlog empties with the next pass.
    let (_, text) = app.get_text("/metrics").await;
    assert_eq!(
        metric_value(&text, r#"observe_mail_deliveries_total{outcome="retry"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&text, r#"observe_mail_deliveries_total{outcome="sent"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, r#"observe_mail_deliveries_total{outcome="failed"}"#),
        Some(0.0)
    );
    assert!(
        eventually(10, || async {
            let (_, text) = app.get_text("/metrics").await;
            metric_value(&text, "observe_mail_outbox_pending") == Some(0.0)
        })
        .await,
        "the outbox backlog is 0 once the email is sent"
    );

    let received = fake.received();
    assert_eq!(received.len(), 3);
    let keys: HashSet<_> = received.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(
        keys.len(),
        1,
        "every retry carries the same idempotency key"
    );
    // retry_base_secs = 1: one second after the first failure, two after the second.
    let first_gap = received[1].at - received[0].at;
    let second_gap = received[2].at - received[1].at;
    assert!(first_gap >= Duration::from_millis(950), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(1950), "{second_gap:?}");

    let retries: Vec<_> = app
        .logs
        .json_lines()
        .into_iter()
        .filter(|l| {
            l["message"] == "email not sent; will retry" && l["outbox_id"] == id.to_string()
        })
        .collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert_eq!(retries[0]["retry_in_secs"], 1);
    assert_eq!(retries[1]["retry_in_secs"], 2);
    assert!(!app.logs.contents().contains(&key));
    fake.stop().await;
}

#[actix_web::test]
async fn a_refused_email_fails_at_once_and_is_never_retried() {
    let fake = FakeResend::start(&[], 422).await;
    let key = api_key();
    let app = spawn_app_with(towards(&fake, &key), None).await;
    let mailer = start_mailer(&app);

    let (email, link) = reset_email();
    let id = enqueue(&app, &email).await;
    mailer::deliver_soon(&mailer, id);

    assert!(status_becomes(&app, id, Status::Failed, 15).await, "failed");
    let failed = row(&app, id).await;
    assert_eq!(failed.attempts, 1, "no retry after a 422");
    let error = failed.last_error.clone().unwrap();
    assert!(error.contains("422"), "{error}");
    assert!(error.contains("validation_error"), "{error}");
    assert!(!error.contains(&link), "no body in errors");

    // A failed row is out of every deliverer's reach.
    let client = mail::http_client();
    let settings = app.state.settings.clone();
    let report = mail::deliver_due(&app.state.db, &client, &settings, 10)
        .await
        .unwrap();
    assert_eq!(report.claimed, 0);
    let again = mail::deliver_one(&app.state.db, &client, &settings, id)
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(fake.received().len(), 1);
    assert_eq!(row(&app, id).await.attempts, 1);

    let logs = app.logs.contents();
    assert!(!logs.contains(&key));
    assert!(!logs.contains(&link));
    fake.stop().await;
}

#[actix_web::test]
async fn an_email_the_provider_keeps_refusing_shows_in_the_outbox_backlog() {
    let fake = FakeResend::start(&[], 503).await;
    let key = api_key();
    let app = spawn_app_with(towards(&fake, &key), None).await;
    let _mailer = start_mailer(&app);
    let (email, _) = reset_email();
    let id = enqueue(&app, &email).await;
    // A pass after the first refused attempt finds the email still pending.
    assert!(
        eventually(15, || async {
            let (_, text) = app.get_text("/metrics").await;
            metric_value(&text, "observe_mail_outbox_pending") == Some(1.0)
                && metric_value(&text, r#"observe_mail_deliveries_total{outcome="retry"}"#)
                    .is_some_and(|n| n >= 1.0)
        })
        .await,
        "the refused email is counted as a retry and as the backlog"
    );
    assert_eq!(row(&app, id).await.status, Status::Pending);
    fake.stop().await;
}

#[actix_web::test]
async fn an_email_still_failing_after_max_attempts_is_failed() {
    let fake = FakeResend::start(&[], 500).await;
    let key = api_key();
    let towards = towards(&fake, &key);
    let app = spawn_app_with(
        |s| {
            towards(s);
            s.mail.max_attempts = 3;
        },
        None,
    )
    .await;
    let mailer = start_mailer(&app);

    let (email, _) = reset_email();
    let id = enqueue(&app, &email).await;
    mailer::deliver_soon(&mailer, id);

    assert!(status_becomes(&app, id, Status::Failed, 30).await, "failed");
    let failed = row(&app, id).await;
    assert_eq!(failed.attempts, 3);
    let error = failed.last_error.unwrap();
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert!(error.contains("500"), "{error}");
    assert_eq!(fake.received().len(), 3, "exactly max_attempts sends");

    let line = app
        .logs
        .json_lines()
        .into_iter()
        .find(|l| l["message"] == "email failed for good" && l["outbox_id"] == id.to_string())
        .expect("a log line for the failure");
    assert_eq!(line["attempts"], 3);
    assert!(!app.logs.contents().contains(&key));
    fake.stop().await;
}

#[actix_web::test]
async fn without_an_api_key_the_email_is_written_to_the_log_and_marked_sent() {
    let app = spawn_app_with(
        |s| {
            s.resend.api_key = SecretString::from(String::new());
            s.mail.poll_interval_secs = 1;
        },
        None,
    )
    .await;
    let mailer = start_mailer(&app);

    let (email, link) = reset_email();
    let id = enqueue(&app, &email).await;
    mailer::deliver_soon(&mailer, id);

    assert!(status_becomes(&app, id, Status::Sent, 15).await, "sent");
    let sent = row(&app, id).await;
    assert_eq!(sent.provider.as_deref(), Some("log"));
    assert_eq!(sent.provider_message_id, None);
    assert_eq!(sent.attempts, 1);

    let lines: Vec<_> = app
        .logs
        .json_lines()
        .into_iter()
        .filter(|l| {
            l["outbox_id"] == id.to_string()
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("email written to the log"))
        })
        .collect();
    assert_eq!(lines.len(), 1, "one line per email: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["to"], email.to);
    assert_eq!(line["subject"], "Reset your observe password");
    assert_eq!(line["kind"], "password_reset");
    let body = line["body"].as_str().unwrap();
    assert!(body.contains(&link), "a self-hoster reads the link: {body}");
    assert_eq!(line["level"], "INFO");
}

#[actix_web::test]
async fn rows_left_while_no_mailer_ran_are_delivered_by_a_mailer_started_later() {
    let fake = FakeResend::start(&[], 200).await;
    let key = api_key();
    let app = spawn_app_with(towards(&fake, &key), None).await;

    // Enqueued while no Mailer runs: its Deliver never came.
    let (fresh, _) = reset_email();
    let fresh = enqueue(&app, &fresh).await;
    // Claimed by a Mailer that died while sending: one attempt counted, lease run out.
    let (orphan, _) = reset_email();
    let orphan = enqueue(&app, &orphan).await;
    {
        let conn = app.state.db.get().await.unwrap();
        conn.execute(
            "UPDATE email_outbox SET attempts = 1, next_attempt_at = now() - interval '1 second' \
             WHERE id = $1",
            &[&orphan],
        )
        .await
        .unwrap();
    }

    // No Deliver message: the new Mailer's first pass finds both.
    let _mailer = start_mailer(&app);
    assert!(status_becomes(&app, fresh, Status::Sent, 15).await);
    assert!(status_becomes(&app, orphan, Status::Sent, 15).await);
    assert_eq!(row(&app, fresh).await.attempts, 1);
    assert_eq!(row(&app, orphan).await.attempts, 2);

    let keys: HashSet<_> = fake
        .received()
        .into_iter()
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert!(keys.contains(&format!("observe-email/{fresh}")));
    assert!(keys.contains(&format!("observe-email/{orphan}")));
    fake.stop().await;
}

#[actix_web::test]
async fn an_email_enqueued_in_a_rolled_back_transaction_never_exists() {
    let app = spawn_app_with(|_| {}, None).await;
    let (email, _) = reset_email();
    let mut conn = app.state.db.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let id = outbox::enqueue(&tx, &email).await.unwrap();
    assert!(outbox::get(&tx, id).await.unwrap().is_some());
    tx.rollback().await.unwrap();
    assert!(outbox::get(&conn, id).await.unwrap().is_none());
}

#[actix_web::test]
async fn the_drain_sends_what_is_due_before_replying() {
    let fake = FakeResend::start(&[], 200).await;
    let key = api_key();
    let towards = towards(&fake, &key);
    let app = spawn_app_with(
        |s| {
            towards(s);
            // No periodic pass during the test: only the first pass and the drain.
            s.mail.poll_interval_secs = 3600;
        },
        None,
    )
    .await;
    let _mailer = start_mailer(&app);

    let mut ids = Vec::new();
    for _ in 0..3 {
        let (email, _) = reset_email();
        ids.push(enqueue(&app, &email).await);
    }
    assert!(
        app.state
            .supervisor
            .drain_all(Duration::from_secs(20))
            .await,
        "drained within the timeout"
    );
    for id in ids {
        assert_eq!(row(&app, id).await.status, Status::Sent, "{id}");
    }
    assert!(app
        .logs
        .json_lines()
        .iter()
        .any(|l| l["message"] == "mailer drained"));
    fake.stop().await;
}

#[actix_web::test]
async fn two_deliverers_at_once_never_send_one_row_twice() {
    // Slow answers, so both deliverers are busy at the same time.
    let fake = FakeResend::start_with_delay(&[], 200, Duration::from_millis(150)).await;
    let key = api_key();
    let towards = towards(&fake, &key);
    let app = spawn_app_with(
        |s| {
            towards(s);
            // No periodic passes while the two deliverers below run.
            s.mail.poll_interval_secs = 3600;
        },
        None,
    )
    .await;

    let mut ids = Vec::new();
    for _ in 0..6 {
        let (email, _) = reset_email();
        ids.push(enqueue(&app, &email).await);
    }
    // Two instances sharing the database, each with its own client.
    let settings = app.state.settings.clone();
    let (a, b) = (mail::http_client(), mail::http_client());
    let (ra, rb) = futures_util::future::join(
        mail::deliver_due(&app.state.db, &a, &settings, 10),
        mail::deliver_due(&app.state.db, &b, &settings, 10),
    )
    .await;
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // The app's own Mailer is a third deliverer on the same rows (its start-up pass may take
    // some), so the two here claim at most all six; what matters is below: each row was
    // claimed once and sent once.
    assert!(ra.claimed + rb.claimed <= 6, "{ra:?} {rb:?}");
    assert!(ra.claimed + rb.claimed > 0, "{ra:?} {rb:?}");
    assert!(
        eventually(10, || async {
            let mut all_sent = true;
            for id in &ids {
                all_sent &= row(&app, *id).await.status == Status::Sent;
            }
            all_sent
        })
        .await
    );

    for id in &ids {
        let r = row(&app, *id).await;
        assert_eq!(r.status, Status::Sent);
        assert_eq!(r.attempts, 1, "claimed once");
    }
    let received = fake.received();
    assert_eq!(received.len(), 6, "one request per row");
    let keys: HashSet<_> = received.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), 6);
    fake.stop().await;
}
