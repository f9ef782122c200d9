//! Ingestion against hostile input and a broken network (issue 10 §1–4): one bad request
//! never holds or fails anyone else's, a commit whose outcome is unknown is never called a
//! failure, every wait has a bound, and memory is bounded in bytes.

use std::time::Duration;

use futures_util::future::join_all;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::helpers::{
    call, count, create_project, fresh_database, ingest, roomy_limits, sdk, spawn_app_with,
    test_settings, Reply, TestApp,
};
use crate::support::proxy::{pg_port, PgProxy};

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["error"]["code"], code, "{}", reply.text);
    assert!(body["error"]["request_id"].is_string(), "{}", reply.text);
}

async fn events_of(app: &TestApp, project: &str) -> i64 {
    count(
        app,
        "SELECT count(*) FROM events WHERE project_id = $1",
        project,
    )
    .await
}

/// The `(index, field)` of every problem a 422 lists.
fn problems(reply: &Reply) -> Vec<(u64, String)> {
    reply.json()["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|p| {
                    (
                        p["index"].as_u64().unwrap_or(u64::MAX),
                        p["field"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- §1 poison items ---------------------------------------------------------------------

/// The defect as reproduced against `make run`: a NUL inside `properties` passed validation,
/// PostgreSQL refused the flush, the flush was retried as an outage until the deadline, and
/// every request of the project that shared its flushes got 503.
#[actix_web::test]
async fn a_nul_in_nested_properties_is_refused_at_once_and_holds_no_one_else() {
    let app = spawn_app_with(
        |s| {
            s.ingest.retry_deadline_ms = 3_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let poison = json!({"event": "x", "visitor_id": "p", "properties": {"a": "\u{0}"}});
    let good = json!({"event": "signup", "visitor_id": "g"});
    let (bad, fine) = tokio::join!(
        ingest(&app, &sdk.key, "events", poison),
        ingest(&app, &sdk.key, "events", good)
    );
    assert_error(&bad, 422, "validation_failed");
    assert_eq!(problems(&bad), vec![(0, "properties.a".to_string())]);
    assert_eq!(fine.status, 202, "{}", fine.text);
    assert_eq!(events_of(&app, &sdk.project).await, 1);
}

/// NUL is refused wherever an item can carry it, and the 422 names the item and the field.
#[actix_web::test]
async fn a_nul_is_refused_in_every_field_that_can_hold_one() {
    let app = spawn_app_with(roomy_limits, None).await;
    let sdk = sdk(&app).await;
    // (endpoint, body, the problems its 422 lists)
    type Case = (&'static str, Value, Vec<(u64, &'static str)>);
    let cases: Vec<Case> = vec![
        (
            "events",
            json!([{"event": "ok", "visitor_id": "v"}, {"event": "e", "visitor_id": "v", "properties": {"deep": {"list": [1, "a\u{0}"]}}}]),
            vec![(1, "properties.deep.list[1]")],
        ),
        (
            "events",
            json!({"event": "e", "visitor_id": "v", "properties": {"k\u{0}": 1}}),
            vec![(0, "properties")],
        ),
        (
            "identify",
            json!({"visitor_id": "v", "user_id": "u", "traits": {"name": "x\u{0}"}}),
            vec![(0, "traits.name")],
        ),
        (
            "errors",
            json!({"type": "E", "message": "m", "tags": {"region": "eu\u{0}"}}),
            vec![(0, "tags.region")],
        ),
        (
            "errors",
            json!({"type": "E", "stack_trace": [{"function": "f\u{0}", "module": "m"}]}),
            vec![(0, "stack_trace[0].function")],
        ),
        (
            "errors",
            json!({"type": "E", "stack_trace": "Traceback\u{0}"}),
            vec![(0, "stack_trace")],
        ),
        (
            "metrics",
            json!({"name": "m", "value": 1, "labels": {"queue": "a\u{0}"}}),
            vec![(0, "labels.queue")],
        ),
        (
            "requests",
            json!({"method": "GET", "route": "/a", "status_code": 200, "duration_ms": 1, "user_agent": "x\u{0}"}),
            vec![(0, "user_agent")],
        ),
    ];
    for (kind, body, expected) in cases {
        let reply = ingest(&app, &sdk.key, kind, body.clone()).await;
        assert_error(&reply, 422, "validation_failed");
        let expected: Vec<(u64, String)> =
            expected.into_iter().map(|(i, f)| (i, f.into())).collect();
        assert_eq!(problems(&reply), expected, "{kind}: {body}");
    }
    for table in ["events", "errors", "metrics", "requests", "identities"] {
        let n = count(
            &app,
            &format!("SELECT count(*) FROM {table} WHERE project_id = $1"),
            &sdk.project,
        )
        .await;
        assert_eq!(n, 0, "nothing stored in {table}");
    }
}

/// Defence in depth: a row PostgreSQL refuses for what it holds (SQLSTATE class 22, data
/// exception; class 23, integrity constraint) fails only its own request; the requests it
/// shared a flush with are committed at once, not retried until their deadline.
#[actix_web::test]
async fn a_row_the_database_refuses_fails_only_its_own_request() {
    let app = spawn_app_with(
        |s| {
            // Everything sent at once lands in one flush.
            s.ingest.flush_interval_ms = 300;
            s.ingest.retry_deadline_ms = 3_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    // A refusal validation cannot foresee, made by a trigger of the test's own.
    app.state
        .db
        .get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.name = 'refused-data' THEN
                     RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22023';
                 END IF;
                 IF NEW.name = 'refused-constraint' THEN
                     RAISE EXCEPTION 'refused by the test' USING ERRCODE = '23514';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER test_refuse BEFORE INSERT ON events
                 FOR EACH ROW EXECUTE FUNCTION test_refuse();",
        )
        .await
        .unwrap();
    let body = |name: &str, i: usize| {
        json!([
            {"event": name, "visitor_id": format!("v{i}")},
            {"event": "ok", "visitor_id": format!("w{i}")},
        ])
    };
    let mut sends = Vec::new();
    for i in 0..8 {
        let name = match i {
            3 => "refused-data",
            6 => "refused-constraint",
            _ => "ok",
        };
        sends.push(ingest(&app, &sdk.key, "events", body(name, i)));
    }
    let replies = join_all(sends).await;
    for (i, reply) in replies.iter().enumerate() {
        match i {
            3 => assert_error(reply, 422, "invalid_data"),
            6 => assert_error(reply, 500, "internal_error"),
            _ => assert_eq!(reply.status, 202, "request {i}: {}", reply.text),
        }
    }
    assert_eq!(
        events_of(&app, &sdk.project).await,
        12,
        "the 6 good requests"
    );
    let usage = count(
        &app,
        "SELECT coalesce(sum(count), 0)::bigint FROM usage u JOIN projects p
         ON p.organisation_id = u.organisation_id WHERE p.id = $1",
        &sdk.project,
    )
    .await;
    assert_eq!(usage, 12, "the refused requests are not counted");
}

// ---- §3 every wait has a bound -----------------------------------------------------------

/// A connection that stops passing bytes without closing (a black hole) is only noticed by a
/// timeout: the flush on it gives up, and the request is written through a fresh connection.
#[actix_web::test]
async fn a_flush_on_a_black_holed_connection_is_retried_not_hung() {
    let real_db = fresh_database(&test_settings().database).await;
    let target = pg_port(&real_db);
    let proxy = PgProxy::start(target).await;
    let proxied = proxy.url(&real_db, target);
    let app = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(proxied);
            s.database.pool_max_size = 2;
            s.ingest.flush_timeout_ms = 1_500;
            s.ingest.retry_deadline_ms = 20_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    assert_eq!(
        ingest(
            &app,
            &sdk.key,
            "events",
            json!({"event": "a", "visitor_id": "v"})
        )
        .await
        .status,
        202
    );
    proxy.black_hole_open_connections();
    let reply = tokio::time::timeout(
        Duration::from_secs(25),
        ingest(
            &app,
            &sdk.key,
            "events",
            json!({"event": "b", "visitor_id": "v"}),
        ),
    )
    .await
    .expect("the request is answered, not left hanging on a silent connection");
    assert_eq!(reply.status, 202, "{}", reply.text);
}

/// Every pooled connection carries the server-side bounds and TCP keepalive from
/// configuration.
#[actix_web::test]
async fn every_pooled_connection_carries_its_timeouts() {
    let app = spawn_app_with(|_| {}, None).await;
    let conn = app.state.db.get().await.unwrap();
    let setting = |name: &'static str| {
        let conn = &conn;
        async move {
            conn.query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let db = &app.state.settings.database;
    assert_eq!(
        setting("statement_timeout").await,
        db.statement_timeout_ms.to_string()
    );
    assert_eq!(
        setting("idle_in_transaction_session_timeout").await,
        db.idle_in_transaction_timeout_ms.to_string()
    );
    assert_ne!(db.statement_timeout_ms, 0, "bounded by default");
}

// ---- §4 bounded memory -------------------------------------------------------------------

/// A body that trickles in is cut off once the body read has taken too long, so slow
/// clients cannot hold memory and connections open.
#[actix_web::test]
async fn a_slow_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(
        |s| {
            s.ingest.body_timeout_ms = 1_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /ingest/events HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"event\"",
        sdk.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never gave up on the slow body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

/// A key whose per-minute budget is spent is answered 429 before its body is read or
/// parsed: a flood of large bodies costs no JSON parsing.
#[actix_web::test]
async fn a_key_out_of_budget_is_refused_before_its_body_is_parsed() {
    let app = spawn_app_with(|_| {}, None).await;
    let sdk = sdk(&app).await;
    // Hobby: 100 events a minute.
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"event": "e", "visitor_id": format!("v{i}")}))
        .collect();
    assert_eq!(
        ingest(&app, &sdk.key, "events", json!(batch)).await.status,
        202
    );
    let reply = crate::helpers::send(
        app.req(awc::http::Method::POST, "/ingest/events")
            .insert_header(("X-API-Key", sdk.key.as_str()))
            .insert_header(("content-type", "application/json")),
        Some(b"{ this is not JSON".to_vec()),
    )
    .await;
    assert_error(&reply, 429, "rate_limited");
}

/// JSON routes other than ingest take small bodies.
#[actix_web::test]
async fn json_routes_refuse_bodies_over_16_kib() {
    let app = spawn_app_with(|_| {}, None).await;
    let account = crate::helpers::register(&app).await;
    let reply = call(
        &app,
        awc::http::Method::POST,
        "/projects",
        Some(&account.token),
        Some(json!({"name": "x".repeat(20 * 1024)})),
    )
    .await;
    assert_error(&reply, 413, "payload_too_large");
    // A normal body still passes.
    create_project(&app, &account.token, "fine").await;
}

/// About 17 KB of JSON: two events with 8 KB of properties each.
fn heavy_body(tag: &str, i: usize) -> Value {
    let filler = "x".repeat(8_000);
    json!([
        {"event": "e", "visitor_id": format!("{tag}{i}a"), "properties": {"f": filler}},
        {"event": "e", "visitor_id": format!("{tag}{i}b"), "properties": {"f": filler}},
    ])
}

/// Sends `n` heavy bodies to each key at once and returns the replies.
async fn send_heavy(app: &TestApp, keys: &[&str], n: usize) -> Vec<Reply> {
    let mut sends = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        for i in 0..n {
            sends.push(ingest(app, key, "events", heavy_body(&format!("k{k}-"), i)));
        }
    }
    join_all(sends).await
}

/// A project's buffer is bounded in bytes as well as items: requests beyond it are answered
/// 503 at once, and what was answered 202 is stored.
#[actix_web::test]
async fn a_project_buffer_is_bounded_in_bytes() {
    let app = spawn_app_with(
        |s| {
            // Nothing flushes for 2 s: requests pile up in the buffer.
            s.ingest.flush_interval_ms = 2_000;
            s.ingest.flush_items = 100_000;
            s.ingest.max_body_bytes = 64 * 1024;
            s.ingest.buffer_bytes = 100_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let replies = send_heavy(&app, &[&sdk.key], 10).await;
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != 202).collect();
    let fit = 100_000 / heavy_body("k0-", 0).to_string().len();
    assert_eq!(accepted, fit, "as many as fit in 100,000 bytes");
    assert_eq!(accepted + refused.len(), 10);
    for reply in refused {
        assert_error(reply, 503, "service_unavailable");
        assert!(reply.header("retry-after").is_some());
    }
    assert_eq!(events_of(&app, &sdk.project).await, 2 * accepted as i64);
}

/// The whole process holds at most `ingest.max_inflight_bytes` of ingest bodies, across
/// projects: each project's buffer has room, the process does not.
#[actix_web::test]
async fn the_process_wide_ingest_byte_budget_answers_503_when_spent() {
    let app = spawn_app_with(
        |s| {
            s.ingest.flush_interval_ms = 2_000;
            s.ingest.flush_items = 100_000;
            s.ingest.max_body_bytes = 64 * 1024;
            s.ingest.max_inflight_bytes = 100_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let (one, two) = (sdk(&app).await, sdk(&app).await);
    let replies = send_heavy(&app, &[&one.key, &two.key], 4).await;
    let accepted = replies.iter().filter(|r| r.status == 202).count();
    // At most as many as fit; bodies refused half-read held their share for a moment.
    let fit = 100_000 / heavy_body("k0-", 0).to_string().len();
    assert!(
        (1..=fit).contains(&accepted),
        "{accepted} accepted, {fit} fit in 100,000 bytes"
    );
    for reply in replies.iter().filter(|r| r.status != 202) {
        assert_error(reply, 503, "service_unavailable");
    }
    let stored = events_of(&app, &one.project).await + events_of(&app, &two.project).await;
    assert_eq!(stored, 2 * accepted as i64);
    // Everything answered: the budget is whole again.
    let metrics = app.get_text("/metrics").await.1;
    assert!(
        metrics.contains("\nobserve_ingest_inflight_bytes 0\n"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("inflight"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Deleting a project stops its IngestActor at once: a request waiting in its buffer is
/// answered (nothing stored) instead of being written for a project that no longer exists.
#[actix_web::test]
async fn deleting_a_project_answers_its_buffered_requests_at_once() {
    let app = spawn_app_with(
        |s| {
            s.ingest.flush_interval_ms = 5_000;
            s.ingest.flush_items = 100_000;
            roomy_limits(s);
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let waiting = ingest(
        &app,
        &sdk.key,
        "events",
        json!({"event": "e", "visitor_id": "v"}),
    );
    let delete = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = call(
            &app,
            awc::http::Method::DELETE,
            &format!("/projects/{}", sdk.project),
            Some(&sdk.account.token),
            None,
        )
        .await;
        assert_eq!(reply.status, 204, "{}", reply.text);
    };
    let (reply, ()) = tokio::join!(waiting, delete);
    assert_error(&reply, 401, "invalid_api_key");
    assert_eq!(events_of(&app, &sdk.project).await, 0);
}
