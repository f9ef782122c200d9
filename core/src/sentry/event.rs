//! One Sentry event (an envelope's `event` or `transaction` item, or a `/store/` body) turned
//! into the JSON of one observe ingest item, ready for [`crate::ingest::Items::validate`].
//!
//! The mapping never refuses an event for being large: every string is cut to its column's
//! limit at a character boundary, counts are capped, and the stack and the `context` object are
//! trimmed to their byte budgets, oldest data first (the frame that raised, the newest
//! breadcrumbs, survive longest). What validation still refuses is by design: a NUL in a
//! string the item keeps, and a timestamp older than the organisation's retention.
//!
//! Sentry facts relied on, from its SDK docs (develop.sentry.dev/sdk/data-model/event-payloads/)
//! and Relay's normalisation: an exception chain is listed oldest first, the exception that
//! was raised last; frames are listed oldest call first; `logentry.formatted` is the text and
//! `logentry.message` the template, formatted with `params` as `%s`-style when it holds a `%`,
//! else `{}`-style; `timestamp` is Unix seconds or RFC 3339, naive meaning UTC; `tags` is an
//! object or a list of pairs; `user.ip_address` `{{auto}}` means the sender's address.

use std::io;

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::fingerprint::{self, Frame, StackTrace};
use crate::ingest::{MAX_LABELS, MAX_MESSAGE, MAX_NAME, MAX_OBJECT_BYTES, MAX_STACK, MAX_TEXT};

/// Largest `context` object, as JSON bytes: what validation allows.
pub use crate::ingest::MAX_CONTEXT;
/// Most breadcrumbs kept: the SDKs' own default `max_breadcrumbs`.
const MAX_BREADCRUMBS: usize = 100;
/// Most exceptions of a chain read, the raising end kept: SDKs send at most 10 or so (Python's
/// and JavaScript's linked-errors limit is 5 to 10), and each one costs a stack to trim.
const MAX_CHAIN: usize = 10;
/// What a secret's value is replaced with in what is kept (Relay's marker).
const FILTERED: &str = "[Filtered]";
/// Longest IP address text `/ingest/requests` takes.
const MAX_IP: usize = 64;
/// Longest HTTP method `/ingest/requests` takes.
const MAX_METHOD: usize = 16;
/// Methods a transaction name may start with (`"GET /items/:id"` from @sentry/node).
const HTTP_METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// What the HTTP layer knows about the request that carried the event.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventContext<'a> {
    /// The sender's address, which `user.ip_address: "{{auto}}"` stands for.
    pub client_ip: Option<&'a str>,
    /// The request's `User-Agent`, for a transaction whose request headers lack one.
    pub user_agent: Option<&'a str>,
}

/// Why an event cannot become an error item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is not a JSON object")]
    NotAnObject,
    #[error("the event has neither an exception nor a message")]
    NothingToReport,
}

type Object = Map<String, Value>;

/// A Sentry event (an `event` item or a `/store/` body) as an observe `/ingest/errors` item.
pub fn error_item(event: &Value, ctx: &EventContext<'_>) -> Result<Value, EventError> {
    let event = event.as_object().ok_or(EventError::NotAnObject)?;
    let chain = exception_chain(event);
    let (error_type, message, raw_frames, template) = match chain.last() {
        Some(primary) => (
            non_blank(text(primary.get("type")).map(|t| clip(&t, MAX_NAME)))
                .unwrap_or_else(|| "Error".to_string()),
            text(primary.get("value")).map(|v| clip(&v, MAX_MESSAGE)),
            exception_frames(primary, event),
            None,
        ),
        None => {
            let logged = log_message(event).ok_or(EventError::NothingToReport)?;
            (
                "Message".to_string(),
                Some(clip(&logged.formatted, MAX_MESSAGE)),
                event_frames(event),
                Some(logged.template),
            )
        }
    };
    let stack = fit_frames(raw_frames, MAX_STACK);
    let fingerprint = group_key(
        event,
        &error_type,
        message.as_deref().unwrap_or_default(),
        &stack,
        template.as_deref(),
    );

    let user = event.get("user").and_then(Value::as_object);
    let mut item = Object::new();
    item.insert("type".into(), error_type.into());
    if let Some(message) = message {
        item.insert("message".into(), message.into());
    }
    if !stack.is_empty() {
        item.insert("stack_trace".into(), Value::Array(stack));
    }
    item.insert("level".into(), level(event.get("level")).into());
    for key in ["environment", "release"] {
        if let Some(value) = non_blank(text(event.get(key))) {
            item.insert(key.into(), clip(&value, MAX_NAME).into());
        }
    }
    let request = event.get("request").and_then(Value::as_object);
    if let Some(url) = non_blank(request.and_then(|r| text(r.get("url")))) {
        item.insert("url".into(), clip(&scrub_url(&url), MAX_TEXT).into());
    }
    if let Some(user_id) = user.and_then(|u| user_id(u, ctx)) {
        item.insert("user_id".into(), user_id.into());
    }
    let tags = tags(event);
    if !tags.is_empty() {
        item.insert("tags".into(), Value::Object(tags));
    }
    if let Some(fingerprint) = fingerprint {
        item.insert("fingerprint".into(), fingerprint.into());
    }
    if let Some(at) = timestamp(event.get("timestamp")) {
        item.insert("timestamp".into(), rfc3339(at).into());
    }
    let context = context(event, &chain, ctx);
    if !context.is_empty() {
        item.insert("context".into(), Value::Object(context));
    }
    Ok(Value::Object(item))
}

/// A transaction as an observe `/ingest/requests` item, when it is an HTTP server
/// transaction whose method and status are known; else None.
pub fn request_item(transaction: &Value, ctx: &EventContext<'_>) -> Option<Value> {
    let tx = transaction.as_object()?;
    let contexts = tx.get("contexts").and_then(Value::as_object);
    let trace = contexts
        .and_then(|c| c.get("trace"))
        .and_then(Value::as_object);
    let trace_data = trace.and_then(|t| t.get("data")).and_then(Value::as_object);
    let data = |key: &str| trace_data.and_then(|d| d.get(key));
    let request = tx.get("request").and_then(Value::as_object);
    let request_method = request.and_then(|r| http_method(r.get("method")));
    let is_server = trace.and_then(|t| t.get("op")).and_then(Value::as_str) == Some("http.server");
    if !is_server && request_method.is_none() {
        return None;
    }

    let name = non_blank(text(tx.get("transaction")).or_else(|| text(tx.get("name"))))?;
    let (first_word, rest) = name.trim().split_once(' ').unwrap_or(("", ""));
    let named_method = HTTP_METHODS.contains(&first_word).then_some(first_word);
    let method = request_method
        .or_else(|| http_method(tag(tx, "http.method")))
        .or_else(|| http_method(data("http.request.method")))
        .or_else(|| http_method(data("http.method")))
        .or_else(|| named_method.map(str::to_string))?;
    let route = match named_method {
        Some(_) => rest.trim(),
        None => name.trim(),
    };
    if route.is_empty() {
        return None;
    }

    let status_code = contexts
        .and_then(|c| c.get("response"))
        .and_then(|r| status_code(r.get("status_code")))
        .or_else(|| status_code(tag(tx, "http.status_code")))
        .or_else(|| status_code(data("http.response.status_code")))
        .or_else(|| status_code(data("http.status_code")))
        .or_else(|| {
            trace
                .and_then(|t| t.get("status"))
                .and_then(Value::as_str)
                .and_then(span_status_code)
        })?;
    let start = timestamp(tx.get("start_timestamp"))?;
    let end = timestamp(tx.get("timestamp"))?;
    let micros = (end - start).num_microseconds().unwrap_or(0).max(0);

    let mut item = Object::new();
    item.insert("method".into(), method.into());
    item.insert("route".into(), clip(route, MAX_TEXT).into());
    item.insert("status_code".into(), status_code.into());
    item.insert("duration_ms".into(), (micros as f64 / 1000.0).into());
    item.insert("timestamp".into(), rfc3339(start).into());
    let user_agent = request
        .and_then(|r| {
            headers(r)
                .into_iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
                .and_then(|(_, value)| non_blank(text(Some(value))))
        })
        .or_else(|| non_blank(ctx.user_agent.map(str::to_string)));
    if let Some(user_agent) = user_agent {
        item.insert("user_agent".into(), clip(&user_agent, MAX_TEXT).into());
    }
    let ip = tx
        .get("user")
        .and_then(Value::as_object)
        .and_then(|u| ip_address(u, ctx))
        .filter(|ip| ip.chars().count() <= MAX_IP);
    if let Some(ip) = ip {
        item.insert("ip".into(), ip.into());
    }
    Some(Value::Object(item))
}

/// The event's id as 32 lowercase hex digits (dashes removed), when it has a valid one: 32 hex
/// digits, or a UUID with its four dashes (the two forms the envelope spec allows).
pub fn event_id(event: &Value) -> Option<String> {
    normalised_id(event.get("event_id")?)
}

fn normalised_id(id: &Value) -> Option<String> {
    let id = id.as_str()?.trim();
    let dashed = id.len() == 36
        && id
            .char_indices()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'));
    let hex: String = id.chars().filter(|&c| c != '-').collect();
    let plain = id.len() == 32;
    ((dashed || plain) && hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// The exceptions of the event, oldest first: `exception.values`, a bare array, or (older
/// SDKs) one exception object.
fn exception_chain(event: &Object) -> Vec<&Object> {
    let values = match event.get("exception") {
        Some(Value::Array(values)) => values.as_slice(),
        Some(Value::Object(exception)) => match exception.get("values") {
            Some(Value::Array(values)) => values.as_slice(),
            Some(_) => &[],
            None if exception.contains_key("type") || exception.contains_key("value") => {
                return vec![exception];
            }
            None => &[],
        },
        _ => &[],
    };
    let chain: Vec<&Object> = values.iter().filter_map(Value::as_object).collect();
    chain[chain.len().saturating_sub(MAX_CHAIN)..].to_vec()
}

/// The frames of an exception: its own stack trace, else that of the thread it names.
fn exception_frames(exception: &Object, event: &Object) -> Vec<Object> {
    let own = frames_in(exception.get("stacktrace"));
    if !own.is_empty() {
        return own;
    }
    match exception.get("thread_id") {
        Some(id) => threads(event)
            .into_iter()
            .find(|t| t.get("id") == Some(id))
            .map(|t| frames_in(t.get("stacktrace")))
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// The frames of an event without an exception: its `stacktrace`, else the crashed, current
/// or first thread's (Python's logging sends `stack_info` as a current thread).
fn event_frames(event: &Object) -> Vec<Object> {
    let own = frames_in(event.get("stacktrace"));
    if !own.is_empty() {
        return own;
    }
    let threads = threads(event);
    let flagged = |flag: &str| {
        threads
            .iter()
            .filter(|t| t.get(flag).and_then(Value::as_bool) == Some(true))
            .map(|t| frames_in(t.get("stacktrace")))
            .find(|frames| !frames.is_empty())
    };
    flagged("crashed")
        .or_else(|| flagged("current"))
        .or_else(|| {
            threads
                .iter()
                .map(|t| frames_in(t.get("stacktrace")))
                .find(|frames| !frames.is_empty())
        })
        .unwrap_or_default()
}

fn threads(event: &Object) -> Vec<&Object> {
    let values = match event.get("threads") {
        Some(Value::Object(threads)) => threads.get("values").and_then(Value::as_array),
        Some(Value::Array(values)) => Some(values),
        _ => None,
    };
    values
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect()
}

/// The frames of a Sentry `stacktrace`, each cut to the keys observe keeps.
fn frames_in(stacktrace: Option<&Value>) -> Vec<Object> {
    stacktrace
        .and_then(|s| s.get("frames"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(frame)
        .collect()
}

/// One frame with the keys observe keeps (locals, source context around the line and the rest
/// are dropped); text cut to [`MAX_TEXT`], so any single frame fits [`MAX_STACK`].
fn frame(raw: &Object) -> Object {
    let mut out = Object::new();
    for key in ["function", "module", "filename", "abs_path", "context_line"] {
        if let Some(Value::String(s)) = raw.get(key) {
            out.insert(key.into(), clip(s, MAX_TEXT).into());
        }
    }
    for key in ["lineno", "colno"] {
        if let Some(n) = raw.get(key).and_then(Value::as_u64) {
            out.insert(key.into(), n.into());
        }
    }
    if let Some(in_app) = raw.get("in_app").and_then(Value::as_bool) {
        out.insert("in_app".into(), in_app.into());
    }
    out
}

/// Frames within `budget` bytes of JSON: without their source lines if that is not enough,
/// then without the oldest calls; the frame that raised goes last.
fn fit_frames(mut frames: Vec<Object>, budget: usize) -> Vec<Value> {
    if json_len(&frames) > budget {
        for frame in &mut frames {
            frame.remove("context_line");
        }
    }
    // `[a,b,c]`: brackets, the frames, and a comma between each two.
    let sizes: Vec<usize> = frames.iter().map(json_len).collect();
    let mut total = 2 + sizes.iter().sum::<usize>() + sizes.len().saturating_sub(1);
    let mut oldest = 0;
    while total > budget && oldest < sizes.len() {
        let comma = usize::from(oldest + 1 < sizes.len());
        total -= sizes.get(oldest).copied().unwrap_or_default() + comma;
        oldest += 1;
    }
    frames.into_iter().skip(oldest).map(Value::Object).collect()
}

/// The frames as `ingest` reads them from an item's `stack_trace`, for the default group key.
fn ingest_frames(stack: &[Value]) -> Vec<Frame> {
    stack
        .iter()
        .filter_map(Value::as_object)
        .map(|obj| {
            let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_string);
            Frame {
                function: text("function"),
                module: text("module").or_else(|| text("filename")),
                lineno: obj
                    .get("lineno")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok()),
                in_app: obj.get("in_app").and_then(Value::as_bool),
            }
        })
        .collect()
}

/// The item's `fingerprint`, if it needs one.
///
/// A message groups by its template. An SDK fingerprint replaces each `{{ default }}` with the
/// group key observe itself would give the item, so `["{{ default }}", "checkout"]` splits the
/// default group by checkout and `["{{ default }}"]` alone is no fingerprint at all.
fn group_key(
    event: &Object,
    error_type: &str,
    message: &str,
    stack: &[Value],
    template: Option<&str>,
) -> Option<String> {
    let own = template.map(|t| fit_key(format!("message\n{t}")));
    let given: Vec<String> = event
        .get("fingerprint")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|part| text(Some(part)))
        .collect();
    if given.iter().all(|part| is_default(part)) {
        return own;
    }
    // What `ingest` computes for the item without an SDK fingerprint, from the same fields,
    // trimmed as validation trims them.
    let frames = ingest_frames(stack);
    let stack = if stack.is_empty() {
        StackTrace::None
    } else {
        StackTrace::Frames(&frames)
    };
    let default =
        fingerprint::fingerprint(error_type.trim(), message.trim(), stack, own.as_deref());
    let joined = given
        .iter()
        .map(|part| {
            if is_default(part) {
                default.as_str()
            } else {
                part.as_str()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if joined.trim().is_empty() {
        return own;
    }
    Some(fit_key(joined))
}

/// `{{ default }}`, `{{default}}`, `{{ DEFAULT }}`: Sentry's placeholder, any spacing or case.
fn is_default(part: &str) -> bool {
    let bare: String = part.chars().filter(|c| !c.is_whitespace()).collect();
    bare.eq_ignore_ascii_case("{{default}}")
}

/// A group key that fits `fingerprint` ([`MAX_NAME`] characters): itself, or its SHA-256.
fn fit_key(key: String) -> String {
    if key.chars().count() <= MAX_NAME {
        key
    } else {
        hex::encode(Sha256::digest(key.as_bytes()))
    }
}

/// A message event's text and the template it groups by.
struct Logged {
    formatted: String,
    template: String,
}

/// The message of an event: `logentry` (or its legacy name `message`) as an object, or
/// `message` as a plain string (what `capture_message` sends).
fn log_message(event: &Object) -> Option<Logged> {
    ["logentry", "message"]
        .into_iter()
        .find_map(|key| match event.get(key)? {
            Value::String(s) => non_blank(Some(s.clone())).map(|s| Logged {
                formatted: s.clone(),
                template: s,
            }),
            Value::Object(entry) => {
                let template = non_blank(text(entry.get("message")));
                let formatted = non_blank(text(entry.get("formatted")))
                    .or_else(|| {
                        let params = entry.get("params")?;
                        non_blank(format_message(template.as_deref()?, params))
                    })
                    .or_else(|| template.clone())?;
                Some(Logged {
                    template: template.unwrap_or_else(|| formatted.clone()),
                    formatted,
                })
            }
            _ => None,
        })
}

/// The template with its params, as Relay formats a `logentry` without `formatted`: `%s`-style
/// (positional or `%(name)s`) when it holds a `%`, else `{}`-style (`{}`, `{0}`, `{name}`).
/// None when a placeholder has no param.
fn format_message(template: &str, params: &Value) -> Option<String> {
    if template.contains('%') {
        percent_format(template, params)
    } else if template.contains('{') {
        curly_format(template, params)
    } else {
        None
    }
}

/// Past this many bytes the text is cut anyway; stopping here keeps a template that repeats
/// a large param from growing without bound.
const MAX_FORMATTED_BYTES: usize = MAX_MESSAGE * 4;

fn percent_format(template: &str, params: &Value) -> Option<String> {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    let mut position = 0;
    while let Some(c) = chars.next() {
        if out.len() > MAX_FORMATTED_BYTES {
            break;
        }
        if c != '%' {
            out.push(c);
            continue;
        }
        let param = match chars.peek() {
            Some('%') => {
                chars.next();
                out.push('%');
                continue;
            }
            Some('(') => {
                chars.next();
                let name: String = chars.by_ref().take_while(|&c| c != ')').collect();
                params.get(name.as_str())?
            }
            _ => {
                // Positional placeholders take a list, as in Relay (a lone value is an error).
                let param = params.as_array()?.get(position)?;
                position += 1;
                param
            }
        };
        // Flags, width and precision, then the conversion letter; the value is shown as is.
        while chars
            .peek()
            .is_some_and(|c| matches!(c, '-' | '+' | ' ' | '#' | '.' | '0'..='9'))
        {
            chars.next();
        }
        if !chars.next()?.is_ascii_alphabetic() {
            return None;
        }
        out.push_str(&param_text(param));
    }
    Some(out)
}

fn curly_format(template: &str, params: &Value) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    let mut position = 0;
    while let Some((before, after)) = rest.split_once('{') {
        if out.len() > MAX_FORMATTED_BYTES {
            return Some(out);
        }
        out.push_str(before);
        let (key, after) = after.split_once('}')?;
        let param = if key.is_empty() {
            position += 1;
            params.get(position - 1)?
        } else if let Ok(index) = key.parse::<usize>() {
            params.get(index)?
        } else {
            params.get(key)?
        };
        out.push_str(&param_text(param));
        rest = after;
    }
    out.push_str(rest);
    Some(out)
}

fn param_text(param: &Value) -> String {
    match param {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Sentry's level as observe's: `debug|info|warning|error|fatal`.
fn level(level: Option<&Value>) -> &'static str {
    let level = level
        .and_then(Value::as_str)
        .map(|l| l.trim().to_ascii_lowercase());
    match level.as_deref() {
        Some("debug") => "debug",
        Some("info" | "log") => "info",
        Some("warning" | "warn") => "warning",
        Some("fatal" | "critical") => "fatal",
        _ => "error",
    }
}

/// Who was affected: the first of the user's id, email, username and address.
fn user_id(user: &Object, ctx: &EventContext<'_>) -> Option<String> {
    ["id", "email", "username"]
        .into_iter()
        .find_map(|key| non_blank(text(user.get(key))))
        .or_else(|| ip_address(user, ctx))
        .map(|id| clip(&id, MAX_NAME))
}

/// `user.ip_address`, with `{{auto}}` meaning the sender's address.
fn ip_address(user: &Object, ctx: &EventContext<'_>) -> Option<String> {
    match user
        .get("ip_address")
        .and_then(Value::as_str)
        .map(str::trim)
    {
        Some("{{auto}}") => non_blank(ctx.client_ip.map(str::to_string)),
        Some(ip) if !ip.is_empty() => Some(ip.to_string()),
        _ => None,
    }
}

/// The event's tags, an object or `[key, value]` pairs, as they appear.
fn tag_pairs(event: &Object) -> Vec<(String, &Value)> {
    match event.get("tags") {
        Some(Value::Object(tags)) => tags.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .filter_map(|pair| match pair.as_array()?.as_slice() {
                [key, value] => Some((text(Some(key))?, value)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn tag<'a>(event: &'a Object, key: &str) -> Option<&'a Value> {
    tag_pairs(event)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Tags as `ingest` takes them: strings of at most [`MAX_NAME`] characters, at most
/// [`MAX_LABELS`] of them, within [`MAX_OBJECT_BYTES`] of JSON; the first ones win.
fn tags(event: &Object) -> Object {
    let mut out = Object::new();
    let mut bytes = 2;
    for (key, value) in tag_pairs(event) {
        if out.len() == MAX_LABELS {
            break;
        }
        let value = match value {
            Value::Null => continue,
            Value::String(s) => clip(s, MAX_NAME),
            other => clip(&other.to_string(), MAX_NAME),
        };
        let key = clip(&key, MAX_NAME);
        if out.contains_key(&key) {
            continue;
        }
        let entry = json_len(&key) + 1 + json_len(&value) + usize::from(!out.is_empty());
        if bytes + entry > MAX_OBJECT_BYTES {
            continue;
        }
        bytes += entry;
        out.insert(key, value.into());
    }
    out
}

/// The request headers, from an object or `[name, value]` pairs.
fn headers(request: &Object) -> Vec<(&str, &Value)> {
    match request.get("headers") {
        Some(Value::Object(headers)) => headers.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .filter_map(|pair| match pair.as_array()?.as_slice() {
                [Value::String(name), value] => Some((name.as_str(), value)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Headers that carry credentials: kept out of storage, whatever the SDK's PII setting was.
fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "cookie",
        "auth",
        "token",
        "secret",
        "password",
        "passwd",
        "apikey",
        "api-key",
        "api_key",
        "session",
        "csrf",
        "xsrf",
        "signature",
        "credential",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// What the item's columns do not hold, kept with the occurrence, within [`MAX_CONTEXT`].
fn context(event: &Object, chain: &[&Object], ctx: &EventContext<'_>) -> Object {
    let mut out = Object::new();
    if let Some(id) = event.get("event_id").and_then(normalised_id) {
        out.insert("event_id".into(), id.into());
    }
    for (key, max) in [
        ("platform", MAX_NAME),
        ("logger", MAX_NAME),
        ("server_name", MAX_NAME),
        ("transaction", MAX_TEXT),
    ] {
        if let Some(value) = non_blank(text(event.get(key))) {
            out.insert(key.into(), clip(&value, max).into());
        }
    }
    if let Some(sdk) = event.get("sdk").and_then(Value::as_object) {
        let mut kept = Object::new();
        for key in ["name", "version"] {
            if let Some(value) = non_blank(text(sdk.get(key))) {
                kept.insert(key.into(), clip(&value, MAX_NAME).into());
            }
        }
        if !kept.is_empty() {
            out.insert("sdk".into(), Value::Object(kept));
        }
    }
    if let Some(user) = event.get("user").and_then(Value::as_object) {
        let mut user = user.clone();
        if user
            .get("ip_address")
            .and_then(Value::as_str)
            .map(str::trim)
            == Some("{{auto}}")
        {
            match ctx.client_ip {
                Some(ip) => user.insert("ip_address".into(), ip.into()),
                None => user.remove("ip_address"),
            };
        }
        if !user.is_empty() {
            let mut user = Value::Object(user);
            scrub(&mut user);
            out.insert("user".into(), user);
        }
    }
    if let Some(request) = event.get("request").and_then(Value::as_object) {
        let request = request_context(request);
        if !request.is_empty() {
            out.insert("request".into(), Value::Object(request));
        }
    }
    if let Some(contexts) = event.get("contexts").filter(|c| non_empty(c)) {
        let mut contexts = contexts.clone();
        scrub(&mut contexts);
        out.insert("contexts".into(), contexts);
    }
    let breadcrumbs = breadcrumbs(event);
    if !breadcrumbs.is_empty() {
        let mut breadcrumbs = Value::Array(breadcrumbs);
        scrub(&mut breadcrumbs);
        out.insert("breadcrumbs".into(), breadcrumbs);
    }
    if let Some((primary, others)) = chain.split_last() {
        // Whether the error was handled, and how it was caught, tells how bad it is.
        if let Some(mechanism) = primary.get("mechanism").filter(|m| non_empty(m)) {
            out.insert("mechanism".into(), mechanism.clone());
        }
        let others: Vec<Value> = others
            .iter()
            .map(|exception| Value::Object(chained_exception(exception)))
            .collect();
        if !others.is_empty() {
            out.insert("exceptions".into(), Value::Array(others));
        }
        // `logger.exception("charge %s failed", id)`: the log line beside the exception.
        if let Some(logged) = log_message(event) {
            out.insert(
                "log_message".into(),
                clip(&logged.formatted, MAX_MESSAGE).into(),
            );
        }
    }
    if let Some(extra) = event.get("extra").filter(|e| non_empty(e)) {
        let mut extra = extra.clone();
        scrub(&mut extra);
        out.insert("extra".into(), extra);
    }
    fit_context(&mut out);
    for value in out.values_mut() {
        replace_nul(value);
    }
    out
}

/// The request as kept: where and how, and the headers without credentials. Cookies and the
/// body (`cookies`, `data`) are dropped: they hold secrets and personal data more often than
/// anything that explains an error.
fn request_context(request: &Object) -> Object {
    let mut out = Object::new();
    if let Some(url) = non_blank(text(request.get("url"))) {
        out.insert("url".into(), clip(&scrub_url(&url), MAX_TEXT).into());
    }
    if let Some(method) = non_blank(text(request.get("method"))) {
        out.insert("method".into(), clip(&method, MAX_METHOD).into());
    }
    match request.get("query_string") {
        Some(Value::String(q)) if !q.is_empty() => {
            out.insert(
                "query_string".into(),
                clip(&scrub_query(q), MAX_TEXT).into(),
            );
        }
        Some(q @ (Value::Array(_) | Value::Object(_))) if non_empty(q) => {
            let mut q = q.clone();
            scrub(&mut q);
            out.insert("query_string".into(), q);
        }
        _ => {}
    }
    let kept: Object = headers(request)
        .into_iter()
        .filter(|(name, _)| !is_secret_header(name))
        .filter_map(|(name, value)| {
            Some((name.to_string(), clip(&text(Some(value))?, MAX_TEXT).into()))
        })
        .collect();
    if !kept.is_empty() {
        out.insert("headers".into(), Value::Object(kept));
    }
    out
}

/// The last [`MAX_BREADCRUMBS`] breadcrumbs, newest last (`{"values": [...]}` or an array).
fn breadcrumbs(event: &Object) -> Vec<Value> {
    let values = match event.get("breadcrumbs") {
        Some(Value::Object(b)) => b.get("values").and_then(Value::as_array),
        Some(Value::Array(values)) => Some(values),
        _ => None,
    };
    let values = values.map(Vec::as_slice).unwrap_or_default();
    values
        .iter()
        .skip(values.len().saturating_sub(MAX_BREADCRUMBS))
        .cloned()
        .collect()
}

/// An exception of the chain other than the primary one.
fn chained_exception(exception: &Object) -> Object {
    let mut out = Object::new();
    for (key, max) in [
        ("type", MAX_NAME),
        ("value", MAX_MESSAGE),
        ("module", MAX_NAME),
    ] {
        if let Some(value) = non_blank(text(exception.get(key))) {
            out.insert(key.into(), clip(&value, max).into());
        }
    }
    if let Some(mechanism) = exception.get("mechanism").filter(|m| m.is_object()) {
        out.insert("mechanism".into(), mechanism.clone());
    }
    // Its own frames only (a thread's stack is the primary's business), each exception a share
    // of the context: a chain cannot multiply one big thread stack.
    let stack = fit_frames(
        frames_in(exception.get("stacktrace")),
        MAX_CONTEXT / MAX_CHAIN,
    );
    if !stack.is_empty() {
        out.insert("stack_trace".into(), Value::Array(stack));
    }
    out
}

/// Whether a key names a secret: a credential, a session, a signature (Relay's default
/// scrubbing words).
fn is_secret_key(name: &str) -> bool {
    is_secret_header(name)
}

/// Replaces, at any depth, the value of every key that names a secret, and the secret
/// parameters of every URL-like string, with [`FILTERED`].
fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_secret_key(key) && !v.is_null() {
                    *v = FILTERED.into();
                } else {
                    scrub(v);
                }
            }
        }
        Value::Array(items) => {
            // `[["token", "x"], …]`: pairs, as query strings and headers come.
            if let [Value::String(name), second] = items.as_mut_slice() {
                if is_secret_key(name) {
                    *second = FILTERED.into();
                    return;
                }
            }
            items.iter_mut().for_each(scrub);
        }
        Value::String(text) if text.contains('?') || text.contains('#') => {
            let scrubbed = scrub_url(text);
            if scrubbed != *text {
                *text = scrubbed;
            }
        }
        _ => {}
    }
}

/// A URL with the values of its secret query and fragment parameters filtered
/// (`?token=…`, `#access_token=…`).
fn scrub_url(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let mut out = match before_fragment.split_once('?') {
        Some((path, query)) => format!("{path}?{}", scrub_query(query)),
        None => before_fragment.to_string(),
    };
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(&if fragment.contains('=') {
            scrub_query(fragment)
        } else {
            fragment.to_string()
        });
    }
    out
}

/// A query string with the values of its secret parameters filtered.
fn scrub_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_key(name) => format!("{name}={FILTERED}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Shrinks the context to [`MAX_CONTEXT`], least useful first: `extra`, then the older half
/// of the breadcrumbs again and again, then `contexts`, then the frames of the rest of the
/// chain. The last resort, for a user or request object huge on its own, drops those.
fn fit_context(context: &mut Object) {
    let fits = |c: &Object| json_len(c) <= MAX_CONTEXT;
    if fits(context) {
        return;
    }
    context.remove("extra");
    while !fits(context) {
        match context.get_mut("breadcrumbs") {
            Some(Value::Array(crumbs)) if crumbs.len() > 1 => {
                let older = crumbs.len() - crumbs.len() / 2;
                crumbs.drain(..older);
            }
            Some(_) => {
                context.remove("breadcrumbs");
            }
            None => break,
        }
    }
    if fits(context) {
        return;
    }
    context.remove("contexts");
    if fits(context) {
        return;
    }
    if let Some(Value::Array(exceptions)) = context.get_mut("exceptions") {
        for exception in exceptions.iter_mut().filter_map(Value::as_object_mut) {
            exception.remove("stack_trace");
        }
    }
    // What is left past these is bounded (ids, names, SDK), far below the budget.
    for key in ["exceptions", "mechanism", "request", "user"] {
        if fits(context) {
            return;
        }
        context.remove(key);
    }
}

/// Replaces NUL, in strings and keys, with U+FFFD: `context` is stored as `jsonb`, which
/// cannot hold `\u0000`, and is not validated field by field like the item's columns.
fn replace_nul(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), v))
                    .collect();
            }
            map.values_mut().for_each(replace_nul);
        }
        _ => {}
    }
}

/// A Sentry timestamp: Unix seconds (a number, or a string of one), or RFC 3339 with or
/// without a zone (naive is UTC). None when garbled or beyond what RFC 3339 can write.
fn timestamp(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let at = match value? {
        Value::Number(n) => from_seconds(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .ok()
                .or_else(|| {
                    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                        .into_iter()
                        .find_map(|format| NaiveDateTime::parse_from_str(s, format).ok())
                        .map(|naive| naive.and_utc())
                })
                .or_else(|| from_seconds(s.parse().ok()?))
        }
        _ => None,
    }?;
    // Four-digit years only: chrono writes others in a form RFC 3339 parsers refuse.
    (1..=9999).contains(&at.year()).then_some(at)
}

fn from_seconds(seconds: f64) -> Option<DateTime<Utc>> {
    let micros = (seconds * 1e6).round();
    // `as` saturates; the range check keeps saturated values out.
    (micros.is_finite() && micros.abs() < 9.0e18)
        .then(|| DateTime::from_timestamp_micros(micros as i64))
        .flatten()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// An HTTP method as `/ingest/requests` takes it: letters only, upper case.
fn http_method(value: Option<&Value>) -> Option<String> {
    let method = value?.as_str()?.trim();
    (!method.is_empty()
        && method.len() <= MAX_METHOD
        && method.chars().all(|c| c.is_ascii_alphabetic()))
    .then(|| method.to_ascii_uppercase())
}

/// An HTTP status code, from a number or a string of one.
fn status_code(value: Option<&Value>) -> Option<u16> {
    let code = match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    u16::try_from(code).ok().filter(|c| (100..=599).contains(c))
}

/// The HTTP status a span status stands for (Sentry's span status list, which follows gRPC's
/// codes and their usual HTTP mapping).
fn span_status_code(status: &str) -> Option<u16> {
    Some(match status {
        "ok" => 200,
        "cancelled" => 499,
        "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
        "unauthenticated" => 401,
        "permission_denied" => 403,
        "not_found" => 404,
        "already_exists" | "aborted" => 409,
        "resource_exhausted" => 429,
        "unimplemented" => 501,
        "unavailable" => 503,
        "deadline_exceeded" => 504,
        "internal_error" | "unknown" | "unknown_error" | "data_loss" => 500,
        _ => return None,
    })
}

/// A scalar as text: strings as they are, numbers and booleans written out.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// None for an absent or blank string (validation reads blank as absent too).
fn non_blank(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.trim().is_empty())
}

fn non_empty(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => true,
    }
}

/// At most `max` characters of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s.get(..end).unwrap_or_default().to_string(),
        None => s.to_string(),
    }
}

/// Counts the bytes of JSON written to it: sizes without building the text.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The length of `value` as compact JSON.
fn json_len(value: &impl Serialize) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::ingest::{self, ErrorItem, Items, Kind, RequestItem};
    use crate::sentry::envelope::{self, ItemType, Limits};

    fn ctx() -> EventContext<'static> {
        EventContext {
            client_ip: Some("203.0.113.7"),
            user_agent: Some("from-the-request/1.0"),
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../tests/fixtures/sentry/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The payloads of a fixture envelope, with their types.
    fn payloads(name: &str) -> Vec<(ItemType, Value)> {
        let body = fixture(name);
        let envelope = envelope::parse(&body, &Limits::default()).unwrap();
        envelope
            .items
            .iter()
            .filter(|item| item.item_type != ItemType::Attachment)
            .map(|item| {
                (
                    item.item_type.clone(),
                    serde_json::from_slice(item.payload).unwrap(),
                )
            })
            .collect()
    }

    fn event(name: &str) -> Value {
        payloads(name).remove(0).1
    }

    fn validation() -> ingest::Context {
        ingest::Context {
            received_at: DateTime::parse_from_rfc3339("2026-11-22T12:05:00Z")
                .unwrap()
                .with_timezone(&Utc),
            retention_days: 30,
        }
    }

    fn validate_errors(items: &[Value]) -> Vec<ErrorItem> {
        match Items::validate(Kind::Errors, items, &validation(), &BTreeMap::new()) {
            Ok(Items::Errors(items)) => items,
            other => panic!("{other:?}"),
        }
    }

    fn validate_requests(items: &[Value]) -> Vec<RequestItem> {
        match Items::validate(Kind::Requests, items, &validation(), &BTreeMap::new()) {
            Ok(Items::Requests(items)) => items,
            other => panic!("{other:?}"),
        }
    }

    fn item(event: &Value) -> Value {
        error_item(event, &ctx()).unwrap()
    }

    /// The item's group key once validated, as observe stores it.
    fn group(event: &Value) -> String {
        validate_errors(&[item(event)]).remove(0).fingerprint
    }

    fn without_context(mut item: Value) -> (Value, Object) {
        let context = match item.as_object_mut().and_then(|o| o.remove("context")) {
            Some(Value::Object(context)) => context,
            _ => Object::new(),
        };
        (item, context)
    }

    fn keys(object: &Object) -> Vec<&str> {
        object.keys().map(String::as_str).collect()
    }

    #[test]
    fn python_chained_exception() {
        let (item, context) = without_context(item(&event("python_chained.envelope")));
        let frame = |file: &str,
                     site: bool,
                     function: &str,
                     module: &str,
                     lineno: u64,
                     line: &str,
                     in_app: bool| {
            let root = if site {
                "/venv/lib/python3.12/site-packages/"
            } else {
                "/srv/shop/"
            };
            json!({"filename": file, "abs_path": format!("{root}{file}"), "function": function, "module": module, "lineno": lineno, "context_line": line, "in_app": in_app})
        };
        assert_eq!(
            item,
            json!({
                "type": "KeyError",
                "message": "'sku-42'",
                "stack_trace": [
                    frame("starlette/routing.py", true, "app", "starlette.routing", 73, "            response = await f(request)", false),
                    frame("shop/api.py", false, "create_order", "shop.api", 41, "    item = inventory.reserve(body.sku, body.quantity)", true),
                    frame("shop/inventory.py", false, "reserve", "shop.inventory", 27, "        raise KeyError(sku) from exc", true),
                ],
                "level": "error",
                "environment": "production",
                "release": "shop@1.4.2",
                "url": "https://shop.example/orders",
                "user_id": "1042",
                "tags": {"feature": "checkout", "region": "eu-west-1"},
                "timestamp": "2026-11-22T12:00:00.123456Z",
            }),
            "no fingerprint: it groups as a native observe error"
        );
        assert_eq!(
            keys(&context),
            vec![
                "breadcrumbs",
                "contexts",
                "event_id",
                "exceptions",
                "extra",
                "mechanism",
                "platform",
                "request",
                "sdk",
                "server_name",
                "transaction",
                "user"
            ]
        );
        assert_eq!(context["event_id"], "6f4a2d3cb5e84b0c9a1c2f0e8d7b6a51");
        assert_eq!(context["transaction"], "/orders");
        assert_eq!(
            context["sdk"],
            json!({"name": "sentry.python.fastapi", "version": "2.19.2"})
        );
        assert_eq!(
            context["mechanism"],
            json!({"type": "starlette", "handled": false})
        );
        assert_eq!(
            context["user"],
            json!({"id": "1042", "email": "ada@example.com", "ip_address": "203.0.113.7"}),
            "{{{{auto}}}} is the sender's address"
        );
        assert_eq!(
            context["request"],
            json!({
                "url": "https://shop.example/orders",
                "method": "POST",
                "query_string": "expand=items",
                "headers": {
                    "host": "shop.example",
                    "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
                    "accept": "application/json",
                    "content-type": "application/json",
                    "x-forwarded-for": "203.0.113.7",
                },
            }),
            "no cookie, authorization or CSRF token; no cookies or body"
        );
        assert_eq!(
            context["exceptions"],
            json!([{
                "type": "ValueError",
                "value": "invalid literal for int() with base 10: 'sku-42'",
                "mechanism": {"type": "starlette", "handled": false},
                "stack_trace": [
                    frame("shop/inventory.py", false, "reserve", "shop.inventory", 25, "        count = parse_sku(sku)", true),
                    frame("shop/inventory.py", false, "parse_sku", "shop.inventory", 18, "    return int(raw)", true),
                ],
            }]),
            "the cause, oldest first"
        );
        assert_eq!(context["breadcrumbs"].as_array().map(Vec::len), Some(2));
        assert_eq!(context["breadcrumbs"][1]["category"], "httplib");
        assert_eq!(context["contexts"]["runtime"]["name"], "CPython");
        assert_eq!(context["extra"]["sys.argv"][1], "shop.main:app");
    }

    #[test]
    fn javascript_browser_error() {
        let (item, context) = without_context(item(&event("javascript_browser.envelope")));
        let frames = json!([
            {"filename": "https://shop.example/assets/vendor.js", "function": "HTMLButtonElement.r", "in_app": true, "lineno": 2, "colno": 8812},
            {"filename": "https://shop.example/assets/app.js", "function": "submitOrder", "in_app": true, "lineno": 214, "colno": 17},
            {"filename": "https://shop.example/assets/app.js", "function": "renderTotals", "in_app": true, "lineno": 88, "colno": 31},
        ]);
        let message = "Cannot read properties of undefined (reading 'total')";
        let native = fingerprint::fingerprint(
            "TypeError",
            message,
            StackTrace::Frames(&ingest_frames(frames.as_array().unwrap())),
            None,
        );
        assert_eq!(
            item,
            json!({
                "type": "TypeError",
                "message": message,
                "stack_trace": frames,
                "level": "error",
                "environment": "production",
                "release": "shop-web@2026.11.3",
                "url": "https://shop.example/checkout",
                "user_id": "1042",
                "tags": {"page": "checkout"},
                "fingerprint": format!("{native}\ncheckout"),
                "timestamp": "2026-11-22T12:00:05.125Z",
            })
        );
        assert_eq!(
            keys(&context),
            vec![
                "breadcrumbs",
                "contexts",
                "event_id",
                "mechanism",
                "platform",
                "request",
                "sdk",
                "user"
            ]
        );
        assert_eq!(
            context["mechanism"],
            json!({"type": "onerror", "handled": false})
        );
        assert_eq!(
            context["user"],
            json!({"id": 1042, "email": "ada@example.com"})
        );
        assert_eq!(
            context["breadcrumbs"][2]["category"], "fetch",
            "an array of breadcrumbs, newest last"
        );
        assert_eq!(
            context["request"]["headers"],
            json!({"Referer": "https://shop.example/cart", "User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"})
        );
    }

    #[test]
    fn python_logged_message() {
        assert_eq!(
            item(&event("python_message.envelope")),
            json!({
                "type": "Message",
                "message": "payment pi_3Nx failed for order 42",
                "level": "error",
                "environment": "production",
                "release": "shop@1.4.2",
                "fingerprint": "message\npayment %s failed for order %s",
                "timestamp": "2026-11-22T12:00:02.500Z",
                "context": {
                    "event_id": "0b8e6c1f4d2a4e3b9c7d5a1f2e3d4c5b",
                    "platform": "python",
                    "logger": "shop.payments",
                    "server_name": "web-1",
                    "sdk": {"name": "sentry.python.fastapi", "version": "2.19.2"},
                    "contexts": {"runtime": {"name": "CPython", "version": "3.12.7", "build": "3.12.7 (main, Oct  1 2024, 08:52:12) [GCC 12.2.0]"}},
                },
            }),
            "empty `extra` and `breadcrumbs` are left out"
        );
    }

    #[test]
    fn store_body() {
        let event: Value = serde_json::from_slice(&fixture("store_python.json")).unwrap();
        assert_eq!(
            item(&event),
            json!({
                "type": "ZeroDivisionError",
                "message": "division by zero",
                "stack_trace": [{"filename": "shop/jobs.py", "abs_path": "/srv/shop/shop/jobs.py", "function": "nightly_report", "module": "shop.jobs", "lineno": 12, "context_line": "    ratio = paid / total", "in_app": true}],
                "level": "error",
                "environment": "staging",
                "release": "shop@1.4.2",
                "user_id": "cron",
                "tags": {"queue": "reports", "attempt": "2"},
                "timestamp": "2026-11-22T12:00:03Z",
                "context": {
                    "event_id": "9f8e7d6c5b4a439281706f5e4d3c2b1a",
                    "platform": "python",
                    "logger": "shop.jobs",
                    "server_name": "worker-2",
                    "sdk": {"name": "sentry.python", "version": "2.19.2"},
                    "mechanism": {"type": "generic", "handled": true},
                    "user": {"username": "cron", "ip_address": "203.0.113.7"},
                },
            }),
            "naive timestamp is UTC; tag pairs; a dashed event id"
        );
    }

    #[test]
    fn transaction_fixtures() {
        let fastapi = request_item(&event("transaction_fastapi.envelope"), &ctx());
        assert_eq!(
            fastapi,
            Some(json!({
                "method": "GET",
                "route": "/items/{item_id}",
                "status_code": 200,
                "duration_ms": 42.5,
                "timestamp": "2026-11-22T12:00:01Z",
                "user_agent": "curl/8.5.0",
                "ip": "203.0.113.7",
            }))
        );
        let node = request_item(&event("transaction_node.envelope"), &ctx());
        assert_eq!(
            node,
            Some(json!({
                "method": "GET",
                "route": "/items/:id",
                "status_code": 404,
                "duration_ms": 18.3,
                "timestamp": "2026-11-22T12:00:06.200Z",
                "user_agent": "okhttp/4.12.0",
            })),
            "float timestamps; the method stripped from the name"
        );
        let requests: Vec<Value> = [fastapi, node].into_iter().flatten().collect();
        let validated = validate_requests(&requests);
        assert_eq!(validated[1].route, "/items/:id");
        assert_eq!(validated[1].status_code, 404);
    }

    #[test]
    fn every_fixture_maps_to_valid_items_or_to_nothing() {
        let mut errors = Vec::new();
        let mut requests = Vec::new();
        for name in [
            "python_chained.envelope",
            "python_message.envelope",
            "javascript_browser.envelope",
            "transaction_fastapi.envelope",
            "transaction_node.envelope",
            "session.envelope",
            "client_report.envelope",
        ] {
            for (item_type, payload) in payloads(name) {
                match item_type {
                    ItemType::Event => errors.push(item(&payload)),
                    ItemType::Transaction => requests.extend(request_item(&payload, &ctx())),
                    _ => {
                        assert_eq!(
                            error_item(&payload, &ctx()),
                            Err(EventError::NothingToReport),
                            "{name}"
                        );
                        assert_eq!(request_item(&payload, &ctx()), None, "{name}");
                    }
                }
            }
        }
        errors.push(item(
            &serde_json::from_slice(&fixture("store_python.json")).unwrap(),
        ));
        assert_eq!(validate_errors(&errors).len(), 4);
        assert_eq!(validate_requests(&requests).len(), 2);
        for error in &errors {
            assert!(json_len(&error["context"]) <= MAX_CONTEXT);
        }
    }

    fn base_error() -> Value {
        json!({
            "event_id": "6f4a2d3cb5e84b0c9a1c2f0e8d7b6a51",
            "exception": {"values": [{"type": "KeyError", "value": "'sku-42'", "stacktrace": {"frames": [
                {"function": "create_order", "module": "shop.api", "lineno": 41, "in_app": true},
                {"function": "reserve", "module": "shop.inventory", "lineno": 27, "in_app": true},
            ]}}]},
        })
    }

    #[test]
    fn the_primary_exception_is_the_last_of_the_chain() {
        let chain = json!([
            {"type": "ValueError", "value": "cause"},
            {"type": "KeyError", "value": "raised"},
        ]);
        for exception in [json!({"values": chain}), chain.clone()] {
            let item = item(&json!({"exception": exception}));
            assert_eq!(
                (&item["type"], &item["message"]),
                (&json!("KeyError"), &json!("raised"))
            );
            assert_eq!(
                item["context"]["exceptions"],
                json!([{"type": "ValueError", "value": "cause"}])
            );
        }
        let legacy = item(&json!({"exception": {"type": "IOError", "value": "disk full"}}));
        assert_eq!(legacy["type"], "IOError");
        let untyped = item(&json!({"exception": {"values": [{"value": "no type"}]}}));
        assert_eq!(
            (&untyped["type"], &untyped["message"]),
            (&json!("Error"), &json!("no type"))
        );
    }

    #[test]
    fn sdk_fingerprints_extend_the_default_group() {
        let with = |fingerprint: Value| {
            let mut event = base_error();
            event["fingerprint"] = fingerprint;
            event
        };
        let native = group(&base_error());
        let checkout = group(&with(json!(["{{ default }}", "checkout"])));
        assert_ne!(checkout, native, "split off the default group");
        let mut moved = with(json!(["{{ default }}", "checkout"]));
        moved["exception"]["values"][0]["stacktrace"]["frames"][1]["lineno"] = json!(99);
        assert_eq!(group(&moved), checkout, "line numbers do not split it");
        assert_eq!(group(&with(json!(["{{default}}", "checkout"]))), checkout);
        assert_ne!(group(&with(json!(["{{ default }}", "cart"]))), checkout);

        for alone in [
            json!(["{{ default }}"]),
            json!(["{{default}}", " {{ DEFAULT }} "]),
            json!([]),
        ] {
            let item = item(&with(alone.clone()));
            assert_eq!(item.get("fingerprint"), None, "{alone}");
            assert_eq!(group(&with(alone)), native);
        }
        let custom = item(&with(json!(["checkout", 42])));
        assert_eq!(custom["fingerprint"], "checkout\n42");
        let long = item(&with(json!(["x".repeat(300)])));
        assert_eq!(
            long["fingerprint"],
            hex::encode(Sha256::digest("x".repeat(300).as_bytes())),
            "too long for the column: its hash"
        );
    }

    #[test]
    fn messages_group_by_their_template() {
        let logged = |params: Value| json!({"logentry": {"message": "payment %s failed for order %s", "params": params}});
        let first = item(&logged(json!(["pi_1", 42])));
        assert_eq!(first["type"], "Message");
        assert_eq!(
            first["message"], "payment pi_1 failed for order 42",
            "formatted from the params"
        );
        assert_eq!(
            group(&logged(json!(["pi_1", 42]))),
            group(&logged(json!(["pi_2", 7])))
        );
        assert_ne!(
            group(&logged(json!(["pi_1", 42]))),
            group(&json!({"logentry": {"message": "refund %s failed", "params": ["pi_1"]}}))
        );
        // `capture_message` sends a bare string; the legacy `message` object works too.
        let plain = item(&json!({"message": "cache warmed", "level": "info"}));
        assert_eq!(
            (
                &plain["type"],
                &plain["message"],
                &plain["fingerprint"],
                &plain["level"]
            ),
            (
                &json!("Message"),
                &json!("cache warmed"),
                &json!("message\ncache warmed"),
                &json!("info")
            )
        );
        let object = item(&json!({"message": {"message": "hi {}", "params": ["you"]}}));
        assert_eq!(
            (&object["message"], &object["fingerprint"]),
            (&json!("hi you"), &json!("message\nhi {}"))
        );
        // A message with an SDK fingerprint of just the default groups as without one.
        let mut defaulted = logged(json!(["pi_3", 1]));
        defaulted["fingerprint"] = json!(["{{ default }}"]);
        assert_eq!(
            item(&defaulted)["fingerprint"],
            "message\npayment %s failed for order %s"
        );
        // A message with a stack (Python's `stack_info`) keeps it.
        let stacked = item(&json!({
            "logentry": {"message": "slow"},
            "threads": {"values": [{"stacktrace": {"frames": [{"function": "tick"}]}, "crashed": false, "current": true}]},
        }));
        assert_eq!(stacked["stack_trace"], json!([{"function": "tick"}]));
    }

    #[test]
    fn message_formats() {
        let cases = [
            ("hello, %s!", json!(["world"]), Some("hello, world!")),
            ("%d%% of %(total)s", json!({"total": 5}), None),
            (
                "%(done)d%% of %(total)s",
                json!({"done": 3, "total": 5}),
                Some("3% of 5"),
            ),
            ("%5.2f seconds", json!([1.5]), Some("1.5 seconds")),
            ("hello, %s and %s", json!(["a"]), None),
            ("hello, {}!", json!(["world"]), Some("hello, world!")),
            ("{1} before {0}", json!(["b", "a"]), Some("a before b")),
            ("hi {name}", json!({"name": "ada"}), Some("hi ada")),
            ("{unclosed", json!(["x"]), None),
            ("no placeholders", json!(["x"]), None),
            ("héllo %s ✓", json!([true]), Some("héllo true ✓")),
        ];
        for (template, params, expected) in cases {
            assert_eq!(
                format_message(template, &params).as_deref(),
                expected,
                "{template}"
            );
        }
        // A template that repeats a big param stops growing.
        let big = json!({"a": "x".repeat(10_000)});
        let out = format_message(&"%(a)s".repeat(1000), &big).unwrap();
        assert!(out.len() <= MAX_FORMATTED_BYTES + 10_000);
        // What cannot be formatted is shown as the template.
        let item = item(&json!({"logentry": {"message": "%s and %s", "params": ["one"]}}));
        assert_eq!(item["message"], "%s and %s");
    }

    #[test]
    fn oversized_events_still_fit() {
        let frames: Vec<Value> = (0..10_000)
            .map(|i| json!({"function": format!("f{i}"), "module": "app.deep", "lineno": i, "in_app": true, "context_line": "x = compute(x)  # ".repeat(5), "vars": {"x": i}}))
            .collect();
        let breadcrumbs: Vec<Value> = (0..5_000)
            .map(
                |i| json!({"category": "log", "message": format!("crumb {i} {}", "m".repeat(200))}),
            )
            .collect();
        let tags: Map<String, Value> = (0..500)
            .map(|i| (format!("tag{i:03}"), json!("v".repeat(300))))
            .collect();
        let event = json!({
            "exception": {"values": [
                {"type": "Cause", "value": "c".repeat(20_000), "stacktrace": {"frames": frames}},
                {"type": "T".repeat(1_000), "value": "é".repeat(20_000), "stacktrace": {"frames": frames}},
            ]},
            "breadcrumbs": {"values": breadcrumbs},
            "extra": {"blob": "e".repeat(1 << 20)},
            "tags": tags,
            "environment": "p".repeat(300),
            "release": "r".repeat(300),
            "request": {"url": format!("https://x.example/{}", "u".repeat(5_000)), "headers": {"X-Big": "h".repeat(100_000)}},
            "user": {"id": "i".repeat(500)},
            "contexts": {"os": {"name": "o".repeat(100_000)}},
            "fingerprint": ["{{ default }}", "f".repeat(1_000)],
            "timestamp": 1795348800.5,
        });
        let item = item(&event);
        let validated = validate_errors(std::slice::from_ref(&item)).remove(0);
        assert_eq!(validated.error_type.chars().count(), MAX_NAME);
        assert_eq!(validated.message.chars().count(), MAX_MESSAGE);
        assert_eq!(validated.tags.len(), MAX_LABELS);
        assert_eq!(validated.fingerprint.len(), 64);
        let stack = item["stack_trace"].as_array().unwrap();
        assert!(json_len(stack) <= MAX_STACK);
        assert_eq!(
            stack.last().unwrap()["function"],
            "f9999",
            "the raising frame stays"
        );
        assert!(
            stack.iter().all(|f| f.get("context_line").is_none()),
            "source lines go first"
        );
        let context = item["context"].as_object().unwrap();
        assert!(json_len(context) <= MAX_CONTEXT, "{}", json_len(context));
        assert_eq!(context.get("extra"), None);
        let crumbs = context.get("breadcrumbs").and_then(Value::as_array);
        if let Some(crumbs) = crumbs {
            assert!(crumbs.len() < MAX_BREADCRUMBS);
            assert!(crumbs.last().unwrap()["message"]
                .as_str()
                .unwrap()
                .starts_with("crumb 4999 "));
        }
        assert_eq!(
            context["request"]["headers"]["X-Big"]
                .as_str()
                .map(str::len),
            Some(MAX_TEXT)
        );
    }

    #[test]
    fn a_huge_user_or_mechanism_is_dropped_last() {
        let event = json!({
            "message": "m",
            "user": {"id": "u", "blob": "b".repeat(200_000)},
            "exception": {"values": [{"type": "E", "mechanism": {"type": "x", "meta": "y".repeat(200_000)}}]},
            "server_name": "s",
        });
        let item = item(&event);
        let context = item["context"].as_object().unwrap();
        assert!(json_len(context) <= MAX_CONTEXT);
        // The log line beside the exception is kept; the huge user and mechanism went.
        assert_eq!(keys(context), vec!["log_message", "server_name"]);
        assert_eq!(item["user_id"], "u");
    }

    #[test]
    fn a_long_chain_costs_no_more_than_ten_exceptions() {
        // Every exception names one big thread stack: read once, for the primary only.
        let frames: Vec<Value> = (0..2_000)
            .map(|n| json!({"function": format!("f{n}"), "module": "m", "lineno": n, "in_app": true}))
            .collect();
        let chain: Vec<Value> = (0..5_000)
            .map(|n| json!({"type": format!("E{n}"), "value": "v", "thread_id": 1}))
            .collect();
        let event = json!({
            "exception": {"values": chain},
            "threads": {"values": [{"id": 1, "stacktrace": {"frames": frames}}]},
        });
        let item = item(&event);
        assert_eq!(item["type"], "E4999");
        assert!(item["stack_trace"]
            .as_array()
            .is_some_and(|f| !f.is_empty()));
        let others = item["context"]["exceptions"].as_array().unwrap();
        assert_eq!(others.len(), MAX_CHAIN - 1);
        assert_eq!(others[0]["type"], "E4990");
        assert!(others.iter().all(|e| e.get("stack_trace").is_none()));
    }

    #[test]
    fn secrets_in_urls_and_objects_are_filtered() {
        let event = json!({
            "message": "m",
            "request": {
                "url": "https://shop.example/cb?code=1&access_token=abc&page=2#id_token=zz&state=s",
                "query_string": "token=a&page=2",
            },
            "extra": {"password": "p", "nested": {"api_key": "k", "ok": "fine"}},
            "contexts": {"app": {"session_id": "s1", "name": "shop"}},
            "breadcrumbs": {"values": [
                {"category": "fetch", "data": {"url": "https://api.example/x?auth=zz&q=1"}}
            ]},
            "user": {"id": "7", "auth_token": "t"},
        });
        let item = item(&event);
        assert_eq!(
            item["url"],
            "https://shop.example/cb?code=1&access_token=[Filtered]&page=2#id_token=[Filtered]&state=s"
        );
        let context = &item["context"];
        assert_eq!(context["request"]["url"], item["url"]);
        assert_eq!(
            context["request"]["query_string"],
            "token=[Filtered]&page=2"
        );
        assert_eq!(context["extra"]["password"], "[Filtered]");
        assert_eq!(context["extra"]["nested"]["api_key"], "[Filtered]");
        assert_eq!(context["extra"]["nested"]["ok"], "fine");
        assert_eq!(context["contexts"]["app"]["session_id"], "[Filtered]");
        assert_eq!(context["contexts"]["app"]["name"], "shop");
        assert_eq!(
            context["breadcrumbs"][0]["data"]["url"],
            "https://api.example/x?auth=[Filtered]&q=1"
        );
        assert_eq!(context["user"]["auth_token"], "[Filtered]");
        assert_eq!(context["user"]["id"], "7");
        assert_eq!(item["user_id"], "7");
    }

    #[test]
    fn timestamps_from_floats_and_strings() {
        let cases = [
            (json!(1795348800.5), Some("2026-11-22T12:00:00.500Z")),
            (json!(1795348800), Some("2026-11-22T12:00:00Z")),
            (
                json!(1795348800.123456),
                Some("2026-11-22T12:00:00.123456Z"),
            ),
            (json!("2026-11-22T12:00:00Z"), Some("2026-11-22T12:00:00Z")),
            (
                json!("2026-11-22T13:00:00.25+01:00"),
                Some("2026-11-22T12:00:00.250Z"),
            ),
            (
                json!("2026-11-22T12:00:00.123456"),
                Some("2026-11-22T12:00:00.123456Z"),
            ),
            (json!("2026-11-22 12:00:00"), Some("2026-11-22T12:00:00Z")),
            (json!("1795348800.5"), Some("2026-11-22T12:00:00.500Z")),
            (json!("yesterday"), None),
            (json!(""), None),
            (json!(1e300), None),
            (json!(-1e14), None),
            (json!(true), None),
            (Value::Null, None),
        ];
        for (input, expected) in cases {
            let item = item(&json!({"message": "m", "timestamp": input}));
            assert_eq!(
                item.get("timestamp").and_then(Value::as_str),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn levels_users_and_tags() {
        for (sent, level) in [
            (json!("debug"), "debug"),
            (json!("info"), "info"),
            (json!("log"), "info"),
            (json!("warning"), "warning"),
            (json!("warn"), "warning"),
            (json!("WARNING"), "warning"),
            (json!("error"), "error"),
            (json!("fatal"), "fatal"),
            (json!("critical"), "fatal"),
            (json!("panic"), "error"),
            (json!(3), "error"),
            (Value::Null, "error"),
        ] {
            assert_eq!(
                item(&json!({"message": "m", "level": sent}))["level"],
                level,
                "{sent}"
            );
        }
        for (user, expected) in [
            (
                json!({"id": 7, "email": "a@x", "username": "a", "ip_address": "1.2.3.4"}),
                Some("7"),
            ),
            (
                json!({"id": " ", "email": "a@x", "username": "a"}),
                Some("a@x"),
            ),
            (json!({"username": "a", "ip_address": "1.2.3.4"}), Some("a")),
            (json!({"ip_address": "1.2.3.4"}), Some("1.2.3.4")),
            (json!({"ip_address": "{{auto}}"}), Some("203.0.113.7")),
            (json!({"segment": "paid"}), None),
            (json!("not an object"), None),
        ] {
            let item = item(&json!({"message": "m", "user": user}));
            assert_eq!(
                item.get("user_id").and_then(Value::as_str),
                expected,
                "{user}"
            );
        }
        let anonymous = error_item(
            &json!({"message": "m", "user": {"ip_address": "{{auto}}"}}),
            &EventContext::default(),
        )
        .unwrap();
        assert_eq!(
            anonymous.get("user_id"),
            None,
            "{{{{auto}}}} without an address"
        );
        assert_eq!(anonymous["context"].get("user"), None);

        let tags = item(
            &json!({"message": "m", "tags": [["a", 1], ["b", true], ["c", null], ["d"], [5, "five"], ["e", {"x": 1}], ["a", "again"]]}),
        );
        assert_eq!(
            tags["tags"],
            json!({"a": "1", "b": "true", "5": "five", "e": "{\"x\":1}"})
        );
        let long = item(&json!({"message": "m", "tags": {"k".repeat(300): "v".repeat(300)}}));
        assert_eq!(
            long["tags"],
            json!({"k".repeat(MAX_NAME): "v".repeat(MAX_NAME)})
        );
        // Escapes make a character up to six bytes: the 16 KB object bound still holds.
        let escaped: Map<String, Value> = (0..20)
            .map(|i| {
                (
                    format!("{i}{}", "\u{1}".repeat(199)),
                    json!("\u{1}".repeat(200)),
                )
            })
            .collect();
        let escaped = item(&json!({"message": "m", "tags": escaped}));
        assert!(json_len(&escaped["tags"]) <= MAX_OBJECT_BYTES);
        validate_errors(&[escaped]);
    }

    #[test]
    fn request_headers_lose_their_secrets() {
        let event = json!({"message": "m", "request": {
            "url": "https://x.example/a",
            "method": "GET",
            "query_string": [["page", "2"]],
            "headers": [
                ["Accept", "text/html"], ["Cookie", "a=b"], ["Authorization", "Basic x"],
                ["X-Sentry-Auth", "Sentry sentry_key=k"], ["Proxy-Authorization", "p"],
                ["X-Api-Key", "k"], ["X-Auth-Token", "t"], ["X-Client-Secret", "s"], ["Set-Cookie", "c"],
                ["X-Request-Id", "r1"], ["X-Number", 5], ["X-List", ["a"]],
            ],
            "cookies": {"a": "b"},
            "data": {"password": "hunter2"},
            "env": {"REMOTE_ADDR": "10.0.0.1"},
        }});
        assert_eq!(
            item(&event)["context"]["request"],
            json!({
                "url": "https://x.example/a",
                "method": "GET",
                "query_string": [["page", "2"]],
                "headers": {"Accept": "text/html", "X-Request-Id": "r1", "X-Number": "5"},
            })
        );
    }

    #[test]
    fn nul_in_the_context_is_replaced() {
        let item = item(&json!({"message": "m", "extra": {"k\u{0}": "v\u{0}", "list": ["\u{0}"]}}));
        assert_eq!(
            item["context"]["extra"],
            json!({"k\u{FFFD}": "v\u{FFFD}", "list": ["\u{FFFD}"]})
        );
    }

    #[test]
    fn events_that_are_not_errors() {
        assert_eq!(
            error_item(&json!([1]), &ctx()),
            Err(EventError::NotAnObject)
        );
        for event in [
            json!({}),
            json!({"exception": {"values": []}, "message": "  "}),
            json!({"logentry": {"params": [1]}}),
            json!({"exception": {"values": [5]}}),
        ] {
            assert_eq!(
                error_item(&event, &ctx()),
                Err(EventError::NothingToReport),
                "{event}"
            );
        }
        assert_eq!(
            EventError::NothingToReport.to_string(),
            "the event has neither an exception nor a message"
        );
    }

    #[test]
    fn event_ids() {
        for (id, expected) in [
            (
                json!("6F4A2D3CB5E84B0C9A1C2F0E8D7B6A51"),
                Some("6f4a2d3cb5e84b0c9a1c2f0e8d7b6a51"),
            ),
            (
                json!("9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"),
                Some("9f8e7d6c5b4a439281706f5e4d3c2b1a"),
            ),
            (json!("9f8e7d6c5b4a-4392-8170-6f5e4d3c2b1a"), None),
            (json!("9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1g"), None),
            (json!("abc"), None),
            (json!("ééééééééééééééééééééééééééééééé"), None),
            (json!(42), None),
        ] {
            assert_eq!(
                event_id(&json!({"event_id": id})).as_deref(),
                expected,
                "{id}"
            );
        }
        assert_eq!(event_id(&json!({})), None);
    }

    fn transaction(changes: Value) -> Value {
        let mut tx = json!({
            "type": "transaction",
            "transaction": "/items/{id}",
            "start_timestamp": 1795348800.0,
            "timestamp": 1795348800.25,
            "contexts": {"trace": {"op": "http.server", "status": "ok"}},
            "request": {"method": "get"},
        });
        if let (Some(tx), Some(changes)) = (tx.as_object_mut(), changes.as_object()) {
            for (key, value) in changes {
                if value.is_null() {
                    tx.remove(key);
                } else {
                    tx.insert(key.clone(), value.clone());
                }
            }
        }
        tx
    }

    fn status_of(tx: &Value) -> Option<u64> {
        request_item(tx, &ctx()).map(|r| r["status_code"].as_u64().unwrap())
    }

    #[test]
    fn transaction_status_from_each_source() {
        let trace = |data: Value, status: &str| json!({"trace": {"op": "http.server", "status": status, "data": data}});
        let cases = [
            (
                json!({"contexts": {"response": {"status_code": 201}, "trace": {"op": "http.server", "status": "ok"}}, "tags": {"http.status_code": "202"}}),
                Some(201),
            ),
            (
                json!({"tags": {"http.status_code": "202"}, "contexts": trace(json!({"http.response.status_code": 203}), "ok")}),
                Some(202),
            ),
            (json!({"tags": [["http.status_code", "204"]]}), Some(204)),
            (
                json!({"contexts": trace(json!({"http.response.status_code": 203, "http.status_code": 299}), "ok")}),
                Some(203),
            ),
            (
                json!({"contexts": trace(json!({"http.status_code": "299"}), "ok")}),
                Some(299),
            ),
            (
                json!({"contexts": {"response": {"status_code": 7}, "trace": {"op": "http.server", "status": "not_found"}}}),
                Some(404),
            ),
        ];
        for (changes, expected) in cases {
            assert_eq!(
                status_of(&transaction(changes.clone())),
                expected,
                "{changes}"
            );
        }
        for (status, code) in [
            ("ok", 200),
            ("cancelled", 499),
            ("invalid_argument", 400),
            ("unauthenticated", 401),
            ("permission_denied", 403),
            ("not_found", 404),
            ("already_exists", 409),
            ("aborted", 409),
            ("failed_precondition", 400),
            ("out_of_range", 400),
            ("resource_exhausted", 429),
            ("unimplemented", 501),
            ("unavailable", 503),
            ("deadline_exceeded", 504),
            ("internal_error", 500),
            ("unknown", 500),
            ("unknown_error", 500),
            ("data_loss", 500),
        ] {
            let tx = transaction(
                json!({"contexts": {"trace": {"op": "http.server", "status": status}}}),
            );
            assert_eq!(status_of(&tx), Some(code), "{status}");
        }
        let unknown =
            transaction(json!({"contexts": {"trace": {"op": "http.server", "status": "weird"}}}));
        assert_eq!(
            request_item(&unknown, &ctx()),
            None,
            "no status, no request"
        );
    }

    #[test]
    fn transaction_method_route_and_kind() {
        let method_of = |tx: Value| {
            request_item(&tx, &ctx()).map(|r| (r["method"].clone(), r["route"].clone()))
        };
        assert_eq!(
            method_of(transaction(json!({}))),
            Some((json!("GET"), json!("/items/{id}")))
        );
        let no_request = json!({"request": null});
        let with = |extra: Value| {
            let mut tx = transaction(no_request.clone());
            if let (Some(tx), Some(extra)) = (tx.as_object_mut(), extra.as_object()) {
                tx.extend(extra.clone());
            }
            tx
        };
        assert_eq!(
            method_of(with(json!({"tags": {"http.method": "PUT"}}))),
            Some((json!("PUT"), json!("/items/{id}")))
        );
        assert_eq!(
            method_of(with(
                json!({"contexts": {"trace": {"op": "http.server", "status": "ok", "data": {"http.request.method": "PATCH", "http.method": "POST"}}}})
            )),
            Some((json!("PATCH"), json!("/items/{id}")))
        );
        assert_eq!(
            method_of(with(json!({"transaction": "DELETE /items/:id"}))),
            Some((json!("DELETE"), json!("/items/:id"))),
            "the method from the name"
        );
        assert_eq!(
            method_of(with(json!({"transaction": "checkout /items"}))),
            None,
            "no method known"
        );
        assert_eq!(
            method_of(with(json!({"transaction": "GET "}))),
            None,
            "no route left"
        );

        // Not an HTTP server transaction: a task, a page load, an outgoing call.
        for trace in [
            json!({"op": "celery.task", "status": "ok"}),
            json!({"op": "pageload"}),
            json!({"op": "http.client", "status": "ok"}),
        ] {
            let tx = with(json!({"contexts": {"trace": trace.clone()}}));
            assert_eq!(request_item(&tx, &ctx()), None, "{trace}");
        }
        // A request method and a known status make one even without the op.
        let bare = transaction(json!({"contexts": {"response": {"status_code": 500}}}));
        assert_eq!(status_of(&bare), Some(500));
        assert_eq!(request_item(&json!("nope"), &ctx()), None);
        assert_eq!(
            request_item(&transaction(json!({"start_timestamp": null})), &ctx()),
            None
        );
    }

    #[test]
    fn transaction_timing_and_client() {
        let backwards = transaction(json!({"timestamp": 1795348799.0}));
        assert_eq!(
            request_item(&backwards, &ctx()).unwrap()["duration_ms"],
            json!(0.0)
        );
        let strings = transaction(
            json!({"start_timestamp": "2026-11-22T12:00:00Z", "timestamp": "2026-11-22T12:00:01.5Z"}),
        );
        let item = request_item(&strings, &ctx()).unwrap();
        assert_eq!(item["duration_ms"], json!(1500.0));
        assert_eq!(item["timestamp"], "2026-11-22T12:00:00Z");
        assert_eq!(
            item["user_agent"], "from-the-request/1.0",
            "no header: the request's"
        );
        let headed = transaction(
            json!({"request": {"method": "GET", "headers": [["User-Agent", "sdk-ua"]]}, "user": {"ip_address": "2001:db8::1"}}),
        );
        let item = request_item(&headed, &ctx()).unwrap();
        assert_eq!(
            (&item["user_agent"], &item["ip"]),
            (&json!("sdk-ua"), &json!("2001:db8::1"))
        );
        let long_ip = transaction(json!({"user": {"ip_address": "1".repeat(65)}}));
        assert_eq!(request_item(&long_ip, &ctx()).unwrap().get("ip"), None);
        validate_requests(&[
            request_item(&headed, &ctx()).unwrap(),
            request_item(&backwards, &ctx()).unwrap(),
        ]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "exception",
                    "values",
                    "type",
                    "value",
                    "stacktrace",
                    "frames",
                    "function",
                    "module",
                    "filename",
                    "abs_path",
                    "lineno",
                    "colno",
                    "in_app",
                    "context_line",
                    "message",
                    "logentry",
                    "formatted",
                    "params",
                    "level",
                    "tags",
                    "user",
                    "id",
                    "email",
                    "username",
                    "ip_address",
                    "fingerprint",
                    "environment",
                    "release",
                    "request",
                    "url",
                    "headers",
                    "breadcrumbs",
                    "extra",
                    "contexts",
                    "threads",
                    "mechanism",
                    "event_id",
                    "sdk",
                ])
                .prop_map(str::to_string),
                "[a-z]{1,6}",
            ]
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
                "\\PC{0,12}".prop_map(Value::String),
                Just(json!("{{ default }}")),
                Just(json!("{{auto}}")),
                Just(json!("%s {} %(a)s")),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// An event shaped like Sentry's, with arbitrary values in every place.
        fn sentry_event() -> impl Strategy<Value = Value> {
            let exception = (json(), json(), prop::collection::vec(prop::collection::btree_map(key(), json(), 0..6), 0..5))
                .prop_map(|(t, v, frames)| json!({"type": t, "value": v, "stacktrace": {"frames": frames}}));
            (
                prop::collection::vec(exception, 0..3),
                prop::collection::btree_map(key(), json(), 0..10),
                json(),
                json(),
                json(),
            )
                .prop_map(|(values, rest, fingerprint, tags, user)| {
                    let mut event: Object = rest.into_iter().collect();
                    event.insert("exception".into(), json!({"values": values}));
                    event.insert("fingerprint".into(), fingerprint);
                    event.insert("tags".into(), tags);
                    event.insert("user".into(), user);
                    Value::Object(event)
                })
        }

        proptest! {
            /// Whatever an SDK sends, the item is either refused as a whole (no exception and
            /// no message) or passes validation; no NUL is sent, and the time is left out
            /// (validation refuses old times by design).
            #[test]
            fn every_mapped_event_passes_validation(
                event in prop_oneof![sentry_event(), json()],
                ip in prop::option::of("\\PC{0,80}"),
            ) {
                let mut event = event;
                if let Some(object) = event.as_object_mut() {
                    object.remove("timestamp");
                }
                let ctx = EventContext { client_ip: ip.as_deref(), user_agent: None };
                if let Ok(item) = error_item(&event, &ctx) {
                    let result = Items::validate(Kind::Errors, std::slice::from_ref(&item), &validation(), &BTreeMap::new());
                    prop_assert!(result.is_ok(), "{:?}\n{}", result, item);
                    if let Some(context) = item.get("context") {
                        prop_assert!(json_len(context) <= MAX_CONTEXT);
                    }
                }
                if let Some(request) = request_item(&event, &ctx) {
                    let result = Items::validate(Kind::Requests, std::slice::from_ref(&request), &validation(), &BTreeMap::new());
                    prop_assert!(result.is_ok(), "{:?}\n{}", result, request);
                }
            }
        }
    }
}
