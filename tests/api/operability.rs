//! The operator's files in `config/`: every metric the alert rules and the Grafana dashboard
//! query is one observe registers. (Whether the rules themselves parse and fire is
//! `scripts/check-prometheus.sh`'s job: promtool, run by `make test`.)
//!
//! Names are checked against the families observe registers rather than the text of one
//! `/metrics` answer: a labelled family with no value yet (restarts before the first restart,
//! jobs on a server whose jobs are off) is not in the text, yet the rules rightly query it.
//! A short run's `/metrics` is checked to hold the registered families that have values.

use std::collections::BTreeSet;

use crate::helpers::{ingest, sdk, spawn_app};

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

fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[actix_web::test]
async fn every_metric_the_alerts_and_the_dashboard_query_is_one_observe_exports() {
    // A short run: a server, an account, an ingest, and its `/metrics`.
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let reply = ingest(
        &app,
        &sdk.key,
        "events",
        serde_json::json!({"event": "e", "visitor_id": "v"}),
    )
    .await;
    assert_eq!(reply.status, 202);
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
