//! Custom metrics and LLM costs through HTTP (issue 11 §3): `/metrics/query` (every `agg`,
//! label filters, zero-filled or null buckets, label sets seen), `/metrics/export` (CSV,
//! Prometheus text checked by `promtool check metrics`, JSON; streamed) and `/costs` (by model
//! and day in a time zone) — each live (the current hour from raw rows) and the same after the
//! Aggregator ran — and bad parameters named in a 422.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use observe_core::range::Tz;
use observe_core::store::rollups::{aggregate, Kind};
use serde_json::{json, Value};

use crate::helpers::{call, ingest, roomy_limits, sdk, spawn_app_with, Reply, Sdk, TestApp};

const ALL: [Kind; 4] = [Kind::Events, Kind::Metrics, Kind::Errors, Kind::Requests];

async fn get(app: &TestApp, sdk: &Sdk, path: &str) -> Reply {
    call(
        app,
        awc::http::Method::GET,
        &format!("/projects/{}{path}", sdk.project),
        Some(&sdk.account.token),
        None,
    )
    .await
}

/// `GET` a JSON answer that must be 200.
async fn get_ok(app: &TestApp, sdk: &Sdk, path: &str) -> Value {
    let reply = get(app, sdk, path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    reply.json()
}

/// The fields a 422 names.
async fn refused(app: &TestApp, sdk: &Sdk, path: &str) -> Vec<String> {
    let reply = get(app, sdk, path).await;
    assert_eq!(reply.status, 422, "{path}: {}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "validation_failed");
    reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect()
}

fn enc(v: &str) -> String {
    v.replace('+', "%2B").replace(':', "%3A")
}

/// `from` and `to` of an earlier answer, so a later query asks for exactly the same range.
fn same_range(answer: &Value) -> String {
    format!(
        "from={}&to={}",
        enc(answer["from"].as_str().unwrap()),
        enc(answer["to"].as_str().unwrap())
    )
}

/// Revenue (a counter) in two plans, a gauge in two rooms, and a histogram of 1..=100, two
/// hours ago and now (the current hour).
async fn seed_metrics(app: &TestApp, sdk: &Sdk) -> DateTime<Utc> {
    let earlier = Utc::now() - Duration::hours(2);
    let at = |d: Duration| (earlier + d).to_rfc3339();
    let mut items = vec![
        json!({"name": "revenue", "kind": "counter", "value": 10, "labels": {"plan": "pro"}, "timestamp": at(Duration::zero())}),
        json!({"name": "revenue", "kind": "counter", "value": 1, "labels": {"plan": "free"}, "timestamp": at(Duration::zero())}),
        json!({"name": "revenue", "kind": "counter", "value": 5, "labels": {"plan": "pro"}}),
        json!({"name": "queue.depth", "kind": "gauge", "value": 20, "labels": {"room": "a"}, "timestamp": at(Duration::zero())}),
        json!({"name": "queue.depth", "kind": "gauge", "value": 25, "labels": {"room": "b \"quoted\" \\ back\nslash", "host.name": "h1"}, "timestamp": at(Duration::seconds(1))}),
        json!({"name": "queue.depth", "kind": "gauge", "value": 22, "labels": {"room": "a"}}),
    ];
    for v in 1..=100 {
        items.push(json!({"name": "latency", "kind": "histogram", "value": v, "labels": {"route": "/a"}, "timestamp": at(Duration::zero())}));
    }
    let reply = ingest(app, &sdk.key, "metrics", json!(items)).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    earlier
}

fn values(answer: &Value) -> Vec<Value> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].clone())
        .collect()
}

#[actix_web::test]
async fn metrics_query_is_live_filters_labels_and_is_the_same_after_the_aggregator() {
    let app = spawn_app_with(roomy_limits, None).await;
    let sdk = sdk(&app).await;
    seed_metrics(&app, &sdk).await;

    let sum = get_ok(&app, &sdk, "/metrics/query?name=revenue&from=6h").await;
    assert_eq!(sum["agg"], "sum", "a counter's default: {sum}");
    assert_eq!(sum["kind"], "counter");
    assert_eq!(sum["group_by"], "hour");
    assert_eq!(sum["total"], 16.0, "the value of a second ago is in (live)");
    let series = sum["series"].as_array().unwrap();
    assert_eq!(series.len(), 7, "6 hours and the current one: {sum}");
    assert!(
        series.iter().all(|p| p["value"].is_number()),
        "sums are zero-filled: {sum}"
    );
    let total: f64 = series.iter().map(|p| p["value"].as_f64().unwrap()).sum();
    assert_eq!(total, 16.0);
    let count: i64 = series.iter().map(|p| p["count"].as_i64().unwrap()).sum();
    assert_eq!(count, 3);
    assert_eq!(
        sum["label_sets"],
        json!([{"labels": {"plan": "pro"}, "count": 2}, {"labels": {"plan": "free"}, "count": 1}])
    );

    let pro = get_ok(
        &app,
        &sdk,
        "/metrics/query?name=revenue&from=6h&labels=plan:pro",
    )
    .await;
    assert_eq!(pro["total"], 15.0);
    assert_eq!(pro["labels"], json!({"plan": "pro"}));
    let none = get_ok(
        &app,
        &sdk,
        "/metrics/query?name=revenue&from=6h&labels=plan:pro,region:eu",
    )
    .await;
    assert_eq!(none["total"], 0.0, "containment: every pair must match");

    for (agg, expected) in [
        ("avg", json!(16.0 / 3.0)),
        ("min", json!(1.0)),
        ("max", json!(10.0)),
        ("last", json!(5.0)),
    ] {
        let a = get_ok(
            &app,
            &sdk,
            &format!("/metrics/query?name=revenue&from=6h&agg={agg}"),
        )
        .await;
        assert_eq!(a["total"], expected, "{agg}: {a}");
        let empty = a["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["count"] == 0)
            .collect::<Vec<_>>();
        assert!(!empty.is_empty());
        assert!(
            empty.iter().all(|p| p["value"].is_null()),
            "{agg} of no data is null, not 0: {a}"
        );
    }
    let gauge = get_ok(&app, &sdk, "/metrics/query?name=queue.depth&from=6h").await;
    assert_eq!(gauge["agg"], "last", "a gauge's default");
    assert_eq!(gauge["total"], 22.0);
    let room_a = get_ok(
        &app,
        &sdk,
        "/metrics/query?name=queue.depth&from=6h&agg=avg&labels=room:a",
    )
    .await;
    assert_eq!(room_a["total"], 21.0);

    let p95 = get_ok(&app, &sdk, "/metrics/query?name=latency&from=6h&agg=p95").await;
    let estimate = p95["total"].as_f64().unwrap();
    assert!(
        (estimate - 95.0).abs() <= 95.0 * 0.02,
        "p95 of 1..=100 from the merged sketch: {estimate}"
    );
    assert_eq!(
        refused(&app, &sdk, "/metrics/query?name=revenue&from=6h&agg=p95").await,
        vec!["agg"],
        "p95 needs a histogram"
    );

    // The Aggregator rolls up the closed hour; the answers stay the same.
    let queries = [
        "name=revenue",
        "name=revenue&agg=avg",
        "name=revenue&agg=min",
        "name=revenue&agg=max",
        "name=revenue&agg=last",
        "name=revenue&labels=plan:pro",
        "name=queue.depth&agg=avg&labels=room:a",
        "name=queue.depth",
        "name=latency&agg=p95",
        "name=latency&agg=avg&group_by=day&tz=Africa/Lagos",
    ];
    let mut answers = Vec::new();
    for q in queries {
        let path = format!("/metrics/query?{q}&{}", same_range(&sum));
        answers.push((q, get_ok(&app, &sdk, &path).await));
    }
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    let stored: i64 = app
        .state
        .db
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM rollup_metrics", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored >= 4, "the closed hour was rolled up: {stored}");
    for (q, a) in &answers {
        let after = get_ok(
            &app,
            &sdk,
            &format!("/metrics/query?{q}&{}", same_range(&sum)),
        )
        .await;
        assert_eq!(&after, a, "{q}: rollups and raw rows agree");
    }
    assert_eq!(values(&answers[0].1), values(&sum));
}

#[actix_web::test]
async fn metrics_reads_name_their_bad_parameters() {
    let app = spawn_app_with(roomy_limits, None).await;
    let sdk = sdk(&app).await;
    assert_eq!(refused(&app, &sdk, "/metrics/query").await, vec!["name"]);
    let fields = refused(
        &app,
        &sdk,
        "/metrics/query?name=bad%20name!&agg=median&labels=nocolon&group_by=week&tz=Mars/Base",
    )
    .await;
    for field in ["name", "agg", "labels", "group_by", "tz"] {
        assert!(fields.contains(&field.to_string()), "{field}: {fields:?}");
    }
    assert_eq!(
        refused(&app, &sdk, "/metrics/query?name=x&labels=:v").await,
        vec!["labels"]
    );
    assert_eq!(
        refused(&app, &sdk, "/metrics/export?format=xml&from=soon").await,
        vec!["format", "from"]
    );
    assert_eq!(
        refused(&app, &sdk, "/metrics/export?name=a%20b").await,
        vec!["name"]
    );
    assert_eq!(refused(&app, &sdk, "/costs?to=later").await, vec!["to"]);

    // An empty range: zero-filled sums, null averages, no label sets.
    let empty = get_ok(
        &app,
        &sdk,
        "/metrics/query?name=nothing&from=3d&group_by=day&agg=sum",
    )
    .await;
    assert!(empty["series"].as_array().unwrap().len() >= 3, "{empty}");
    assert!(values(&empty).iter().all(|v| v == &json!(0.0)), "{empty}");
    assert_eq!(empty["total"], 0.0);
    assert_eq!(empty["label_sets"], json!([]));
    assert!(empty["kind"].is_null());
    let avg = get_ok(&app, &sdk, "/metrics/query?name=nothing&agg=avg").await;
    assert!(values(&avg).iter().all(Value::is_null), "{avg}");
    assert!(avg["total"].is_null());
    let costs = get_ok(&app, &sdk, "/costs?from=2d").await;
    assert_eq!(costs["models"], json!([]));
    assert_eq!(
        costs["totals"],
        json!({"cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0})
    );

    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/projects/{project_id}/metrics/query",
        "/projects/{project_id}/metrics/export",
        "/projects/{project_id}/costs",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
    }
}

/// Runs `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool_check(text: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian's `prometheus` package; `scripts/services.sh tools` installs it)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The samples of `series` (`name{labels}`) in Prometheus text, in order.
fn samples(text: &str, series: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[actix_web::test]
async fn metrics_export_streams_csv_prometheus_and_json() {
    let app = spawn_app_with(roomy_limits, None).await;
    let sdk = sdk(&app).await;
    seed_metrics(&app, &sdk).await;

    let csv = get(&app, &sdk, "/metrics/export?format=csv&from=6h").await;
    assert_eq!(csv.status, 200, "{}", csv.text);
    assert!(
        csv.header("content-type").unwrap().starts_with("text/csv"),
        "{:?}",
        csv.header("content-type")
    );
    assert_eq!(
        csv.header("transfer-encoding").as_deref(),
        Some("chunked"),
        "streamed, not one body"
    );
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(
        lines[0],
        "name,kind,labels,start,count,sum,min,max,last,last_at,p50,p95,p99"
    );
    let revenue: Vec<&&str> = lines.iter().filter(|l| l.starts_with("revenue,")).collect();
    assert_eq!(
        revenue.len(),
        3,
        "one row per label set and hour with data: {}",
        csv.text
    );
    assert!(
        revenue
            .iter()
            .any(|l| l.starts_with("revenue,counter,\"{\"\"plan\"\":\"\"free\"\"}\",")),
        "labels as a quoted JSON cell: {}",
        csv.text
    );
    let filtered = get(
        &app,
        &sdk,
        "/metrics/export?format=csv&from=6h&name=revenue&labels=plan:pro",
    )
    .await;
    let rows: Vec<&str> = filtered.text.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", filtered.text);
    assert!(rows.iter().all(|r| r.contains("pro")), "{}", filtered.text);

    let prom = get(&app, &sdk, "/metrics/export?format=prometheus&from=6h").await;
    assert_eq!(prom.status, 200, "{}", prom.text);
    assert_eq!(
        prom.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let (code, output) = promtool_check(&prom.text);
    assert_eq!(
        (code, output.as_str()),
        (0, ""),
        "promtool check metrics:\n{}",
        prom.text
    );
    assert!(
        prom.text.contains("# TYPE revenue_total counter\n"),
        "{}",
        prom.text
    );
    assert_eq!(
        samples(&prom.text, "revenue_total{plan=\"pro\"}"),
        vec![10.0, 15.0],
        "a counter counts up from the range's start: {}",
        prom.text
    );
    assert!(prom.text.contains("# TYPE queue_depth gauge\n"));
    assert_eq!(
        samples(
            &prom.text,
            "queue_depth{host_name=\"h1\",room=\"b \\\"quoted\\\" \\\\ back\\nslash\"}"
        ),
        vec![25.0],
        "names and label values escaped: {}",
        prom.text
    );
    assert!(prom.text.contains("# TYPE latency summary\n"));
    assert_eq!(
        samples(&prom.text, "latency_count{route=\"/a\"}"),
        vec![100.0]
    );
    assert_eq!(
        samples(&prom.text, "latency_sum{route=\"/a\"}"),
        vec![5050.0]
    );

    let doc = get(
        &app,
        &sdk,
        "/metrics/export?format=json&from=6h&name=latency",
    )
    .await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    assert_eq!(
        doc.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = doc.json();
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{body}");
    assert_eq!(series[0]["name"], "latency");
    assert_eq!(series[0]["kind"], "histogram");
    assert_eq!(series[0]["labels"], json!({"route": "/a"}));
    let point = &series[0]["points"][0];
    assert_eq!(
        (
            point["count"].clone(),
            point["sum"].clone(),
            point["min"].clone(),
            point["max"].clone()
        ),
        (json!(100), json!(5050.0), json!(1.0), json!(100.0))
    );
    assert!(
        (point["p95"].as_f64().unwrap() - 95.0).abs() <= 1.9,
        "{point}"
    );

    // The same files after the Aggregator rolled the closed hour up.
    let range = format!(
        "from={}&to={}",
        enc(body["from"].as_str().unwrap()),
        enc(body["to"].as_str().unwrap())
    );
    let mut before = Vec::new();
    for format in ["csv", "prometheus", "json"] {
        before.push(
            get(
                &app,
                &sdk,
                &format!("/metrics/export?format={format}&{range}"),
            )
            .await
            .text,
        );
    }
    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    for (format, before) in ["csv", "prometheus", "json"].iter().zip(before) {
        let after = get(
            &app,
            &sdk,
            &format!("/metrics/export?format={format}&{range}"),
        )
        .await;
        assert_eq!(after.text, before, "{format}");
    }
}

#[actix_web::test]
async fn costs_come_by_model_and_day_in_the_time_zone() {
    let app = spawn_app_with(roomy_limits, None).await;
    let sdk = sdk(&app).await;
    let lagos: Tz = "Africa/Lagos".parse().unwrap();
    // Two Lagos days, three days back (inside the hobby tier's 7 days).
    let day = (Utc::now() - Duration::days(3))
        .with_timezone(&lagos)
        .date_naive();
    let previous = day.pred_opt().unwrap();
    let local = |d: chrono::NaiveDate, h: u32, m: u32| {
        lagos
            .from_local_datetime(&d.and_time(NaiveTime::from_hms_opt(h, m, 0).unwrap()))
            .unwrap()
            .with_timezone(&Utc)
    };
    let usage = json!([
        // 23:30 in Lagos on the previous day, 22:30 UTC.
        {"model": "gpt-4o", "input_tokens": 1_000_000, "output_tokens": 0, "timestamp": local(previous, 23, 30).to_rfc3339()},
        // 00:30 in Lagos: the next Lagos day, still the previous day in UTC.
        {"model": "gpt-4o", "input_tokens": 0, "output_tokens": 100_000, "timestamp": local(day, 0, 30).to_rfc3339()},
        {"model": "claude-sonnet-4", "input_tokens": 1_000_000, "output_tokens": 1_000_000, "timestamp": local(day, 12, 0).to_rfc3339()},
        // No price for it: tokens counted, cost unknown.
        {"model": "my-own-model", "input_tokens": 500, "output_tokens": 50, "timestamp": local(day, 12, 0).to_rfc3339()},
    ]);
    let reply = ingest(&app, &sdk.key, "metrics", usage).await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    let path = format!(
        "/costs?from={previous}&to={}&tz=Africa/Lagos",
        day.succ_opt().unwrap()
    );
    let before = get_ok(&app, &sdk, &path).await;
    assert_eq!(before["group_by"], "day");
    assert_eq!(
        before["totals"],
        json!({"cost_usd": 21.5, "input_tokens": 2_000_500, "output_tokens": 1_100_050})
    );
    let starts = [local(previous, 0, 0), local(day, 0, 0)]
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let models = before["models"].as_array().unwrap();
    let names: Vec<&str> = models
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["claude-sonnet-4", "gpt-4o", "my-own-model"],
        "{before}"
    );
    assert_eq!(
        models[1],
        json!({
            "model": "gpt-4o", "cost_usd": 3.5, "input_tokens": 1_000_000, "output_tokens": 100_000,
            "series": [
                {"start": starts[0], "cost_usd": 2.5, "input_tokens": 1_000_000, "output_tokens": 0},
                {"start": starts[1], "cost_usd": 1.0, "input_tokens": 0, "output_tokens": 100_000},
            ]
        }),
        "the Lagos day decides: {before}"
    );
    assert_eq!(models[2]["cost_usd"], Value::Null, "no price, no cost");
    assert_eq!(models[2]["input_tokens"], 500);
    assert_eq!(
        before["series"],
        json!([
            {"start": starts[0], "cost_usd": 2.5, "input_tokens": 1_000_000, "output_tokens": 0},
            {"start": starts[1], "cost_usd": 19.0, "input_tokens": 1_000_500, "output_tokens": 1_100_050},
        ])
    );

    // In UTC both gpt-4o items fall on the previous day.
    let utc = get_ok(
        &app,
        &sdk,
        &format!(
            "/costs?from={previous}&to={}&tz=UTC",
            day.succ_opt().unwrap()
        ),
    )
    .await;
    let gpt = utc["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "gpt-4o")
        .unwrap()
        .clone();
    assert_eq!(gpt["series"][0]["cost_usd"], 3.5, "{utc}");
    assert_eq!(gpt["series"][1]["cost_usd"], 0.0, "{utc}");

    aggregate(&app.state.db, &ALL, Utc::now()).await.unwrap();
    let after = get_ok(&app, &sdk, &path).await;
    assert_eq!(after, before, "rollups and raw rows agree");
}
