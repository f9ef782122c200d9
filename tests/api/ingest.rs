//! The ingest endpoints through HTTP: every status code of SPEC §6, what is stored for each
//! kind of item, grouping, identify, quotas, rate-limit headers, CORS, buffering and drain.

use std::io::Write;
use std::time::Duration;

use awc::http::Method;
use observe_core::config::{Ack, Limit};
use serde_json::{json, Value};

use crate::helpers::{
    count, eventually, ingest, metric_value, sdk, send, set_tier, spawn_app, spawn_app_with, Reply,
    TestApp,
};

fn events(n: usize, tag: &str) -> Value {
    json!({"batch": (0..n).map(|i| json!({
        "event": "page_view",
        "visitor_id": format!("{tag}-{i}"),
        "url": "https://shop.example/a",
        "properties": {"i": i}
    })).collect::<Vec<_>>()})
}

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["error"]["code"], code, "{}", reply.text);
    assert!(body["error"]["request_id"].is_string(), "{}", reply.text);
}

fn assert_rate_headers(reply: &Reply) {
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        let value = reply.header(name);
        assert!(
            value.as_deref().is_some_and(|v| v.parse::<u64>().is_ok()),
            "{name} missing or not a number on a {} answer: {value:?}",
            reply.status
        );
    }
}

async fn events_of(app: &TestApp, project: &str) -> i64 {
    count(
        app,
        "SELECT count(*) FROM events WHERE project_id = $1",
        project,
    )
    .await
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

async fn raw(
    app: &TestApp,
    key: &str,
    kind: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut req = app
        .req(Method::POST, &format!("/ingest/{kind}"))
        .insert_header(("X-API-Key", key));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    send(req, Some(body)).await
}

#[actix_web::test]
async fn every_kind_is_stored_after_a_202_in_its_table_under_its_project() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let key = &sdk.key;

    // One object, an array, and {"batch": [...]}.
    let reply = ingest(&app, key, "events", json!({"event": "$pageview", "visitor_id": "v1", "url": "https://x/a", "referrer": "https://google.com"})).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json(), json!({"accepted": 1}));
    assert_rate_headers(&reply);
    let reply = ingest(&app, key, "events", json!([{"event": "signup", "visitor_id": "v1", "user_id": 7}, {"event": "buy", "visitor_id": "v2", "properties": {"total": 12.5}}])).await;
    assert_eq!(reply.json(), json!({"accepted": 2}));
    let reply = ingest(&app, key, "events", events(3, "b")).await;
    assert_eq!(reply.json(), json!({"accepted": 3}));
    // 202 means committed: the rows are there now, no waiting.
    assert_eq!(events_of(&app, &sdk.project).await, 6);

    let reply = ingest(&app, key, "requests", json!({"method": "GET", "path": "/users/{id}", "status_code": 200, "duration_ms": 12.5, "user_agent": "curl", "request_size": 10, "response_size": 2000})).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let reply = ingest(&app, key, "errors", json!({"type": "TypeError", "message": "x is undefined", "stack_trace": "at a (app.js:1:2)", "user_id": "u1", "tags": {"env": "prod"}})).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let reply = ingest(&app, key, "metrics", json!([{"name": "queue.depth", "value": 3, "kind": "gauge", "labels": {"queue": "mail"}}, {"model": "gpt-4o", "input_tokens": 1000000, "output_tokens": 100000}])).await;
    assert_eq!(
        reply.json(),
        json!({"accepted": 2}),
        "LLM usage counts as one item"
    );
    let reply = ingest(
        &app,
        key,
        "identify",
        json!({"visitor_id": "v1", "user_id": "u1", "traits": {"plan": "pro"}}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    let conn = app.state.db.get().await.unwrap();
    let project: uuid::Uuid = sdk.project.parse().unwrap();
    let row = conn
        .query_one(
            "SELECT route, status_code, duration_ms FROM requests WHERE project_id = $1",
            &[&project],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "/users/{id}");
    assert_eq!(row.get::<_, i32>(1), 200);
    assert_eq!(row.get::<_, f64>(2), 12.5);
    let metrics: Vec<(String, f64)> = conn
        .query(
            "SELECT name, value FROM metrics WHERE project_id = $1 ORDER BY name",
            &[&project],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = metrics.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "llm.cost_usd",
            "llm.tokens.input",
            "llm.tokens.output",
            "queue.depth"
        ]
    );
    // gpt-4o at the default price table: $2.50 per million in, $10 per million out.
    assert!((metrics[0].1 - 3.5).abs() < 1e-9, "{metrics:?}");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM errors WHERE project_id = $1",
            &sdk.project
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM identities WHERE project_id = $1",
            &sdk.project
        )
        .await,
        1
    );

    // Usage is counted per category: identify and metrics count as events (SPEC §5).
    let usage: Vec<(String, i64)> = conn
        .query(
            "SELECT category, count FROM usage u JOIN projects p ON p.organisation_id = u.organisation_id
             WHERE p.id = $1 ORDER BY category",
            &[&project],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        usage,
        vec![
            ("api_requests".into(), 1),
            ("errors".into(), 1),
            ("events".into(), 9)
        ]
    );
}

#[actix_web::test]
async fn bad_bodies_get_400_413_415_and_invalid_items_422_with_nothing_stored() {
    let app = spawn_app_with(|s| s.ingest.max_body_bytes = 256 * 1024, None).await;
    let sdk = sdk(&app).await;
    let key = &sdk.key;

    let reply = raw(&app, key, "events", &[], b"{not json".to_vec()).await;
    assert_error(&reply, 400, "invalid_json");
    assert_rate_headers(&reply);
    let reply = raw(&app, key, "events", &[], b"42".to_vec()).await;
    assert_error(&reply, 400, "bad_request");

    // Over the limit on the wire, and over it only once decompressed (a gzip bomb).
    let big = vec![b' '; 257 * 1024];
    assert_error(
        &raw(&app, key, "events", &[], big.clone()).await,
        413,
        "payload_too_large",
    );
    let bomb = gzip(&vec![b' '; 8 * 1024 * 1024]);
    assert!(bomb.len() < 256 * 1024);
    let reply = raw(&app, key, "events", &[("content-encoding", "gzip")], bomb).await;
    assert_error(&reply, 413, "payload_too_large");
    assert_rate_headers(&reply);
    assert_error(
        &ingest(&app, key, "events", events(1001, "x")).await,
        413,
        "batch_too_large",
    );
    let reply = raw(
        &app,
        key,
        "events",
        &[("content-encoding", "compress")],
        b"{}".to_vec(),
    )
    .await;
    assert_error(&reply, 415, "unsupported_encoding");

    // gzip that fits is accepted.
    let body = gzip(events(5, "gz").to_string().as_bytes());
    let reply = raw(&app, key, "events", &[("content-encoding", "gzip")], body).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["accepted"], 5);

    // Every invalid item is listed; the valid ones of that request are not stored either.
    let reply = ingest(
        &app,
        key,
        "events",
        json!([
            {"event": "ok", "visitor_id": "a"},
            {"visitor_id": "b"},
            {"event": "ok"},
            "not an object",
            {"event": "ok", "visitor_id": "c", "timestamp": "yesterday"},
        ]),
    )
    .await;
    assert_error(&reply, 422, "validation_failed");
    let details: Vec<(u64, String)> = reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["index"].as_u64().unwrap(),
                d["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        details,
        vec![
            (1, "event".into()),
            (2, "visitor_id".into()),
            (3, "item".into()),
            (4, "timestamp".into())
        ]
    );
    assert_eq!(
        events_of(&app, &sdk.project).await,
        5,
        "only the gzip batch"
    );

    let (_, metrics) = app.get_text("/metrics").await;
    for line in [
        "observe_ingest_items_total{kind=\"events\",outcome=\"accepted\",reason=\"none\"} 5",
        "observe_ingest_items_total{kind=\"events\",outcome=\"rejected\",reason=\"invalid\"} 5",
        "observe_ingest_items_total{kind=\"events\",outcome=\"rejected\",reason=\"too_large\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("observe_ingest_flush_items_count"));
    assert!(metrics.contains("observe_ingest_flush_duration_seconds_bucket"));
    for state in ["waiting", "flushing", "retrying", "uncertain"] {
        let series = format!("observe_ingest_buffer_items{{state=\"{state}\"}}");
        assert_eq!(metric_value(&metrics, &series), Some(0.0), "{series}");
    }
    assert!(metrics.contains("observe_ingest_actors 1"));
}

#[actix_web::test]
async fn unknown_and_revoked_keys_get_401_and_a_dashboard_token_is_not_a_key() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let reply = ingest(&app, "obs_not_a_real_key", "events", events(1, "a")).await;
    assert_error(&reply, 401, "invalid_api_key");
    let reply = send(
        app.req(Method::POST, "/ingest/events")
            .insert_header(("Authorization", format!("Bearer {}", sdk.account.token))),
        Some(events(1, "a").to_string().into_bytes()),
    )
    .await;
    assert_error(&reply, 401, "invalid_api_key");

    assert_eq!(
        ingest(&app, &sdk.key, "events", events(1, "a"))
            .await
            .status,
        202
    );
    let reply = crate::helpers::call(
        &app,
        Method::DELETE,
        &format!("/projects/{}/api-keys/{}", sdk.project, sdk.key_id),
        Some(&sdk.account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_error(
        &ingest(&app, &sdk.key, "events", events(1, "b")).await,
        401,
        "invalid_api_key",
    );
    assert_eq!(events_of(&app, &sdk.project).await, 1);
}

#[actix_web::test]
async fn the_per_minute_limit_counts_items_and_answers_429_with_retry_after() {
    // Hobby: 100 events and 50 errors per key per minute.
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let reply = ingest(&app, &sdk.key, "events", events(60, "a")).await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.header("x-ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(reply.header("x-ratelimit-remaining").as_deref(), Some("40"));
    // 41 do not fit in the 40 left: the whole batch is refused, nothing of it stored.
    let reply = ingest(&app, &sdk.key, "events", events(41, "b")).await;
    assert_error(&reply, 429, "rate_limited");
    assert_rate_headers(&reply);
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(reply.header("x-ratelimit-remaining").as_deref(), Some("40"));
    assert_eq!(
        ingest(&app, &sdk.key, "events", events(40, "c"))
            .await
            .status,
        202
    );
    assert_error(
        &ingest(&app, &sdk.key, "events", events(1, "d")).await,
        429,
        "rate_limited",
    );
    // Categories have their own budgets.
    let reply = ingest(
        &app,
        &sdk.key,
        "errors",
        json!({"type": "E", "message": "m"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.header("x-ratelimit-limit").as_deref(), Some("50"));
    assert_eq!(events_of(&app, &sdk.project).await, 100);
}

#[actix_web::test]
async fn the_monthly_quota_is_exact_across_two_instances_then_429_quota_exceeded() {
    let cap = 250u64;
    let tweak = move |s: &mut observe_core::config::Settings| {
        s.tiers.hobby.events_per_month = Limit::Max(cap);
        s.tiers.hobby.events_per_minute = 100_000;
    };
    let a = spawn_app_with(tweak, None).await;
    let db_url = a.db_url.clone();
    let b = spawn_app_with(
        move |s| {
            tweak(s);
            s.database.url = secrecy::SecretString::from(db_url);
        },
        None,
    )
    .await;
    let sdk = sdk(&a).await;

    // 40 requests of 10 items race on two instances for 250 items of quota.
    let mut sends = Vec::new();
    for i in 0..40 {
        let (app, key) = (if i % 2 == 0 { &a } else { &b }, sdk.key.clone());
        sends.push(async move { ingest(app, &key, "events", events(10, &format!("r{i}"))).await });
    }
    let replies = futures_util::future::join_all(sends).await;
    let accepted: u64 = replies
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| r.json()["accepted"].as_u64().unwrap())
        .sum();
    for reply in replies.iter().filter(|r| r.status != 202) {
        assert_error(reply, 429, "quota_exceeded");
        assert!(reply.header("retry-after").is_some());
        assert_eq!(reply.json()["error"]["details"]["category"], "events");
    }
    assert_eq!(accepted, cap, "exactly the cap, never more");
    assert_eq!(events_of(&a, &sdk.project).await, cap as i64);
    // Full: even one more is refused, on either instance; errors have their own quota.
    assert_error(
        &ingest(&b, &sdk.key, "events", events(1, "late")).await,
        429,
        "quota_exceeded",
    );
    assert_error(
        &ingest(
            &a,
            &sdk.key,
            "identify",
            json!({"visitor_id": "v", "user_id": "u"}),
        )
        .await,
        429,
        "quota_exceeded",
    );
    assert_eq!(
        ingest(&a, &sdk.key, "errors", json!({"type": "E", "message": "m"}))
            .await
            .status,
        202
    );
    let usage = count(
        &a,
        "SELECT count FROM usage u JOIN projects p ON p.organisation_id = u.organisation_id
         WHERE p.id = $1 AND u.category = 'events'",
        &sdk.project,
    )
    .await;
    assert_eq!(usage, cap as i64);
}

#[actix_web::test]
async fn errors_group_by_fingerprint_count_people_and_reopen_when_resolved() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let frames = |line: u32| {
        json!([
            {"function": "charge", "module": "billing.cards", "lineno": line, "in_app": true},
            {"function": "handle", "module": "web.routes", "lineno": 10, "in_app": true},
        ])
    };
    let batch = json!([
        {"type": "CardError", "message": "card 4242 declined for order 1001", "stack_trace": frames(10), "user_id": "u1"},
        {"type": "CardError", "message": "card 5555 declined for order 2002", "stack_trace": frames(99), "user_id": "u2"},
        {"type": "CardError", "message": "card 5555 declined for order 3003", "stack_trace": frames(12), "user_id": "u2"},
        {"type": "TimeoutError", "message": "card 4242 declined for order 1001", "stack_trace": frames(10), "visitor_id": "v9"},
        {"type": "Custom", "message": "anything", "fingerprint": "checkout-flow"},
        {"type": "Other", "message": "something else", "fingerprint": "checkout-flow"},
    ]);
    assert_eq!(ingest(&app, &sdk.key, "errors", batch).await.status, 202);
    let conn = app.state.db.get().await.unwrap();
    let project: uuid::Uuid = sdk.project.parse().unwrap();
    let groups: Vec<(String, String, i64, i64)> = conn
        .query(
            "SELECT type, fingerprint, occurrences, affected_people FROM error_groups
             WHERE project_id = $1 ORDER BY type",
            &[&project],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(
        (groups[0].0.as_str(), groups[0].2, groups[0].3),
        ("CardError", 3, 2)
    );
    assert_eq!(
        (groups[1].0.as_str(), groups[1].2),
        ("Custom", 2),
        "the SDK's fingerprint wins over type and message"
    );
    assert_eq!(
        (groups[2].0.as_str(), groups[2].2, groups[2].3),
        ("TimeoutError", 1, 1)
    );

    // Resolved, then seen again: reopened, the regression recorded; u1 is not counted twice.
    conn.execute(
        "UPDATE error_groups SET status = 'resolved', resolved_at = now() WHERE project_id = $1 AND type = 'CardError'",
        &[&project],
    )
    .await
    .unwrap();
    let again = json!({"type": "CardError", "message": "card 1111 declined for order 9", "stack_trace": frames(50), "user_id": "u1"});
    assert_eq!(ingest(&app, &sdk.key, "errors", again).await.status, 202);
    let row = conn
        .query_one(
            "SELECT status, occurrences, affected_people, regressions, regressed_at IS NOT NULL, resolved_at IS NULL,
                    last_occurrence->>'message'
             FROM error_groups WHERE project_id = $1 AND type = 'CardError'",
            &[&project],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "unresolved");
    assert_eq!(row.get::<_, i64>(1), 4);
    assert_eq!(row.get::<_, i64>(2), 2);
    assert_eq!(row.get::<_, i32>(3), 1);
    assert!(row.get::<_, bool>(4) && row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "card 1111 declined for order 9");
}

#[actix_web::test]
async fn identify_links_visitors_to_users_latest_wins_and_traits_merge() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let now = chrono::Utc::now();
    let t = |mins: i64| (now - chrono::Duration::minutes(mins)).to_rfc3339();
    let first = json!([
        {"visitor_id": "laptop", "user_id": "ada", "traits": {"plan": "free", "name": "Ada"}, "timestamp": t(30)},
        {"visitor_id": "phone", "user_id": "ada", "traits": {"plan": "pro"}, "timestamp": t(20)},
    ]);
    assert_eq!(ingest(&app, &sdk.key, "identify", first).await.status, 202);
    // A later call moves the laptop to another user; an older one arriving late does not win.
    let second = json!([
        {"visitor_id": "laptop", "user_id": "bob", "traits": {"plan": "team"}, "timestamp": t(10)},
        {"visitor_id": "phone", "user_id": "eve", "timestamp": t(25)},
    ]);
    assert_eq!(ingest(&app, &sdk.key, "identify", second).await.status, 202);
    let conn = app.state.db.get().await.unwrap();
    let project: uuid::Uuid = sdk.project.parse().unwrap();
    let links: Vec<(String, String)> = conn
        .query(
            "SELECT visitor_id, user_id FROM identities WHERE project_id = $1 ORDER BY visitor_id",
            &[&project],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        links,
        vec![
            ("laptop".into(), "bob".into()),
            ("phone".into(), "ada".into())
        ]
    );
    let traits: Value = conn
        .query_one(
            "SELECT traits FROM people WHERE project_id = $1 AND user_id = 'ada'",
            &[&project],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        traits,
        json!({"plan": "pro", "name": "Ada"}),
        "merged, the later call's plan wins"
    );
}

#[actix_web::test]
async fn future_timestamps_are_clamped_and_ones_past_retention_are_refused() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let now = chrono::Utc::now();
    let future = (now + chrono::Duration::hours(3)).to_rfc3339();
    let reply = ingest(
        &app,
        &sdk.key,
        "events",
        json!({"event": "e", "visitor_id": "v", "timestamp": future}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let conn = app.state.db.get().await.unwrap();
    let project: uuid::Uuid = sdk.project.parse().unwrap();
    let ahead: f64 = conn
        .query_one(
            "SELECT extract(epoch FROM ts - received_at)::float8 FROM events WHERE project_id = $1",
            &[&project],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ahead, 0.0, "clamped to the receive time");
    // Hobby keeps 7 days.
    let old = (now - chrono::Duration::days(8)).to_rfc3339();
    let reply = ingest(
        &app,
        &sdk.key,
        "events",
        json!({"event": "e", "visitor_id": "v", "timestamp": old}),
    )
    .await;
    assert_error(&reply, 422, "validation_failed");
    assert_eq!(reply.json()["error"]["details"][0]["field"], "timestamp");
    // Within retention but older than any partition: stored (in the DEFAULT partition).
    let week = (now - chrono::Duration::days(6)).to_rfc3339();
    assert_eq!(
        ingest(
            &app,
            &sdk.key,
            "events",
            json!({"event": "e", "visitor_id": "v", "timestamp": week})
        )
        .await
        .status,
        202
    );
    assert_eq!(events_of(&app, &sdk.project).await, 2);
}

#[actix_web::test]
async fn browsers_get_cors_preflight_and_headers_on_answers() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let reply = send(
        app.req(Method::OPTIONS, "/ingest/events")
            .insert_header(("Origin", "https://shop.example"))
            .insert_header(("Access-Control-Request-Method", "POST"))
            .insert_header((
                "Access-Control-Request-Headers",
                "x-api-key, content-type, content-encoding",
            )),
        None,
    )
    .await;
    assert!(
        reply.status == 200 || reply.status == 204,
        "{}",
        reply.status
    );
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(reply
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let allowed = reply.header("access-control-allow-headers").unwrap();
    assert!(
        allowed.contains("x-api-key") && allowed.contains("content-encoding"),
        "{allowed}"
    );

    let reply = send(
        app.req(Method::POST, "/ingest/events")
            .insert_header(("Origin", "https://shop.example"))
            .insert_header(("X-API-Key", sdk.key.as_str()))
            .insert_header(("content-type", "text/plain")),
        Some(events(1, "beacon").to_string().into_bytes()),
    )
    .await;
    assert_eq!(
        reply.status, 202,
        "sendBeacon's text/plain is accepted: {}",
        reply.text
    );
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(reply
        .header("access-control-expose-headers")
        .unwrap()
        .contains("x-ratelimit-remaining"));
}

#[actix_web::test]
async fn a_full_buffer_answers_503_with_retry_after_and_the_waiting_request_still_lands() {
    // Flushes only by age, after 2 s: the first 1000 items sit in a buffer of 1000.
    let app = spawn_app_with(
        |s| {
            s.ingest.buffer_items = 1000;
            s.ingest.flush_items = 100_000;
            s.ingest.flush_interval_ms = 2000;
            s.tiers.hobby.events_per_minute = 100_000;
            s.tiers.hobby.events_per_month = Limit::Unlimited;
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let waiting = ingest(&app, &sdk.key, "events", events(1000, "first"));
    let refused = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ingest(&app, &sdk.key, "events", events(1, "second")).await
    };
    let (waiting, refused) = tokio::join!(waiting, refused);
    assert_error(&refused, 503, "service_unavailable");
    assert!(refused.header("retry-after").is_some());
    assert_rate_headers(&refused);
    assert_eq!(waiting.status, 202, "{}", waiting.text);
    assert_eq!(events_of(&app, &sdk.project).await, 1000);
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(metrics.contains(
        "observe_ingest_items_total{kind=\"events\",outcome=\"rejected\",reason=\"buffer_full\"} 1"
    ), "{metrics}");
}

#[actix_web::test]
async fn with_ack_enqueue_the_answer_comes_first_and_shutdown_drains_the_buffer() {
    // Nothing flushes by size or age within the test: only the drain at shutdown writes.
    let app = spawn_app_with(
        |s| {
            s.ingest.ack = Ack::Enqueue;
            s.ingest.flush_items = 100_000;
            s.ingest.flush_interval_ms = 600_000;
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    for i in 0..3 {
        let reply = ingest(&app, &sdk.key, "events", events(10, &format!("q{i}"))).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    assert_eq!(
        events_of(&app, &sdk.project).await,
        0,
        "buffered, not yet written"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        metric_value(&metrics, "observe_ingest_buffer_items{state=\"waiting\"}"),
        Some(30.0),
        "{metrics}"
    );

    let db = app.state.db.clone();
    app.server.stop(true).await;
    app.stopped.await.unwrap().unwrap();
    let conn = db.get().await.unwrap();
    let project: uuid::Uuid = sdk.project.parse().unwrap();
    let n: i64 = conn
        .query_one(
            "SELECT count(*) FROM events WHERE project_id = $1",
            &[&project],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 30, "the drain at shutdown wrote the buffer");
}

#[actix_web::test]
async fn an_idle_ingest_actor_stops_and_the_next_request_starts_another() {
    let app = spawn_app_with(|s| s.ingest.idle_stop_secs = 1, None).await;
    let sdk = sdk(&app).await;
    assert_eq!(
        ingest(&app, &sdk.key, "events", events(1, "a"))
            .await
            .status,
        202
    );
    assert_eq!(app.state.ingest.running(), 1);
    assert!(
        eventually(10, || async {
            app.state.ingest.running() == 0
                && app
                    .get_text("/metrics")
                    .await
                    .1
                    .contains("observe_ingest_actors 0")
        })
        .await,
        "the idle actor did not stop"
    );
    assert_eq!(
        ingest(&app, &sdk.key, "events", events(1, "b"))
            .await
            .status,
        202
    );
    assert_eq!(app.state.ingest.running(), 1);
    assert_eq!(events_of(&app, &sdk.project).await, 2);
    // A deliberate stop is not a failure: nothing was restarted.
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "observe_actor_restarts_total{actor=\"IngestActor\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[actix_web::test]
async fn many_concurrent_requests_share_flushes_and_all_land() {
    let app = spawn_app_with(
        |s| {
            s.tiers.team.events_per_minute = 1_000_000;
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    set_tier(&app, &sdk.project, "team").await;
    let sends = (0..200).map(|i| {
        let key = sdk.key.clone();
        let app = &app;
        async move { ingest(app, &key, "events", events(5, &format!("c{i}"))).await }
    });
    let replies = futures_util::future::join_all(sends).await;
    assert!(replies.iter().all(|r| r.status == 202));
    assert_eq!(events_of(&app, &sdk.project).await, 1000);
    // Group commit: fewer flushes than requests.
    let (_, metrics) = app.get_text("/metrics").await;
    let flushes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("observe_ingest_flush_items_count "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(flushes < 200, "{flushes} flushes for 200 requests");
}

#[actix_web::test]
async fn deleting_a_project_deletes_what_was_ingested_for_it() {
    let app = spawn_app().await;
    let doomed = sdk(&app).await;
    let kept = sdk(&app).await;
    for sdk in [&doomed, &kept] {
        assert_eq!(
            ingest(&app, &sdk.key, "events", events(3, "e"))
                .await
                .status,
            202
        );
        let error = json!({"type": "E", "message": "m", "user_id": "u"});
        assert_eq!(ingest(&app, &sdk.key, "errors", error).await.status, 202);
        let call = json!({"method": "GET", "route": "/", "status_code": 200, "duration_ms": 1});
        assert_eq!(ingest(&app, &sdk.key, "requests", call).await.status, 202);
        let metric = json!({"name": "m", "value": 1});
        assert_eq!(ingest(&app, &sdk.key, "metrics", metric).await.status, 202);
        let identify = json!({"visitor_id": "v", "user_id": "u"});
        assert_eq!(
            ingest(&app, &sdk.key, "identify", identify).await.status,
            202
        );
    }
    let reply = crate::helpers::call(
        &app,
        Method::DELETE,
        &format!("/projects/{}", doomed.project),
        Some(&doomed.account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    for table in [
        "events",
        "errors",
        "requests",
        "metrics",
        "error_groups",
        "error_group_people",
        "identities",
        "people",
    ] {
        let sql = format!("SELECT count(*) FROM {table} WHERE project_id = $1");
        // Raw rows are purged in the background (migration 0007), the rest by cascade.
        assert!(
            crate::helpers::eventually(20, || async {
                count(&app, &sql, &doomed.project).await == 0
            })
            .await,
            "{table}"
        );
        assert!(
            count(&app, &sql, &kept.project).await > 0,
            "{table} of the other project"
        );
    }
}

/// Each flush records, in its own transaction, the (kind, hour) pairs it wrote into, for the
/// Aggregator to recompute exactly those hours; raw events and requests get row ids.
#[actix_web::test]
async fn a_flush_records_the_hours_it_touched_and_rows_get_ids() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let earlier = chrono::Utc::now() - chrono::Duration::hours(3);
    let reply = ingest(
        &app,
        &sdk.key,
        "events",
        json!([
            {"event": "a", "visitor_id": "v", "timestamp": earlier.to_rfc3339()},
            {"event": "b", "visitor_id": "v"},
        ]),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let reply = ingest(
        &app,
        &sdk.key,
        "requests",
        json!({"method": "GET", "route": "/a", "status_code": 200, "duration_ms": 3}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    let conn = app.state.db.get().await.unwrap();
    let project: uuid::Uuid = sdk.project.parse().unwrap();
    let rows = conn
        .query(
            "SELECT kind, hour FROM rollup_dirty WHERE project_id = $1 ORDER BY kind, hour",
            &[&project],
        )
        .await
        .unwrap();
    let touched: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    // The hours of the rows as stored (the server's clock gave the undated items theirs).
    let expected: Vec<(String, chrono::DateTime<chrono::Utc>)> = conn
        .query(
            "SELECT DISTINCT k, date_trunc('hour', ts, 'UTC') FROM (
                 SELECT 'events' AS k, ts FROM events WHERE project_id = $1
                 UNION ALL SELECT 'requests', ts FROM requests WHERE project_id = $1) t
             ORDER BY 1, 2",
            &[&project],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(touched, expected);
    assert_eq!(touched.len(), 3, "two hours of events, one of requests");
    assert_eq!(
        touched[0].1,
        observe_core::store::ingest::hour_of(earlier),
        "the late event's hour"
    );
    let without_id: i64 = conn
        .query_one(
            "SELECT (SELECT count(*) FROM events WHERE project_id = $1 AND id IS NULL)
                  + (SELECT count(*) FROM requests WHERE project_id = $1 AND id IS NULL)",
            &[&project],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(without_id, 0);
}
