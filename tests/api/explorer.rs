//! `GET /projects/{id}/events`, the events explorer over raw rows: filters, newest first,
//! keyset pages that hold every row once (equal timestamps, rows without ids, rows written
//! while paging), ranges in time zones and capped at the retention, and 422s naming the
//! parameter.

use std::collections::BTreeSet;

use chrono::{Duration, DurationRound, TimeDelta};
use serde_json::{json, Value};

use crate::helpers::spawn_app;
use crate::support::reads::{at, column, enc, now_s, rfc, Reader};

#[actix_web::test]
async fn the_explorer_lists_events_newest_first_and_filters_them() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let t0 = now_s() - Duration::hours(3);
    let event = |n: i64, name: &str, visitor: &str, user: Option<&str>, url: &str| {
        json!({"event": name, "visitor_id": visitor, "user_id": user, "url": url,
               "properties": {"n": n}, "timestamp": rfc(t0 + Duration::minutes(n))})
    };
    r.ingest(
        "events",
        vec![
            event(1, "signup", "v1", None, "https://shop.example/a/1"),
            event(2, "$pageview", "v1", None, "https://shop.example/b"),
            event(
                3,
                "$pageview",
                "v2",
                Some("ada"),
                "https://shop.example/a/2",
            ),
            event(4, "purchase", "v3", None, "https://shop.example/c"),
            event(5, "purchase", "v4", Some("bob"), "https://shop.example/a_b"),
        ],
    )
    .await;
    // v3 turns out to be Ada: her events include v3's.
    r.ingest(
        "identify",
        vec![json!({"visitor_id": "v3", "user_id": "ada", "timestamp": rfc(t0)})],
    )
    .await;

    let ns = |v: &Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["properties"]["n"].as_i64().unwrap())
            .collect()
    };
    let all = r.ok("/events").await;
    assert_eq!(ns(&all), [5, 4, 3, 2, 1], "{all}");
    assert!(all["next_cursor"].is_null());
    let first = &all["items"][0];
    assert_eq!(first["name"], "purchase");
    assert_eq!(first["visitor_id"], "v4");
    assert_eq!(first["user_id"], "bob");
    assert_eq!(first["url"], "https://shop.example/a_b");
    assert_eq!(
        at(first["timestamp"].as_str().unwrap()),
        t0 + Duration::minutes(5)
    );
    assert!(uuid::Uuid::parse_str(first["id"].as_str().unwrap()).is_ok());
    assert!(first["received_at"].is_string());

    for (query, expected) in [
        ("name=purchase".to_string(), vec![5, 4]),
        (format!("name={}", enc("$pageview")), vec![3, 2]),
        ("visitor_id=v1".to_string(), vec![2, 1]),
        ("user_id=ada".to_string(), vec![4, 3]),
        ("user_id=bob".to_string(), vec![5]),
        (
            format!("url={}", enc("https://shop.example/a")),
            vec![5, 3, 1],
        ),
        // A prefix, not a pattern: `_` is no wildcard.
        (format!("url={}", enc("https://shop.example/a_")), vec![5]),
        (format!("url={}", enc("https://shop.example/a%")), vec![]),
        (
            format!(
                "name={}&url={}",
                enc("$pageview"),
                enc("https://shop.example/a/")
            ),
            vec![3],
        ),
        // `from` inclusive, `to` exclusive.
        (
            format!(
                "from={}&to={}",
                enc(&rfc(t0 + Duration::minutes(2))),
                enc(&rfc(t0 + Duration::minutes(4)))
            ),
            vec![3, 2],
        ),
        ("name=nothing".to_string(), vec![]),
        // The default range is the last 24 hours; 2h back misses everything.
        ("from=2h".to_string(), vec![]),
        ("from=4h&to=2h".to_string(), vec![5, 4, 3, 2, 1]),
    ] {
        let page = r.ok(&format!("/events?{query}")).await;
        assert_eq!(ns(&page), expected, "{query}: {page}");
    }
}

#[actix_web::test]
async fn pages_hold_every_event_once_even_with_equal_timestamps() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let base = now_s() - Duration::hours(2);
    // Three timestamps, 20 events each: most pages start and end inside a run of equals.
    let mut items = Vec::new();
    for n in 0..60 {
        let ts = base + Duration::seconds(n / 20);
        items.push(json!({"event": "tick", "visitor_id": format!("v{n}"),
                          "properties": {"n": n}, "timestamp": rfc(ts)}));
    }
    r.ingest("events", items).await;
    // Rows stored before events had ids, among the same timestamps and one of their own.
    let legacy: Vec<_> = (100..112)
        .map(|n| {
            let ts = if n < 109 {
                base + Duration::seconds(1)
            } else {
                base - Duration::seconds(5)
            };
            (ts, None, "legacy", json!({"n": n}))
        })
        .collect();
    r.insert_events(&legacy).await;

    let later = || async {
        // Written while the client pages: newer than the first page, so in no later page.
        r.ingest(
            "events",
            vec![json!({"event": "late", "visitor_id": "x", "properties": {"n": 999}})],
        )
        .await;
    };
    let (seen, pages) = r.all_pages("/events?from=3h", 7, later).await;
    let ns: Vec<i64> = seen
        .iter()
        .map(|i| i["properties"]["n"].as_i64().unwrap())
        .collect();
    let unique: BTreeSet<i64> = ns.iter().copied().collect();
    assert_eq!(unique.len(), ns.len(), "a row shown twice: {ns:?}");
    let expected: BTreeSet<i64> = (0..60).chain(100..112).collect();
    assert_eq!(unique, expected, "rows missed or added");
    assert_eq!(pages, 11, "72 rows, 7 a page");
    // Newest first; among equal timestamps, rows with ids first, by id descending.
    let times: Vec<_> = seen
        .iter()
        .map(|i| at(i["timestamp"].as_str().unwrap()))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    for pair in seen.windows(2) {
        if pair[0]["timestamp"] != pair[1]["timestamp"] {
            continue;
        }
        match (pair[0]["id"].as_str(), pair[1]["id"].as_str()) {
            (Some(a), Some(b)) => assert!(a > b, "{a} then {b}"),
            (None, Some(_)) => panic!("an id-less row before a row with an id"),
            _ => {}
        }
    }
    assert_eq!(
        seen.iter().filter(|i| i["id"].is_null()).count(),
        12,
        "legacy rows have no id"
    );
    // The late row is there for a fresh look.
    let fresh = r.ok("/events?limit=1").await;
    assert_eq!(fresh["items"][0]["properties"]["n"], 999);
}

#[actix_web::test]
async fn a_cursor_keeps_the_start_of_the_range_it_began_with() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let base = now_s() - Duration::hours(5);
    let items: Vec<_> = (0..4)
        .map(|n| {
            json!({"event": "e", "visitor_id": "v", "properties": {"n": n},
                   "timestamp": rfc(base + Duration::hours(n))})
        })
        .collect();
    r.ingest("events", items).await;
    let first = r
        .ok(&format!("/events?from={}&limit=2", enc(&rfc(base))))
        .await;
    let cursor = first["next_cursor"].as_str().unwrap();
    // The next page asked with a later `from` (as a relative `from` would slide): the rows
    // of the range the first page resolved still come.
    let second = r
        .ok(&format!(
            "/events?from={}&limit=2&cursor={cursor}",
            enc(&rfc(base + Duration::hours(3)))
        ))
        .await;
    assert_eq!(
        column(second["items"].as_array().unwrap(), "properties"),
        [r#"{"n":1}"#, r#"{"n":0}"#]
    );
}

#[actix_web::test]
async fn ranges_follow_the_time_zone_and_the_retention() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    // Lagos is UTC+1: its day D+1 begins at 23:00 UTC of day D.
    let day = (now_s() - Duration::days(3))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    let lagos_date = (day + Duration::days(1)).date_naive();
    let rows = [
        (day + Duration::minutes(22 * 60 + 30), "lagos-D"),
        (day + Duration::minutes(23 * 60 + 30), "lagos-D+1"),
        // New York across both DST changes of 2026 (team keeps a year).
        (at("2026-03-08T04:30:00Z"), "ny-03-07 23:30 EST"),
        (at("2026-03-08T05:30:00Z"), "ny-03-08 00:30 EST"),
        (at("2026-03-09T03:30:00Z"), "ny-03-08 23:30 EDT"),
        (at("2026-03-09T04:30:00Z"), "ny-03-09 00:30 EDT"),
        (at("2026-11-01T03:30:00Z"), "ny-10-31 23:30 EDT"),
        (at("2026-11-01T04:30:00Z"), "ny-11-01 00:30 EDT"),
        (at("2026-11-02T04:30:00Z"), "ny-11-01 23:30 EST"),
        (at("2026-11-02T05:30:00Z"), "ny-11-02 00:30 EST"),
    ];
    r.ingest(
        "events",
        rows.iter()
            .map(|(ts, name)| json!({"event": name, "visitor_id": "v", "timestamp": rfc(*ts)}))
            .collect(),
    )
    .await;
    let names = |v: Value| column(v["items"].as_array().unwrap(), "name");

    let lagos = r
        .ok(&format!(
            "/events?from={lagos_date}&to={}&tz=Africa/Lagos",
            lagos_date + Duration::days(1)
        ))
        .await;
    assert_eq!(names(lagos), ["lagos-D+1"]);
    let utc_day = r
        .ok(&format!(
            "/events?from={}&to={}",
            day.date_naive(),
            lagos_date
        ))
        .await;
    assert_eq!(names(utc_day), ["lagos-D+1", "lagos-D"]);

    let spring = r
        .ok("/events?from=2026-03-08&to=2026-03-09&tz=America/New_York")
        .await;
    assert_eq!(names(spring), ["ny-03-08 23:30 EDT", "ny-03-08 00:30 EST"]);
    let fall = r
        .ok("/events?from=2026-11-01&to=2026-11-02&tz=America/New_York")
        .await;
    assert_eq!(names(fall), ["ny-11-01 23:30 EST", "ny-11-01 00:30 EDT"]);

    // Hobby keeps 7 days: a wider range is capped at it, and the tier is read per request.
    let hobby = Reader::new(&app, "hobby").await;
    let now = now_s();
    hobby
        .insert_events(&[
            (
                now - Duration::days(10),
                Some(uuid::Uuid::now_v7()),
                "old",
                json!({}),
            ),
            (
                now - Duration::days(6),
                Some(uuid::Uuid::now_v7()),
                "recent",
                json!({}),
            ),
        ])
        .await;
    assert_eq!(names(hobby.ok("/events?from=30d").await), ["recent"]);
    assert_eq!(
        names(hobby.ok("/events?from=2026-01-01T00:00:00Z").await),
        ["recent"]
    );
    // A range wholly older than the retention is empty, not an error.
    assert_eq!(
        names(hobby.ok("/events?from=30d&to=8d").await),
        Vec::<String>::new()
    );
    crate::helpers::set_tier(&app, &hobby.sdk.project, "pro").await;
    assert_eq!(names(hobby.ok("/events?from=30d").await), ["recent", "old"]);
}

#[actix_web::test]
async fn bad_explorer_parameters_are_422_naming_each() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "hobby").await;
    for (query, fields) in [
        ("tz=Mars/Olympus_Mons", vec!["tz"]),
        ("from=yesterday", vec!["from"]),
        ("to=2026-02-30", vec!["to"]),
        ("from=2h&to=3h", vec!["from"]),
        ("limit=0", vec!["limit"]),
        ("limit=201", vec!["limit"]),
        ("limit=ten", vec!["limit"]),
        ("cursor=not-a-cursor", vec!["cursor"]),
        (
            "from=soon&tz=Nowhere&limit=-1&cursor=x",
            vec!["tz", "from", "limit", "cursor"],
        ),
    ] {
        assert_eq!(
            r.refused(&format!("/events?{query}")).await,
            fields,
            "{query}"
        );
    }
    let long = "x".repeat(201);
    assert_eq!(r.refused(&format!("/events?name={long}")).await, ["name"]);
    // A page cursor of another list is not one of this list.
    crate::helpers::create_project(&app, &r.sdk.account.token, "second").await;
    let page = crate::helpers::call(
        &app,
        awc::http::Method::GET,
        "/projects?limit=1",
        Some(&r.sdk.account.token),
        None,
    )
    .await
    .json();
    let foreign = page["next_cursor"].as_str().unwrap();
    assert_eq!(
        r.refused(&format!("/events?cursor={foreign}")).await,
        ["cursor"]
    );

    // An unknown project is a 404 whatever the parameters.
    let reply = crate::helpers::call(
        &app,
        awc::http::Method::GET,
        &format!("/projects/{}/events?tz=Nowhere", uuid::Uuid::now_v7()),
        Some(&r.sdk.account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.text);
}
