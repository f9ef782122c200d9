//! Encodings of `/metrics/export`: CSV, the Prometheus text format (0.0.4) and JSON, written one
//! series at a time so the route can stream them (an [`Encoder`] keeps what must be known across
//! series: whether a row came before, which Prometheus families were written).
//!
//! - **CSV** (RFC 4180): one row per series and bucket with data; `labels` is a JSON object in
//!   one cell. A text cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading `'` so a
//!   spreadsheet never runs it as a formula (OWASP, "CSV Injection").
//! - **Prometheus**: what a client library would have exposed at the end of each bucket had it
//!   been scraped then, counting from the range's start: a counter as the running total
//!   (`<name>_total`), a gauge as its last reading, a histogram as a summary (quantiles 0.5, 0.9,
//!   0.95 and 0.99 of the bucket from its DDSketch; `_sum` and `_count` running). Each sample
//!   carries the time of the bucket's last report, so a series may have several samples in one
//!   file, in time order (`promtool check metrics` accepts it; it is how a range is backfilled).
//!   Names are translated as OpenTelemetry's Prometheus exporters do: characters outside
//!   `[a-zA-Z0-9_]` (`:` included, which Prometheus keeps for recording rules) become `_`, runs
//!   of `_` collapse to one, a leading digit gets a `_`; label names likewise, a leading digit
//!   or `__` (reserved by Prometheus) gets `key_`/`key`, labels that collide after this are
//!   joined with `;`, and `quantile` and `le` become `exported_quantile`/`exported_le`
//!   (Prometheus's own rule for labels that clash with its own). Should two metrics still land
//!   on one family name with another type, or not next to each other, the later one gets
//!   `_<kind>` (and a number) appended, so no family is declared twice.
//! - **JSON**: `{"from", "to", "tz", "group_by", "series": [{"name", "kind", "labels",
//!   "points": [...]}]}`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::series::{Cell, COUNTER, GAUGE, HISTOGRAM};
use crate::store::series::{Series, Window};

/// The format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Prometheus,
    Json,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            // As Prometheus's client libraries send it.
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(Format::Csv),
            "prometheus" => Ok(Format::Prometheus),
            "json" => Ok(Format::Json),
            _ => Err("must be one of csv, prometheus, json".into()),
        }
    }
}

/// The CSV header.
pub const CSV_HEADER: &str = "name,kind,labels,start,count,sum,min,max,last,last_at,p50,p95,p99\n";

/// Quantiles a histogram exports.
const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.95, "0.95"), (0.99, "0.99")];

/// Writes an export series by series.
#[derive(Debug)]
pub struct Encoder {
    format: Format,
    /// Prometheus families written, with their type.
    families: HashMap<String, &'static str>,
    /// The family the last series went to (its samples may go on).
    open: Option<String>,
    /// JSON: whether a series came before (a comma goes first).
    wrote: bool,
}

impl Encoder {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            families: HashMap::new(),
            open: None,
            wrote: false,
        }
    }

    /// What comes before the first series.
    pub fn begin(&mut self, window: &Window) -> String {
        match self.format {
            Format::Csv => CSV_HEADER.to_string(),
            Format::Prometheus => String::new(),
            Format::Json => {
                #[derive(Serialize)]
                struct Head<'a> {
                    from: DateTime<Utc>,
                    to: DateTime<Utc>,
                    tz: &'a str,
                    group_by: &'a str,
                }
                let head = serde_json::to_string(&Head {
                    from: window.range.from,
                    to: window.range.to,
                    tz: window.range.tz.name(),
                    group_by: window.by.as_str(),
                })
                .unwrap_or_else(|_| "{}".into());
                // The head object, left open for the series array.
                format!("{},\"series\":[", head.trim_end_matches('}'))
            }
        }
    }

    /// One series.
    pub fn series(&mut self, s: &Series) -> String {
        match self.format {
            Format::Csv => csv_series(s),
            Format::Prometheus => self.prometheus_series(s),
            Format::Json => {
                let text = json_series(s);
                let comma = if self.wrote { "," } else { "" };
                self.wrote = true;
                format!("{comma}{text}")
            }
        }
    }

    /// What comes after the last series.
    pub fn end(&mut self) -> String {
        match self.format {
            Format::Json => "]}\n".into(),
            _ => String::new(),
        }
    }

    fn prometheus_series(&mut self, s: &Series) -> String {
        let (base, ty) = match s.kind.as_str() {
            COUNTER => {
                let base = metric_name(&s.name);
                let base = if base.ends_with("_total") {
                    base
                } else {
                    format!("{base}_total")
                };
                (base, "counter")
            }
            GAUGE => (metric_name(&s.name), "gauge"),
            HISTOGRAM => (metric_name(&s.name), "summary"),
            _ => (metric_name(&s.name), "untyped"),
        };
        let mut out = String::new();
        let family = self.family(base, ty, &s.kind);
        if self.open.as_deref() != Some(family.as_str()) {
            let _ = writeln!(
                out,
                "# HELP {family} observe metric {} ({})",
                help_text(&s.name),
                s.kind
            );
            let _ = writeln!(out, "# TYPE {family} {ty}");
            self.open = Some(family.clone());
        }
        let labels = label_pairs(&s.labels);
        let (mut running_sum, mut running_count) = (0.0, 0i64);
        for cell in s.buckets.values() {
            let Some((at, last)) = cell.last else {
                continue;
            };
            let ms = at.timestamp_millis();
            running_sum += cell.sum;
            running_count += cell.count;
            match ty {
                "counter" => {
                    let _ = writeln!(
                        out,
                        "{family}{} {} {ms}",
                        braces(&labels),
                        number(running_sum)
                    );
                }
                "summary" => {
                    if let Some(sketch) = &cell.sketch {
                        for (q, text) in QUANTILES {
                            if let Some(v) = sketch.quantile(q) {
                                let mut with_q = labels.clone();
                                with_q.push(("quantile".into(), text.into()));
                                let _ =
                                    writeln!(out, "{family}{} {} {ms}", braces(&with_q), number(v));
                            }
                        }
                    }
                    let _ = writeln!(
                        out,
                        "{family}_sum{} {} {ms}",
                        braces(&labels),
                        number(running_sum)
                    );
                    let _ = writeln!(
                        out,
                        "{family}_count{} {running_count} {ms}",
                        braces(&labels)
                    );
                }
                _ => {
                    let _ = writeln!(out, "{family}{} {} {ms}", braces(&labels), number(last));
                }
            }
        }
        out
    }

    /// The family a series of `base` and type `ty` goes to: `base` unless another family took
    /// it or it was closed (families must be contiguous and declared once).
    fn family(&mut self, base: String, ty: &'static str, kind: &str) -> String {
        if self.open.as_deref() == Some(base.as_str()) && self.families.get(&base) == Some(&ty) {
            return base;
        }
        if !self.families.contains_key(&base) {
            self.families.insert(base.clone(), ty);
            return base;
        }
        let stem = format!("{base}_{}", metric_name(kind));
        let mut candidate = stem.clone();
        let mut n = 2;
        while self.families.contains_key(&candidate) {
            candidate = format!("{stem}_{n}");
            n += 1;
        }
        self.families.insert(candidate.clone(), ty);
        candidate
    }
}

/// A number as Prometheus and spreadsheets read it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A metric or family name in Prometheus's alphabet (see the module documentation).
pub fn metric_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label name in Prometheus's alphabet (see the module documentation).
pub fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    } else if out.starts_with("__") {
        out.insert_str(0, "key");
    }
    if out == "quantile" || out == "le" {
        out.insert_str(0, "exported_");
    }
    out
}

/// The label pairs of a series, translated, sorted by name, colliding names joined.
fn label_pairs(labels: &Value) -> Vec<(String, String)> {
    let mut merged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Value::Object(map) = labels {
        for (key, value) in map {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            merged.entry(label_name(key)).or_default().push(value);
        }
    }
    merged
        .into_iter()
        .map(|(key, values)| (key, values.join(";")))
        .collect()
}

/// `{a="x",b="y"}`, values escaped; nothing for no labels.
fn braces(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn help_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A CSV cell: quoted when it must be, defused when a spreadsheet would run it.
fn csv_text(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn quantile(cell: &Cell, q: f64) -> Option<f64> {
    cell.sketch.as_ref().and_then(|s| s.quantile(q))
}

fn csv_series(s: &Series) -> String {
    let mut out = String::new();
    let name = csv_text(&s.name);
    let labels = csv_text(&s.labels.to_string());
    let opt = |v: Option<f64>| v.map(number).unwrap_or_default();
    for (start, cell) in &s.buckets {
        let (last_at, last) = match cell.last {
            Some((at, v)) => (time(at), number(v)),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{name},{},{labels},{},{},{},{},{},{last},{last_at},{},{},{}",
            csv_text(&s.kind),
            time(*start),
            cell.count,
            number(cell.sum),
            number(cell.min),
            number(cell.max),
            opt(quantile(cell, 0.5)),
            opt(quantile(cell, 0.95)),
            opt(quantile(cell, 0.99)),
        );
    }
    out
}

/// One bucket of a series in the JSON export.
#[derive(Serialize)]
struct Point {
    start: DateTime<Utc>,
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: Option<f64>,
    last_at: Option<DateTime<Utc>>,
    /// Histograms only.
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
}

#[derive(Serialize)]
struct JsonSeries<'a> {
    name: &'a str,
    kind: &'a str,
    labels: &'a Value,
    points: Vec<Point>,
}

fn json_series(s: &Series) -> String {
    let points = s
        .buckets
        .iter()
        .map(|(start, cell)| Point {
            start: *start,
            count: cell.count,
            sum: cell.sum,
            min: cell.min,
            max: cell.max,
            last: cell.last.map(|(_, v)| v),
            last_at: cell.last.map(|(at, _)| at),
            p50: quantile(cell, 0.5),
            p95: quantile(cell, 0.95),
            p99: quantile(cell, 0.99),
        })
        .collect();
    serde_json::to_string(&JsonSeries {
        name: &s.name,
        kind: &s.kind,
        labels: &s.labels,
        points,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{GroupBy, RangeInput, TimeRange};
    use crate::sketch::Latency;
    use crate::store::stats::Plan;
    use serde_json::json;

    fn window() -> Window {
        let now: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap();
        let input = RangeInput {
            from: Some("2026-03-10T09:00:00Z"),
            to: Some("2026-03-10T12:00:00Z"),
            tz: None,
            group_by: None,
        };
        let range = TimeRange::parse(&input, now, 365).unwrap();
        let (starts, bounds) = crate::series::hour_boundaries(&range, GroupBy::Hour);
        Window {
            range,
            by: GroupBy::Hour,
            starts,
            bounds,
            plan: Plan {
                stored: vec![],
                live: vec![],
            },
        }
    }

    fn series(name: &str, kind: &str, labels: Value, values: &[(&str, f64)]) -> Series {
        let mut buckets = BTreeMap::new();
        for (at, v) in values {
            let at: DateTime<Utc> = at.parse().unwrap();
            let start = crate::store::ingest::hour_of(at);
            let mut sketch = Latency::default();
            sketch.add(*v);
            let cell = Cell {
                count: 1,
                sum: *v,
                min: *v,
                max: *v,
                last: Some((at, *v)),
                sketch: (kind == HISTOGRAM).then_some(sketch),
            };
            buckets
                .entry(start)
                .or_insert_with(Cell::default)
                .merge(&cell);
        }
        Series {
            name: name.into(),
            kind: kind.into(),
            labels,
            buckets,
        }
    }

    #[test]
    fn names_in_prometheus_alphabet() {
        assert_eq!(metric_name("llm.cost_usd"), "llm_cost_usd");
        assert_eq!(metric_name("a..b:c-d"), "a_b_c_d");
        assert_eq!(metric_name("9lives"), "_9lives");
        assert_eq!(metric_name("__x"), "_x");
        assert_eq!(label_name("host.name"), "host_name");
        assert_eq!(label_name("1st"), "key_1st");
        assert_eq!(label_name("__meta"), "key__meta");
        assert_eq!(label_name("quantile"), "exported_quantile");
        assert_eq!(label_name("le"), "exported_le");
        assert_eq!(
            label_pairs(&json!({"a.b": "1", "a_b": "2", "z": "3"})),
            vec![("a_b".into(), "1;2".into()), ("z".into(), "3".into())]
        );
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(16.0), "16");
    }

    #[test]
    fn prometheus_families_are_declared_once() {
        let w = window();
        let mut e = Encoder::new(Format::Prometheus);
        let mut text = e.begin(&w);
        for s in [
            series(
                "jobs",
                COUNTER,
                json!({"q": "a"}),
                &[("2026-03-10T09:10:00Z", 2.0), ("2026-03-10T10:10:00Z", 3.0)],
            ),
            series(
                "jobs",
                COUNTER,
                json!({"q": "b"}),
                &[("2026-03-10T09:20:00Z", 1.0)],
            ),
            // Lands on `jobs_total` too, not next to it: renamed.
            series(
                "jobs.total",
                GAUGE,
                json!({}),
                &[("2026-03-10T09:20:00Z", 7.0)],
            ),
            series("jobs", GAUGE, json!({}), &[("2026-03-10T09:30:00Z", 4.0)]),
            series(
                "jobs_total",
                COUNTER,
                json!({}),
                &[("2026-03-10T09:30:00Z", 4.0)],
            ),
        ] {
            text.push_str(&e.series(&s));
        }
        text.push_str(&e.end());
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            vec![
                "# TYPE jobs_total counter",
                "# TYPE jobs_total_gauge gauge",
                "# TYPE jobs gauge",
                "# TYPE jobs_total_counter counter",
            ],
            "{text}"
        );
        assert!(
            text.contains(
                "jobs_total{q=\"a\"} 2 1773133800000\njobs_total{q=\"a\"} 5 1773137400000\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn summaries_and_escaping() {
        let w = window();
        let mut e = Encoder::new(Format::Prometheus);
        let s = series(
            "req.latency",
            HISTOGRAM,
            json!({"route": "a\"b\\c\nd"}),
            &[("2026-03-10T09:10:00Z", 2.0), ("2026-03-10T09:20:00Z", 4.0)],
        );
        let text = e.series(&s);
        assert!(text.starts_with("# HELP req_latency observe metric req.latency (histogram)\n# TYPE req_latency summary\n"), "{text}");
        assert!(
            text.contains("req_latency{route=\"a\\\"b\\\\c\\nd\",quantile=\"0.5\"} "),
            "{text}"
        );
        assert!(
            text.contains("req_latency_sum{route=\"a\\\"b\\\\c\\nd\"} 6 "),
            "{text}"
        );
        assert!(
            text.contains("req_latency_count{route=\"a\\\"b\\\\c\\nd\"} 2 "),
            "{text}"
        );
        let _ = w;
    }

    #[test]
    fn csv_quotes_and_defuses() {
        assert_eq!(csv_text("plain"), "plain");
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("-2+3"), "'-2+3");
        assert_eq!(csv_text("=cmd()"), "'=cmd()");
        let w = window();
        let mut e = Encoder::new(Format::Csv);
        let mut text = e.begin(&w);
        text.push_str(&e.series(&series(
            "signups",
            COUNTER,
            json!({"plan": "pro"}),
            &[("2026-03-10T09:10:00Z", 2.0)],
        )));
        assert_eq!(
            text,
            format!(
                "{CSV_HEADER}signups,counter,\"{{\"\"plan\"\":\"\"pro\"\"}}\",2026-03-10T09:00:00Z,1,2,2,2,2,2026-03-10T09:10:00Z,,,\n"
            )
        );
    }

    #[test]
    fn json_is_one_document() {
        let w = window();
        let mut e = Encoder::new(Format::Json);
        let mut text = e.begin(&w);
        for name in ["a", "b"] {
            text.push_str(&e.series(&series(
                name,
                GAUGE,
                json!({"k": "v"}),
                &[("2026-03-10T09:10:00Z", 1.5)],
            )));
        }
        text.push_str(&e.end());
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["from"], "2026-03-10T09:00:00Z");
        assert_eq!(doc["group_by"], "hour");
        assert_eq!(doc["series"][1]["name"], "b");
        assert_eq!(doc["series"][0]["points"][0]["last"], 1.5);
        assert!(doc["series"][0]["points"][0]["p95"].is_null());
    }
}
