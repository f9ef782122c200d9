//! `/stats` and `/api-stats` through HTTP: live (the current hour from raw rows), the same
//! answer before and after the Aggregator ran, zero-filled empty ranges, days in a time zone
//! across a DST change, and bad parameters named in a 422.

use chrono::{DateTime, Duration, Utc};
use observe_core::store::rollups::{aggregate, Kind};
use serde_json::{json, Value};

use crate::helpers::{call, ingest, roomy_limits, sdk, set_tier, spawn_app_with, Sdk, TestApp};

const ALL: [Kind; 4] = [Kind::Events, Kind::Metrics, Kind::Errors, Kind::Requests];

async fn get(app: &TestApp, sdk: &Sdk, path: &str) -> (u16, Value) {
    let reply = call(
        app,
        awc::http::Method::GET,
        &format!("/projects/{}{path}", sdk.project),
        Some(&sdk.account.token),
        None,
    )
    .await;
    (reply.status, reply.json())
}

fn roomy(s: &mut observe_core::config::Settings) {
    roomy_limits(s);
    s.tiers.hobby.api_requests_per_minute = 1_000_000;
}

#[actix_web::test]
async fn stats_are_live_and_the_same_before_and_after_the_aggregator() {
    let app = spawn_app_with(roomy, None).await;
    let sdk = sdk(&app).await;
    let two_hours_ago = (Utc::now() - Duration::hours(2)).to_rfc3339();
    let events = json!([
        {"event": "$pageview", "visitor_id": "a", "url": "https://x/home", "referrer": "https://google.com", "timestamp": two_hours_ago},
        {"event": "$pageview", "visitor_id": "b", "url": "https://x/home", "timestamp": two_hours_ago},
        {"event": "signup", "visitor_id": "b", "user_id": "bob", "timestamp": two_hours_ago},
        {"event": "$pageview", "visitor_id": "c", "url": "https://x/pricing"},
    ]);
    assert_eq!(ingest(&app, &sdk.key, "events", events).await.status, 202);
    let calls = json!([
        {"method": "GET", "route": "/a", "status_code": 200, "duration_ms": 10},
        {"method": "GET", "route": "/a", "status_code": 500, "duration_ms": 30},
        {"method": "POST", "route": "/b", "status_code": 404, "duration_ms": 5, "timestamp": two_hours_ago},
    ]);
    assert_eq!(ingest(&app, &sdk.key, "requests", calls).await.status, 202);

    let (status, before) = get(&app, &sdk, "/stats?from=6h").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["group_by"], "hour");
    assert_eq!(
        before["totals"]["events"], 4,
        "the event of a second ago is counted (live)"
    );
    assert_eq!(before["totals"]["pageviews"], 3);
    assert_eq!(before["totals"]["visitors"], 3, "a, bob (b) and c");
    assert_eq!(before["totals"]["people"], 1);
    assert_eq!(
        before["top_pages"][0],
        json!({"value": "https://x/home", "count": 2})
    );
    assert_eq!(
        before["top_referrers"],
        json!([{"value": "https://google.com", "count": 1}])
    );
    assert_eq!(
        before["series"].as_array().unwrap().len(),
        7,
        "6 hours and the current one, zero-filled"
    );
    let series_total: i64 = before["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["events"].as_i64().unwrap())
        .sum();
    assert_eq!(series_total, 4);

    let (_, api_before) = get(&app, &sdk, "/api-stats?from=6h").await;
    let a = &api_before["items"][0];
    assert_eq!(
        (a["method"].as_str(), a["route"].as_str()),
        (Some("GET"), Some("/a"))
    );
    assert_eq!(a["count"], 2);
    assert_eq!(a["error_rate"], 0.5);
    assert_eq!(a["avg_ms"], 20.0);

    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    let (_, after) = get(
        &app,
        &sdk,
        &format!(
            "/stats?from={}&to={}",
            urlencode(&before["from"]),
            urlencode(&before["to"])
        ),
    )
    .await;
    assert_eq!(
        after["totals"], before["totals"],
        "rollups and raw rows agree"
    );
    assert_eq!(after["series"], before["series"]);
    assert_eq!(after["top_pages"], before["top_pages"]);
    let (_, api_after) = get(
        &app,
        &sdk,
        &format!(
            "/api-stats?from={}&to={}",
            urlencode(&api_before["from"]),
            urlencode(&api_before["to"])
        ),
    )
    .await;
    assert_eq!(api_after["items"], api_before["items"]);
}

/// Three days of events at scattered hours: what the rollups' blocks (whole days, runs of 2 to
/// 16 hours, with their counts by value and their stored unique counts) answer must equal what
/// raw rows answer, in UTC days, a zone's days and hours — and rows stored without their unique
/// counts (written before migration 0013) are counted from their sketches.
#[actix_web::test]
async fn long_ranges_read_from_blocks_agree_with_raw_rows() {
    let app = spawn_app_with(roomy, None).await;
    let sdk = sdk(&app).await;
    let now = Utc::now();
    let start = (now - Duration::days(3))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let span = (now - start).num_minutes() as u64 - 5;
    let events: Vec<Value> = (0..400)
        .map(|_| {
            let at = start + Duration::minutes(next(span) as i64);
            let visitor = format!("v{}", next(40));
            let mut e = json!({
                "event": if next(4) == 0 { "signup" } else { "$pageview" },
                "visitor_id": visitor,
                "url": format!("https://x/p{}", next(15)),
                "referrer": format!("https://r{}.example/", next(6)),
                "timestamp": at.to_rfc3339(),
            });
            if next(5) == 0 {
                e["user_id"] = json!(format!("user{}", next(8)));
            }
            e
        })
        .collect();
    for chunk in events.chunks(50) {
        let reply = ingest(&app, &sdk.key, "events", Value::Array(chunk.to_vec())).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let to = urlencode(&json!(now.to_rfc3339()));
    let from = urlencode(&json!(start.to_rfc3339()));
    let queries = [
        format!("/stats?from={from}&to={to}&group_by=day"),
        format!("/stats?from={from}&to={to}&group_by=day&tz=America/New_York"),
        format!("/stats?from={from}&to={to}&group_by=hour&tz=Asia/Tokyo"),
    ];
    let mut raw = Vec::new();
    for q in &queries {
        let (status, body) = get(&app, &sdk, q).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["totals"]["events"], 400);
        raw.push(body);
    }
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    let db = app.state.db.get().await.unwrap();
    let blocks: i64 = db
        .query_one(
            "SELECT count(*) FROM rollup_event_value_blocks WHERE hours >= 8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(blocks > 0, "the range is read from long blocks");
    let same = |label: &str, answers: &[Value]| {
        for (q, (before, after)) in queries.iter().zip(raw.iter().zip(answers)) {
            for part in [
                "totals",
                "series",
                "top_pages",
                "top_referrers",
                "top_events",
            ] {
                assert_eq!(after[part], before[part], "{label}: {part} of {q}");
            }
        }
    };
    let mut rolled = Vec::new();
    for q in &queries {
        rolled.push(get(&app, &sdk, q).await.1);
    }
    same("from rollups", &rolled);

    for table in ["rollup_events", "rollup_event_blocks"] {
        db.execute(
            &format!("UPDATE {table} SET visitors_count = NULL, people_count = NULL"),
            &[],
        )
        .await
        .unwrap();
    }
    let mut old_rows = Vec::new();
    for q in &queries {
        old_rows.push(get(&app, &sdk, q).await.1);
    }
    same("rows without stored counts", &old_rows);
}

fn urlencode(v: &Value) -> String {
    v.as_str().unwrap().replace('+', "%2B").replace(':', "%3A")
}

#[actix_web::test]
async fn an_empty_range_is_zero_filled_and_bad_parameters_are_named() {
    let app = spawn_app_with(roomy, None).await;
    let sdk = sdk(&app).await;
    let (status, body) = get(&app, &sdk, "/stats?from=3d&group_by=day&tz=Africa/Lagos").await;
    assert_eq!(status, 200, "{body}");
    let series = body["series"].as_array().unwrap();
    assert!(series.len() == 3 || series.len() == 4, "{body}");
    assert!(series
        .iter()
        .all(|p| p["events"] == 0 && p["visitors"] == 0));
    assert_eq!(body["totals"]["events"], 0);
    assert_eq!(body["tz"], "Africa/Lagos");
    let (_, api) = get(&app, &sdk, "/api-stats").await;
    assert_eq!(api["items"], json!([]));

    let (status, body) = get(
        &app,
        &sdk,
        "/stats?from=yesterday-ish&tz=Mars/Olympus&group_by=week",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for field in ["from", "tz", "group_by"] {
        assert!(fields.contains(&field), "{field} not named: {body}");
    }
    let (status, _) = get(&app, &sdk, "/api-stats?to=not-a-time").await;
    assert_eq!(status, 422);
}

#[actix_web::test]
async fn days_follow_the_time_zone_across_a_dst_change() {
    let app = spawn_app_with(roomy, None).await;
    let sdk = sdk(&app).await;
    // A year's retention, so November is still in range; set before the key's first use.
    set_tier(&app, &sdk.project, "team").await;
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap().to_rfc3339();
    let events = json!([
        // New York: Oct 31 23:30 EDT (UTC−4).
        {"event": "e", "visitor_id": "1", "timestamp": at("2026-11-01T03:30:00Z")},
        // Nov 1 00:30 EDT: the day with 25 hours (clocks go back at 02:00).
        {"event": "e", "visitor_id": "2", "timestamp": at("2026-11-01T04:30:00Z")},
        // Nov 1 23:30 EST (UTC−5): still Nov 1 in New York, Nov 2 in UTC.
        {"event": "e", "visitor_id": "3", "timestamp": at("2026-11-02T04:30:00Z")},
        // Nov 2 00:30 in Lagos (UTC+1), Nov 1 in UTC.
        {"event": "e", "visitor_id": "4", "timestamp": at("2026-11-01T23:30:00Z")},
    ]);
    let reply = ingest(&app, &sdk.key, "events", events).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();

    let days = |body: &Value| -> Vec<(String, i64)> {
        body["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["start"].as_str().unwrap().to_string(),
                    p["events"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let (status, ny) = get(
        &app,
        &sdk,
        "/stats?from=2026-10-31&to=2026-11-03&group_by=day&tz=America/New_York",
    )
    .await;
    assert_eq!(status, 200, "{ny}");
    assert_eq!(
        days(&ny),
        vec![
            ("2026-10-31T04:00:00Z".to_string(), 1),
            ("2026-11-01T04:00:00Z".to_string(), 3),
            ("2026-11-02T05:00:00Z".to_string(), 0),
        ],
        "Nov 1 in New York runs 04:00Z to 05:00Z the next day (25 hours)"
    );
    let (_, lagos) = get(
        &app,
        &sdk,
        "/stats?from=2026-11-01&to=2026-11-03&group_by=day&tz=Africa/Lagos",
    )
    .await;
    assert_eq!(
        days(&lagos),
        vec![
            ("2026-10-31T23:00:00Z".to_string(), 2),
            ("2026-11-01T23:00:00Z".to_string(), 2),
        ]
    );
}
