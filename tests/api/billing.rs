//! Billing through Squad (issue 12) end to end, against a local fake Squad (real HTTP,
//! `support::squad`): checkout from initiate to the signed webhook and the raised tier; forged,
//! missing and replayed webhooks; renewals by `Billing::renew_due` with a `now` past the period
//! end (test settings run no jobs): success, failure → grace → downgrade with hobby limits
//! enforced, an answer lost between recording the charge and Squad's reply, cancellation,
//! concurrent runs and two instances; owners only; billing without Squad keys; the card token
//! kept out of answers, logs and the database's plain text.

use std::time::Duration;

use awc::http::Method;
use chrono::{DateTime, Utc};
use observe_core::config::Settings;
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    call, create_project, ingest, login_from, register, sdk, send, spawn_app_with, Account, Reply,
    Sdk, TestApp, TEST_PASSWORD,
};
use crate::support::squad::{Charge, FakeSquad, Signature, Webhook};

// --- Setup ---

/// Settings pointing observe at `squad`, with its secret key (billing enabled).
pub(crate) fn towards(squad: &FakeSquad) -> impl FnOnce(&mut Settings) + Clone {
    let url = squad.url.clone();
    let secret = squad.secret.clone();
    move |s: &mut Settings| {
        s.squad.base_url = url;
        s.squad.secret_key = SecretString::from(secret);
    }
}

/// A fake Squad and an app billing through it.
async fn billed_app() -> (TestApp, FakeSquad) {
    let squad = FakeSquad::start().await;
    let app = spawn_app_with(towards(&squad), None).await;
    (app, squad)
}

/// A card token recognisable in any text it leaks into.
fn card_token() -> String {
    format!("AUTH_tok_{}", Uuid::new_v4().simple())
}

// --- The API, as a dashboard or Squad calls it ---

async fn initiate(app: &TestApp, account: &Account, plan: &str) -> Reply {
    call(
        app,
        Method::POST,
        "/billing/initiate",
        Some(&account.token),
        Some(json!({ "plan": plan })),
    )
    .await
}

/// Starts a checkout of `plan`, asserting 200; returns its reference.
async fn checkout(app: &TestApp, account: &Account, plan: &str) -> String {
    let reply = initiate(app, account, plan).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["reference"]
        .as_str()
        .expect("reference")
        .to_string()
}

async fn cancel(app: &TestApp, account: &Account) -> Reply {
    call(
        app,
        Method::POST,
        "/billing/cancel",
        Some(&account.token),
        None,
    )
    .await
}

/// `GET /billing/subscription`, asserting 200.
async fn subscription(app: &TestApp, account: &Account) -> Value {
    let reply = call(
        app,
        Method::GET,
        "/billing/subscription",
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()
}

/// `GET /billing/events{query}`, asserting 200.
async fn billing_events(app: &TestApp, account: &Account, query: &str) -> Value {
    let reply = call(
        app,
        Method::GET,
        &format!("/billing/events{query}"),
        Some(&account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()
}

/// The kinds of the organisation's billing events, newest first (first page of 100).
async fn event_kinds(app: &TestApp, account: &Account) -> Vec<String> {
    billing_events(app, account, "?limit=100").await["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_string())
        .collect()
}

fn count_of(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Sends `webhook` to `POST /billing/webhook` as Squad would.
async fn deliver(app: &TestApp, webhook: &Webhook) -> Reply {
    let mut req = app
        .req(Method::POST, "/billing/webhook")
        .insert_header(("content-type", "application/json"));
    if let Some(signature) = &webhook.signature {
        req = req.insert_header(("x-squad-encrypted-body", signature.clone()));
    }
    send(req, Some(webhook.body.clone())).await
}

/// Squad's signed `charge_successful` for `reference`, delivered.
pub(crate) async fn deliver_webhook(app: &TestApp, squad: &FakeSquad, reference: &str) -> Reply {
    deliver(app, &squad.webhook(reference, Signature::Squad)).await
}

/// Checkout of `plan` paid with `token` and confirmed by the webhook; returns the reference.
async fn subscribe(
    app: &TestApp,
    squad: &FakeSquad,
    account: &Account,
    plan: &str,
    token: &str,
) -> String {
    let reference = checkout(app, account, plan).await;
    squad.pay(&reference, token);
    let reply = deliver_webhook(app, squad, &reference).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"received": true}));
    reference
}

/// Runs the renewals as the daily tick would at `now`.
async fn renew_due(app: &TestApp, now: DateTime<Utc>) -> observe_core::billing::Renewed {
    app.state
        .billing
        .as_ref()
        .expect("billing enabled")
        .renew_due(&awc::Client::default(), now)
        .await
        .expect("renew_due")
        // The emails it queued, for the Mailer: the tests read the outbox instead.
        .0
}

// --- Reading the database ---

async fn organisation_of(app: &TestApp, account: &Account) -> Uuid {
    let conn = app.state.db.get().await.unwrap();
    conn.query_one(
        "SELECT m.organisation_id FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE lower(u.email) = lower($1) AND m.role = 'owner'",
        &[&account.email],
    )
    .await
    .unwrap()
    .get(0)
}

/// `organisations.tier` of the account's organisation.
async fn tier_of(app: &TestApp, account: &Account) -> String {
    let organisation = organisation_of(app, account).await;
    let conn = app.state.db.get().await.unwrap();
    conn.query_one(
        "SELECT tier FROM organisations WHERE id = $1",
        &[&organisation],
    )
    .await
    .unwrap()
    .get(0)
}

/// Emails queued to `to` so far.
async fn emails_to(app: &TestApp, to: &str) -> i64 {
    let conn = app.state.db.get().await.unwrap();
    conn.query_one(
        "SELECT count(*) FROM email_outbox WHERE lower(to_address) = lower($1)",
        &[&to],
    )
    .await
    .unwrap()
    .get(0)
}

fn at(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}")))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// A day count past `from`.
fn days(from: DateTime<Utc>, n: i64) -> DateTime<Utc> {
    from + chrono::Duration::days(n)
}

/// Asserts `a` and `b` are the same instant, give or take the database's rounding.
fn assert_same_instant(a: DateTime<Utc>, b: DateTime<Utc>, what: &str) {
    assert!(
        (a - b).num_milliseconds().abs() < 1_000,
        "{what}: {a} is not {b}"
    );
}

/// A period of one month (28 to 31 days).
fn assert_one_month(start: DateTime<Utc>, end: DateTime<Utc>) {
    let length = (end - start).num_hours();
    assert!(
        (28 * 24..=31 * 24).contains(&length),
        "a period of {length} hours from {start} to {end} is not a month"
    );
}

fn page_views(n: usize, tag: &str) -> Value {
    json!({"batch": (0..n).map(|i| json!({
        "event": "page_view",
        "visitor_id": format!("{tag}-{i}"),
        "url": "https://shop.example/a",
    })).collect::<Vec<_>>()})
}

/// Sends `n` page views with `key`; returns the status and the `x-ratelimit-limit` header.
async fn send_events(app: &TestApp, key: &str, n: usize, tag: &str) -> (u16, Option<String>) {
    let reply = ingest(app, key, "events", page_views(n, tag)).await;
    (reply.status, reply.header("x-ratelimit-limit"))
}

/// Creates a monitor in `project` every `interval` seconds, asserting 201; returns its id.
async fn create_monitor(
    app: &TestApp,
    account: &Account,
    project: &str,
    name: &str,
    interval: u32,
) -> String {
    let reply = call(
        app,
        Method::POST,
        &format!("/projects/{project}/monitors"),
        Some(&account.token),
        Some(json!({"name": name, "url": "http://e.com", "interval_seconds": interval})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()["id"].as_str().expect("id").to_string()
}

/// `(paused, interval_seconds)` of every monitor of `project`, oldest first.
async fn monitors_of(app: &TestApp, project: &str) -> Vec<(String, bool, i32)> {
    let conn = app.state.db.get().await.unwrap();
    let project: Uuid = project.parse().unwrap();
    conn.query(
        "SELECT id, paused, interval_seconds FROM monitors WHERE project_id = $1
         ORDER BY created_at, id",
        &[&project],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<_, Uuid>(0).to_string(), r.get(1), r.get(2)))
    .collect()
}

/// A second user who is a `member` (not owner) of `owner`'s organisation, signed in to it.
/// No route adds members yet: the membership is written straight into the database, and the
/// user's own organisation removed so that signing in lands in the owner's.
async fn member_of(app: &TestApp, owner: &Account) -> Account {
    let organisation = organisation_of(app, owner).await;
    let member = register(app).await;
    let conn = app.state.db.get().await.unwrap();
    let user: Uuid = conn
        .query_one(
            "SELECT id FROM users WHERE lower(email) = lower($1)",
            &[&member.email],
        )
        .await
        .unwrap()
        .get(0);
    conn.execute(
        "DELETE FROM organisations WHERE id IN
             (SELECT organisation_id FROM memberships WHERE user_id = $1)",
        &[&user],
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO memberships (organisation_id, user_id, role) VALUES ($1, $2, 'member')",
        &[&organisation, &user],
    )
    .await
    .unwrap();
    let reply = login_from(app, &member.email, TEST_PASSWORD, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    Account {
        email: member.email,
        token: reply.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
        refresh: String::new(),
    }
}

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], code, "{}", reply.text);
    assert!(
        reply.json()["error"]["request_id"].is_string(),
        "{}",
        reply.text
    );
}

// --- Checkout and webhooks ---

#[actix_web::test]
async fn a_paid_checkout_confirmed_by_the_webhook_upgrades_the_tier_and_its_rate_limit_at_once() {
    let (app, squad) = billed_app().await;
    let Sdk { account, key, .. } = sdk(&app).await;
    let token = card_token();

    // Hobby: a batch of 101 events is over the 100 a minute, and refused whole. This also
    // puts the key (and its tier) in the cache.
    assert_eq!(
        send_events(&app, &key, 101, "before").await,
        (429, Some("100".into()))
    );
    let view = subscription(&app, &account).await;
    assert_eq!(view["plan"], "hobby");
    assert_eq!(view["state"], "none");
    assert_eq!(view["card"], Value::Null);

    let reply = initiate(&app, &account, "pro").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let started = reply.json();
    let reference = started["reference"]
        .as_str()
        .expect("reference")
        .to_string();
    let pro_amount = app.state.settings.billing.pro_amount;
    assert_eq!(started["plan"], "pro");
    assert_eq!(started["amount"], json!(pro_amount));
    assert_eq!(
        started["checkout_url"],
        format!("https://sandbox-pay.squadco.com/{reference}")
    );
    // What observe asked Squad for.
    let asked = squad.received_at("/transaction/initiate");
    assert_eq!(asked.len(), 1);
    let asked = &asked[0];
    assert_eq!(
        asked.authorization.as_deref(),
        Some(format!("Bearer {}", squad.secret).as_str())
    );
    assert_eq!(asked.body["amount"], json!(pro_amount));
    assert_eq!(asked.body["email"], account.email.as_str());
    assert_eq!(asked.body["currency"], "NGN");
    assert_eq!(asked.body["initiate_type"], "inline");
    assert_eq!(asked.body["transaction_ref"], reference.as_str());
    assert_eq!(asked.body["is_recurring"], true);
    assert!(
        asked.body["callback_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/billing")),
        "{}",
        asked.body
    );
    // Nothing granted yet: a checkout is only a promise.
    assert_eq!(tier_of(&app, &account).await, "hobby");
    assert_eq!(subscription(&app, &account).await["state"], "none");

    squad.pay(&reference, &token);
    let receipts_before = emails_to(&app, &account.email).await;
    let paid_at = Utc::now();
    let reply = deliver_webhook(&app, &squad, &reference).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"received": true}));
    assert!(
        squad.verifications_of(&reference) >= 1,
        "granted without asking Squad's verify"
    );

    assert_eq!(tier_of(&app, &account).await, "pro");
    let view = subscription(&app, &account).await;
    assert_eq!(view["plan"], "pro");
    assert_eq!(view["state"], "active");
    assert_eq!(view["amount"], json!(pro_amount));
    assert_eq!(view["cancel_at_period_end"], false);
    assert_eq!(view["grace_until"], Value::Null);
    assert_eq!(view["card"], json!({"last4": "4081", "brand": "visa"}));
    let (start, end) = (
        at(&view["current_period_start"]),
        at(&view["current_period_end"]),
    );
    assert!(
        (start - paid_at).num_seconds().abs() < 30,
        "{start} vs {paid_at}"
    );
    assert_one_month(start, end);
    assert_eq!(
        emails_to(&app, &account.email).await,
        receipts_before + 1,
        "a receipt to the owner"
    );

    // Pro: the next requests of the same key have 1,000 a minute.
    assert_eq!(
        send_events(&app, &key, 101, "after").await,
        (202, Some("1000".into()))
    );
    assert_eq!(
        send_events(&app, &key, 150, "after-2").await,
        (202, Some("1000".into()))
    );

    let events = billing_events(&app, &account, "").await;
    let items = events["items"].as_array().expect("items");
    let kinds: Vec<&str> = items.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["payment_succeeded", "checkout_started"]);
    for item in items {
        assert_eq!(item["reference"], reference.as_str());
        assert_eq!(item["plan"], "pro");
        assert_eq!(item["amount"], json!(pro_amount));
        assert!(
            item["id"].is_string() && item["created_at"].is_string(),
            "{item}"
        );
    }
    assert_eq!(events["next_cursor"], Value::Null);
}

#[actix_web::test]
async fn a_team_checkout_charges_the_team_amount_and_an_unknown_plan_is_refused() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;

    // The contract: anything but "pro" or "team" is a 422 naming `plan`.
    let mut named = Vec::new();
    for body in [
        json!({"plan": "enterprise"}),
        json!({"plan": "hobby"}),
        json!({"plan": "PRO"}),
        json!({"plan": null}),
        json!({"plan": 3}),
        json!({}),
    ] {
        let reply = call(
            &app,
            Method::POST,
            "/billing/initiate",
            Some(&account.token),
            Some(body.clone()),
        )
        .await;
        assert_error(&reply, 422, "validation_failed");
        let fields: Vec<String> = reply.json()["error"]["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|d| d["field"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        named.push((body, fields));
    }
    assert!(
        named.iter().all(|(_, fields)| fields == &["plan"]),
        "each refusal names `plan`: {named:?}"
    );
    assert!(
        squad.received().is_empty(),
        "Squad called for a refused plan"
    );

    let reference = subscribe(&app, &squad, &account, "team", &card_token()).await;
    let team_amount = app.state.settings.billing.team_amount;
    assert_eq!(
        squad.transaction(&reference).unwrap().amount,
        team_amount as i64
    );
    assert_eq!(tier_of(&app, &account).await, "team");
    let view = subscription(&app, &account).await;
    assert_eq!(view["plan"], "team");
    assert_eq!(view["amount"], json!(team_amount));
}

#[actix_web::test]
async fn squad_failing_at_checkout_is_a_502_and_grants_nothing() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    squad.fail_initiate(500);
    let reply = initiate(&app, &account, "pro").await;
    assert_error(&reply, 502, "payment_provider_error");
    assert!(
        !reply.text.contains(&squad.secret),
        "the secret key in an answer"
    );
    assert_eq!(tier_of(&app, &account).await, "hobby");
    assert_eq!(subscription(&app, &account).await["state"], "none");
}

#[actix_web::test]
async fn a_forged_or_missing_signature_is_refused_and_changes_nothing() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let reference = checkout(&app, &account, "pro").await;
    squad.pay(&reference, &card_token());
    let kinds_before = event_kinds(&app, &account).await;

    for signature in [
        Signature::WrongKey,
        Signature::OtherBody,
        Signature::Missing,
    ] {
        let reply = deliver(&app, &squad.webhook(&reference, signature)).await;
        assert_error(&reply, 401, "invalid_signature");
    }
    // A right signature over a body changed after signing (a bigger amount, say).
    let signed = squad.webhook(&reference, Signature::Squad);
    let mut body: Value = serde_json::from_slice(&signed.body).unwrap();
    body["Body"]["amount"] = json!(1);
    let tampered = Webhook {
        body: serde_json::to_vec(&body).unwrap(),
        signature: signed.signature.clone(),
    };
    assert_error(&deliver(&app, &tampered).await, 401, "invalid_signature");
    // Not hex at all.
    let garbage = Webhook {
        body: signed.body.clone(),
        signature: Some("not-a-signature".into()),
    };
    assert_error(&deliver(&app, &garbage).await, 401, "invalid_signature");

    assert_eq!(tier_of(&app, &account).await, "hobby");
    assert_eq!(subscription(&app, &account).await["state"], "none");
    assert_eq!(event_kinds(&app, &account).await, kinds_before);
    assert_eq!(
        squad.verifications_of(&reference),
        0,
        "an unsigned webhook reached Squad"
    );

    // Squad's own signature is accepted in either case of hex.
    let reply = deliver(&app, &squad.webhook(&reference, Signature::Lowercase)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(tier_of(&app, &account).await, "pro");
}

#[actix_web::test]
async fn a_replayed_webhook_changes_nothing() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let reference = subscribe(&app, &squad, &account, "pro", &card_token()).await;
    let first = subscription(&app, &account).await;
    let kinds = event_kinds(&app, &account).await;
    let emails = emails_to(&app, &account.email).await;

    for _ in 0..3 {
        let reply = deliver_webhook(&app, &squad, &reference).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json(), json!({"received": true}));
    }
    // Concurrent deliveries of one event (Squad retries while the first is in flight).
    let replies =
        futures_util::future::join_all((0..4).map(|_| deliver_webhook(&app, &squad, &reference)))
            .await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
    }

    let again = subscription(&app, &account).await;
    assert_eq!(
        again["current_period_end"], first["current_period_end"],
        "a replay extended the period"
    );
    assert_eq!(again, first);
    assert_eq!(event_kinds(&app, &account).await, kinds);
    assert_eq!(
        emails_to(&app, &account.email).await,
        emails,
        "a replay sent another receipt"
    );
}

#[actix_web::test]
async fn a_webhook_is_granted_only_what_squad_confirms() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;

    // Signed, but Squad's verify says the checkout is still pending (not paid).
    let pending = checkout(&app, &account, "pro").await;
    let unpaid = squad.webhook(&pending, Signature::Squad);
    let mut body: Value = serde_json::from_slice(&unpaid.body).unwrap();
    body["Body"]["transaction_status"] = json!("Success");
    let claimed = squad.signed(serde_json::to_vec(&body).unwrap(), Signature::Squad);
    let reply = deliver(&app, &claimed).await;
    assert!(reply.status < 500, "{}", reply.text);
    assert!(squad.verifications_of(&pending) >= 1, "verify not asked");
    assert_eq!(tier_of(&app, &account).await, "hobby");

    // Squad says it failed.
    let failed = checkout(&app, &account, "pro").await;
    squad.fail(&failed);
    let mut body: Value =
        serde_json::from_slice(&squad.webhook(&failed, Signature::Squad).body).unwrap();
    body["Body"]["transaction_status"] = json!("Success");
    let reply = deliver(
        &app,
        &squad.signed(serde_json::to_vec(&body).unwrap(), Signature::Squad),
    )
    .await;
    assert!(reply.status < 500, "{}", reply.text);
    assert_eq!(tier_of(&app, &account).await, "hobby");

    // Paid, but less than the plan's price.
    let short = checkout(&app, &account, "pro").await;
    squad.pay(&short, &card_token());
    squad.set_amount(&short, 100);
    let reply = deliver_webhook(&app, &squad, &short).await;
    assert!(reply.status < 500, "{}", reply.text);
    assert_eq!(tier_of(&app, &account).await, "hobby");

    // A reference observe never issued, and another event: received, ignored.
    let reply = deliver(
        &app,
        &squad.signed(
            serde_json::to_vec(&json!({
                "Event": "charge_successful",
                "TransactionRef": "never-issued",
                "Body": {"amount": 500000, "transaction_ref": "never-issued",
                         "transaction_status": "Success"}
            }))
            .unwrap(),
            Signature::Squad,
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"received": true}));
    let paid = checkout(&app, &account, "pro").await;
    squad.pay(&paid, &card_token());
    let mut other: Value =
        serde_json::from_slice(&squad.webhook(&paid, Signature::Squad).body).unwrap();
    other["Event"] = json!("refund_processed");
    let reply = deliver(
        &app,
        &squad.signed(serde_json::to_vec(&other).unwrap(), Signature::Squad),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"received": true}));

    assert_eq!(tier_of(&app, &account).await, "hobby");
    assert_eq!(subscription(&app, &account).await["state"], "none");
    let kinds = event_kinds(&app, &account).await;
    assert_eq!(count_of(&kinds, "payment_succeeded"), 0, "{kinds:?}");

    // The real notification of the paid one still works afterwards.
    assert_eq!(deliver_webhook(&app, &squad, &paid).await.status, 200);
    assert_eq!(tier_of(&app, &account).await, "pro");
}

#[actix_web::test]
async fn a_second_payment_while_active_extends_from_the_period_end() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let token = card_token();
    subscribe(&app, &squad, &account, "pro", &token).await;
    let first = subscription(&app, &account).await;
    subscribe(&app, &squad, &account, "pro", &token).await;
    let second = subscription(&app, &account).await;
    assert_eq!(second["state"], "active");
    assert_one_month(
        at(&first["current_period_end"]),
        at(&second["current_period_end"]),
    );
    let kinds = event_kinds(&app, &account).await;
    assert_eq!(count_of(&kinds, "payment_succeeded"), 2, "{kinds:?}");
}

// --- Renewals ---

#[actix_web::test]
async fn a_due_subscription_is_renewed_with_the_saved_card_and_extended_a_month() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let token = card_token();
    let checkout_ref = subscribe(&app, &squad, &account, "pro", &token).await;
    let before = subscription(&app, &account).await;
    let end = at(&before["current_period_end"]);

    // Not due yet: nothing happens.
    let ran = renew_due(&app, Utc::now()).await;
    assert_eq!(
        (ran.charged, ran.failed, ran.downgraded, ran.ended),
        (0, 0, 0, 0)
    );
    assert!(squad.charges().is_empty());

    let emails = emails_to(&app, &account.email).await;
    let now = days(Utc::now(), 31);
    let ran = renew_due(&app, now).await;
    assert_eq!(
        (ran.charged, ran.failed, ran.downgraded, ran.ended),
        (1, 0, 0, 0)
    );

    let charges = squad.charges();
    assert_eq!(charges.len(), 1);
    let charge = &charges[0];
    assert_eq!(
        charge.authorization.as_deref(),
        Some(format!("Bearer {}", squad.secret).as_str())
    );
    assert_eq!(charge.body["token_id"], token.as_str(), "the saved card");
    assert_eq!(
        charge.body["amount"],
        json!(app.state.settings.billing.pro_amount)
    );
    let renewal_ref = charge.body["transaction_ref"].as_str().unwrap().to_string();
    assert_ne!(renewal_ref, checkout_ref, "a renewal has its own reference");

    let after = subscription(&app, &account).await;
    assert_eq!(after["state"], "active");
    assert_eq!(after["plan"], "pro");
    assert_same_instant(
        at(&after["current_period_start"]),
        end,
        "the new period starts where the last ended",
    );
    assert_one_month(end, at(&after["current_period_end"]));
    assert_eq!(tier_of(&app, &account).await, "pro");
    assert_eq!(
        emails_to(&app, &account.email).await,
        emails + 1,
        "a receipt"
    );
    let events = billing_events(&app, &account, "?limit=1").await;
    assert_eq!(events["items"][0]["kind"], "renewal_succeeded");
    assert_eq!(events["items"][0]["reference"], renewal_ref.as_str());

    // The same day again: renewed already, nothing due.
    let ran = renew_due(&app, now).await;
    assert_eq!(ran.charged, 0);
    assert_eq!(squad.charges().len(), 1);
}

#[actix_web::test]
async fn a_failed_renewal_enters_grace_retries_daily_then_downgrades_with_monitors_paused() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "shop").await;
    subscribe(&app, &squad, &account, "pro", &card_token()).await;
    // Pro: seven monitors, one a minute.
    for n in 0..7 {
        create_monitor(&app, &account, &project, &format!("m{n}"), 60).await;
    }
    let grace_days = i64::from(app.state.settings.billing.grace_days);
    assert_eq!(grace_days, 3, "the default grace period");
    squad.decline_charges();

    // First failure: grace, still on the plan, an email.
    let first = days(Utc::now(), 32);
    let emails = emails_to(&app, &account.email).await;
    let ran = renew_due(&app, first).await;
    assert_eq!((ran.charged, ran.failed, ran.downgraded), (0, 1, 0));
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "grace");
    let grace_until = at(&view["grace_until"]);
    assert_same_instant(grace_until, days(first, grace_days), "grace_until");
    assert_eq!(tier_of(&app, &account).await, "pro", "grace keeps the plan");
    assert_eq!(emails_to(&app, &account.email).await, emails + 1);

    // Retried the next day: another failure, another email, same grace.
    let ran = renew_due(&app, days(first, 1)).await;
    assert_eq!((ran.charged, ran.failed, ran.downgraded), (0, 1, 0));
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "grace");
    assert_same_instant(at(&view["grace_until"]), grace_until, "grace_until kept");
    assert_eq!(emails_to(&app, &account.email).await, emails + 2);
    assert_eq!(squad.charges().len(), 2);
    assert_eq!(
        squad.charged_references().len(),
        2,
        "each attempt is a transaction of its own"
    );
    assert!(monitors_of(&app, &project)
        .await
        .iter()
        .all(|(_, paused, _)| !paused));

    // At the end of grace it fails again: ended, hobby, hobby's limits enforced.
    let ran = renew_due(&app, days(first, grace_days)).await;
    assert_eq!(ran.charged, 0);
    assert_eq!(ran.downgraded, 1);
    assert_eq!(squad.charges().len(), 3);
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "ended");
    assert_eq!(view["plan"], "hobby");
    assert_eq!(tier_of(&app, &account).await, "hobby");
    assert_eq!(emails_to(&app, &account.email).await, emails + 3);
    let monitors = monitors_of(&app, &project).await;
    assert_eq!(monitors.len(), 7, "monitors are paused, never deleted");
    let paused: Vec<bool> = monitors.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(
        paused,
        [false, false, false, false, false, true, true],
        "the five oldest stay active"
    );
    assert!(
        monitors.iter().all(|(_, _, interval)| *interval == 300),
        "intervals raised to hobby's 5 minutes: {monitors:?}"
    );
    let kinds = event_kinds(&app, &account).await;
    assert_eq!(count_of(&kinds, "renewal_failed"), 3, "{kinds:?}");
    assert_eq!(count_of(&kinds, "downgraded"), 1, "{kinds:?}");

    // Ended: later runs charge nothing.
    let ran = renew_due(&app, days(first, grace_days + 1)).await;
    assert_eq!(
        (ran.charged, ran.failed, ran.downgraded, ran.ended),
        (0, 0, 0, 0)
    );
    assert_eq!(squad.charges().len(), 3);
}

#[actix_web::test]
async fn a_renewal_that_succeeds_during_grace_returns_to_active() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    subscribe(&app, &squad, &account, "pro", &card_token()).await;
    let end = at(&subscription(&app, &account).await["current_period_end"]);
    squad.script_charges(&[Charge::Decline], Charge::Succeed);
    let first = days(Utc::now(), 32);
    assert_eq!(renew_due(&app, first).await.failed, 1);
    assert_eq!(subscription(&app, &account).await["state"], "grace");

    let ran = renew_due(&app, days(first, 1)).await;
    assert_eq!((ran.charged, ran.failed), (1, 0));
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "active");
    assert_eq!(view["grace_until"], Value::Null);
    assert_one_month(end, at(&view["current_period_end"]));
    assert_eq!(tier_of(&app, &account).await, "pro");
}

#[actix_web::test]
async fn an_answer_lost_after_the_charge_is_never_charged_again_on_rerun() {
    let squad = FakeSquad::start().await;
    let app = spawn_app_with(
        {
            let to = towards(&squad);
            move |s: &mut Settings| {
                to(s);
                s.billing.request_timeout_ms = 300;
            }
        },
        None,
    )
    .await;
    let account = register(&app).await;
    subscribe(&app, &squad, &account, "pro", &card_token()).await;
    let end = at(&subscription(&app, &account).await["current_period_end"]);

    // Squad takes the money but observe never hears it: its request times out. As far as
    // observe is concerned the run might as well have crashed after recording its intent.
    squad.delay_charges(Duration::from_secs(3));
    let now = days(Utc::now(), 31);
    let first = app
        .state
        .billing
        .as_ref()
        .unwrap()
        .renew_due(&awc::Client::default(), now)
        .await;
    assert_eq!(squad.charges().len(), 1);
    let reference = squad.charged_references()[0].clone();
    assert_eq!(squad.transaction(&reference).unwrap().status, "Success");
    if let Ok((ran, _)) = &first {
        assert_eq!(ran.failed, 0, "an unknown outcome is not a decline");
    }

    // The rerun (the next tick, or a restart) asks Squad before charging: no second charge.
    squad.delay_charges(Duration::ZERO);
    renew_due(&app, now).await;
    assert_eq!(squad.charges().len(), 1, "charged twice");
    assert_eq!(squad.charges_of(&reference), 1);
    assert!(
        squad.verifications_of(&reference) >= 1,
        "the pending charge was not verified"
    );
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "active");
    assert_eq!(view["grace_until"], Value::Null);
    assert_one_month(end, at(&view["current_period_end"]));
    let kinds = event_kinds(&app, &account).await;
    assert_eq!(count_of(&kinds, "renewal_succeeded"), 1, "{kinds:?}");
    assert_eq!(count_of(&kinds, "renewal_failed"), 0, "{kinds:?}");

    // And a third run finds nothing due.
    assert_eq!(renew_due(&app, now).await.charged, 0);
    assert_eq!(squad.charges().len(), 1);
    assert_eq!(
        subscription(&app, &account).await["current_period_end"],
        view["current_period_end"]
    );
}

#[actix_web::test]
async fn a_pending_renewal_that_squad_never_saw_is_charged_on_rerun() {
    let squad = FakeSquad::start().await;
    let app = spawn_app_with(
        {
            let to = towards(&squad);
            move |s: &mut Settings| {
                to(s);
                s.billing.request_timeout_ms = 300;
            }
        },
        None,
    )
    .await;
    let account = register(&app).await;
    let token = card_token();
    subscribe(&app, &squad, &account, "pro", &token).await;
    let end = at(&subscription(&app, &account).await["current_period_end"]);

    // The charge is lost on its way to Squad; observe times out not knowing.
    squad.script_charges(&[Charge::Lost], Charge::Succeed);
    squad.delay_charges(Duration::from_secs(3));
    let now = days(Utc::now(), 31);
    let _ = app
        .state
        .billing
        .as_ref()
        .unwrap()
        .renew_due(&awc::Client::default(), now)
        .await;
    assert_eq!(squad.charges().len(), 1);
    let lost = squad.charged_references()[0].clone();
    assert_eq!(squad.transaction(&lost), None);

    // The rerun asks Squad, which never saw it: charged now, once, and extended once.
    squad.delay_charges(Duration::ZERO);
    renew_due(&app, now).await;
    assert!(
        squad.verifications_of(&lost) >= 1,
        "not verified before charging again"
    );
    let succeeded: Vec<String> = squad
        .charged_references()
        .into_iter()
        .filter(|r| squad.transaction(r).is_some_and(|t| t.status == "Success"))
        .collect();
    assert_eq!(succeeded.len(), 1, "{:?}", squad.charges());
    assert_eq!(squad.charges().len(), 2);
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "active");
    assert_one_month(end, at(&view["current_period_end"]));
    assert_eq!(renew_due(&app, now).await.charged, 0);
    assert_eq!(squad.charges().len(), 2);
}

#[actix_web::test]
async fn a_cancelled_subscription_is_not_renewed_and_ends_at_the_period_end() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;

    // Nothing to cancel yet.
    assert_error(&cancel(&app, &account).await, 404, "not_found");

    let project = create_project(&app, &account.token, "shop").await;
    subscribe(&app, &squad, &account, "pro", &card_token()).await;
    for n in 0..6 {
        create_monitor(&app, &account, &project, &format!("m{n}"), 60).await;
    }
    let before = subscription(&app, &account).await;
    let reply = cancel(&app, &account).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let view = reply.json();
    assert_eq!(view["cancel_at_period_end"], true);
    assert_eq!(view["state"], "active");
    assert_eq!(view["plan"], "pro");
    assert_eq!(view["current_period_end"], before["current_period_end"]);
    assert_eq!(subscription(&app, &account).await, view);
    assert_eq!(
        billing_events(&app, &account, "?limit=1").await["items"][0]["kind"],
        "cancel_requested"
    );
    // Cancelling twice is harmless.
    let again = cancel(&app, &account).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["cancel_at_period_end"], true);

    // Paid up to the period end: still pro until then.
    let ran = renew_due(&app, days(Utc::now(), 1)).await;
    assert_eq!((ran.charged, ran.ended), (0, 0));
    assert_eq!(tier_of(&app, &account).await, "pro");

    // At the period end: no charge, ended, hobby and its limits.
    let ran = renew_due(&app, days(Utc::now(), 31)).await;
    assert_eq!((ran.charged, ran.failed, ran.ended), (0, 0, 1));
    assert!(
        squad.charges().is_empty(),
        "a cancelled subscription was charged"
    );
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "ended");
    assert_eq!(view["plan"], "hobby");
    assert_eq!(tier_of(&app, &account).await, "hobby");
    let monitors = monitors_of(&app, &project).await;
    let paused = monitors.iter().filter(|(_, p, _)| *p).count();
    assert_eq!(paused, 1, "{monitors:?}");
    assert!(monitors[5].1, "the newest is paused: {monitors:?}");
    assert!(monitors.iter().all(|(_, _, i)| *i == 300), "{monitors:?}");
    let kinds = event_kinds(&app, &account).await;
    assert_eq!(count_of(&kinds, "ended"), 1, "{kinds:?}");

    // Ended stays ended.
    let ran = renew_due(&app, days(Utc::now(), 62)).await;
    assert_eq!((ran.charged, ran.ended), (0, 0));
    assert!(squad.charges().is_empty());
}

/// `n` accounts, each with a paid pro subscription.
async fn subscribers(app: &TestApp, squad: &FakeSquad, n: usize) -> Vec<Account> {
    let mut accounts = Vec::new();
    for _ in 0..n {
        let account = register(app).await;
        subscribe(app, squad, &account, "pro", &card_token()).await;
        accounts.push(account);
    }
    accounts
}

/// Every subscription was charged once and extended once.
async fn charged_once_each(
    app: &TestApp,
    squad: &FakeSquad,
    accounts: &[Account],
    ends: &[DateTime<Utc>],
) {
    assert_eq!(
        squad.charges().len(),
        accounts.len(),
        "{:?}",
        squad.charges()
    );
    let references = squad.charged_references();
    assert_eq!(references.len(), accounts.len());
    for reference in &references {
        assert_eq!(squad.charges_of(reference), 1);
    }
    for (account, end) in accounts.iter().zip(ends) {
        let view = subscription(app, account).await;
        assert_eq!(view["state"], "active");
        assert_one_month(*end, at(&view["current_period_end"]));
        let kinds = event_kinds(app, account).await;
        assert_eq!(count_of(&kinds, "renewal_succeeded"), 1, "{kinds:?}");
    }
}

async fn period_ends(app: &TestApp, accounts: &[Account]) -> Vec<DateTime<Utc>> {
    let mut ends = Vec::new();
    for account in accounts {
        ends.push(at(&subscription(app, account).await["current_period_end"]));
    }
    ends
}

#[actix_web::test]
async fn two_concurrent_runs_charge_each_due_subscription_once() {
    let (app, squad) = billed_app().await;
    let accounts = subscribers(&app, &squad, 3).await;
    let ends = period_ends(&app, &accounts).await;
    // Slow answers, so the two runs overlap while charging.
    squad.delay_charges(Duration::from_millis(200));
    let now = days(Utc::now(), 31);
    let (a, b) = futures_util::future::join(renew_due(&app, now), renew_due(&app, now)).await;
    assert_eq!(a.charged + b.charged, 3, "{a:?} {b:?}");
    charged_once_each(&app, &squad, &accounts, &ends).await;
}

#[actix_web::test]
async fn two_instances_charge_each_due_subscription_once() {
    let squad = FakeSquad::start().await;
    // One deployment: one SECRET_KEY (the card tokens are sealed under a key derived from
    // it; without one in the environment each test instance would generate its own).
    let secret_key = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let to = towards(&squad);
    let key = secret_key.clone();
    let first = spawn_app_with(
        move |s| {
            to(s);
            s.auth.secret_key = SecretString::from(key);
        },
        None,
    )
    .await;
    let db_url = first.db_url.clone();
    let to = towards(&squad);
    let second = spawn_app_with(
        move |s| {
            to(s);
            s.auth.secret_key = SecretString::from(secret_key);
            s.database.url = SecretString::from(db_url);
        },
        None,
    )
    .await;
    let accounts = subscribers(&first, &squad, 4).await;
    let ends = period_ends(&first, &accounts).await;
    squad.delay_charges(Duration::from_millis(200));
    let now = days(Utc::now(), 31);
    let (a, b) = futures_util::future::join(renew_due(&first, now), renew_due(&second, now)).await;
    assert_eq!(a.charged + b.charged, 4, "{a:?} {b:?}");
    charged_once_each(&first, &squad, &accounts, &ends).await;
    // The second instance sees the same.
    let (a, b) = futures_util::future::join(renew_due(&first, now), renew_due(&second, now)).await;
    assert_eq!(a.charged + b.charged, 0);
    assert_eq!(squad.charges().len(), 4);
}

#[actix_web::test]
async fn a_downgrade_pauses_monitors_beyond_hobby_and_lowers_the_rate_limit_on_the_next_request() {
    let (app, squad) = billed_app().await;
    let Sdk {
        account,
        project,
        key,
        ..
    } = sdk(&app).await;
    subscribe(&app, &squad, &account, "pro", &card_token()).await;
    let other = create_project(&app, &account.token, "second").await;
    let mut ids = Vec::new();
    for n in 0..8 {
        let in_project = if n % 2 == 0 { &project } else { &other };
        ids.push(create_monitor(&app, &account, in_project, &format!("m{n}"), 60).await);
    }
    // Pro: the key has 1,000 a minute (and its tier is now cached).
    assert_eq!(
        send_events(&app, &key, 101, "pro").await,
        (202, Some("1000".into()))
    );

    squad.decline_charges();
    let first = days(Utc::now(), 32);
    renew_due(&app, first).await;
    let grace_days = i64::from(app.state.settings.billing.grace_days);
    let ran = renew_due(&app, days(first, grace_days)).await;
    assert_eq!(ran.downgraded, 1);
    assert_eq!(tier_of(&app, &account).await, "hobby");

    // The very next request of the same key has hobby's 100 a minute.
    let (status, limit) = send_events(&app, &key, 1, "hobby").await;
    assert_eq!(limit.as_deref(), Some("100"), "status {status}");
    assert_eq!(send_events(&app, &key, 101, "hobby-2").await.0, 429);

    // Over both projects, the five oldest monitors stay active.
    let mut all = monitors_of(&app, &project).await;
    all.extend(monitors_of(&app, &other).await);
    let paused: Vec<&String> = all
        .iter()
        .filter(|(_, p, _)| *p)
        .map(|(id, _, _)| id)
        .collect();
    let mut expected: Vec<&String> = ids[5..].iter().collect();
    let mut paused_sorted = paused.clone();
    paused_sorted.sort();
    expected.sort();
    assert_eq!(paused_sorted, expected, "{all:?}");
    assert!(all.iter().all(|(_, _, i)| *i == 300), "{all:?}");
}

#[actix_web::test]
async fn a_monitor_paused_by_a_downgrade_cannot_be_resumed_past_the_hobby_limit() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "shop").await;
    subscribe(&app, &squad, &account, "pro", &card_token()).await;
    for n in 0..6 {
        create_monitor(&app, &account, &project, &format!("m{n}"), 300).await;
    }
    cancel(&app, &account).await;
    assert_eq!(renew_due(&app, days(Utc::now(), 31)).await.ended, 1);
    let monitors = monitors_of(&app, &project).await;
    let (newest, paused, _) = &monitors[5];
    assert!(paused, "{monitors:?}");

    // Resuming it would make a sixth active monitor on hobby.
    let reply = call(
        &app,
        Method::PATCH,
        &format!("/projects/{project}/monitors/{newest}/pause"),
        Some(&account.token),
        Some(json!({"paused": false})),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "tier_limit");
    assert!(
        monitors_of(&app, &project).await[5].1,
        "resumed past the limit"
    );
}

// --- Who may do what ---

#[actix_web::test]
async fn only_an_owner_may_initiate_or_cancel() {
    let (app, squad) = billed_app().await;
    let owner = register(&app).await;
    let member = member_of(&app, &owner).await;

    assert_error(&initiate(&app, &member, "pro").await, 403, "forbidden");
    assert!(
        squad.received().is_empty(),
        "a member's checkout reached Squad"
    );
    subscribe(&app, &squad, &owner, "pro", &card_token()).await;
    assert_error(&cancel(&app, &member).await, 403, "forbidden");
    let view = subscription(&app, &owner).await;
    assert_eq!(view["cancel_at_period_end"], false);
    let kinds = event_kinds(&app, &owner).await;
    assert_eq!(count_of(&kinds, "cancel_requested"), 0);

    // The owner may.
    assert_eq!(cancel(&app, &owner).await.status, 200);
    // Without a session: 401.
    let reply = call(
        &app,
        Method::POST,
        "/billing/initiate",
        None,
        Some(json!({"plan": "pro"})),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
}

#[actix_web::test]
async fn without_squad_keys_every_billing_route_is_503_billing_disabled() {
    let app = spawn_app_with(
        |s| s.squad.secret_key = SecretString::from(String::new()),
        None,
    )
    .await;
    assert!(app.state.billing.is_none());
    let account = register(&app).await;
    for (method, path, token) in [
        (Method::POST, "/billing/initiate", Some(&account.token)),
        (Method::POST, "/billing/webhook", None),
        (Method::POST, "/billing/cancel", Some(&account.token)),
        (Method::GET, "/billing/subscription", Some(&account.token)),
        (Method::GET, "/billing/events", Some(&account.token)),
    ] {
        let reply = call(
            &app,
            method.clone(),
            path,
            token.map(String::as_str),
            (method == Method::POST).then(|| json!({"plan": "pro"})),
        )
        .await;
        assert_error(&reply, 503, "billing_disabled");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_lowercase();
        assert!(message.contains("billing"), "{path}: {}", reply.text);
    }
    // The rest of observe runs.
    assert_eq!(app.get_text("/health/live").await.0, 200);
}

// --- Secrets ---

#[actix_web::test]
async fn the_card_token_never_reaches_answers_logs_or_the_database_in_plain_text() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let token = card_token();
    let reference = checkout(&app, &account, "pro").await;
    squad.pay(&reference, &token);
    let mut answers = vec![deliver_webhook(&app, &squad, &reference).await.text];
    answers.push(deliver_webhook(&app, &squad, &reference).await.text);
    answers.push(subscription(&app, &account).await.to_string());
    answers.push(billing_events(&app, &account, "").await.to_string());
    // A renewal charges the token (declined, so the failure path logs too), then cancel.
    squad.decline_charges();
    renew_due(&app, days(Utc::now(), 31)).await;
    answers.push(subscription(&app, &account).await.to_string());
    answers.push(cancel(&app, &account).await.text);
    assert_eq!(squad.charges().len(), 1);
    assert_eq!(squad.charges()[0].body["token_id"], token.as_str());

    for answer in &answers {
        assert!(
            !answer.contains(&token),
            "the card token in an answer: {answer}"
        );
    }
    let logs = app.logs.contents();
    assert!(!logs.is_empty());
    assert!(!logs.contains(&token), "the card token in the logs");
    assert!(
        !logs.contains(&squad.secret),
        "Squad's secret key in the logs"
    );

    let conn = app.state.db.get().await.unwrap();
    let organisation = organisation_of(&app, &account).await;
    let stored: Option<Vec<u8>> = conn
        .query_one(
            "SELECT card_token FROM subscriptions WHERE organisation_id = $1",
            &[&organisation],
        )
        .await
        .unwrap()
        .get(0);
    let stored = stored.expect("the card token is kept for renewals");
    assert!(
        !stored.windows(token.len()).any(|w| w == token.as_bytes()),
        "the card token stored in plain text"
    );
    let dump: String = conn
        .query_one(
            "SELECT concat_ws(' ', (SELECT string_agg(p::text, ' ') FROM payments p),
                                   (SELECT string_agg(e::text, ' ') FROM billing_events e),
                                   (SELECT string_agg(o::text, ' ') FROM email_outbox o))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!dump.contains(&token), "the card token in a table");
}

// --- History ---

#[actix_web::test]
async fn billing_events_are_listed_newest_first_a_page_at_a_time() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let token = card_token();
    let first = subscribe(&app, &squad, &account, "pro", &token).await;
    let second = subscribe(&app, &squad, &account, "pro", &token).await;
    cancel(&app, &account).await;
    let all = event_kinds(&app, &account).await;
    assert_eq!(
        all,
        [
            "cancel_requested",
            "payment_succeeded",
            "checkout_started",
            "payment_succeeded",
            "checkout_started"
        ]
    );
    let items = billing_events(&app, &account, "").await["items"].clone();
    let references: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|e| e["reference"].as_str().unwrap())
        .collect();
    assert_eq!(references, [second.as_str(), &second, &first, &first]);

    let mut seen = Vec::new();
    let mut query = "?limit=3".to_string();
    for pages in 1.. {
        assert!(pages <= 3, "more pages than events");
        let page = billing_events(&app, &account, &query).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, all);

    // Another organisation's history is its own.
    let stranger = register(&app).await;
    assert_eq!(event_kinds(&app, &stranger).await, Vec::<String>::new());
    // Bad pages are refused as every account-side list refuses them.
    for query in ["limit=0", "limit=201", "cursor=garbage"] {
        let bad = call(
            &app,
            Method::GET,
            &format!("/billing/events?{query}"),
            Some(&account.token),
            None,
        )
        .await;
        assert_error(&bad, 400, "invalid_query");
    }
}

#[actix_web::test]
async fn a_paid_webhook_that_cannot_be_verified_is_not_acknowledged_so_squad_sends_it_again() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let reference = checkout(&app, &account, "pro").await;
    squad.pay(&reference, &card_token());

    // Squad's verify is down: nothing may be granted, and a 200 would tell Squad the
    // notification was handled, losing a paid upgrade.
    squad.answer_verify_with(503);
    let reply = deliver_webhook(&app, &squad, &reference).await;
    assert!(reply.status >= 500, "{} {}", reply.status, reply.text);
    assert!(squad.verifications_of(&reference) >= 1);
    assert_eq!(tier_of(&app, &account).await, "hobby");

    // Squad retries once verify is back: granted.
    squad.answer_verify_with(200);
    let reply = deliver_webhook(&app, &squad, &reference).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(tier_of(&app, &account).await, "pro");
    assert_eq!(subscription(&app, &account).await["state"], "active");
}

#[actix_web::test]
async fn paying_again_in_grace_restores_the_plan_and_renewals_use_the_new_card() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let token = card_token();
    subscribe(&app, &squad, &account, "pro", &token).await;

    // In grace, the owner pays a new checkout (a new card, say): active again, no grace.
    squad.decline_charges();
    renew_due(&app, days(Utc::now(), 32)).await;
    assert_eq!(subscription(&app, &account).await["state"], "grace");
    let new_card = card_token();
    subscribe(&app, &squad, &account, "pro", &new_card).await;
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "active");
    assert_eq!(view["grace_until"], Value::Null);
    assert_eq!(tier_of(&app, &account).await, "pro");
    let kinds = event_kinds(&app, &account).await;
    assert_eq!(count_of(&kinds, "payment_succeeded"), 2, "{kinds:?}");

    // The next renewal charges the new card.
    squad.script_charges(&[], Charge::Succeed);
    let end = at(&view["current_period_end"]);
    assert_eq!(renew_due(&app, days(end, 1)).await.charged, 1);
    let last = squad.charges().pop().expect("a renewal charge");
    assert_eq!(last.body["token_id"], new_card.as_str());
}

#[actix_web::test]
async fn subscribing_again_after_the_end_starts_a_fresh_period() {
    let (app, squad) = billed_app().await;
    let account = register(&app).await;
    let token = card_token();
    subscribe(&app, &squad, &account, "pro", &token).await;

    // Ended (cancelled, period over), then subscribed again: a fresh period from the payment.
    cancel(&app, &account).await;
    let end = at(&subscription(&app, &account).await["current_period_end"]);
    let ran = renew_due(&app, days(end, 1)).await;
    assert_eq!(ran.ended, 1);
    assert_eq!(tier_of(&app, &account).await, "hobby");
    let paid_at = Utc::now();
    subscribe(&app, &squad, &account, "team", &token).await;
    let view = subscription(&app, &account).await;
    assert_eq!(view["state"], "active");
    assert_eq!(view["plan"], "team");
    assert_eq!(view["cancel_at_period_end"], false);
    let start = at(&view["current_period_start"]);
    assert!(
        (start - paid_at).num_seconds().abs() < 30,
        "{start} vs {paid_at}"
    );
    assert_one_month(start, at(&view["current_period_end"]));
    assert_eq!(tier_of(&app, &account).await, "team");

    // Renewed as team.
    assert_eq!(renew_due(&app, days(Utc::now(), 32)).await.charged, 1);
    let last = squad.charges().pop().expect("a renewal charge");
    assert_eq!(last.body["token_id"], token.as_str());
    assert_eq!(
        last.body["amount"],
        json!(app.state.settings.billing.team_amount)
    );
}

#[actix_web::test]
async fn an_upgrade_on_one_instance_reaches_the_rate_limit_of_another_within_seconds() {
    let squad = FakeSquad::start().await;
    let first = spawn_app_with(towards(&squad), None).await;
    let db_url = first.db_url.clone();
    let to = towards(&squad);
    let second = spawn_app_with(
        move |s| {
            to(s);
            s.database.url = SecretString::from(db_url);
        },
        None,
    )
    .await;
    assert!(crate::helpers::listeners_up(&first, 2).await);
    let Sdk { account, key, .. } = sdk(&first).await;
    // The second instance caches the key as hobby.
    assert_eq!(
        send_events(&second, &key, 101, "before").await,
        (429, Some("100".into()))
    );
    subscribe(&first, &squad, &account, "pro", &card_token()).await;
    let mut n = 0;
    assert!(
        crate::helpers::eventually(5, || {
            n += 1;
            let tag = format!("after-{n}");
            let second = &second;
            let key = key.clone();
            async move { send_events(second, &key, 101, &tag).await == (202, Some("1000".into())) }
        })
        .await,
        "the other instance kept the hobby limit"
    );
}
