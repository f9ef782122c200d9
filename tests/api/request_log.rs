//! `GET /projects/{id}/api-requests`, the raw request log: filters (route, method, a status
//! code or class, a minimum duration, the range), newest first, keyset pages over equal
//! timestamps, and 422s naming the parameter.

use std::collections::BTreeSet;

use chrono::Duration;
use serde_json::{json, Value};

use crate::helpers::spawn_app;
use crate::support::reads::{at, enc, now_s, rfc, Reader};

#[actix_web::test]
async fn the_request_log_filters_and_lists_newest_first() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let t0 = now_s() - Duration::hours(2);
    let call = |n: i64, method: &str, route: &str, status: u16, ms: f64| {
        json!({"method": method, "route": route, "status_code": status, "duration_ms": ms,
               "user_agent": format!("agent-{n}"), "ip": "203.0.113.9",
               "request_size": 10, "response_size": 20,
               "timestamp": rfc(t0 + Duration::minutes(n))})
    };
    r.ingest(
        "requests",
        vec![
            call(1, "GET", "/users/{id}", 200, 12.5),
            call(2, "POST", "/users", 201, 80.0),
            call(3, "GET", "/users/{id}", 404, 3.0),
            call(4, "GET", "/orders", 500, 250.0),
            call(5, "delete", "/users/{id}", 503, 100.0),
            call(6, "GET", "/orders", 429, 1.0),
        ],
    )
    .await;
    let ns = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["user_agent"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("agent-")
                    .to_string()
            })
            .collect()
    };
    let all = r.ok("/api-requests").await;
    assert_eq!(ns(&all), ["6", "5", "4", "3", "2", "1"], "{all}");
    let newest = &all["items"][0];
    assert_eq!(newest["method"], "GET");
    assert_eq!(newest["route"], "/orders");
    assert_eq!(newest["status_code"], 429);
    assert_eq!(newest["duration_ms"], 1.0);
    assert_eq!(newest["ip"], "203.0.113.9");
    assert_eq!(newest["request_size"], 10);
    assert_eq!(newest["response_size"], 20);
    assert_eq!(
        at(newest["timestamp"].as_str().unwrap()),
        t0 + Duration::minutes(6)
    );
    assert!(uuid::Uuid::parse_str(newest["id"].as_str().unwrap()).is_ok());
    assert!(all["next_cursor"].is_null());

    for (query, expected) in [
        (format!("route={}", enc("/users/{id}")), vec!["5", "3", "1"]),
        ("method=GET".into(), vec!["6", "4", "3", "1"]),
        // Methods are stored upper case; the filter is too.
        ("method=delete".into(), vec!["5"]),
        ("status=404".into(), vec!["3"]),
        ("status=5xx".into(), vec!["5", "4"]),
        ("status=4XX".into(), vec!["6", "3"]),
        ("status=2xx".into(), vec!["2", "1"]),
        ("min_duration_ms=80".into(), vec!["5", "4", "2"]),
        ("min_duration_ms=12.5".into(), vec!["5", "4", "2", "1"]),
        (
            format!("route={}&method=GET&status=4xx", enc("/users/{id}")),
            vec!["3"],
        ),
        (
            format!(
                "from={}&to={}",
                enc(&rfc(t0 + Duration::minutes(2))),
                enc(&rfc(t0 + Duration::minutes(4)))
            ),
            vec!["3", "2"],
        ),
        ("route=/nothing".into(), vec![]),
        ("from=1h".into(), vec![]),
    ] {
        let page = r.ok(&format!("/api-requests?{query}")).await;
        let expected: Vec<String> = expected.into_iter().map(String::from).collect();
        assert_eq!(ns(&page), expected, "{query}: {page}");
    }
}

#[actix_web::test]
async fn request_pages_hold_every_row_once() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "team").await;
    let at = rfc(now_s() - Duration::minutes(30));
    // All at one timestamp: only the ids order them.
    let calls: Vec<_> = (0..30)
        .map(|n| {
            json!({"method": "GET", "route": "/same", "status_code": 200 + n % 2,
                   "duration_ms": n, "user_agent": n.to_string(), "timestamp": at})
        })
        .collect();
    r.ingest("requests", calls).await;
    let (seen, pages) = r.all_pages("/api-requests", 4, || async {}).await;
    assert_eq!(pages, 8);
    let agents: Vec<&str> = seen
        .iter()
        .map(|i| i["user_agent"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = agents.iter().copied().collect();
    assert_eq!(unique.len(), 30, "{agents:?}");
    let ids: Vec<&str> = seen.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "ids descending: {ids:?}"
    );
    // Filtered pages too.
    let (odd, _) = r
        .all_pages("/api-requests?status=201", 4, || async {})
        .await;
    assert_eq!(odd.len(), 15);
    assert!(odd.iter().all(|i| i["status_code"] == 201));
}

#[actix_web::test]
async fn bad_request_log_parameters_are_422_naming_each() {
    let app = spawn_app().await;
    let r = Reader::new(&app, "hobby").await;
    for (query, fields) in [
        ("status=6xx", vec!["status"]),
        ("status=abc", vec!["status"]),
        ("status=99", vec!["status"]),
        ("min_duration_ms=-1", vec!["min_duration_ms"]),
        ("min_duration_ms=abc", vec!["min_duration_ms"]),
        ("min_duration_ms=NaN", vec!["min_duration_ms"]),
        ("method=G%20T", vec!["method"]),
        (
            "from=1x&status=7xx&limit=0",
            vec!["from", "limit", "status"],
        ),
        ("group_by=week", vec!["group_by"]),
    ] {
        assert_eq!(
            r.refused(&format!("/api-requests?{query}")).await,
            fields,
            "{query}"
        );
    }
    assert_eq!(r.refused("/api-requests?cursor=garbage").await, ["cursor"]);
    // A cursor of the events explorer is not one of this list.
    r.ingest(
        "events",
        vec![
            json!({"event": "a", "visitor_id": "v"}),
            json!({"event": "b", "visitor_id": "v"}),
        ],
    )
    .await;
    let events = r.ok("/events?limit=1").await;
    let foreign = events["next_cursor"].as_str().unwrap();
    assert_eq!(
        r.refused(&format!("/api-requests?cursor={foreign}")).await,
        ["cursor"]
    );
}
