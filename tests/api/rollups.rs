//! Rollups against a reference computed from the raw rows, on generated data ingested through
//! HTTP: counts exact, unique counts and percentiles (merged over hours) within the stated 2%,
//! top lists exact; late data folded in by the next run; a re-run of an hour gives the same
//! rows; an identify sent after the events changes who those events' hours count.

use chrono::{DateTime, Duration, Utc};
use observe_core::config::{Limit, Settings};
use observe_core::sketch::{Latency, Uniques};
use observe_core::store::ingest::hour_of;
use observe_core::store::rollups::{aggregate, Kind};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{ingest, roomy_limits, sdk, spawn_app_with, TestApp};

const ALL: [Kind; 4] = [Kind::Events, Kind::Metrics, Kind::Errors, Kind::Requests];

fn roomy(s: &mut Settings) {
    roomy_limits(s);
    s.tiers.hobby.api_requests_per_minute = 1_000_000;
    s.tiers.hobby.api_requests_per_month = Limit::Unlimited;
}

/// A small deterministic generator (no dependency): xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Roughly log-uniform between 1 and 10,000: a long tail, like latencies.
    fn latency(&mut self) -> f64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        10f64.powf(4.0 * u)
    }
}

async fn post_all(app: &TestApp, key: &str, kind: &str, items: Vec<Value>) {
    for chunk in items.chunks(1000) {
        let reply = ingest(app, key, kind, json!(chunk)).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    app: &TestApp,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> T {
    app.state
        .db
        .get()
        .await
        .unwrap()
        .query_one(sql, params)
        .await
        .unwrap()
        .get(0)
}

fn within(estimate: f64, exact: f64, bound: f64) -> bool {
    (estimate - exact).abs() <= exact * bound
}

/// The stored visitors and people sketches of the hours `[from, to)`, merged.
async fn merged_uniques(
    app: &TestApp,
    project: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (u64, u64) {
    let rows = app
        .state
        .db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT visitors, people FROM rollup_events
             WHERE project_id = $1 AND hour >= $2 AND hour < $3",
            &[&project, &from, &to],
        )
        .await
        .unwrap();
    let (mut visitors, mut people) = (Uniques::default(), Uniques::default());
    for row in rows {
        visitors.merge(&Uniques::from_bytes(row.get(0)).unwrap());
        people.merge(&Uniques::from_bytes(row.get(1)).unwrap());
    }
    (visitors.count(), people.count())
}

/// Exact distinct people (users, else visitors) and identified users of `[from, to)`.
async fn exact_uniques(
    app: &TestApp,
    project: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (i64, i64) {
    let row = app
        .state
        .db
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(DISTINCT coalesce('u:' || coalesce(e.user_id, i.user_id), 'v:' || e.visitor_id)),
                    count(DISTINCT coalesce(e.user_id, i.user_id))
             FROM events e LEFT JOIN identities i
               ON i.project_id = e.project_id AND i.visitor_id = e.visitor_id
             WHERE e.project_id = $1 AND e.ts >= $2 AND e.ts < $3",
            &[&project, &from, &to],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[actix_web::test]
async fn rollups_match_a_reference_from_raw_rows() {
    let app = spawn_app_with(roomy, None).await;
    let sdk = sdk(&app).await;
    let project: Uuid = sdk.project.parse().unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    // Three closed hours, a few hours back.
    let first = hour_of(Utc::now()) - Duration::hours(5);
    let hours: Vec<DateTime<Utc>> = (0..3).map(|h| first + Duration::hours(h)).collect();
    let at = |rng: &mut Rng, hour: DateTime<Utc>| {
        (hour + Duration::seconds(rng.below(3600) as i64)).to_rfc3339()
    };
    let mut events = Vec::new();
    for hour in &hours {
        for _ in 0..3_000 {
            let visitor = rng.below(4_000);
            let user = (visitor % 5 == 0).then(|| format!("user-{}", visitor / 5));
            let page = rng.below(4) < 3;
            let referrer = [
                Some("https://google.com"),
                Some("https://news.example"),
                None,
            ][rng.below(3) as usize];
            let name = if page {
                "$pageview"
            } else {
                ["signup", "click", "buy"][rng.below(3) as usize]
            };
            events.push(json!({
                "event": name,
                "visitor_id": format!("visitor-{visitor}"),
                "user_id": user,
                "url": format!("https://shop.example/p{}", rng.below(12)),
                "referrer": referrer,
                "timestamp": at(&mut rng, *hour),
            }));
        }
    }
    post_all(&app, &sdk.key, "events", events).await;
    let mut calls = Vec::new();
    for hour in &hours {
        for _ in 0..1_500 {
            let route = ["/users/{id}", "/orders", "/login"][rng.below(3) as usize];
            let status = [200, 200, 200, 201, 404, 500][rng.below(6) as usize];
            let method = if route == "/orders" { "POST" } else { "GET" };
            calls.push(json!({
                "method": method,
                "route": route,
                "status_code": status,
                "duration_ms": rng.latency(),
                "timestamp": at(&mut rng, *hour),
            }));
        }
    }
    post_all(&app, &sdk.key, "requests", calls).await;
    let metrics: Vec<Value> = hours
        .iter()
        .flat_map(|hour| (0..50).map(move |i| (hour, i)).collect::<Vec<_>>())
        .map(|(hour, i)| {
            json!({"name": "queue.depth", "value": i, "kind": "gauge", "labels": {"queue": "mail"},
                   "timestamp": (*hour + Duration::seconds(i * 60)).to_rfc3339()})
        })
        .collect();
    post_all(&app, &sdk.key, "metrics", metrics).await;

    let rows = aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    assert!(rows > 0);
    let dirty: i64 = one(
        &app,
        "SELECT count(*) FROM rollup_dirty WHERE hour < date_trunc('hour', now())",
        &[],
    )
    .await;
    assert_eq!(dirty, 0, "every closed dirty hour was taken");

    // Counts: exact, hour by hour and in total.
    for hour in &hours {
        let end = *hour + Duration::hours(1);
        let (stored, exact): (i64, i64) = (
            one(
                &app,
                "SELECT events FROM rollup_events WHERE project_id = $1 AND hour = $2",
                &[&project, hour],
            )
            .await,
            one(
                &app,
                "SELECT count(*) FROM events WHERE project_id = $1 AND ts >= $2 AND ts < $3",
                &[&project, hour, &end],
            )
            .await,
        );
        assert_eq!(stored, exact);
        assert_eq!(stored, 3_000);
    }
    // Uniques over the whole range from merged sketches (>2048 keys: the estimated path).
    let (from, to) = (hours[0], hours[2] + Duration::hours(1));
    let (visitors, people) = merged_uniques(&app, project, from, to).await;
    let (exact_visitors, exact_people) = exact_uniques(&app, project, from, to).await;
    assert!(
        exact_visitors > 2_048,
        "exercise the estimated path: {exact_visitors}"
    );
    assert!(
        within(visitors as f64, exact_visitors as f64, 0.02),
        "visitors {visitors} vs {exact_visitors}"
    );
    assert!(
        within(people as f64, exact_people as f64, 0.02),
        "people {people} vs {exact_people}"
    );
    // Top pages: exact sums of hourly counts.
    let top: Vec<(String, i64)> = app
        .state
        .db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT value, sum(count)::bigint FROM rollup_event_values
             WHERE project_id = $1 AND dim = 'page' GROUP BY value ORDER BY 2 DESC, 1 LIMIT 5",
            &[&project],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let exact_top: Vec<(String, i64)> = app
        .state
        .db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT url, count(*) FROM events WHERE project_id = $1 AND name = '$pageview'
             GROUP BY url ORDER BY 2 DESC, 1 LIMIT 5",
            &[&project],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(top, exact_top);

    // Requests: counts and error classes exact; percentiles over the range within 2%.
    for (method, route) in [
        ("GET", "/users/{id}"),
        ("POST", "/orders"),
        ("GET", "/login"),
    ] {
        let conn = app.state.db.get().await.unwrap();
        let rows = conn
            .query(
                "SELECT count, errors_4xx, errors_5xx, latency FROM rollup_requests
                 WHERE project_id = $1 AND method = $2 AND route = $3",
                &[&project, &method, &route],
            )
            .await
            .unwrap();
        let (mut count, mut c4, mut c5, mut merged) = (0i64, 0i64, 0i64, Latency::default());
        for row in &rows {
            count += row.get::<_, i64>(0);
            c4 += row.get::<_, i64>(1);
            c5 += row.get::<_, i64>(2);
            merged.merge(&Latency::from_bytes(row.get(3)).unwrap());
        }
        let exact = conn
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE status_code BETWEEN 400 AND 499),
                        count(*) FILTER (WHERE status_code >= 500),
                        array_agg(duration_ms ORDER BY duration_ms)
                 FROM requests WHERE project_id = $1 AND method = $2 AND route = $3",
                &[&project, &method, &route],
            )
            .await
            .unwrap();
        assert_eq!(
            (count, c4, c5),
            (exact.get(0), exact.get(1), exact.get(2)),
            "{route}"
        );
        let sorted: Vec<f64> = exact.get(3);
        for q in [0.5, 0.95, 0.99] {
            let reference = sorted[(q * (sorted.len() as f64 - 1.0)) as usize];
            let got = merged.quantile(q).unwrap();
            assert!(
                within(got, reference, 0.02),
                "{route} p{q}: {got} vs {reference}"
            );
        }
    }
    // Metrics: count, sum, min, max and last per hour.
    let (count, sum, min, max, last): (i64, f64, f64, f64, f64) = {
        let row = app
            .state
            .db
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT count, sum, min, max, last FROM rollup_metrics
                 WHERE project_id = $1 AND name = 'queue.depth' AND hour = $2",
                &[&project, &hours[1]],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
    };
    assert_eq!((count, sum, min, max, last), (50, 1225.0, 0.0, 49.0, 49.0));

    // A re-run of the same hour gives the same rows.
    let snapshot = |app: &TestApp| {
        let pool = app.state.db.clone();
        async move {
            pool.get()
                .await
                .unwrap()
                .query(
                    "SELECT hour, events, pageviews, visitors, people FROM rollup_events
                     WHERE project_id = $1 ORDER BY hour",
                    &[&project],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    let (h, e, p, v, pp): (DateTime<Utc>, i64, i64, Vec<u8>, Vec<u8>) =
                        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                    (h, e, p, v, pp)
                })
                .collect::<Vec<_>>()
        }
    };
    let before = snapshot(&app).await;
    one::<i64>(
        &app,
        "WITH m AS (INSERT INTO rollup_dirty (kind, project_id, hour) VALUES ('events', $1, $2)
                    RETURNING 1) SELECT count(*) FROM m",
        &[&project, &hours[1]],
    )
    .await;
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    assert_eq!(snapshot(&app).await, before, "a re-run changed the rows");

    // A late event for an hour already rolled up is folded in by the next run.
    let late = json!({"event": "late", "visitor_id": "visitor-late", "timestamp": (hours[0] + Duration::minutes(30)).to_rfc3339()});
    assert_eq!(ingest(&app, &sdk.key, "events", late).await.status, 202);
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    let stored: i64 = one(
        &app,
        "SELECT events FROM rollup_events WHERE project_id = $1 AND hour = $2",
        &[&project, &hours[0]],
    )
    .await;
    assert_eq!(stored, 3_001);
}

/// A visitor identified after their events were rolled up counts as that person in those
/// hours once the next run has gone by.
#[actix_web::test]
async fn an_identify_after_the_events_changes_who_their_hours_count() {
    let app = spawn_app_with(roomy, None).await;
    let sdk = sdk(&app).await;
    let project: Uuid = sdk.project.parse().unwrap();
    let hour = hour_of(Utc::now()) - Duration::hours(3);
    let at = (hour + Duration::minutes(10)).to_rfc3339();
    let events = json!([
        {"event": "$pageview", "visitor_id": "anon-1", "timestamp": at},
        {"event": "$pageview", "visitor_id": "anon-2", "timestamp": at},
        {"event": "$pageview", "visitor_id": "known", "user_id": "alice", "timestamp": at},
    ]);
    assert_eq!(ingest(&app, &sdk.key, "events", events).await.status, 202);
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    let next = hour + Duration::hours(1);
    assert_eq!(merged_uniques(&app, project, hour, next).await, (3, 1));

    // anon-1 turns out to be alice on another device; anon-2 is bob.
    let identify = json!([
        {"visitor_id": "anon-1", "user_id": "alice"},
        {"visitor_id": "anon-2", "user_id": "bob"},
    ]);
    assert_eq!(
        ingest(&app, &sdk.key, "identify", identify).await.status,
        202
    );
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    assert_eq!(
        merged_uniques(&app, project, hour, next).await,
        (2, 2),
        "people, not devices: alice twice is one; bob is now identified"
    );
    assert_eq!(exact_uniques(&app, project, hour, next).await, (2, 2));
    let marks: i64 = one(&app, "SELECT count(*) FROM rollup_dirty_visitors", &[]).await;
    assert_eq!(marks, 0);

    // The same links again change nobody: no hour needs rolling up again.
    let again = json!([
        {"visitor_id": "anon-1", "user_id": "alice"},
        {"visitor_id": "known", "user_id": "alice"},
    ]);
    assert_eq!(ingest(&app, &sdk.key, "identify", again).await.status, 202);
    let marks: i64 = one(&app, "SELECT count(*) FROM rollup_dirty_visitors", &[]).await;
    assert_eq!(marks, 0, "unchanged links mark no visitor");
    let moved = json!({"visitor_id": "anon-2", "user_id": "carol"});
    assert_eq!(ingest(&app, &sdk.key, "identify", moved).await.status, 202);
    let marks: i64 = one(&app, "SELECT count(*) FROM rollup_dirty_visitors", &[]).await;
    assert_eq!(marks, 1, "a visitor linked to someone else is marked");
}

/// The app's own Aggregator, on its schedule, rolls up what was ingested.
#[actix_web::test]
async fn the_aggregator_runs_on_its_schedule() {
    let app = spawn_app_with(
        |s| {
            roomy(s);
            s.jobs.enabled = true;
            s.jobs.aggregate_events = "*/1 * * * * *".into();
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let project: Uuid = sdk.project.parse().unwrap();
    let hour = hour_of(Utc::now()) - Duration::hours(2);
    let event = json!({"event": "e", "visitor_id": "v", "timestamp": (hour + Duration::minutes(5)).to_rfc3339()});
    assert_eq!(ingest(&app, &sdk.key, "events", event).await.status, 202);
    assert!(
        crate::helpers::eventually(15, || async {
            app.state
                .db
                .get()
                .await
                .unwrap()
                .query_opt(
                    "SELECT 1 FROM rollup_events WHERE project_id = $1 AND hour = $2",
                    &[&project, &hour],
                )
                .await
                .unwrap()
                .is_some()
        })
        .await,
        "the hour was never rolled up"
    );
}
