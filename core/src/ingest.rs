//! Ingest payloads (SPEC §6): one JSON object, `{"batch": [...]}` or a JSON array, parsed into
//! typed items and validated item by item.
//!
//! Validation collects every problem of every item (index, field, reason), so one 422 tells an
//! SDK everything at once; a request with any invalid item stores nothing. Timestamps more than
//! [`MAX_FUTURE_SKEW`] ahead of the receive time are clamped to it; items older than the
//! organisation's retention are invalid.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::LlmPrice;
use crate::fingerprint::{self, Frame, StackTrace};

/// How far in the future a timestamp may be before it is clamped to the receive time.
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);
/// Most items one request may carry.
pub const MAX_BATCH: usize = 1000;
/// Longest name (event, metric, label, model) an item may carry.
pub const MAX_NAME: usize = 200;
/// Longest URL, route, referrer or user agent.
pub const MAX_TEXT: usize = 2048;
/// Longest error message.
pub const MAX_MESSAGE: usize = 8192;
/// Largest stack trace: text, or frames as JSON.
pub const MAX_STACK: usize = 64 * 1024;
/// Largest JSON object (properties, traits) an item may carry.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024;
/// Largest `context` of an error (breadcrumbs, contexts, request, the rest of an exception
/// chain: what Sentry SDKs send beyond observe's fields), as JSON.
pub const MAX_CONTEXT: usize = 64 * 1024;
/// Most labels (tags) one item may carry.
pub const MAX_LABELS: usize = 20;

/// One invalid field of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemError {
    pub index: usize,
    pub field: String,
    pub reason: String,
}

/// Why a body is not a batch of items at all (400: nothing per item to report).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("request body must be a JSON object, an array of objects, or {{\"batch\": [...]}}")]
    Shape,
    #[error("a batch holds at most {MAX_BATCH} items")]
    TooMany,
    #[error("the batch is empty")]
    Empty,
}

/// The items of a body, before validation.
pub fn split(body: &[u8]) -> Result<Vec<Value>, BodyError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BodyError::Malformed(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut object) => match object.remove("batch") {
            Some(Value::Array(items)) if object.is_empty() => items,
            Some(_) => return Err(BodyError::Shape),
            None => vec![Value::Object(object)],
        },
        _ => return Err(BodyError::Shape),
    };
    if items.is_empty() {
        return Err(BodyError::Empty);
    }
    if items.len() > MAX_BATCH {
        return Err(BodyError::TooMany);
    }
    Ok(items)
}

/// What validation needs to know besides the item.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub received_at: DateTime<Utc>,
    pub retention_days: u32,
}

/// A validated JSON object kept as its JSON text: serialized once while validating (which
/// measures it), then written as is into a `jsonb` column, never parsed or cloned again.
#[derive(Debug, Clone, Default)]
pub struct JsonObject(Option<Box<RawValue>>);

impl JsonObject {
    pub fn empty() -> Self {
        Self(None)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_deref().map_or("{}", RawValue::get)
    }

    /// Whether it holds no key (absent, or sent as `{}`).
    pub fn is_empty(&self) -> bool {
        self.as_str()
            .trim_start_matches('{')
            .trim_start()
            .starts_with('}')
    }

    /// The object again (tests and rare readers; the write path never needs it).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }
}

impl Serialize for JsonObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(serializer),
            None => serde::ser::SerializeMap::end(serializer.serialize_map(Some(0))?),
        }
    }
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub name: String,
    pub visitor_id: String,
    pub user_id: Option<String>,
    pub url: Option<String>,
    pub referrer: Option<String>,
    pub properties: JsonObject,
    pub timestamp: DateTime<Utc>,
}

impl Event {
    /// `$pageview` and `page_view` are page views.
    pub fn is_page_view(&self) -> bool {
        self.name == "$pageview" || self.name == "page_view"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identify {
    pub visitor_id: String,
    pub user_id: String,
    pub traits: Map<String, Value>,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorItem {
    pub error_type: String,
    pub message: String,
    /// Frames or text, kept as sent (JSON) for the detail view.
    pub stack_trace: Option<Value>,
    pub level: String,
    pub environment: Option<String>,
    pub release: Option<String>,
    pub url: Option<String>,
    pub user_id: Option<String>,
    pub visitor_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub fingerprint: String,
    /// What else the occurrence carries (breadcrumbs, contexts, request, …), kept as sent.
    pub context: JsonObject,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestItem {
    pub method: String,
    pub route: String,
    pub status_code: u16,
    pub duration_ms: f64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub request_size: Option<i64>,
    pub response_size: Option<i64>,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricItem {
    pub name: String,
    pub value: f64,
    pub kind: MetricKind,
    pub labels: BTreeMap<String, String>,
    pub timestamp: DateTime<Utc>,
}

/// The five ingest endpoints, one per kind of item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Events,
    Identify,
    Errors,
    Requests,
    Metrics,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Events,
        Kind::Identify,
        Kind::Errors,
        Kind::Requests,
        Kind::Metrics,
    ];

    /// The endpoint's last path segment, also the `kind` label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Identify => "identify",
            Kind::Errors => "errors",
            Kind::Requests => "requests",
            Kind::Metrics => "metrics",
        }
    }

    /// What the items count against: identify calls and custom metrics count as events
    /// (SPEC §5).
    pub fn category(self) -> Category {
        match self {
            Kind::Events | Kind::Identify | Kind::Metrics => Category::Events,
            Kind::Errors => Category::Errors,
            Kind::Requests => Category::ApiRequests,
        }
    }
}

/// A rate-limit and monthly-quota category (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Events,
    Errors,
    ApiRequests,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Events => "events",
            Category::Errors => "errors",
            Category::ApiRequests => "api_requests",
        }
    }
}

/// The validated items of one request, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub enum Items {
    Events(Vec<Event>),
    Identify(Vec<Identify>),
    Errors(Vec<ErrorItem>),
    Requests(Vec<RequestItem>),
    /// `sent` items became `rows` (LLM usage turns into several series).
    Metrics {
        sent: usize,
        rows: Vec<MetricItem>,
    },
}

impl Items {
    /// Validates `items` as `kind`: all of them, or every problem found.
    pub fn validate(
        kind: Kind,
        items: &[Value],
        ctx: &Context,
        prices: &BTreeMap<String, LlmPrice>,
    ) -> Result<Self, Vec<ItemError>> {
        Ok(match kind {
            Kind::Events => Items::Events(events(items, ctx)?),
            Kind::Identify => Items::Identify(identifies(items, ctx)?),
            Kind::Errors => Items::Errors(errors(items, ctx)?),
            Kind::Requests => Items::Requests(requests(items, ctx)?),
            Kind::Metrics => Items::Metrics {
                sent: items.len(),
                rows: metrics(items, ctx, prices)?,
            },
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Items::Events(_) => Kind::Events,
            Items::Identify(_) => Kind::Identify,
            Items::Errors(_) => Kind::Errors,
            Items::Requests(_) => Kind::Requests,
            Items::Metrics { .. } => Kind::Metrics,
        }
    }

    /// Items as the client sent them: what `accepted` reports and quotas count.
    pub fn len(&self) -> usize {
        match self {
            Items::Events(v) => v.len(),
            Items::Identify(v) => v.len(),
            Items::Errors(v) => v.len(),
            Items::Requests(v) => v.len(),
            Items::Metrics { sent, .. } => *sent,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the fields of one item, noting every problem.
struct Fields<'a> {
    index: usize,
    object: &'a Map<String, Value>,
    problems: &'a mut Vec<ItemError>,
}

impl Fields<'_> {
    fn problem(&mut self, field: &str, reason: impl Into<String>) {
        self.problems.push(ItemError {
            index: self.index,
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// An optional string of at most `max` characters (empty counts as absent).
    fn string(&mut self, field: &str, max: usize) -> Option<String> {
        match self.object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) if s.chars().count() > max => {
                self.problem(field, format!("must be at most {max} characters"));
                None
            }
            Some(Value::String(s)) if s.contains('\0') => {
                self.problem(field, "must not contain NUL characters");
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_string()),
            // Ids are often numbers in SDKs; take them as text.
            Some(Value::Number(n)) if field.ends_with("_id") => Some(n.to_string()),
            Some(_) => {
                self.problem(field, "must be a string");
                None
            }
        }
    }

    /// A required string: "is required" unless reading it already found a problem.
    fn required_string(&mut self, field: &str, max: usize) -> String {
        let before = self.problems.len();
        self.string(field, max).unwrap_or_else(|| {
            if self.problems.len() == before {
                self.problem(field, "is required");
            }
            String::new()
        })
    }

    /// A required number: "is required" unless reading it already found a problem.
    fn required_number(&mut self, field: &str) -> Option<f64> {
        let before = self.problems.len();
        let n = self.number(field);
        if n.is_none() && self.problems.len() == before {
            self.problem(field, "is required");
        }
        n
    }

    fn number(&mut self, field: &str) -> Option<f64> {
        match self.object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Some(f),
                _ => {
                    self.problem(field, "must be a finite number");
                    None
                }
            },
            Some(_) => {
                self.problem(field, "must be a number");
                None
            }
        }
    }

    /// Notes a problem if `value` holds a NUL anywhere (PostgreSQL stores no NUL in `text` and
    /// no `\u0000` in `jsonb`: such an item could never be written). Returns whether it did.
    fn refuse_nul(&mut self, field: &str, value: &Value) -> bool {
        // The common case, no NUL, allocates nothing; the path is built only to report one.
        if !has_nul(value) {
            return false;
        }
        match nul_in(value, field) {
            Some(NulAt::Value(path)) => {
                self.problem(&path, "must not contain NUL characters");
                true
            }
            Some(NulAt::Key(path)) => {
                self.problem(&path, "keys must not contain NUL characters");
                true
            }
            None => false,
        }
    }

    /// An optional JSON object, bounded in size.
    fn object(&mut self, field: &str) -> Map<String, Value> {
        match self.object.get(field) {
            None | Some(Value::Null) => Map::new(),
            Some(value @ Value::Object(_)) if self.refuse_nul(field, value) => Map::new(),
            Some(Value::Object(map)) => {
                if serde_json::to_vec(map)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX)
                    > MAX_OBJECT_BYTES
                {
                    self.problem(
                        field,
                        format!("must be at most {MAX_OBJECT_BYTES} bytes of JSON"),
                    );
                    Map::new()
                } else {
                    map.clone()
                }
            }
            Some(_) => {
                self.problem(field, "must be an object");
                Map::new()
            }
        }
    }

    /// An optional JSON object of at most [`MAX_OBJECT_BYTES`], as JSON text.
    fn object_json(&mut self, field: &str) -> JsonObject {
        self.object_json_within(field, MAX_OBJECT_BYTES)
    }

    /// An optional JSON object of at most `max` bytes, as JSON text.
    fn object_json_within(&mut self, field: &str, max: usize) -> JsonObject {
        match self.object.get(field) {
            None | Some(Value::Null) => JsonObject::empty(),
            Some(value @ Value::Object(_)) if self.refuse_nul(field, value) => JsonObject::empty(),
            Some(value @ Value::Object(_)) => match serde_json::value::to_raw_value(value) {
                Ok(raw) if raw.get().len() <= max => JsonObject(Some(raw)),
                _ => {
                    self.problem(field, format!("must be at most {max} bytes of JSON"));
                    JsonObject::empty()
                }
            },
            Some(_) => {
                self.problem(field, "must be an object");
                JsonObject::empty()
            }
        }
    }

    /// An optional object of string values (tags, labels).
    fn string_map(&mut self, field: &str) -> BTreeMap<String, String> {
        let map = self.object(field);
        if map.len() > MAX_LABELS {
            self.problem(field, format!("must have at most {MAX_LABELS} entries"));
            return BTreeMap::new();
        }
        let mut out = BTreeMap::new();
        for (key, value) in map {
            match value {
                Value::String(s)
                    if s.chars().count() <= MAX_NAME && key.chars().count() <= MAX_NAME =>
                {
                    out.insert(key, s);
                }
                Value::Number(_) | Value::Bool(_) => {
                    out.insert(key, value.to_string());
                }
                _ => {
                    self.problem(
                        &format!("{field}.{key}"),
                        format!("must be a string of at most {MAX_NAME} characters"),
                    );
                }
            }
        }
        out
    }

    /// The item's time: RFC 3339, default the receive time; clamped when too far ahead;
    /// invalid when older than the retention.
    fn timestamp(&mut self, ctx: &Context) -> DateTime<Utc> {
        let at = match self.object.get("timestamp") {
            None | Some(Value::Null) => return ctx.received_at,
            Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s.trim()) {
                Ok(t) => t.with_timezone(&Utc),
                Err(_) => {
                    self.problem(
                        "timestamp",
                        "must be an RFC 3339 time, e.g. 2026-11-22T10:00:00Z",
                    );
                    return ctx.received_at;
                }
            },
            Some(_) => {
                self.problem("timestamp", "must be an RFC 3339 string");
                return ctx.received_at;
            }
        };
        if at > ctx.received_at + MAX_FUTURE_SKEW {
            return ctx.received_at;
        }
        if at < ctx.received_at - Duration::days(i64::from(ctx.retention_days)) {
            self.problem(
                "timestamp",
                format!(
                    "is older than this organisation's retention of {} days",
                    ctx.retention_days
                ),
            );
        }
        at
    }
}

/// Where a NUL sits in a JSON value: in a string value, or in an object's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NulAt {
    /// The path of the string holding it (`properties.list[2]`).
    Value(String),
    /// The path of the object whose key holds it.
    Key(String),
}

/// Whether `value` holds a NUL anywhere, in a string or a key.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The first NUL in `value` (whose path is `path`), depth first.
fn nul_in(value: &Value, path: &str) -> Option<NulAt> {
    match value {
        Value::String(s) if s.contains('\0') => Some(NulAt::Value(path.to_string())),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, &format!("{path}[{i}]"))),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                return Some(NulAt::Key(path.to_string()));
            }
            map.iter()
                .find_map(|(k, v)| nul_in(v, &format!("{path}.{k}")))
        }
        _ => None,
    }
}

/// Validates every item with `parse`; all items, or every problem found.
fn validate_all<T>(
    items: &[Value],
    mut parse: impl FnMut(&mut Fields<'_>) -> T,
) -> Result<Vec<T>, Vec<ItemError>> {
    let mut problems = Vec::new();
    let mut parsed = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Some(object) = item.as_object() else {
            problems.push(ItemError {
                index,
                field: "item".into(),
                reason: "must be a JSON object".into(),
            });
            continue;
        };
        let mut fields = Fields {
            index,
            object,
            problems: &mut problems,
        };
        parsed.push(parse(&mut fields));
    }
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(problems)
    }
}

pub fn events(items: &[Value], ctx: &Context) -> Result<Vec<Event>, Vec<ItemError>> {
    validate_all(items, |f| Event {
        name: f.required_string("event", MAX_NAME),
        visitor_id: f.required_string("visitor_id", MAX_NAME),
        user_id: f.string("user_id", MAX_NAME),
        url: f.string("url", MAX_TEXT),
        referrer: f.string("referrer", MAX_TEXT),
        properties: f.object_json("properties"),
        timestamp: f.timestamp(ctx),
    })
}

pub fn identifies(items: &[Value], ctx: &Context) -> Result<Vec<Identify>, Vec<ItemError>> {
    validate_all(items, |f| Identify {
        visitor_id: f.required_string("visitor_id", MAX_NAME),
        user_id: f.required_string("user_id", MAX_NAME),
        traits: f.object("traits"),
        timestamp: f.timestamp(ctx),
    })
}

pub fn errors(items: &[Value], ctx: &Context) -> Result<Vec<ErrorItem>, Vec<ItemError>> {
    validate_all(items, |f| {
        let error_type = f.required_string("type", MAX_NAME);
        let message = f.string("message", MAX_MESSAGE).unwrap_or_default();
        let (stack_trace, frames, text) = stack_trace(f);
        let stack = match (&frames, &text) {
            (Some(frames), _) => StackTrace::Frames(frames),
            (None, Some(text)) => StackTrace::Text(text),
            _ => StackTrace::None,
        };
        let given = f.string("fingerprint", MAX_NAME);
        let fingerprint = fingerprint::fingerprint(&error_type, &message, stack, given.as_deref());
        let level = f.string("level", 20).unwrap_or_else(|| "error".into());
        if !matches!(
            level.as_str(),
            "debug" | "info" | "warning" | "error" | "fatal"
        ) {
            f.problem("level", "must be one of debug, info, warning, error, fatal");
        }
        ErrorItem {
            error_type,
            message,
            stack_trace,
            level,
            environment: f.string("environment", MAX_NAME),
            release: f.string("release", MAX_NAME),
            url: f.string("url", MAX_TEXT),
            user_id: f.string("user_id", MAX_NAME),
            visitor_id: f.string("visitor_id", MAX_NAME),
            tags: f.string_map("tags"),
            fingerprint,
            context: f.object_json_within("context", MAX_CONTEXT),
            timestamp: f.timestamp(ctx),
        }
    })
}

/// The stack trace as sent, and as frames or text for the fingerprint.
fn stack_trace(f: &mut Fields<'_>) -> (Option<Value>, Option<Vec<Frame>>, Option<String>) {
    match f.object.get("stack_trace") {
        None | Some(Value::Null) => (None, None, None),
        Some(Value::String(s)) if s.len() > MAX_STACK => {
            f.problem("stack_trace", format!("must be at most {MAX_STACK} bytes"));
            (None, None, None)
        }
        Some(value) if f.refuse_nul("stack_trace", value) => (None, None, None),
        Some(Value::String(s)) => (Some(Value::String(s.clone())), None, Some(s.clone())),
        Some(Value::Array(raw)) => {
            if serde_json::to_vec(raw)
                .map(|v| v.len())
                .unwrap_or(usize::MAX)
                > MAX_STACK
            {
                f.problem(
                    "stack_trace",
                    format!("must be at most {MAX_STACK} bytes of JSON"),
                );
                return (None, None, None);
            }
            let mut frames = Vec::with_capacity(raw.len());
            for (n, frame) in raw.iter().enumerate() {
                let Some(obj) = frame.as_object() else {
                    f.problem(&format!("stack_trace[{n}]"), "must be an object");
                    continue;
                };
                let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_string);
                frames.push(Frame {
                    function: text("function"),
                    module: text("module").or_else(|| text("filename")),
                    lineno: obj
                        .get("lineno")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok()),
                    in_app: obj.get("in_app").and_then(Value::as_bool),
                });
            }
            (Some(Value::Array(raw.clone())), Some(frames), None)
        }
        Some(_) => {
            f.problem("stack_trace", "must be a string or an array of frames");
            (None, None, None)
        }
    }
}

pub fn requests(items: &[Value], ctx: &Context) -> Result<Vec<RequestItem>, Vec<ItemError>> {
    validate_all(items, |f| {
        let method = f.required_string("method", 16).to_ascii_uppercase();
        let route = match f.string("route", MAX_TEXT) {
            Some(route) => route,
            None => f.required_string("path", MAX_TEXT),
        };
        let status_code = match f.required_number("status_code") {
            Some(code) if (100.0..=599.0).contains(&code) && code.fract() == 0.0 => code as u16,
            Some(_) => {
                f.problem("status_code", "must be an HTTP status code (100 to 599)");
                0
            }
            None => 0,
        };
        let duration_ms = match f.required_number("duration_ms") {
            Some(d) if d >= 0.0 => d,
            Some(_) => {
                f.problem("duration_ms", "must not be negative");
                0.0
            }
            None => 0.0,
        };
        let size = |f: &mut Fields<'_>, field: &str| match f.number(field) {
            Some(n) if n >= 0.0 && n.fract() == 0.0 => Some(n as i64),
            Some(_) => {
                f.problem(field, "must be a whole number of bytes");
                None
            }
            None => None,
        };
        RequestItem {
            method,
            route,
            status_code,
            duration_ms,
            user_agent: f.string("user_agent", MAX_TEXT),
            ip: f.string("ip", 64),
            request_size: size(f, "request_size"),
            response_size: size(f, "response_size"),
            timestamp: f.timestamp(ctx),
        }
    })
}

/// Metric items. An item with a `model` is LLM usage (`model`, `input_tokens`,
/// `output_tokens`, optional `labels`): it becomes the counters `llm.tokens.input` and
/// `llm.tokens.output` and, when `prices` knows the model, `llm.cost_usd`, each labelled with
/// the model. One item in, one to three series rows out.
pub fn metrics(
    items: &[Value],
    ctx: &Context,
    prices: &BTreeMap<String, LlmPrice>,
) -> Result<Vec<MetricItem>, Vec<ItemError>> {
    validate_all(items, |f| {
        if f.object.contains_key("model") {
            llm_usage(f, ctx, prices)
        } else {
            vec![metric(f, ctx)]
        }
    })
    .map(|rows| rows.into_iter().flatten().collect())
}

fn metric(f: &mut Fields<'_>, ctx: &Context) -> MetricItem {
    let name = f.required_string("name", MAX_NAME);
    if !name.is_empty() && !is_metric_name(&name) {
        f.problem(
            "name",
            "may hold only letters, digits, '_', '.', ':' and '-'",
        );
    }
    let value = f.required_number("value").unwrap_or(0.0);
    let kind = match f.string("kind", 20).as_deref() {
        None | Some("gauge") => MetricKind::Gauge,
        Some("counter") => MetricKind::Counter,
        Some("histogram") => MetricKind::Histogram,
        Some(_) => {
            f.problem("kind", "must be one of counter, gauge, histogram");
            MetricKind::Gauge
        }
    };
    if kind == MetricKind::Counter && value < 0.0 {
        f.problem("value", "a counter only goes up: it must not be negative");
    }
    MetricItem {
        name,
        value,
        kind,
        labels: f.string_map("labels"),
        timestamp: f.timestamp(ctx),
    }
}

/// Whether `name` holds only what a metric name may: letters, digits, `_`, `.`, `:`, `-`.
pub fn is_metric_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// Largest token count one usage item may report.
const MAX_TOKENS: f64 = 1e12;

fn llm_usage(
    f: &mut Fields<'_>,
    ctx: &Context,
    prices: &BTreeMap<String, LlmPrice>,
) -> Vec<MetricItem> {
    let model = f.required_string("model", MAX_NAME);
    let tokens = |f: &mut Fields<'_>, field: &str| match f.required_number(field) {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= MAX_TOKENS => n,
        Some(_) => {
            f.problem(field, "must be a whole number of tokens, 0 or more");
            0.0
        }
        None => 0.0,
    };
    let input = tokens(f, "input_tokens");
    let output = tokens(f, "output_tokens");
    let mut labels = f.string_map("labels");
    labels.insert("model".into(), model.clone());
    let timestamp = f.timestamp(ctx);
    let series = |name: &str, value: f64| MetricItem {
        name: name.into(),
        value,
        kind: MetricKind::Counter,
        labels: labels.clone(),
        timestamp,
    };
    let mut rows = vec![
        series("llm.tokens.input", input),
        series("llm.tokens.output", output),
    ];
    if let Some(price) = prices.get(&model) {
        let cost = input * price.input_per_million / 1e6 + output * price.output_per_million / 1e6;
        rows.push(series("llm.cost_usd", cost));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context {
        Context {
            received_at: DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            retention_days: 7,
        }
    }

    fn items(v: Value) -> Vec<Value> {
        split(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn bodies_are_one_object_a_batch_or_an_array() {
        assert_eq!(split(br#"{"event":"a"}"#).unwrap().len(), 1);
        assert_eq!(
            split(br#"{"batch":[{"event":"a"},{"event":"b"}]}"#)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            split(br#"[{"event":"a"},{"event":"b"},{"event":"c"}]"#)
                .unwrap()
                .len(),
            3
        );
        assert!(matches!(split(b"{"), Err(BodyError::Malformed(_))));
        assert_eq!(split(b"42"), Err(BodyError::Shape));
        assert_eq!(split(br#"{"batch": 3}"#), Err(BodyError::Shape));
        assert_eq!(
            split(br#"{"batch": [], "event": "x"}"#),
            Err(BodyError::Shape)
        );
        assert_eq!(split(b"[]"), Err(BodyError::Empty));
        let big = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        assert_eq!(split(big.as_bytes()), Err(BodyError::TooMany));
    }

    #[test]
    fn every_invalid_item_is_listed_with_its_field() {
        let batch = items(json!([
            {"event": "ok", "visitor_id": "v1"},
            {"visitor_id": "v2"},
            {"event": "x", "visitor_id": true, "properties": "nope", "timestamp": "yesterday"},
            "not an object",
        ]));
        let problems = events(&batch, &ctx()).unwrap_err();
        let found: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.index, p.field.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, "event"),
                (2, "visitor_id"),
                (2, "properties"),
                (2, "timestamp"),
                (3, "item")
            ]
        );
    }

    #[test]
    fn timestamps_default_clamp_and_respect_retention() {
        let c = ctx();
        let batch = items(json!([
            {"event": "now", "visitor_id": "v"},
            {"event": "future", "visitor_id": "v", "timestamp": "2026-11-22T13:00:00Z"},
            {"event": "soon", "visitor_id": "v", "timestamp": "2026-11-22T12:04:00+00:00"},
            {"event": "past", "visitor_id": "v", "timestamp": "2026-11-20T08:00:00Z"},
        ]));
        let parsed = events(&batch, &c).unwrap();
        assert_eq!(parsed[0].timestamp, c.received_at);
        assert_eq!(
            parsed[1].timestamp, c.received_at,
            "an hour ahead is clamped"
        );
        assert_eq!(
            parsed[2].timestamp,
            c.received_at + Duration::minutes(4),
            "within skew is kept"
        );
        assert_eq!(
            parsed[3].timestamp.to_rfc3339(),
            "2026-11-20T08:00:00+00:00"
        );
        let old =
            items(json!({"event": "old", "visitor_id": "v", "timestamp": "2026-11-01T00:00:00Z"}));
        let problems = events(&old, &c).unwrap_err();
        assert_eq!(problems[0].field, "timestamp");
        assert!(problems[0].reason.contains("retention of 7 days"));
    }

    #[test]
    fn page_views_by_either_name() {
        let parsed = events(&items(json!([{"event": "$pageview", "visitor_id": "v"}, {"event": "page_view", "visitor_id": "v"}, {"event": "click", "visitor_id": "v"}])), &ctx()).unwrap();
        let views: Vec<bool> = parsed.iter().map(Event::is_page_view).collect();
        assert_eq!(views, vec![true, true, false]);
    }

    #[test]
    fn errors_get_fingerprints_from_frames_or_text_and_sdk_ones_win() {
        let batch = items(json!([
            {"type": "KeyError", "message": "user 1", "stack_trace": [{"function": "load", "module": "app.db", "lineno": 3, "in_app": true}]},
            {"type": "KeyError", "message": "user 2", "stack_trace": [{"function": "load", "filename": "app.db", "lineno": 9, "in_app": true}]},
            {"type": "KeyError", "message": "user 3", "stack_trace": "Traceback...\n  File app.py, line 3"},
            {"type": "KeyError", "message": "x", "fingerprint": "my-group"},
            {"type": "KeyError", "message": "y", "fingerprint": "my-group", "level": "warning", "tags": {"region": "eu", "shard": 3}},
        ]));
        let parsed = errors(&batch, &ctx()).unwrap();
        assert_eq!(
            parsed[0].fingerprint, parsed[1].fingerprint,
            "module or filename, any line"
        );
        assert_ne!(parsed[0].fingerprint, parsed[2].fingerprint);
        assert_eq!(parsed[3].fingerprint, parsed[4].fingerprint);
        assert_eq!(parsed[0].level, "error");
        assert_eq!(parsed[4].tags.get("shard").map(String::as_str), Some("3"));

        let bad = items(json!({"message": "no type", "level": "panic", "stack_trace": 5}));
        let fields: Vec<String> = errors(&bad, &ctx())
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, vec!["type", "stack_trace", "level"]);
    }

    #[test]
    fn requests_take_route_or_path_and_check_numbers() {
        let batch = items(json!([
            {"method": "get", "route": "/users/{id}", "status_code": 200, "duration_ms": 12.5},
            {"method": "POST", "path": "/login", "status_code": 401, "duration_ms": 3, "response_size": 120},
        ]));
        let parsed = requests(&batch, &ctx()).unwrap();
        assert_eq!(parsed[0].method, "GET");
        assert_eq!(parsed[1].route, "/login");
        assert_eq!(parsed[1].response_size, Some(120));
        let bad = items(
            json!({"method": "GET", "status_code": 700, "duration_ms": -1, "request_size": 1.5}),
        );
        let fields: Vec<String> = requests(&bad, &ctx())
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            vec!["path", "status_code", "duration_ms", "request_size"]
        );
    }

    #[test]
    fn metrics_have_kinds_labels_and_sane_values() {
        let batch = items(json!([
            {"name": "revenue", "value": 1200.5, "kind": "counter", "labels": {"plan": "pro"}},
            {"name": "queue.depth", "value": -3},
        ]));
        let parsed = metrics(&batch, &ctx(), &BTreeMap::new()).unwrap();
        assert_eq!(parsed[0].kind, MetricKind::Counter);
        assert_eq!(parsed[1].kind, MetricKind::Gauge);
        let bad = items(json!([
            {"name": "bad name!", "value": 1},
            {"name": "c", "value": -1, "kind": "counter"},
            {"name": "k", "value": "1", "kind": "summary"},
        ]));
        let found: Vec<(usize, String)> = metrics(&bad, &ctx(), &BTreeMap::new())
            .unwrap_err()
            .into_iter()
            .map(|p| (p.index, p.field))
            .collect();
        assert_eq!(
            found,
            vec![
                (0, "name".into()),
                (1, "value".into()),
                (2, "value".into()),
                (2, "kind".into())
            ]
        );
    }

    #[test]
    fn llm_usage_becomes_token_and_cost_series() {
        let prices = BTreeMap::from([(
            "gpt-4o".to_string(),
            LlmPrice {
                input_per_million: 2.5,
                output_per_million: 10.0,
            },
        )]);
        let batch = items(json!([
            {"model": "gpt-4o", "input_tokens": 1_000_000, "output_tokens": 500_000, "labels": {"feature": "chat"}},
            {"model": "unpriced-model", "input_tokens": 10, "output_tokens": 0},
        ]));
        let rows = metrics(&batch, &ctx(), &prices).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "llm.tokens.input",
                "llm.tokens.output",
                "llm.cost_usd",
                "llm.tokens.input",
                "llm.tokens.output"
            ]
        );
        assert_eq!(rows[0].value, 1_000_000.0);
        assert!((rows[2].value - 7.5).abs() < 1e-9, "2.5 + 5.0 dollars");
        assert!(rows.iter().all(|r| r.kind == MetricKind::Counter));
        assert_eq!(
            rows[2].labels.get("model").map(String::as_str),
            Some("gpt-4o")
        );
        assert_eq!(
            rows[2].labels.get("feature").map(String::as_str),
            Some("chat")
        );
        let bad = items(json!([{"model": "gpt-4o", "input_tokens": -1, "output_tokens": 1.5}]));
        let fields: Vec<String> = metrics(&bad, &ctx(), &prices)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, vec!["input_tokens", "output_tokens"]);
    }

    #[test]
    fn identify_needs_both_ids_and_takes_numeric_ids() {
        let parsed = identifies(
            &items(json!({"visitor_id": "v1", "user_id": 42, "traits": {"plan": "pro"}})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(parsed[0].user_id, "42");
        let problems = identifies(&items(json!({"visitor_id": "  "})), &ctx()).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, vec!["visitor_id", "user_id"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "event",
                    "visitor_id",
                    "user_id",
                    "url",
                    "referrer",
                    "properties",
                    "timestamp",
                    "traits",
                    "type",
                    "message",
                    "stack_trace",
                    "level",
                    "tags",
                    "fingerprint",
                    "method",
                    "route",
                    "path",
                    "status_code",
                    "duration_ms",
                    "request_size",
                    "name",
                    "value",
                    "kind",
                    "labels",
                    "function",
                    "module",
                    "lineno",
                    "in_app",
                ])
                .prop_map(str::to_string),
                "[a-z]{1,6}",
                "[a-z]{0,3}\u{0}".prop_map(|k| k),
            ]
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
                "\\PC{0,16}".prop_map(Value::String),
                "\\PC{0,4}".prop_map(|s| Value::String(format!("{s}\u{0}"))),
                Just(json!("2026-11-22T11:59:00Z")),
            ];
            leaf.prop_recursive(3, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Nested JSON an SDK sends (properties, traits, stack frames) passes exactly when
            /// it holds no NUL, in a key or a string, at any depth.
            #[test]
            fn nested_json_passes_exactly_when_it_holds_no_nul(
                map in prop::collection::btree_map(key(), json(), 0..6),
                frames in prop::collection::vec(json(), 0..4),
            ) {
                let object = Value::Object(map.into_iter().collect());
                let c = ctx();
                let nul = |v: &Value| v.to_string().contains("\\u0000");
                let event = events(&[json!({"event": "e", "visitor_id": "v", "properties": object})], &c);
                prop_assert_eq!(event.is_ok(), !nul(&object), "{:?}", event);
                let identify = identifies(&[json!({"visitor_id": "v", "user_id": "u", "traits": object})], &c);
                prop_assert_eq!(identify.is_ok(), !nul(&object), "{:?}", identify);
                // Frames must be objects; only those are in question here.
                let frames: Vec<Value> = frames.into_iter().filter(Value::is_object).collect();
                let trace = Value::Array(frames);
                let error = errors(&[json!({"type": "E", "stack_trace": trace})], &c);
                prop_assert_eq!(error.is_ok(), !nul(&trace), "{:?}", error);
            }

            #[test]
            fn validation_never_panics_and_blames_real_items(items in prop::collection::vec(json(), 1..6)) {
                let c = ctx();
                let blamed = [
                    events(&items, &c).err(),
                    identifies(&items, &c).err(),
                    errors(&items, &c).err(),
                    requests(&items, &c).err(),
                    metrics(&items, &c, &BTreeMap::new()).err(),
                ];
                for problems in blamed.into_iter().flatten() {
                    prop_assert!(!problems.is_empty());
                    prop_assert!(problems.iter().all(|p| p.index < items.len() && !p.reason.is_empty()));
                }
                // What passes holds no NUL anywhere: PostgreSQL could store it.
                let passed = [
                    events(&items, &c).ok().map(|v| serde_json::to_string(&v)),
                    identifies(&items, &c).ok().map(|v| serde_json::to_string(&v)),
                    errors(&items, &c).ok().map(|v| serde_json::to_string(&v)),
                    requests(&items, &c).ok().map(|v| serde_json::to_string(&v)),
                    metrics(&items, &c, &BTreeMap::new()).ok().map(|v| serde_json::to_string(&v)),
                ];
                for json in passed.into_iter().flatten() {
                    let json = json.unwrap();
                    prop_assert!(!json.contains("\\u0000"), "{}", json);
                }
            }
        }
    }

    #[test]
    fn a_nul_anywhere_is_refused_with_its_path() {
        let cases = [
            (
                json!({"a": {"b": [1, "x\u{0}"]}}),
                Some(NulAt::Value("p.a.b[1]".into())),
            ),
            (json!({"a": {"k\u{0}": 1}}), Some(NulAt::Key("p.a".into()))),
            (
                json!([{"f": "ok"}, {"f": "\u{0}"}]),
                Some(NulAt::Value("p[1].f".into())),
            ),
            (json!({"a": "fine", "b": [true, null, 1.5]}), None),
        ];
        for (value, expected) in cases {
            assert_eq!(nul_in(&value, "p"), expected, "{value}");
        }
        let batch = items(json!([
            {"visitor_id": "v", "user_id": "u", "traits": {"t": "\u{0}"}},
        ]));
        let fields: Vec<String> = identifies(&batch, &ctx())
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, vec!["traits.t"]);
        let batch = items(json!([
            {"type": "E", "stack_trace": [{"function": "ok"}, {"module": "m\u{0}"}]},
            {"type": "E", "stack_trace": "line\u{0}", "tags": {"k": "v\u{0}"}},
        ]));
        let found: Vec<(usize, String)> = errors(&batch, &ctx())
            .unwrap_err()
            .into_iter()
            .map(|p| (p.index, p.field))
            .collect();
        assert_eq!(
            found,
            vec![
                (0, "stack_trace[1].module".into()),
                (1, "stack_trace".into()),
                (1, "tags.k".into())
            ]
        );
    }

    #[test]
    fn lone_surrogates_never_reach_validation() {
        // PostgreSQL would refuse them too; the JSON parser already does (400).
        assert!(matches!(
            split(br#"{"event": "\ud800"}"#),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_and_nul_values_are_refused() {
        let long = "x".repeat(MAX_NAME + 1);
        let props: Map<String, Value> = (0..2000)
            .map(|i| (format!("k{i}"), json!("vvvvvvvvvv")))
            .collect();
        let batch = items(json!({"event": long, "visitor_id": "a\u{0}b", "properties": props}));
        let fields: Vec<String> = events(&batch, &ctx())
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, vec!["event", "visitor_id", "properties"]);
    }
}
