//! `GET /projects/{id}/errors` (groups with their figures within the range next to their
//! totals; status, sort, pages), `GET …/errors/{group_id}` (trend zero-filled in the range's
//! zone, recent occurrences with stack traces, tags, people, regressions), and
//! `POST …/resolve` / `…/unresolve`.

use awc::http::Method;
use chrono::{DateTime, Duration, DurationRound, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::helpers::{call, create_project, spawn_app};
use crate::support::reads::{at, column, now_s, rfc, Reader};

/// An occurrence of the group `fp` (its message is `broke {fp}`).
fn error(fp: &str, ts: DateTime<Utc>, user: Option<&str>, visitor: Option<&str>) -> Value {
    json!({"type": "TypeError", "message": format!("broke {fp}"), "fingerprint": fp,
           "user_id": user, "visitor_id": visitor, "timestamp": rfc(ts)})
}

/// Four groups: `fp-a` now and three days ago, `fp-b` an hour ago, `fp-c` five days ago
/// only, `fp-d` two hours ago and resolved. Returns their ids.
async fn four_groups(r: &Reader<'_>, now: DateTime<Utc>) -> [String; 4] {
    let m = Duration::minutes;
    let mut a = vec![
        json!({"type": "TypeError", "message": "broke fp-a", "fingerprint": "fp-a",
               "user_id": "u1", "environment": "production", "release": "1.0",
               "tags": {"browser": "chrome"}, "timestamp": rfc(now - m(30)),
               "stack_trace": [{"function": "render", "module": "app/view", "lineno": 7, "in_app": true}]}),
        json!({"type": "TypeError", "message": "broke fp-a", "fingerprint": "fp-a",
               "user_id": "u2", "environment": "production", "tags": {"browser": "firefox"},
               "timestamp": rfc(now - m(40))}),
        json!({"type": "TypeError", "message": "broke fp-a", "fingerprint": "fp-a",
               "user_id": "u1", "environment": "staging", "tags": {"browser": "chrome"},
               "stack_trace": "TypeError: broke\n  at render (app/view.js:7)",
               "timestamp": rfc(now - m(50))}),
    ];
    a.push(error("fp-a", now - Duration::days(3), Some("u3"), None));
    a.push(error(
        "fp-a",
        now - Duration::days(3) - m(1),
        Some("u3"),
        None,
    ));
    let mut items = a;
    items.push(error("fp-b", now - Duration::hours(1), None, Some("v9")));
    for n in 0..4 {
        items.push(error(
            "fp-c",
            now - Duration::days(5) - m(n),
            Some("u4"),
            None,
        ));
    }
    items.push(error("fp-d", now - Duration::hours(2), Some("u5"), None));
    items.push(error("fp-d", now - Duration::hours(2), Some("u6"), None));
    r.ingest("errors", items).await;
    let ids = [
        r.group_id("broke fp-a").await,
        r.group_id("broke fp-b").await,
        r.group_id("broke fp-c").await,
        r.group_id("broke fp-d").await,
    ];
    let reply = r
        .call(Method::POST, &format!("/errors/{}/resolve", ids[3]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    ids
}

/// How many buckets of `secs` seconds start in `[first, end)`.
fn buckets_between(first: DateTime<Utc>, end: DateTime<Utc>, secs: i64) -> usize {
    ((end - first).num_seconds() + secs - 1) as usize / secs as usize
}

/// The groups of a list, by the `fp-…` of their messages.
fn fps(v: &Value) -> Vec<String> {
    names(v["items"].as_array().unwrap())
}

fn names(items: &[Value]) -> Vec<String> {
    column(items, "message")
        .into_iter()
        .map(|m| m.trim_start_matches("broke ").to_string())
        .collect()
}

#[actix_web::test]
async fn groups_are_listed_with_their_figures_in_the_range() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let now = now_s();
    four_groups(&r, now).await;

    // Default: unresolved groups seen in the last 24 hours, last seen first.
    let list = r.ok("/errors").await;
    assert_eq!(fps(&list), ["fp-a", "fp-b"], "{list}");
    assert!(list["next_cursor"].is_null());
    let a = &list["items"][0];
    assert_eq!(a["occurrences"], 5, "{a}");
    assert_eq!(a["affected_users"], 3);
    assert_eq!(a["occurrences_in_range"], 3);
    assert_eq!(a["affected_users_in_range"], 2);
    assert_eq!(a["status"], "unresolved");
    assert_eq!(a["type"], "TypeError");
    assert_eq!(a["message"], "broke fp-a");
    assert_eq!(a["level"], "error");
    assert_eq!(a["regressions"], 0);
    assert_eq!(
        at(a["first_seen"].as_str().unwrap()),
        now - Duration::days(3) - Duration::minutes(1)
    );
    assert_eq!(
        at(a["last_seen"].as_str().unwrap()),
        now - Duration::minutes(30)
    );
    // A visitor without a user id counts as one affected person.
    assert_eq!(list["items"][1]["affected_users_in_range"], 1);

    for (query, expected) in [
        ("status=resolved", vec!["fp-d"]),
        ("status=all", vec!["fp-a", "fp-b", "fp-d"]),
        ("status=unresolved&sort=last_seen", vec!["fp-a", "fp-b"]),
        ("status=all&sort=count", vec!["fp-a", "fp-d", "fp-b"]),
        (
            "status=all&from=7d&sort=count",
            vec!["fp-a", "fp-c", "fp-d", "fp-b"],
        ),
        (
            "status=all&from=7d&sort=first_seen",
            vec!["fp-b", "fp-d", "fp-a", "fp-c"],
        ),
        ("status=all&from=7d", vec!["fp-a", "fp-b", "fp-d", "fp-c"]),
        // Only what occurred within the range.
        ("status=all&from=6d&to=4d", vec!["fp-c"]),
        ("from=10m", vec![]),
    ] {
        let page = r.ok(&format!("/errors?{query}")).await;
        assert_eq!(fps(&page), expected, "{query}: {page}");
    }
    let old = r.ok("/errors?from=6d&to=4d").await;
    assert_eq!(old["items"][0]["occurrences_in_range"], 4);
    assert_eq!(old["items"][0]["affected_users_in_range"], 1);
    let week = r.ok("/errors?status=all&from=7d&sort=count").await;
    assert_eq!(week["items"][0]["occurrences_in_range"], 5);

    // Page by page, in every order, each group once.
    for sort in ["last_seen", "first_seen", "count"] {
        let whole = fps(&r
            .ok(&format!("/errors?status=all&from=7d&sort={sort}"))
            .await);
        let (paged, pages) = r
            .all_pages(
                &format!("/errors?status=all&from=7d&sort={sort}"),
                1,
                || async {},
            )
            .await;
        assert_eq!(names(&paged), whole, "{sort}");
        assert_eq!(pages, 4, "{sort}");
    }
}

#[actix_web::test]
async fn a_group_detail_shows_trend_occurrences_tags_and_people() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let now = now_s();
    let [a, ..] = four_groups(&r, now).await;

    let d = r.ok(&format!("/errors/{a}?from=6h")).await;
    assert_eq!(d["id"], a.as_str());
    assert_eq!(d["message"], "broke fp-a");
    assert!(d["fingerprint"].is_string());
    assert_eq!(d["occurrences"], 5);
    assert_eq!(d["affected_users"], 3);
    assert_eq!(d["range"]["occurrences"], 3, "{d}");
    assert_eq!(d["range"]["affected_users"], 2);
    assert_eq!(d["range"]["tz"], "UTC");
    assert_eq!(d["range"]["group_by"], "hour");
    assert_eq!(d["regressions"], 0);
    assert!(d["regressed_at"].is_null());
    assert_eq!(d["last_occurrence"]["user_id"], "u1");
    // Hourly, zero-filled: the hour holding `from` to the hour holding now.
    let trend = d["trend"].as_array().unwrap();
    let from = now - Duration::hours(6);
    let first_hour = from.duration_trunc(TimeDelta::hours(1)).unwrap();
    assert_eq!(trend.len(), buckets_between(first_hour, now, 3600), "{d}");
    assert_eq!(at(trend[0]["start"].as_str().unwrap()), first_hour);
    for pair in trend.windows(2) {
        let (x, y) = (
            at(pair[0]["start"].as_str().unwrap()),
            at(pair[1]["start"].as_str().unwrap()),
        );
        assert_eq!(y - x, Duration::hours(1));
    }
    let total: i64 = trend.iter().map(|b| b["count"].as_i64().unwrap()).sum();
    assert_eq!(total, 3);
    assert!(trend.iter().any(|b| b["count"] == 0), "zero-filled");
    // Newest first, stack traces as sent.
    let recent = d["recent_occurrences"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(
        at(recent[0]["timestamp"].as_str().unwrap()),
        now - Duration::minutes(30)
    );
    assert_eq!(recent[0]["stack_trace"][0]["function"], "render");
    assert!(recent[1]["stack_trace"].is_null());
    assert!(recent[2]["stack_trace"]
        .as_str()
        .unwrap()
        .contains("app/view.js:7"));
    assert_eq!(recent[0]["environment"], "production");
    assert_eq!(recent[0]["release"], "1.0");
    assert_eq!(recent[0]["tags"]["browser"], "chrome");
    // Tags with their most frequent values; environment, release and level count too.
    let tags: Vec<&Value> = d["tags"].as_array().unwrap().iter().collect();
    let tag = |key: &str| -> Value {
        (*tags
            .iter()
            .find(|t| t["key"] == key)
            .unwrap_or_else(|| panic!("no tag {key}: {d}")))
        .clone()
    };
    assert_eq!(tag("browser")["total"], 3);
    assert_eq!(
        tag("browser")["top"],
        json!([{"value": "chrome", "count": 2}, {"value": "firefox", "count": 1}])
    );
    assert_eq!(
        tag("environment")["top"],
        json!([{"value": "production", "count": 2}, {"value": "staging", "count": 1}])
    );
    assert_eq!(tag("level")["top"], json!([{"value": "error", "count": 3}]));
    assert_eq!(tag("release")["total"], 1);

    // By day over a week: every occurrence, in days.
    let week = r.ok(&format!("/errors/{a}?from=7d&group_by=day")).await;
    let days = week["trend"].as_array().unwrap();
    let first_day = (now - Duration::days(7))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    assert_eq!(
        days.len(),
        buckets_between(first_day, now, 86_400),
        "{week}"
    );
    assert_eq!(
        days.iter()
            .map(|b| b["count"].as_i64().unwrap())
            .sum::<i64>(),
        5
    );
    // An empty range is all zeros.
    let empty = r
        .ok(&format!("/errors/{a}?from=2026-01-01&to=2026-01-02"))
        .await;
    let hours = empty["trend"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    assert!(hours.iter().all(|b| b["count"] == 0));
    assert_eq!(empty["recent_occurrences"], json!([]));
    assert_eq!(empty["tags"], json!([]));
    assert_eq!(empty["range"]["occurrences"], 0);
}

#[actix_web::test]
async fn trends_follow_the_time_zone_across_dst() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let day = (now_s() - Duration::days(3))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    r.ingest(
        "errors",
        vec![
            error("fp-ny", at("2026-11-01T04:30:00Z"), None, Some("v")), // 00:30 EDT
            error("fp-ny", at("2026-11-02T04:30:00Z"), None, Some("v")), // 23:30 EST
            error("fp-ny", at("2026-11-02T05:30:00Z"), None, Some("v")), // 00:30 EST, Nov 2
            error("fp-ny", at("2026-03-08T06:30:00Z"), None, Some("v")), // 01:30 EST
            error("fp-ny", at("2026-03-08T07:30:00Z"), None, Some("v")), // 03:30 EDT
            error(
                "fp-lagos",
                day + Duration::minutes(22 * 60 + 30),
                None,
                Some("v"),
            ),
            error(
                "fp-lagos",
                day + Duration::minutes(23 * 60 + 30),
                None,
                Some("v"),
            ),
        ],
    )
    .await;
    let ny = r.group_id("broke fp-ny").await;
    let series = |v: &Value| -> Vec<(DateTime<Utc>, i64)> {
        v["trend"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    at(b["start"].as_str().unwrap()),
                    b["count"].as_i64().unwrap(),
                )
            })
            .collect()
    };

    // New York days around the fall-back: the 1st of November is 25 hours long.
    let days = r
        .ok(&format!(
            "/errors/{ny}?from=2026-10-31&to=2026-11-03&tz=America/New_York&group_by=day"
        ))
        .await;
    assert_eq!(days["range"]["tz"], "America/New_York");
    assert_eq!(
        series(&days),
        [
            (at("2026-10-31T04:00:00Z"), 0),
            (at("2026-11-01T04:00:00Z"), 2),
            (at("2026-11-02T05:00:00Z"), 1),
        ]
    );
    // Its hours: 25, the repeated 01:00 twice.
    let hours = r
        .ok(&format!(
            "/errors/{ny}?from=2026-11-01&to=2026-11-02&tz=America/New_York&group_by=hour"
        ))
        .await;
    let hours = series(&hours);
    assert_eq!(hours.len(), 25);
    assert_eq!(hours[0], (at("2026-11-01T04:00:00Z"), 1));
    assert_eq!(hours[24], (at("2026-11-02T04:00:00Z"), 1));
    assert_eq!(hours[1].0, at("2026-11-01T05:00:00Z"));
    assert_eq!(hours[2].0, at("2026-11-01T06:00:00Z"));
    // Spring forward: 23 hours, no 02:00.
    let spring = r
        .ok(&format!(
            "/errors/{ny}?from=2026-03-08&to=2026-03-09&tz=America/New_York"
        ))
        .await;
    let spring = series(&spring);
    assert_eq!(spring.len(), 23);
    assert_eq!(spring[1], (at("2026-03-08T06:00:00Z"), 1));
    assert_eq!(spring[2], (at("2026-03-08T07:00:00Z"), 1));

    // Lagos days begin at 23:00 UTC: 22:30 and 23:30 UTC are two Lagos days, one UTC day.
    let lagos = r.group_id("broke fp-lagos").await;
    let d = day.date_naive();
    let by_lagos = r
        .ok(&format!(
            "/errors/{lagos}?from={d}&to={}&tz=Africa/Lagos&group_by=day",
            d + Duration::days(2)
        ))
        .await;
    assert_eq!(
        series(&by_lagos),
        [
            (day - Duration::hours(1), 1),
            (day + Duration::hours(23), 1)
        ]
    );
    let by_utc = r
        .ok(&format!(
            "/errors/{lagos}?from={d}&to={}&group_by=day",
            d + Duration::days(1)
        ))
        .await;
    assert_eq!(series(&by_utc), [(day, 2)]);
}

#[actix_web::test]
async fn groups_are_resolved_reopened_and_regress() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let now = now_s();
    let [a, b, _, d] = four_groups(&r, now).await;

    let resolved = r.ok(&format!("/errors/{d}")).await;
    assert_eq!(resolved["status"], "resolved");
    let resolved_at = resolved["resolved_at"].as_str().unwrap().to_string();
    // Resolving again keeps when it was resolved.
    let again = r.call(Method::POST, &format!("/errors/{d}/resolve")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["resolved_at"], resolved_at.as_str());

    let reply = r.call(Method::POST, &format!("/errors/{a}/resolve")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["status"], "resolved");
    assert_eq!(fps(&r.ok("/errors").await), ["fp-b"]);
    assert_eq!(
        fps(&r.ok("/errors?status=resolved").await),
        ["fp-a", "fp-d"]
    );
    let reply = r
        .call(Method::POST, &format!("/errors/{a}/unresolve"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reopened = reply.json();
    assert_eq!(reopened["status"], "unresolved");
    assert!(reopened["resolved_at"].is_null());
    assert_eq!(
        reopened["regressions"], 0,
        "reopening by hand is no regression"
    );
    assert_eq!(fps(&r.ok("/errors").await), ["fp-a", "fp-b"]);

    // A new occurrence of a resolved group reopens it: a regression.
    assert_eq!(
        r.call(Method::POST, &format!("/errors/{b}/resolve"))
            .await
            .status,
        200
    );
    r.ingest("errors", vec![error("fp-b", now_s(), None, Some("v10"))])
        .await;
    let regressed = r.ok(&format!("/errors/{b}")).await;
    assert_eq!(regressed["status"], "unresolved");
    assert_eq!(regressed["regressions"], 1);
    assert!(regressed["regressed_at"].is_string());
    assert_eq!(regressed["occurrences"], 2);
}

#[actix_web::test]
async fn unknown_groups_are_404_and_bad_parameters_422() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let [a, ..] = four_groups(&r, now_s()).await;
    let nobody = uuid::Uuid::now_v7();
    for (method, suffix) in [
        (Method::GET, format!("/errors/{nobody}")),
        (Method::POST, format!("/errors/{nobody}/resolve")),
        (Method::POST, format!("/errors/{nobody}/unresolve")),
        (Method::GET, "/errors/not-a-uuid".to_string()),
        (Method::POST, "/errors/not-a-uuid/resolve".to_string()),
    ] {
        let reply = r.call(method.clone(), &suffix).await;
        assert_eq!(reply.status, 404, "{method} {suffix}: {}", reply.text);
        assert_eq!(reply.json()["error"]["code"], "not_found");
    }
    // A group of one project is not found through another project of the same organisation.
    let other = create_project(&app, &r.sdk.account.token, "other").await;
    for (method, path) in [
        (Method::GET, format!("/projects/{other}/errors/{a}")),
        (
            Method::POST,
            format!("/projects/{other}/errors/{a}/resolve"),
        ),
    ] {
        let reply = call(&app, method, &path, Some(&r.sdk.account.token), None).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.text);
    }
    assert_eq!(r.ok(&format!("/errors/{a}")).await["status"], "unresolved");

    for (query, fields) in [
        ("status=ignored", vec!["status"]),
        ("sort=date", vec!["sort"]),
        (
            "sort=views&status=open&tz=Nowhere",
            vec!["tz", "status", "sort"],
        ),
        ("cursor=zzz", vec!["cursor"]),
        ("limit=1000", vec!["limit"]),
        ("from=1d&to=2d", vec!["from"]),
    ] {
        assert_eq!(
            r.refused(&format!("/errors?{query}")).await,
            fields,
            "{query}"
        );
    }
    // A cursor of one sort is not one of another.
    let page = r.ok("/errors?status=all&sort=count&limit=1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    assert_eq!(
        r.refused(&format!(
            "/errors?status=all&sort=last_seen&limit=1&cursor={cursor}"
        ))
        .await,
        ["cursor"]
    );
    for (query, fields) in [
        ("tz=Mars", vec!["tz"]),
        ("group_by=minute", vec!["group_by"]),
        ("from=later", vec!["from"]),
    ] {
        assert_eq!(
            r.refused(&format!("/errors/{a}?{query}")).await,
            fields,
            "{query}"
        );
    }
}
