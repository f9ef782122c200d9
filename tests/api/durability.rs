//! Durability of acknowledged items: kill -9, PostgreSQL outages, Redis outages.
//!
//! SPEC §6 promises that `202 {"accepted": N}` means the items are committed to PostgreSQL, and
//! that anything else means nothing of the request was stored, so an SDK may retry. These tests
//! hold the server to that under load while its process or a dependency fails: every test runs
//! concurrent senders whose items each carry a unique `visitor_id`, records exactly which items
//! were acknowledged, and afterwards reads `events` over a direct connection (never observe's
//! own pool) to check that not one acknowledged item is missing.
//!
//! - `kill -9` of the real `observe` binary mid-load: nothing acknowledged is lost.
//! - PostgreSQL away for a moment: requests are held and then answered 202, not failed.
//! - PostgreSQL away past `ingest.retry_deadline_ms`: 503 with `Retry-After`, nothing of those
//!   requests stored, and 202 again once it is back, without a restart.
//! - Redis away: ingestion goes on (limits enforced per instance), one warning per outage,
//!   `observe_ratelimit_degraded 1`.
//!
//! PostgreSQL outages are simulated by cutting a TCP proxy between observe and the server
//! ([`CuttableProxy`]), never by restarting the cluster: every test running in parallel shares
//! it. Redis outages kill a redis-server of the test's own ([`OwnRedis`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::Method;
use observe_core::config::Settings;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

use crate::health::{CuttableProxy, OwnRedis};
use crate::helpers::roomy_limits;
use crate::helpers::{
    eventually, free_port, fresh_database, metric_value, sdk, send, spawn_app_with, test_settings,
    TestApp,
};
use crate::support::binary::{sdk_with_dsn_at, Observe};
use crate::support::proxy::pg_port;

/// The message the rate limiter logs when Redis fails (once per outage).
const REDIS_DOWN: &str = "Redis unavailable: rate limits enforced per instance until it returns";

/// A short tag unique to one test run: the prefix of its visitor and request ids.
fn unique_tag() -> String {
    format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// One `POST /ingest/events` of a load.
struct Sent {
    started: Instant,
    ended: Instant,
    /// The HTTP status (with the body when it was not 202), or the transport error (the
    /// server died, or the connection broke, before an answer came).
    outcome: Result<(u16, String), String>,
    /// The visitor ids of its items: one item each.
    ids: Vec<String>,
}

impl Sent {
    fn acked(&self) -> bool {
        matches!(self.outcome, Ok((202 | 200, _)))
    }
}

/// What a load sends.
#[derive(Clone)]
enum Target {
    /// `POST /ingest/events` with the key in `X-API-Key`: 1 to 5 events a request, each
    /// known by its visitor id.
    Events { key: String },
    /// `POST /api/{number}/envelope/` as a Sentry SDK: one error event a request, known by its
    /// user id (observe answers 200 with the event id).
    Sentry { number: String, dsn_key: String },
}

/// Concurrent senders of events, each request a single event or a small batch, all recorded.
/// Everything runs on the test's thread, so plain `Cell`s are enough.
struct Load {
    client: awc::Client,
    base: String,
    target: Target,
    tag: String,
    /// Senders finish the request in hand, then stop.
    stop: Cell<bool>,
    in_flight: Cell<usize>,
    sent: RefCell<Vec<Sent>>,
}

impl Load {
    fn new(base: &str, key: &str) -> Self {
        Self::to(
            base,
            Target::Events {
                key: key.to_string(),
            },
        )
    }

    fn to(base: &str, target: Target) -> Self {
        Self {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .finish(),
            base: base.to_string(),
            target,
            tag: unique_tag(),
            stop: Cell::new(false),
            in_flight: Cell::new(0),
            sent: RefCell::new(Vec::new()),
        }
    }

    /// Runs `senders` senders until [`Load::stop`] is set (or, each, until its connection
    /// fails).
    async fn run(&self, senders: usize) {
        futures_util::future::join_all((0..senders).map(|i| self.sender(i))).await;
    }

    async fn sender(&self, sender: usize) {
        let mut seq = 0;
        while !self.stop.get() && self.send_one(sender, seq).await {
            seq += 1;
        }
    }

    /// Sends request `seq` of `sender` and records it; false if the connection broke.
    async fn send_one(&self, sender: usize, seq: usize) -> bool {
        let (body, ids) = match self.target {
            Target::Events { .. } => events_body(&self.tag, sender, seq),
            Target::Sentry { .. } => sentry_body(&self.tag, sender, seq),
        };
        let started = Instant::now();
        self.in_flight.set(self.in_flight.get() + 1);
        let outcome = self
            .post(&format!("{}-{sender}-{seq}", self.tag), body, ids.len())
            .await;
        self.in_flight.set(self.in_flight.get() - 1);
        let delivered = outcome.is_ok();
        self.sent.borrow_mut().push(Sent {
            started,
            ended: Instant::now(),
            outcome,
            ids,
        });
        delivered
    }

    async fn post(
        &self,
        request_id: &str,
        body: Vec<u8>,
        items: usize,
    ) -> Result<(u16, String), String> {
        let req = match &self.target {
            Target::Events { key } => self
                .client
                .post(format!("{}/ingest/events", self.base))
                .insert_header(("X-API-Key", key.as_str()))
                .insert_header(("content-type", "application/json")),
            Target::Sentry { number, dsn_key } => self
                .client
                .post(format!("{}/api/{number}/envelope/", self.base))
                .insert_header((
                    "X-Sentry-Auth",
                    format!("Sentry sentry_key={dsn_key}, sentry_version=7"),
                )),
        };
        let mut res = req
            // Tags the request's log lines, so the test finds its own in a shared capture.
            .insert_header(("X-Request-Id", request_id))
            .send_body(body)
            .await
            .map_err(|e| e.to_string())?;
        let body = res.body().await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let text = String::from_utf8_lossy(&body).into_owned();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match status {
            202 => assert_eq!(v["accepted"], items, "a 202 counts every item sent: {text}"),
            200 => assert!(v["id"].is_string(), "a 200 names the event: {text}"),
            _ => return Ok((status, text)),
        }
        Ok((status, String::new()))
    }

    /// Polls `done` every 10 ms while the senders run, for at most `secs` seconds.
    async fn wait_until(&self, secs: u64, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn count(&self, which: impl Fn(&Sent) -> bool) -> usize {
        self.sent.borrow().iter().filter(|s| which(s)).count()
    }

    /// Acknowledged requests that started at `since` or later.
    fn acked_since(&self, since: Instant) -> usize {
        self.count(|s| s.acked() && s.started >= since)
    }

    fn acked_items(&self) -> usize {
        self.sent
            .borrow()
            .iter()
            .filter(|s| s.acked())
            .map(|s| s.ids.len())
            .sum()
    }

    /// The visitor ids of every acknowledged item.
    fn acked_ids(&self) -> Vec<String> {
        self.sent
            .borrow()
            .iter()
            .filter(|s| s.acked())
            .flat_map(|s| s.ids.iter().cloned())
            .collect()
    }

    /// Every answer that was not a 202, and every broken connection, for assertion messages.
    fn not_acked(&self) -> Vec<String> {
        self.sent
            .borrow()
            .iter()
            .filter(|s| !s.acked())
            .map(|s| match &s.outcome {
                Ok((status, text)) => format!("{status} {text}"),
                Err(e) => format!("transport error: {e}"),
            })
            .collect()
    }
}

/// Request `seq` of `sender`: 1 to 5 events with fresh visitor ids, as a single object, an
/// array or a `{"batch": [...]}` (all three shapes of SPEC §6).
fn events_body(tag: &str, sender: usize, seq: usize) -> (Vec<u8>, Vec<String>) {
    let n = 1 + seq % 5;
    let ids: Vec<String> = (0..n)
        .map(|k| format!("{tag}-{sender}-{seq}-{k}"))
        .collect();
    let items: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "event": "page_view",
                "visitor_id": id,
                "url": "https://shop.example/checkout",
                "properties": {"distinct_id": id, "sender": sender, "seq": seq}
            })
        })
        .collect();
    let body = match (n, seq % 2) {
        (1, _) => items[0].clone(),
        (_, 0) => json!({ "batch": items }),
        _ => Value::Array(items),
    };
    (body.to_string().into_bytes(), ids)
}

/// Request `seq` of `sender` as a Sentry SDK sends an error: an envelope of one event, its
/// user id the item's id.
fn sentry_body(tag: &str, sender: usize, seq: usize) -> (Vec<u8>, Vec<String>) {
    let id = format!("{tag}-{sender}-{seq}");
    let event_id = uuid::Uuid::new_v4().simple().to_string();
    let event = json!({
        "event_id": event_id,
        "timestamp": chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
        "platform": "python",
        "level": "error",
        "exception": {"values": [{
            "type": "KillError",
            "value": format!("request {seq} of sender {sender}"),
            "stacktrace": {"frames": [
                {"function": "handle", "module": "shop.views", "lineno": 10 + seq % 7, "in_app": true}
            ]}
        }]},
        "user": {"id": id},
    })
    .to_string();
    let body = format!(
        "{}\n{}\n{event}\n",
        json!({"event_id": event_id, "sent_at": chrono::Utc::now().to_rfc3339()}),
        json!({"type": "event", "length": event.len()})
    );
    (body.into_bytes(), vec![id])
}

/// A connection of the test's own to `db_url`, outside observe's pool.
async fn connect(db_url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(db_url, NoTls)
        .await
        .expect("a direct connection to PostgreSQL");
    actix_web::rt::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Rows per visitor id in the project's `events`.
async fn stored_visitors(db: &tokio_postgres::Client, project: &str) -> HashMap<String, i64> {
    stored_ids(db, project, Stored::Events).await
}

/// Where a load's items land, and the usage category they count in.
#[derive(Clone, Copy)]
enum Stored {
    /// `events`, by visitor id.
    Events,
    /// `errors`, by user id.
    Errors,
}

impl Stored {
    fn query(self) -> &'static str {
        match self {
            Stored::Events => {
                "SELECT visitor_id, count(*) FROM events WHERE project_id = $1 GROUP BY visitor_id"
            }
            Stored::Errors => {
                "SELECT user_id, count(*) FROM errors WHERE project_id = $1 GROUP BY user_id"
            }
        }
    }

    fn category(self) -> &'static str {
        match self {
            Stored::Events => "events",
            Stored::Errors => "errors",
        }
    }
}

/// Rows per item id in the project's table for `what`.
async fn stored_ids(
    db: &tokio_postgres::Client,
    project: &str,
    what: Stored,
) -> HashMap<String, i64> {
    let project: uuid::Uuid = project.parse().expect("project id");
    db.query(what.query(), &[&project])
        .await
        .expect("read events")
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Checks, over a direct connection, that every acknowledged item is in `events`, and that the
/// organisation's usage counts exactly the rows written (counted in the same commit, so a
/// crash or a cut cannot leave one without the other). Returns what is stored.
async fn assert_all_stored(db_url: &str, project: &str, acked: &[String]) -> HashMap<String, i64> {
    assert_all_stored_in(db_url, project, acked, Stored::Events).await
}

async fn assert_all_stored_in(
    db_url: &str,
    project: &str,
    acked: &[String],
    what: Stored,
) -> HashMap<String, i64> {
    let db = connect(db_url).await;
    let stored = stored_ids(&db, project, what).await;
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged items are not in the database, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    let rows: i64 = stored.values().sum();
    let project_id: uuid::Uuid = project.parse().expect("project id");
    let usage: i64 = db
        .query_one(
            "SELECT coalesce(sum(count), 0)::bigint FROM usage
             WHERE category = $2
               AND organisation_id = (SELECT organisation_id FROM projects WHERE id = $1)",
            &[&project_id, &what.category()],
        )
        .await
        .expect("read usage")
        .get(0);
    assert_eq!(usage, rows, "usage counts exactly the rows written");
    let duplicated = stored.values().filter(|n| **n > 1).count();
    if duplicated > 0 {
        // Not a loss: a flush whose commit went through but whose answer was cut off is
        // retried (at least once). Reported, since SDKs cannot tell.
        eprintln!("{duplicated} item ids were stored more than once");
    }
    stored
}

async fn ready(app: &TestApp) -> bool {
    let (status, body) = app.get_json("/health/ready").await;
    status == 200 && body["status"] == "ok"
}

// ---- kill -9 of the real binary ----------------------------------------------------------

#[actix_web::test]
async fn kill_9_during_load_loses_no_acknowledged_item() {
    kill_9_during_load(Stored::Events).await;
}

/// The same with Sentry SDKs' envelopes: every event answered 200 is stored.
#[actix_web::test]
async fn kill_9_during_sentry_load_loses_no_acknowledged_event() {
    kill_9_during_load(Stored::Errors).await;
}

async fn kill_9_during_load(what: Stored) {
    let db_url = fresh_database(&test_settings().database).await;
    let mut observe = Observe::start(&db_url).await;
    let base = format!("http://127.0.0.1:{}", observe.port);
    let (project, key, dsn) = sdk_with_dsn_at(&awc::Client::default(), &base).await;
    let target = match what {
        Stored::Events => Target::Events { key },
        Stored::Errors => {
            let (_, rest) = dsn.split_once("://").expect("dsn scheme");
            let (dsn_key, host) = rest.split_once('@').expect("dsn key");
            let number = host.rsplit('/').next().expect("dsn project").to_string();
            Target::Sentry {
                number,
                dsn_key: dsn_key.to_string(),
            }
        }
    };

    let load = Load::to(&base, target);
    let kill = async {
        // At least 1.5 s of load, and enough acknowledged to make the test meaningful however
        // slow the machine is; and the kill lands while requests are in flight.
        let began = Instant::now();
        let enough = load
            .wait_until(120, |l| {
                began.elapsed() >= Duration::from_millis(1500)
                    && l.acked_items() >= 300
                    && l.in_flight.get() > 0
            })
            .await;
        let in_flight = load.in_flight.get();
        // SIGKILL, as `kill -9`: no drain, no flush, no goodbye.
        observe.child.start_kill().expect("kill -9 observe");
        load.stop.set(true);
        (enough, in_flight)
    };
    let ((), (enough, in_flight)) = tokio::join!(load.run(32), kill);
    let status = observe.child.wait().await.expect("observe exit status");
    assert!(
        enough,
        "the load never reached 300 acknowledged items: {} acknowledged, not acknowledged: {:?}, \
         observe complained: {:#?}",
        load.acked_items(),
        load.not_acked(),
        observe.complaints()
    );
    assert_eq!(status.signal(), Some(9), "observe died of SIGKILL");
    assert!(in_flight > 0, "requests were in flight at the kill");

    // Before the kill every answer was a 202 (a 200 to Sentry SDKs); the kill cut off the
    // requests in flight.
    let answered_otherwise =
        load.count(|s| matches!(s.outcome, Ok((code, _)) if code != 202 && code != 200));
    assert_eq!(answered_otherwise, 0, "{:?}", load.not_acked());
    let cut_off = load.count(|s| s.outcome.is_err());
    assert!(cut_off >= 1, "no request was cut off by the kill");

    let acked = load.acked_ids();
    assert!(acked.len() >= 300, "{} items acknowledged", acked.len());
    let stored = assert_all_stored_in(&db_url, &project, &acked, what).await;
    // Items whose answer never came may or may not be there; stored rows are exactly the
    // acknowledged ones plus some of those.
    let rows: i64 = stored.values().sum();
    assert!(rows as usize >= acked.len());
}

// ---- PostgreSQL outages ------------------------------------------------------------------

/// An app whose PostgreSQL is reached through a proxy the test can cut (its own fresh
/// database), with `retry_deadline_ms` as how long requests wait for the database. Returns the
/// app, the proxy and the direct URL of the database, for checks that bypass the proxy.
async fn app_behind_proxy(retry_deadline_ms: u64) -> (TestApp, CuttableProxy, String) {
    let real_db = fresh_database(&test_settings().database).await;
    let pg_port = pg_port(&real_db);
    let proxy = CuttableProxy::start(pg_port).await;
    let proxied = real_db.replacen(&format!(":{pg_port}/"), &format!(":{}/", proxy.port), 1);
    assert_ne!(proxied, real_db, "the database URL names its port");
    let app = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(proxied);
            s.database.connect_timeout_secs = 1;
            s.database.acquire_timeout_secs = 1;
            s.ingest.retry_deadline_ms = retry_deadline_ms;
            roomy_limits(s);
        },
        None,
    )
    .await;
    (app, proxy, real_db)
}

/// Log lines of the app with `message` about `project` (the IngestActor's lines carry it).
fn project_lines(app: &TestApp, project: &str, message: &str) -> usize {
    app.logs
        .json_lines()
        .iter()
        .filter(|l| l["message"] == message && l["project_id"] == project)
        .count()
}

#[actix_web::test]
async fn a_database_outage_during_load_holds_requests_and_recovers() {
    // Requests may wait 15 s for the database; the outage lasts 2 s.
    let (app, mut proxy, real_db) = app_behind_proxy(15_000).await;
    let sdk = sdk(&app).await;
    let load = Load::new(&app.address, &sdk.key);

    let outage = async {
        // Load flows (and the key is cached: ingest authenticates from memory) before the cut.
        let flowing = load.wait_until(60, |l| l.acked_items() >= 50).await;
        proxy.cut().await;
        let cut_at = Instant::now();
        // Besides the requests in flight at the cut, one that arrives during the outage.
        let arrives_during = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            load.send_one(100, 0).await;
        };
        let reopen = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let reopened_at = Instant::now();
            proxy.open().await;
            reopened_at
        };
        let ((), reopened_at) = tokio::join!(arrives_during, reopen);
        // observe finds the database again by itself: new requests are acknowledged.
        let recovered = load
            .wait_until(60, |l| l.acked_since(reopened_at) >= 20)
            .await;
        load.stop.set(true);
        (flowing, cut_at, reopened_at, recovered)
    };
    let ((), (flowing, cut_at, reopened_at, recovered)) = tokio::join!(load.run(4), outage);
    assert!(flowing, "load before the cut: {:?}", load.not_acked());

    // Held, not failed: every request, the ones in flight at the cut and the ones sent during
    // the outage included, ended with a 202.
    assert!(
        load.not_acked().is_empty(),
        "requests not acknowledged across a 2 s outage: {:?}",
        load.not_acked()
    );
    // Requests were waiting when the database came back: held across the outage, those in
    // flight at the cut and the one sent during it...
    let held = load.count(|s| s.started < reopened_at && s.ended >= reopened_at);
    assert!(
        held >= 2,
        "{held} requests waited for the database to come back"
    );
    let sent_during = load.count(|s| s.started >= cut_at && s.started < reopened_at);
    assert!(sent_during >= 1, "no request was sent during the outage");
    // ...and none sent while it was unreachable was answered before it was back.
    assert_eq!(
        load.count(|s| s.started >= cut_at && s.started < reopened_at && s.ended < reopened_at),
        0,
        "a request was answered while the database was unreachable"
    );
    assert!(
        recovered,
        "ingestion did not recover after the database came back"
    );

    // The outage was noticed and its end too.
    assert!(
        project_lines(
            &app,
            &sdk.project,
            "ingest flush failed; retrying while requests can wait"
        ) >= 1
    );
    assert!(project_lines(&app, &sdk.project, "ingest flushes succeed again") >= 1);
    assert!(
        eventually(15, || ready(&app)).await,
        "not ready after the outage"
    );
    // And ingest works again, on its own.
    let (body, ids) = events_body(&load.tag, 99, 3);
    let reply = send(
        app.req(Method::POST, "/ingest/events")
            .insert_header(("X-API-Key", sdk.key.as_str()))
            .insert_header(("content-type", "application/json")),
        Some(body),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    let mut acked = load.acked_ids();
    acked.extend(ids);
    assert_all_stored(&real_db, &sdk.project, &acked).await;
}

#[actix_web::test]
async fn a_long_database_outage_answers_503_with_retry_after() {
    // Requests may wait 1 s for the database; the outage lasts longer.
    let (app, mut proxy, real_db) = app_behind_proxy(1_000).await;
    let sdk = sdk(&app).await;
    let tag = unique_tag();
    let post = |request_id: String, seq: usize| {
        let (body, ids) = events_body(&tag, 0, seq);
        let req = app
            .req(Method::POST, "/ingest/events")
            .insert_header(("X-API-Key", sdk.key.clone()))
            .insert_header(("content-type", "application/json"))
            .insert_header(("X-Request-Id", request_id));
        async move { (send(req, Some(body)).await, ids) }
    };

    let (reply, mut acked) = post(format!("{tag}-before"), 4).await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    proxy.cut().await;
    // Two requests during the outage (one single item, one batch), waiting together.
    let ((first, first_ids), (second, second_ids)) = tokio::join!(
        post(format!("{tag}-during-1"), 5),
        post(format!("{tag}-during-2"), 6)
    );
    let mut refused = Vec::new();
    for ((reply, ids), request_id) in [
        ((first, first_ids), format!("{tag}-during-1")),
        ((second, second_ids), format!("{tag}-during-2")),
    ] {
        assert_eq!(reply.status, 503, "{}", reply.text);
        let retry_after = reply.header("retry-after").unwrap_or_default();
        assert!(
            retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
            "Retry-After: {retry_after:?}"
        );
        // SPEC §10's error shape, with the request's own id.
        let body = reply.json();
        assert_eq!(
            body["error"]["code"], "service_unavailable",
            "{}",
            reply.text
        );
        assert!(body["error"]["message"].is_string(), "{}", reply.text);
        assert_eq!(body["error"]["request_id"], request_id.as_str());
        assert_eq!(reply.header("x-request-id"), Some(request_id));
        refused.extend(ids);
    }
    assert_eq!(app.get_json("/health/live").await.0, 200, "still live");

    // Back again: 202 within a while, without a restart. Answers until then are 503 (the
    // retry backoff may outlast the 1 s deadline), and nothing of those is stored either.
    proxy.open().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = 10;
    let recovered = loop {
        let (reply, ids) = post(format!("{tag}-after-{seq}"), seq).await;
        seq += 1;
        match reply.status {
            202 => {
                acked.extend(ids);
                break true;
            }
            503 => refused.extend(ids),
            other => panic!("{other} after the outage: {}", reply.text),
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        recovered,
        "ingest did not answer 202 again after the outage"
    );
    assert!(eventually(15, || ready(&app)).await, "not ready again");

    let stored = assert_all_stored(&real_db, &sdk.project, &acked).await;
    let half_stored: Vec<&String> = refused
        .iter()
        .filter(|id| stored.contains_key(*id))
        .collect();
    assert!(
        half_stored.is_empty(),
        "items answered 503 were stored: {half_stored:?}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    let unavailable = metric_value(
        &metrics,
        "observe_ingest_items_total{kind=\"events\",outcome=\"rejected\",reason=\"unavailable\"}",
    )
    .unwrap_or(0.0);
    assert!(
        unavailable >= refused.len() as f64,
        "{unavailable} items counted unavailable, {} refused",
        refused.len()
    );
}

// ---- Redis outages -----------------------------------------------------------------------

/// Log lines with `message` inside requests whose id starts with `tag`.
fn lines_of_tagged_requests(app: &TestApp, tag: &str, message: &str) -> usize {
    app.logs
        .json_lines()
        .iter()
        .filter(|l| {
            l["message"] == message
                && l["spans"].as_array().is_some_and(|spans| {
                    spans.iter().any(|s| {
                        s["request_id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with(&format!("{tag}-")))
                    })
                })
        })
        .count()
}

async fn degraded(app: &TestApp) -> Option<f64> {
    metric_value(
        &app.get_text("/metrics").await.1,
        "observe_ratelimit_degraded",
    )
}

#[actix_web::test]
async fn redis_stopped_during_load_ingestion_continues() {
    let port = free_port();
    let redis = OwnRedis::start(port);
    let app = spawn_app_with(
        |s| {
            s.redis.url = SecretString::from(format!("redis://127.0.0.1:{port}/"));
            s.redis.connect_timeout_secs = 1;
            roomy_limits(s);
        },
        None,
    )
    .await;
    // Our Redis answers before anything is measured.
    assert!(
        eventually(15, || ready(&app)).await,
        "not ready with our Redis up"
    );
    let sdk = sdk(&app).await;
    let load = Load::new(&app.address, &sdk.key);

    // Two outages in a row: Redis stops mid-load, comes back, stops again.
    let outages = async {
        let mut redis = Some(redis);
        let mut report = Vec::new();
        for round in 0..2 {
            if round > 0 {
                redis = Some(OwnRedis::start(port));
                // Requests probe Redis (at most once a second) and return to it by themselves.
                let back = eventually(30, || async { degraded(&app).await == Some(0.0) }).await;
                report.push(format!("round {round}: back to Redis: {back}"));
                if !back {
                    break;
                }
            }
            let up_from = Instant::now();
            let flowing = load.wait_until(60, |l| l.acked_since(up_from) >= 20).await;
            let shared = degraded(&app).await == Some(0.0);
            report.push(format!("round {round}: flowing {flowing}, shared {shared}"));

            drop(redis.take());
            let stopped_at = Instant::now();
            let continues = load
                .wait_until(60, |l| l.acked_since(stopped_at) >= 20)
                .await;
            let flagged = degraded(&app).await == Some(1.0);
            report.push(format!(
                "round {round}: continues {continues}, degraded {flagged}"
            ));
            if !(flowing && shared && continues && flagged) {
                break;
            }
        }
        load.stop.set(true);
        report
    };
    let ((), report) = tokio::join!(load.run(4), outages);
    let expected = [
        "round 0: flowing true, shared true",
        "round 0: continues true, degraded true",
        "round 1: back to Redis: true",
        "round 1: flowing true, shared true",
        "round 1: continues true, degraded true",
    ];
    assert_eq!(report, expected, "not acknowledged: {:?}", load.not_acked());

    // No request failed: no 5xx, no 429, nothing but 202, before, during and between outages.
    assert!(
        load.not_acked().is_empty(),
        "not acknowledged: {:?}",
        load.not_acked()
    );
    // One warning per outage, not one per request.
    assert_eq!(lines_of_tagged_requests(&app, &load.tag, REDIS_DOWN), 2);
    assert!(app
        .logs
        .json_lines()
        .iter()
        .any(|l| l["message"] == "rate limits shared through Redis again"));
    assert_eq!(degraded(&app).await, Some(1.0), "Redis is still away");
    // Readiness marks Redis degraded (still 200); ingestion never depended on it.
    let (status, body) = app.get_json("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "degraded", "{body}");

    assert_all_stored(&app.db_url, &sdk.project, &load.acked_ids()).await;
}

/// A flush whose COMMIT was cut off is looked up by its transaction id before it is retried:
/// committed, aborted and still-running transactions are told apart.
#[actix_web::test]
async fn an_interrupted_commit_is_looked_up_by_transaction_id() {
    use observe_core::store::ingest::committed;
    let settings = crate::helpers::test_settings();
    let url = crate::helpers::fresh_database(&settings.database).await;
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        actix_web::rt::spawn(conn);
        client
    };
    let mut a = connect().await;
    let b = connect().await;
    let tx = a.transaction().await.unwrap();
    let done = txid_of(&tx).await;
    tx.commit().await.unwrap();
    assert_eq!(committed(&b, done).await.unwrap(), Some(true));

    let tx = a.transaction().await.unwrap();
    let undone = txid_of(&tx).await;
    tx.rollback().await.unwrap();
    assert_eq!(committed(&b, undone).await.unwrap(), Some(false));

    let tx = a.transaction().await.unwrap();
    let running = txid_of(&tx).await;
    assert_eq!(
        committed(&b, running).await.unwrap(),
        None,
        "still open: ask again later"
    );
    tx.commit().await.unwrap();
    assert_eq!(committed(&b, running).await.unwrap(), Some(true));
}

async fn txid_of(tx: &tokio_postgres::Transaction<'_>) -> i64 {
    tx.query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A proxy to PostgreSQL that, once armed, lets one ingest flush's `COMMIT` reach the server
/// and then cuts that connection before the answer comes back: the commit happened, but
/// observe cannot know. (A flush is recognised by its `txid_current()`.)
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl CommitCutter {
    async fn start(target: u16) -> Self {
        Self::start_with_outage(target, Duration::ZERO).await
    }

    /// After the cut, PostgreSQL stays unreachable for `outage`: new connections through the
    /// proxy are closed at once.
    async fn start_with_outage(target: u16, outage: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (armed2, cuts2) = (armed.clone(), cuts.clone());
        let down_until: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        // Bumped at a cut with an outage: every connection open then is closed too.
        let (kill, killed) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let down = *down_until.lock().unwrap();
                if down.is_some_and(|until| Instant::now() < until) {
                    drop(inbound);
                    continue;
                }
                let (armed, cuts) = (armed2.clone(), cuts2.clone());
                let down_until = down_until.clone();
                let mut killed = killed.clone();
                killed.mark_unchanged();
                let kill = kill.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (mut client_r, mut client_w) = inbound.into_split();
                    let (mut server_r, mut server_w) = outbound.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
                    });
                    let mut flush = false;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = tokio::select! {
                            read = client_r.read(&mut buf) => match read {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            },
                            _ = killed.changed() => break,
                        };
                        let chunk = &buf[..n];
                        if contains(chunk, b"txid_current()") {
                            flush = true;
                        }
                        let commit = flush && contains(chunk, b"COMMIT\0");
                        if server_w.write_all(chunk).await.is_err() {
                            break;
                        }
                        if commit && armed.swap(false, Ordering::SeqCst) {
                            // The COMMIT is on its way to the server; its answer never
                            // reaches observe.
                            let _ = server_w.flush().await;
                            back.abort();
                            *down_until.lock().unwrap() = Some(Instant::now() + outage);
                            if !outage.is_zero() {
                                kill.send_modify(|n| *n += 1);
                            }
                            cuts.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            return;
                        }
                        if commit {
                            flush = false;
                        }
                    }
                    back.abort();
                });
            }
        });
        Self { port, armed, cuts }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The connection breaks after a flush's COMMIT reached PostgreSQL: the actor finds out that
/// it committed (`txid_status`) and answers 202 without writing the batch a second time.
#[actix_web::test]
async fn a_flush_whose_commit_answer_is_lost_is_answered_not_written_twice() {
    let real_db = fresh_database(&test_settings().database).await;
    let pg_port = pg_port(&real_db);
    let cutter = CommitCutter::start(pg_port).await;
    let proxied = real_db.replacen(&format!(":{pg_port}/"), &format!(":{}/", cutter.port), 1);
    assert_ne!(proxied, real_db, "the database URL names its port");
    let app = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(proxied);
            s.ingest.retry_deadline_ms = 15_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let ingest = |visitor: &'static str| {
        crate::helpers::ingest(
            &app,
            &sdk.key,
            "events",
            json!([
                {"event": "a", "visitor_id": visitor},
                {"event": "b", "visitor_id": visitor},
                {"event": "c", "visitor_id": visitor},
            ]),
        )
    };
    // A first flush through the proxy (the key is cached after it).
    assert_eq!(ingest("before").await.status, 202);

    cutter.armed.store(true, Ordering::SeqCst);
    let reply = ingest("cut").await;
    assert_eq!(reply.status, 202, "{:?}", reply.json());
    assert_eq!(reply.json()["accepted"], 3);
    assert_eq!(cutter.cuts.load(Ordering::SeqCst), 1, "the commit was cut");

    let db = connect(&real_db).await;
    let stored = stored_visitors(&db, &sdk.project).await;
    assert_eq!(
        stored.get("cut"),
        Some(&3),
        "stored once, not twice: {stored:?}"
    );
    assert_eq!(stored.get("before"), Some(&3));
    let usage: i64 = db
        .query_one(
            "SELECT count FROM usage u JOIN projects p ON p.organisation_id = u.organisation_id \
             WHERE p.id = $1::text::uuid AND u.category = 'events'",
            &[&sdk.project],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(usage, 6, "usage counted once");
    assert_eq!(
        project_lines(
            &app,
            &sdk.project,
            "an interrupted commit had committed: its requests are answered, not written again"
        ),
        1
    );
}

/// An app whose database goes through a [`CommitCutter`] that keeps PostgreSQL away for
/// `outage` after it cut a COMMIT, a project key, and the direct URL of the database.
async fn app_behind_commit_cutter(
    outage: Duration,
    tweak: impl FnOnce(&mut Settings) + 'static,
) -> (TestApp, crate::helpers::Sdk, CommitCutter, String) {
    let real_db = fresh_database(&test_settings().database).await;
    let pg_port = pg_port(&real_db);
    let cutter = CommitCutter::start_with_outage(pg_port, outage).await;
    let proxied = real_db.replacen(&format!(":{pg_port}/"), &format!(":{}/", cutter.port), 1);
    let app = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(proxied);
            s.database.connect_timeout_secs = 1;
            s.database.acquire_timeout_secs = 1;
            roomy_limits(s);
            tweak(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    // A first flush through the proxy (the key is cached after it).
    let first = crate::helpers::ingest(
        &app,
        &sdk.key,
        "events",
        json!({"event": "a", "visitor_id": "before"}),
    )
    .await;
    assert_eq!(first.status, 202, "{}", first.text);
    (app, sdk, cutter, real_db)
}

fn three_events(visitor: &str) -> Value {
    json!([
        {"event": "a", "visitor_id": visitor},
        {"event": "b", "visitor_id": visitor},
        {"event": "c", "visitor_id": visitor},
    ])
}

/// A request whose COMMIT may have happened is never answered 503 "nothing stored" because
/// its deadline passed: it waits (bounded) for PostgreSQL to say, then gets the truth — here
/// 202, its items stored once — although the outage outlasted `retry_deadline_ms`.
#[actix_web::test]
async fn an_uncertain_commit_waits_past_the_retry_deadline_for_the_answer() {
    let (app, sdk, cutter, real_db) = app_behind_commit_cutter(Duration::from_secs(3), |s| {
        s.ingest.retry_deadline_ms = 1_000;
        s.ingest.outcome_deadline_ms = 30_000;
    })
    .await;
    cutter.armed.store(true, Ordering::SeqCst);
    let reply = crate::helpers::ingest(&app, &sdk.key, "events", three_events("cut")).await;
    assert_eq!(cutter.cuts.load(Ordering::SeqCst), 1, "the commit was cut");
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["accepted"], 3);
    let stored = stored_visitors(&connect(&real_db).await, &sdk.project).await;
    assert_eq!(stored.get("cut"), Some(&3), "stored once: {stored:?}");
    let metrics = app.get_text("/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            "observe_ingest_uncertain_commits_total{outcome=\"committed\"}"
        ),
        Some(1.0)
    );
}

/// If PostgreSQL stays away past `ingest.outcome_deadline_ms`, the answer says the outcome is
/// unknown — never that nothing was stored, which here would be false.
#[actix_web::test]
async fn an_uncertain_commit_past_the_outcome_deadline_is_answered_outcome_unknown() {
    let (app, sdk, cutter, real_db) = app_behind_commit_cutter(Duration::from_secs(600), |s| {
        s.ingest.retry_deadline_ms = 1_000;
        s.ingest.flush_timeout_ms = 1_000;
        s.ingest.outcome_deadline_ms = 2_000;
    })
    .await;
    cutter.armed.store(true, Ordering::SeqCst);
    let reply = crate::helpers::ingest(&app, &sdk.key, "events", three_events("cut")).await;
    assert_eq!(cutter.cuts.load(Ordering::SeqCst), 1, "the commit was cut");
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(
        reply.json()["error"]["code"],
        "outcome_unknown",
        "{}",
        reply.text
    );
    assert!(reply.header("retry-after").is_some());
    // It did commit: "outcome unknown" was the honest answer.
    let stored = stored_visitors(&connect(&real_db).await, &sdk.project).await;
    assert_eq!(stored.get("cut"), Some(&3), "{stored:?}");
}
