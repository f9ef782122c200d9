//! The operator's files in `config/`: every metric the alert rules and the Grafana dashboard
//! query is one observe registers; and a real Prometheus (Debian's, as `make test` installs
//! it) given the shipped scrape config and rules scrapes a running observe, evaluates every
//! rule without error, and answers every dashboard query with data. (Whether each rule fires
//! when it should is `scripts/check-prometheus.sh`'s job: `promtool test rules`.)
//!
//! Names are checked against the families observe registers rather than the text of one
//! `/metrics` answer: a labelled family with no value yet (restarts before the first restart,
//! jobs on a server whose jobs are off) is not in the text, yet the rules rightly query it.
//! A short run's `/metrics` is checked to hold the registered families that have values.

use std::collections::BTreeSet;

use crate::helpers::{
    eventually, free_port, ingest, sdk, spawn_app, spawn_app_with, test_routes, Sdk, TestApp,
};
use crate::sentry::{envelope, post_envelope};

/// Metric names in a PromQL expression: `observe_*` and `process_*`, histogram suffixes off.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (expr[i..].starts_with("observe_") || expr[i..].starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let end = expr[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| i + n);
        let mut name = &expr[i..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
            }
        }
        into.insert(name.to_string());
        i = end;
    }
}

/// The `expr:` values of a Prometheus rule file (one line, or a `|` block below it).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let mut expr = rest.trim().trim_start_matches(['|', '>']).to_string();
            i += 1;
            while i < lines.len() {
                let next = lines[i];
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                if !next.trim_start().starts_with('#') {
                    expr.push('\n');
                    expr.push_str(next);
                }
                i += 1;
            }
            exprs.push(expr);
        } else {
            i += 1;
        }
    }
    exprs
}

/// Every `"expr"` string in the dashboard JSON.
fn dashboard_exprs(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => into.push(expr.clone()),
                    _ => dashboard_exprs(v, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, into)),
        _ => {}
    }
}

/// An account, a project and a key, and one event ingested with it.
async fn an_account_that_ingested(app: &TestApp) -> Sdk {
    let sdk = sdk(app).await;
    let reply = ingest(
        app,
        &sdk.key,
        "events",
        serde_json::json!({"event": "e", "visitor_id": "v"}),
    )
    .await;
    assert_eq!(reply.status, 202);
    sdk
}

fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[actix_web::test]
async fn every_metric_the_alerts_and_the_dashboard_query_is_one_observe_exports() {
    // A short run: a server, an account, an ingest, and its `/metrics`.
    let app = spawn_app().await;
    an_account_that_ingested(&app).await;
    let (_, text) = app.get_text("/metrics").await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let registered = observe_core::metrics::registered_names();
    for name in &exported {
        assert!(
            registered.contains(*name),
            "{name} is exported but not noted"
        );
    }

    let mut alert_names = BTreeSet::new();
    let exprs = rule_exprs(&read("config/prometheus/alerts.yml"));
    assert!(exprs.len() >= 10, "{} rule expressions", exprs.len());
    for expr in &exprs {
        metric_names(expr, &mut alert_names);
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("config/grafana/dashboards/observe-overview.json"))
            .expect("the dashboard is JSON");
    let mut panel_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut panel_exprs);
    assert!(
        panel_exprs.len() >= 20,
        "{} panel queries",
        panel_exprs.len()
    );
    let mut panel_names = BTreeSet::new();
    for expr in &panel_exprs {
        metric_names(expr, &mut panel_names);
    }
    assert!(alert_names.len() >= 10 && panel_names.len() >= 20);
    for (file, names) in [
        ("config/prometheus/alerts.yml", &alert_names),
        (
            "config/grafana/dashboards/observe-overview.json",
            &panel_names,
        ),
    ] {
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !registered.contains(n.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} queries series observe does not have: {unknown:?}"
        );
    }
}

#[test]
fn names_are_found_in_expressions() {
    let mut names = BTreeSet::new();
    metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(observe_ingest_flush_duration_seconds_bucket[5m]))) \
         / process_open_fds{job=\"observe\"} and my_observe_x",
        &mut names,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["observe_ingest_flush_duration_seconds", "process_open_fds"]
    );
    let exprs = rule_exprs(
        "      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: B\n        expr: |\n          sum(rate(observe_x_total[5m]))\n            > 0\n        labels:\n",
    );
    assert_eq!(exprs.len(), 2);
    assert!(
        exprs[1].contains("observe_x_total") && exprs[1].contains("> 0"),
        "{exprs:?}"
    );
}

/// Scrape, rule and query settings for a Prometheus of the test's own: the operator's
/// `prometheus.yml` with a 1 s scrape and evaluation interval, one target (the test's
/// server) and `alerts.yml` by its full path. Everything else as shipped.
fn test_prometheus_config(target: &str) -> String {
    let shipped = read("config/prometheus/prometheus.yml");
    let alerts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/alerts.yml");
    let mut out = String::new();
    let mut targets_done = false;
    for line in shipped.lines() {
        let trimmed = line.trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        let replaced = match trimmed {
            "scrape_interval: 15s" | "evaluation_interval: 15s" | "scrape_timeout: 10s" => {
                format!(
                    "{indent}{}: 1s",
                    trimmed.split(':').next().unwrap_or_default()
                )
            }
            "- alerts.yml" => format!("{indent}- {}", alerts.display()),
            t if t.starts_with("- observe-") && t.ends_with(":8000") => {
                if targets_done {
                    continue;
                }
                targets_done = true;
                format!("{indent}- {target}")
            }
            _ => line.to_string(),
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    assert!(
        targets_done,
        "the shipped config's targets were found:\n{shipped}"
    );
    out
}

/// A dashboard expression with Grafana's variables given values: every instance and route,
/// and a rate window that holds several 1 s scrapes.
fn grafana_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

/// `GET {base}{path}` on Prometheus's HTTP API: the answer's `data`.
async fn prometheus_api(base: &str, path: &str) -> serde_json::Value {
    let mut res = awc::Client::default()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let body: serde_json::Value = res.json().limit(16 << 20).await.expect("JSON");
    assert_eq!(body["status"], "success", "{path}: {body}");
    body["data"].clone()
}

#[actix_web::test]
async fn a_real_prometheus_scrapes_observe_evaluates_the_rules_and_answers_the_dashboard() {
    // The background jobs run too: their panels need their runners.
    let app = spawn_app_with(|s| s.jobs.enabled = true, Some(test_routes())).await;
    // Traffic of the kinds the panels show: requests (one a 500), an ingest and a refused
    // one, a Sentry SDK's envelope.
    let sdk = an_account_that_ingested(&app).await;
    let reply = ingest(&app, &sdk.key, "events", serde_json::json!({"event": 7})).await;
    assert_eq!(reply.status, 422);
    let reply = post_envelope(
        &app,
        &sdk.dsn,
        envelope("python_chained.envelope", &sdk.dsn),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let (status, _) = app.get_text("/__test/panic").await;
    assert_eq!(status, 500);

    let target = app
        .address
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let dir = std::env::temp_dir().join(format!("observe-prometheus-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, test_prometheus_config(&target)).expect("write config");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("Debian's prometheus (scripts/services.sh tools installs it)");

    // Scraped: the target is up.
    let up = eventually(30, || async {
        let Ok(mut res) = awc::Client::default()
            .get(format!("{base}/api/v1/query?query=up"))
            .send()
            .await
        else {
            return false;
        };
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        body["data"]["result"][0]["value"][1] == "1"
    })
    .await;
    if !up {
        let _ = prometheus.start_kill();
        let out = prometheus.wait_with_output().await.expect("output");
        panic!(
            "Prometheus never scraped observe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Several scrapes and evaluations: a rate needs two samples in its window.
    for _ in 0..3 {
        app.get_text("/health/ready").await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }

    // Every rule of alerts.yml is loaded, evaluated, and healthy (no evaluation error).
    let expected = rule_exprs(&read("config/prometheus/alerts.yml")).len();
    let evaluated = eventually(20, || async {
        let data = prometheus_api(&base, "/api/v1/rules").await;
        let rules: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == expected
            && rules.iter().all(|r| {
                r["health"] == "ok"
                    && !r["lastEvaluation"]
                        .as_str()
                        .unwrap_or("0001")
                        .starts_with("0001")
            })
    })
    .await;
    let data = prometheus_api(&base, "/api/v1/rules").await;
    assert!(
        evaluated,
        "{expected} rules loaded and evaluated without error: {data:#}"
    );
    // A healthy server has no alert pending (every rule waits 1 minute or more before it
    // fires, so pending is what a few seconds can show), but for the 5xx ratio the test's
    // deliberate 500 may start.
    let alerts = prometheus_api(&base, "/api/v1/alerts").await;
    let active: Vec<&serde_json::Value> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] != "ObserveHigh5xxRatio")
        .collect();
    assert!(active.is_empty(), "alerts on a healthy server: {active:#?}");

    // Every dashboard query is valid PromQL, and returns data.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("config/grafana/dashboards/observe-overview.json"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let mut empty = Vec::new();
    for expr in &exprs {
        let query = grafana_expr(expr);
        let mut res = awc::Client::default()
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", query.as_str())])
            .expect("query string")
            .send()
            .await
            .expect("query");
        let body: serde_json::Value = res.json().limit(16 << 20).await.expect("JSON");
        assert_eq!(body["status"], "success", "{query}: {body}");
        if body["data"]["result"].as_array().is_none_or(Vec::is_empty) {
            empty.push(query);
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries with no data: {empty:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
