//! Uptime monitors: what a monitor is (its configuration as stored), and the pure rules a
//! check is judged by. The HTTP layer validates input into a [`MonitorConfig`]; the actors run
//! it; both read and write it through `store::monitors`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The intervals a monitor may have (SPEC §7), in seconds.
pub const INTERVALS: [u32; 3] = [60, 300, 900];

/// A monitor's configuration, as stored in `monitors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub url: String,
    pub method: String,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    pub expected_status: Vec<StatusRange>,
    pub keyword: Option<String>,
    pub keyword_absent: bool,
    pub headers: BTreeMap<String, String>,
    pub paused: bool,
    /// Bumped by every change through the API.
    pub updated_at: DateTime<Utc>,
    /// Send the check's W3C trace context (`traceparent`) when traces are on.
    pub send_traceparent: bool,
}

/// A monitor's runtime state, as stored on its row: what a restarted actor resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorState {
    pub status: Status,
    pub failure_streak: u32,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
    /// The open incident, if any.
    pub open_incident: Option<Uuid>,
}

/// What a monitor is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not checked yet.
    Pending,
    Up,
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Up => "up",
            Status::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Status::Pending),
            "up" => Some(Status::Up),
            "down" => Some(Status::Down),
            _ => None,
        }
    }
}

/// Why a check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    Dns,
    Connect,
    Tls,
    Timeout,
    /// An unexpected status code.
    Status,
    /// The keyword was missing (or present, with `keyword_absent`).
    Keyword,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::Status => "status",
            FailureKind::Keyword => "keyword",
        }
    }

    /// Every kind.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Dns,
        FailureKind::Connect,
        FailureKind::Tls,
        FailureKind::Timeout,
        FailureKind::Status,
        FailureKind::Keyword,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Expected status codes: one code (`200`) or an inclusive range (`"200-399"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

impl StatusRange {
    pub const DEFAULT: StatusRange = StatusRange { from: 200, to: 399 };

    pub fn contains(&self, code: u16) -> bool {
        (self.from..=self.to).contains(&code)
    }

    /// Parses `"200"`, `"200-399"`; codes must be 100..=599 and ranges ascending.
    pub fn parse(s: &str) -> Option<Self> {
        let code = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let range = match s.split_once('-') {
            Some((a, b)) => StatusRange {
                from: code(a)?,
                to: code(b)?,
            },
            None => {
                let c = code(s)?;
                StatusRange { from: c, to: c }
            }
        };
        (range.from <= range.to).then_some(range)
    }

    /// As JSON: a number for one code, `"a-b"` for a range.
    pub fn to_json(&self) -> serde_json::Value {
        if self.from == self.to {
            serde_json::Value::from(self.from)
        } else {
            serde_json::Value::from(self.to_string())
        }
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// Whether `code` is one of `expected` (empty: the default 200–399).
pub fn status_expected(expected: &[StatusRange], code: u16) -> bool {
    if expected.is_empty() {
        return StatusRange::DEFAULT.contains(code);
    }
    expected.iter().any(|r| r.contains(code))
}

// ---------------------------------------------------------------------------------------------
// Input: what the API accepts for a monitor, validated field by field so a 422 names them all.

/// The request methods a monitor may use.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_KEYWORD_CHARS: usize = 1024;
pub const MAX_HEADERS: usize = 20;
pub const MAX_HEADER_VALUE_CHARS: usize = 4096;
pub const MAX_EXPECTED_STATUS: usize = 20;
/// The timeout a monitor gets when none is given: this, or less than the interval (and at most
/// the cap, [`InputRules::max_timeout_secs`]).
pub const DEFAULT_TIMEOUT_SECS: u32 = 30;
/// The fields a monitor's create or update body may hold.
pub const INPUT_FIELDS: [&str; 10] = [
    "name",
    "url",
    "method",
    "interval_seconds",
    "timeout_seconds",
    "expected_status",
    "keyword",
    "keyword_absent",
    "headers",
    "send_traceparent",
];
/// Headers that frame the request or the connection: awc sets them, a monitor may not.
const RESERVED_HEADERS: [&str; 6] = [
    "connection",
    "content-length",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// The fields of a monitor a user sets, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    pub name: String,
    pub url: String,
    pub method: String,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    pub expected_status: Vec<StatusRange>,
    pub keyword: Option<String>,
    pub keyword_absent: bool,
    pub headers: BTreeMap<String, String>,
    pub send_traceparent: bool,
}

impl MonitorSpec {
    /// The user-set part of a stored monitor.
    pub fn of(config: &MonitorConfig) -> Self {
        Self {
            name: config.name.clone(),
            url: config.url.clone(),
            method: config.method.clone(),
            interval_seconds: config.interval_seconds,
            timeout_seconds: config.timeout_seconds,
            expected_status: config.expected_status.clone(),
            keyword: config.keyword.clone(),
            keyword_absent: config.keyword_absent,
            headers: config.headers.clone(),
            send_traceparent: config.send_traceparent,
        }
    }

    /// `expected_status` as stored and shown: numbers for codes, `"a-b"` for ranges.
    pub fn expected_status_json(&self) -> serde_json::Value {
        expected_status_to_json(&self.expected_status)
    }

    pub fn headers_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect(),
        )
    }
}

/// Expected statuses as JSON: numbers for codes, `"a-b"` for ranges.
pub fn expected_status_to_json(expected: &[StatusRange]) -> serde_json::Value {
    serde_json::Value::Array(expected.iter().map(StatusRange::to_json).collect())
}

/// Expected statuses from their stored JSON; items that do not parse are skipped (an empty
/// list means the default, see [`status_expected`]).
pub fn expected_status_from_json(value: &serde_json::Value) -> Vec<StatusRange> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(status_item).collect())
        .unwrap_or_default()
}

/// Request headers from their stored JSON object (non-string values are skipped).
pub fn headers_from_json(value: &serde_json::Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn status_item(item: &serde_json::Value) -> Option<StatusRange> {
    match item {
        serde_json::Value::Number(n) => {
            let code = u16::try_from(n.as_u64()?).ok()?;
            StatusRange::parse(&code.to_string())
        }
        serde_json::Value::String(s) => StatusRange::parse(s),
        _ => None,
    }
}

/// One invalid field of a monitor's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputProblem {
    pub field: String,
    pub reason: String,
}

/// The interval a new monitor gets when none is given: the shortest one the tier allows (the
/// longest there is when the tier allows none).
pub fn default_interval(min_allowed_secs: u32) -> u32 {
    INTERVALS
        .into_iter()
        .find(|i| *i >= min_allowed_secs)
        .unwrap_or(INTERVALS[INTERVALS.len() - 1])
}

/// What the input of a monitor is held to besides its own syntax: the server's settings and
/// the organisation's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRules {
    /// The interval of a new monitor that names none.
    pub default_interval_secs: u32,
    /// `monitors.max_timeout_secs`: the longest timeout accepted.
    pub max_timeout_secs: u32,
    /// `monitors.allow_private_targets`: when false, a URL whose host is a literal private,
    /// loopback or link-local address is refused.
    pub allow_private_targets: bool,
}

/// Validates a monitor's create body (`base` is `None`: `name` and `url` are required and the
/// rest get defaults, the interval `rules.default_interval_secs`) or a partial update (`base`
/// is the monitor as it is: fields the body leaves out keep their value). Unknown fields are
/// refused, and `null` is accepted only for `keyword` (none). Every problem is reported, not
/// the first. Tier rules (the minimum interval) are the caller's: they are not input errors.
pub fn validate_input(
    input: &serde_json::Value,
    base: Option<&MonitorSpec>,
    rules: &InputRules,
) -> Result<MonitorSpec, Vec<InputProblem>> {
    let default_interval_secs = rules.default_interval_secs;
    let mut v = Validator {
        problems: Vec::new(),
        max_timeout_secs: rules.max_timeout_secs.max(1),
        allow_private_targets: rules.allow_private_targets,
    };
    let Some(obj) = input.as_object() else {
        v.add("body", "must be a JSON object");
        return Err(v.problems);
    };
    for key in obj.keys() {
        if !INPUT_FIELDS.contains(&key.as_str()) {
            v.add(
                key,
                format!(
                    "is not a monitor field; the fields are {}",
                    INPUT_FIELDS.join(", ")
                ),
            );
        }
    }
    let field = |name: &str| obj.get(name);

    let name = match (field("name"), base) {
        (None, Some(b)) => Some(b.name.clone()),
        (None, None) => v.required("name"),
        (Some(value), _) => v.name(value),
    };
    let url = match (field("url"), base) {
        (None, Some(b)) => Some(b.url.clone()),
        (None, None) => v.required("url"),
        (Some(value), _) => v.url(value),
    };
    let method = match (field("method"), base) {
        (None, Some(b)) => Some(b.method.clone()),
        (None, None) => Some("GET".to_string()),
        (Some(value), _) => v.method(value),
    };
    let interval = match (field("interval_seconds"), base) {
        (None, Some(b)) => Some(b.interval_seconds),
        (None, None) => Some(default_interval_secs),
        (Some(value), _) => v.interval(value),
    };
    let timeout = match (field("timeout_seconds"), base, interval) {
        (Some(value), _, _) => v.timeout(value, interval),
        (None, Some(b), Some(i)) if b.timeout_seconds >= i => {
            v.add(
                "timeout_seconds",
                format!(
                    "the monitor's timeout of {} s must be less than interval_seconds ({i}); send a shorter timeout_seconds with it",
                    b.timeout_seconds
                ),
            );
            None
        }
        (None, Some(b), _) => Some(b.timeout_seconds),
        (None, None, Some(i)) => Some(
            DEFAULT_TIMEOUT_SECS
                .min(v.max_timeout_secs)
                .min(i.saturating_sub(1))
                .max(1),
        ),
        (None, None, None) => None,
    };
    let expected_status = match (field("expected_status"), base) {
        (None, Some(b)) => Some(b.expected_status.clone()),
        (None, None) => Some(vec![StatusRange::DEFAULT]),
        (Some(value), _) => v.expected_status(value),
    };
    let keyword = match (field("keyword"), base) {
        (None, Some(b)) => Some(b.keyword.clone()),
        (None, None) => Some(None),
        (Some(value), _) => v.keyword(value),
    };
    let keyword_absent = match (field("keyword_absent"), base) {
        (None, Some(b)) => Some(b.keyword_absent),
        (None, None) => Some(false),
        (Some(serde_json::Value::Bool(b)), _) => Some(*b),
        (Some(_), _) => {
            v.add("keyword_absent", "must be true or false");
            None
        }
    };
    let headers = match (field("headers"), base) {
        (None, Some(b)) => Some(b.headers.clone()),
        (None, None) => Some(BTreeMap::new()),
        (Some(value), _) => v.headers(value),
    };
    let send_traceparent = match (field("send_traceparent"), base) {
        (None, Some(b)) => Some(b.send_traceparent),
        (None, None) => Some(false),
        (Some(serde_json::Value::Bool(b)), _) => Some(*b),
        (Some(_), _) => {
            v.add("send_traceparent", "must be true or false");
            None
        }
    };

    match (
        name,
        url,
        method,
        interval,
        timeout,
        expected_status,
        keyword,
        keyword_absent,
        headers,
        send_traceparent,
    ) {
        (
            Some(name),
            Some(url),
            Some(method),
            Some(interval_seconds),
            Some(timeout_seconds),
            Some(expected_status),
            Some(keyword),
            Some(keyword_absent),
            Some(headers),
            Some(send_traceparent),
        ) if v.problems.is_empty() => Ok(MonitorSpec {
            name,
            url,
            method,
            interval_seconds,
            timeout_seconds,
            expected_status,
            keyword,
            keyword_absent,
            headers,
            send_traceparent,
        }),
        _ => Err(v.problems),
    }
}

struct Validator {
    problems: Vec<InputProblem>,
    max_timeout_secs: u32,
    allow_private_targets: bool,
}

impl Validator {
    fn add(&mut self, field: &str, reason: impl Into<String>) {
        self.problems.push(InputProblem {
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    fn required<T>(&mut self, field: &str) -> Option<T> {
        self.add(field, "is required");
        None
    }

    fn string<'a>(&mut self, field: &str, value: &'a serde_json::Value) -> Option<&'a str> {
        let s = value.as_str();
        if s.is_none() {
            self.add(field, "must be a string");
        }
        s
    }

    fn name(&mut self, value: &serde_json::Value) -> Option<String> {
        let name = self.string("name", value)?.trim();
        if name.is_empty() {
            self.add("name", "must not be empty");
        } else if name.chars().count() > MAX_NAME_CHARS {
            self.add(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            );
        } else if name.chars().any(char::is_control) {
            self.add("name", "must not contain control characters");
        } else {
            return Some(name.to_string());
        }
        None
    }

    fn url(&mut self, value: &serde_json::Value) -> Option<String> {
        let url = self.string("url", value)?.trim();
        let refused = check_url(url).and_then(|()| match literal_address(url) {
            Some(ip) if !self.allow_private_targets => match crate::check::forbidden(ip) {
                // Only a literal can be judged here; a name is resolved and checked at every
                // check, since what it resolves to can change.
                Some(why) => Err(format!(
                    "points at a {why} address, which monitors may not reach; a server watching \
                     its own network can allow it with monitors.allow_private_targets = true"
                )),
                None => Ok(()),
            },
            _ => Ok(()),
        });
        match refused {
            Ok(()) => Some(url.to_string()),
            Err(reason) => {
                self.add("url", reason);
                None
            }
        }
    }

    fn method(&mut self, value: &serde_json::Value) -> Option<String> {
        let method = self.string("method", value)?.trim().to_ascii_uppercase();
        if METHODS.contains(&method.as_str()) {
            Some(method)
        } else {
            self.add("method", format!("must be one of {}", METHODS.join(", ")));
            None
        }
    }

    fn interval(&mut self, value: &serde_json::Value) -> Option<u32> {
        let interval = value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| INTERVALS.contains(n));
        if interval.is_none() {
            self.add(
                "interval_seconds",
                "must be 60, 300 or 900 (1, 5 or 15 minutes)",
            );
        }
        interval
    }

    fn timeout(&mut self, value: &serde_json::Value, interval: Option<u32>) -> Option<u32> {
        let Some(timeout) = value.as_u64().filter(|n| *n >= 1) else {
            self.add(
                "timeout_seconds",
                "must be a whole number of seconds, at least 1",
            );
            return None;
        };
        if timeout > u64::from(self.max_timeout_secs) {
            self.add(
                "timeout_seconds",
                format!(
                    "must be at most {} seconds (monitors.max_timeout_secs)",
                    self.max_timeout_secs
                ),
            );
            return None;
        }
        match interval {
            Some(i) if timeout >= u64::from(i) => {
                self.add(
                    "timeout_seconds",
                    format!("must be less than interval_seconds ({i})"),
                );
                None
            }
            // With no valid interval the interval's own problem is reported.
            None => None,
            Some(_) => u32::try_from(timeout).ok(),
        }
    }

    fn expected_status(&mut self, value: &serde_json::Value) -> Option<Vec<StatusRange>> {
        let Some(items) = value.as_array() else {
            self.add(
                "expected_status",
                "must be a list of status codes (200) and ranges (\"200-399\")",
            );
            return None;
        };
        if items.is_empty() {
            self.add("expected_status", "must list at least one code or range");
            return None;
        }
        if items.len() > MAX_EXPECTED_STATUS {
            self.add(
                "expected_status",
                format!("must list at most {MAX_EXPECTED_STATUS} codes or ranges"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match status_item(item) {
                Some(range) => out.push(range),
                None => {
                    ok = false;
                    self.add(
                        &format!("expected_status[{i}]"),
                        "must be a status code from 100 to 599 or a range \"a-b\" of them, a <= b",
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn keyword(&mut self, value: &serde_json::Value) -> Option<Option<String>> {
        if value.is_null() {
            return Some(None);
        }
        let keyword = self.string("keyword", value)?;
        if keyword.is_empty() {
            self.add("keyword", "must not be empty; send null for no keyword");
        } else if keyword.chars().count() > MAX_KEYWORD_CHARS {
            self.add(
                "keyword",
                format!("must be at most {MAX_KEYWORD_CHARS} characters"),
            );
        } else {
            return Some(Some(keyword.to_string()));
        }
        None
    }

    fn headers(&mut self, value: &serde_json::Value) -> Option<BTreeMap<String, String>> {
        let Some(obj) = value.as_object() else {
            self.add(
                "headers",
                "must be an object of header names to string values",
            );
            return None;
        };
        if obj.len() > MAX_HEADERS {
            self.add(
                "headers",
                format!("must hold at most {MAX_HEADERS} headers"),
            );
            return None;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        let mut seen = std::collections::HashSet::new();
        for (name, value) in obj {
            let field = format!("headers.{name}");
            let lower = name.to_ascii_lowercase();
            let problem = if name.contains(['\r', '\n']) {
                Some("the name must not contain CR or LF".to_string())
            } else if name.is_empty() || !name.bytes().all(is_token_byte) {
                Some(
                    "the name must be an HTTP header name: letters, digits and !#$%&'*+-.^_`|~"
                        .to_string(),
                )
            } else if RESERVED_HEADERS.contains(&lower.as_str()) {
                Some("this header is set by observe; a monitor may not set it".to_string())
            } else if !seen.insert(lower) {
                Some("is given twice (header names are case-insensitive)".to_string())
            } else {
                match value.as_str() {
                    None => Some("the value must be a string".to_string()),
                    Some(v) if v.contains(['\r', '\n']) => {
                        Some("the value must not contain CR or LF".to_string())
                    }
                    Some(v) if v.chars().any(|c| c.is_control() && c != '\t') => {
                        Some("the value must not contain control characters".to_string())
                    }
                    Some(v) if v.chars().count() > MAX_HEADER_VALUE_CHARS => Some(format!(
                        "the value must be at most {MAX_HEADER_VALUE_CHARS} characters"
                    )),
                    Some(v) => {
                        out.insert(name.clone(), v.to_string());
                        None
                    }
                }
            };
            if let Some(reason) = problem {
                ok = false;
                self.add(&field, reason);
            }
        }
        ok.then_some(out)
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The address a URL's host spells literally, if it does: a bracketed IPv6 address, or an IPv4
/// address in any form resolvers accept (`127.0.0.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`: the
/// WHATWG URL Standard's IPv4 parser, which follows `inet_aton`). `None` for a name. Call it on
/// a URL [`check_url`] accepted.
pub fn literal_address(url: &str) -> Option<std::net::IpAddr> {
    let uri: awc::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().ok().map(Into::into);
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<u32> = host
        .split('.')
        .map(ipv4_number)
        .collect::<Option<Vec<u32>>>()?;
    let (last, first) = parts.split_last()?;
    if first.len() > 3 || first.iter().any(|p| *p > 255) {
        return None;
    }
    // The last part fills the bytes the others leave: `a.b` is a, then b over 24 bits.
    let room = 4 - first.len() as u32;
    if room < 4 && u64::from(*last) >= 1u64 << (8 * room) {
        return None;
    }
    let mut value = u64::from(*last);
    for (i, p) in first.iter().enumerate() {
        value |= u64::from(*p) << (8 * (3 - i));
    }
    u32::try_from(value)
        .ok()
        .map(|v| std::net::IpAddr::V4(std::net::Ipv4Addr::from(v)))
}

/// One part of an IPv4 address as `inet_aton` reads it: decimal, `0x` hexadecimal, or octal
/// with a leading `0`.
fn ipv4_number(part: &str) -> Option<u32> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) = match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if part.len() > 1 && part.starts_with('0') => (&part[1..], 8),
        None => (part, 10),
    };
    if digits.is_empty() {
        // "0x" alone is 0.
        return (radix == 16).then_some(0);
    }
    u32::from_str_radix(digits, radix).ok()
}

/// An absolute `http`/`https` URL with a host (syntax only: where it points is checked by the
/// engine at every check).
fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    if url.chars().count() > MAX_URL_CHARS {
        return Err(format!("must be at most {MAX_URL_CHARS} characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let scheme_ok = url
        .split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    if !scheme_ok {
        return Err("must be an http:// or https:// URL".into());
    }
    let uri: awc::http::Uri = url.parse().map_err(|_| "is not a valid URL".to_string())?;
    let authority = uri
        .authority()
        .ok_or_else(|| "must name a host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("must not contain credentials; send an Authorization header instead".into());
    }
    let host = authority.host();
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        // One trailing dot (a fully qualified name) is allowed.
        let name = host.strip_suffix('.').unwrap_or(host);
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    if !host_ok {
        return Err("must name a valid host".into());
    }
    // What follows the host: nothing, or `:` and a port (`Authority::port` hides a bad one).
    let port_ok = match authority.as_str().get(host.len()..) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| p != 0),
        None => false,
    };
    if !port_ok {
        return Err("must have a valid port (1 to 65535)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_and_match() {
        let r = StatusRange::parse("200-299").unwrap();
        assert!(r.contains(200) && r.contains(299) && !r.contains(300));
        assert_eq!(
            StatusRange::parse("404"),
            Some(StatusRange { from: 404, to: 404 })
        );
        assert_eq!(StatusRange::parse("399-200"), None);
        assert_eq!(StatusRange::parse("99"), None);
        assert_eq!(StatusRange::parse("abc"), None);
        assert_eq!(r.to_string(), "200-299");
        assert!(status_expected(&[], 301));
        assert!(!status_expected(&[], 404));
        assert!(status_expected(&[StatusRange { from: 404, to: 404 }], 404));
    }

    #[test]
    fn kinds_round_trip() {
        for k in ["dns", "connect", "tls", "timeout", "status", "keyword"] {
            assert_eq!(FailureKind::parse(k).map(FailureKind::as_str), Some(k));
        }
        assert_eq!(Status::parse("down"), Some(Status::Down));
    }

    /// The rules of a server with default settings, `default_interval_secs` for new monitors.
    fn rules(default_interval_secs: u32) -> InputRules {
        InputRules {
            default_interval_secs,
            max_timeout_secs: 30,
            allow_private_targets: false,
        }
    }

    fn fields(problems: &[InputProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn a_create_gets_defaults() {
        let spec = validate_input(
            &serde_json::json!({"name": " Shop ", "url": "https://example.com/health"}),
            None,
            &rules(300),
        )
        .unwrap();
        assert_eq!(spec.name, "Shop");
        assert_eq!(spec.method, "GET");
        assert_eq!(spec.interval_seconds, 300);
        assert_eq!(spec.timeout_seconds, 30);
        assert_eq!(spec.expected_status, vec![StatusRange::DEFAULT]);
        assert_eq!(spec.keyword, None);
        assert!(!spec.keyword_absent);
        assert!(spec.headers.is_empty());
        assert_eq!(spec.expected_status_json(), serde_json::json!(["200-399"]));
        assert_eq!(default_interval(300), 300);
        assert_eq!(default_interval(60), 60);
        assert_eq!(default_interval(61), 300);
        assert_eq!(default_interval(10_000), 900);
    }

    #[test]
    fn a_create_takes_every_field() {
        let spec = validate_input(
            &serde_json::json!({
                "name": "API", "url": "http://api.example.com:8080/x?y=1", "method": "post",
                "interval_seconds": 60, "timeout_seconds": 10,
                "expected_status": [200, "201", "300-302"], "keyword": "ok",
                "keyword_absent": true, "headers": {"X-Token": "abc", "Accept": "text/html"}
            }),
            None,
            &rules(300),
        )
        .unwrap();
        assert_eq!(spec.method, "POST");
        assert_eq!(spec.interval_seconds, 60);
        assert_eq!(spec.timeout_seconds, 10);
        assert_eq!(
            spec.expected_status_json(),
            serde_json::json!([200, 201, "300-302"])
        );
        assert_eq!(spec.keyword.as_deref(), Some("ok"));
        assert!(spec.keyword_absent);
        assert_eq!(spec.headers["X-Token"], "abc");
        assert_eq!(headers_from_json(&spec.headers_json()), spec.headers);
        assert_eq!(
            expected_status_from_json(&spec.expected_status_json()),
            spec.expected_status
        );
    }

    #[test]
    fn every_bad_field_is_reported() {
        let problems = validate_input(
            &serde_json::json!({
                "name": "", "url": "ftp://example.com", "method": "TRACE",
                "interval_seconds": 120, "timeout_seconds": 0,
                "expected_status": [200, "299-200", 700], "keyword": "",
                "keyword_absent": "yes", "headers": {"X-A": "a\r\nInjected: 1", "bad name": "v"},
                "colour": "red"
            }),
            None,
            &rules(300),
        )
        .unwrap_err();
        let mut got = fields(&problems);
        got.sort_unstable();
        assert_eq!(
            got,
            vec![
                "colour",
                "expected_status[1]",
                "expected_status[2]",
                "headers.X-A",
                "headers.bad name",
                "interval_seconds",
                "keyword",
                "keyword_absent",
                "method",
                "name",
                "timeout_seconds",
                "url",
            ]
        );
        let missing = validate_input(&serde_json::json!({}), None, &rules(300)).unwrap_err();
        assert_eq!(fields(&missing), vec!["name", "url"]);
        assert_eq!(missing[0].reason, "is required");
        let not_object = validate_input(&serde_json::json!([1]), None, &rules(300)).unwrap_err();
        assert_eq!(fields(&not_object), vec!["body"]);
    }

    #[test]
    fn urls_need_http_and_a_host() {
        for good in [
            "http://example.com",
            "https://example.com/a/b?c=d#e",
            "HTTPS://Example.COM:8443/",
            "http://127.0.0.1:8080/health",
            "http://[::1]:3000/",
            "http://localhost.",
            "http://my_host.internal/x",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "example.com",
            "ftp://example.com",
            "javascript:alert(1)",
            "http://",
            "http:///path",
            "http://exa mple.com",
            "http://user:pw@example.com/",
            "http://[::zz]/",
            "http://example..com/",
            "http://.example.com/",
            "http://example.com:0/",
            "http://example.com:99999/",
            "http://example.com:/",
            "http://exa%41mple.com/",
        ] {
            assert!(check_url(bad).is_err(), "{bad} was accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert!(check_url(&long).is_err());
    }

    #[test]
    fn timeouts_stay_under_the_interval() {
        let spec = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com", "interval_seconds": 60}),
            None,
            &rules(300),
        )
        .unwrap();
        assert_eq!(spec.timeout_seconds, 30);
        let problems = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com", "interval_seconds": 60, "timeout_seconds": 60}),
            None,
            &rules(300),
        )
        .unwrap_err();
        assert_eq!(fields(&problems), vec!["timeout_seconds"]);
        // An update that shortens the interval below the stored timeout must say so (with a
        // cap raised above the shortest interval).
        let raised = InputRules {
            max_timeout_secs: 600,
            ..rules(300)
        };
        let base = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com", "interval_seconds": 900, "timeout_seconds": 120}),
            None,
            &raised,
        )
        .unwrap();
        let problems = validate_input(
            &serde_json::json!({"interval_seconds": 60}),
            Some(&base),
            &raised,
        )
        .unwrap_err();
        assert_eq!(fields(&problems), vec!["timeout_seconds"]);
        let ok = validate_input(
            &serde_json::json!({"interval_seconds": 60, "timeout_seconds": 59}),
            Some(&base),
            &raised,
        )
        .unwrap();
        assert_eq!((ok.interval_seconds, ok.timeout_seconds), (60, 59));
    }

    #[test]
    fn timeouts_are_capped() {
        let problems = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com", "interval_seconds": 300, "timeout_seconds": 31}),
            None,
            &rules(300),
        )
        .unwrap_err();
        assert_eq!(fields(&problems), vec!["timeout_seconds"]);
        assert!(problems[0].reason.contains("monitors.max_timeout_secs"));
        // The default follows a lower cap.
        let low = InputRules {
            max_timeout_secs: 10,
            ..rules(300)
        };
        let spec = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com"}),
            None,
            &low,
        )
        .unwrap();
        assert_eq!(spec.timeout_seconds, 10);
    }

    #[test]
    fn literal_addresses_are_read_as_resolvers_read_them() {
        let v4 = |s: &str| Some(std::net::IpAddr::V4(s.parse().unwrap()));
        assert_eq!(literal_address("http://127.0.0.1:8080/"), v4("127.0.0.1"));
        assert_eq!(literal_address("http://2130706433/"), v4("127.0.0.1"));
        assert_eq!(literal_address("http://0x7f.1/"), v4("127.0.0.1"));
        assert_eq!(literal_address("http://0177.0.0.1/"), v4("127.0.0.1"));
        assert_eq!(literal_address("http://10.1/"), v4("10.0.0.1"));
        assert_eq!(literal_address("http://192.168.0.1./"), v4("192.168.0.1"));
        assert_eq!(
            literal_address("http://[::1]/"),
            Some(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST))
        );
        for name in [
            "http://example.com/",
            "http://localhost/",
            "http://1.2.3.4.5/",
            "http://256.1.1.1/",
            "http://1.2.3.example/",
            "http://08.0.0.1/",
        ] {
            assert_eq!(literal_address(name), None, "{name}");
        }
    }

    #[test]
    fn private_literals_are_refused_unless_allowed() {
        let problems = validate_input(
            &serde_json::json!({"name": "n", "url": "http://169.254.169.254/latest"}),
            None,
            &rules(300),
        )
        .unwrap_err();
        assert_eq!(fields(&problems), vec!["url"]);
        assert!(problems[0]
            .reason
            .contains("monitors.allow_private_targets"));
        let allowed = InputRules {
            allow_private_targets: true,
            ..rules(300)
        };
        assert!(validate_input(
            &serde_json::json!({"name": "n", "url": "http://169.254.169.254/latest"}),
            None,
            &allowed,
        )
        .is_ok());
        assert!(validate_input(
            &serde_json::json!({"name": "n", "url": "http://8.8.8.8/"}),
            None,
            &rules(300),
        )
        .is_ok());
    }

    #[test]
    fn an_update_keeps_what_it_does_not_name() {
        let base = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com", "keyword": "up", "headers": {"A": "1"}}),
            None,
            &rules(300),
        )
        .unwrap();
        let updated = validate_input(
            &serde_json::json!({"name": "renamed", "keyword": null}),
            Some(&base),
            &rules(60),
        )
        .unwrap();
        assert_eq!(updated.name, "renamed");
        assert_eq!(updated.keyword, None);
        assert_eq!(updated.url, base.url);
        assert_eq!(updated.interval_seconds, 300, "not the default of a create");
        assert_eq!(updated.headers, base.headers);
        let same = validate_input(&serde_json::json!({}), Some(&base), &rules(60)).unwrap();
        assert_eq!(same, base);
        let problems = validate_input(&serde_json::json!({"name": null}), Some(&base), &rules(60))
            .unwrap_err();
        assert_eq!(fields(&problems), vec!["name"]);
    }

    #[test]
    fn headers_are_bounded_and_clean() {
        let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_HEADERS)
            .map(|i| (format!("X-{i}"), serde_json::Value::from("v")))
            .collect();
        let problems = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com", "headers": many}),
            None,
            &rules(300),
        )
        .unwrap_err();
        assert_eq!(fields(&problems), vec!["headers"]);
        let problems = validate_input(
            &serde_json::json!({"name": "n", "url": "http://e.com",
                "headers": {"Content-Length": "1", "X-N": 1, "X-A": "a", "x-a": "b", "X\nB": "c"}}),
            None,
            &rules(300),
        )
        .unwrap_err();
        let mut got = fields(&problems);
        got.sort_unstable();
        assert_eq!(
            got,
            vec![
                "headers.Content-Length",
                "headers.X\nB",
                "headers.X-N",
                "headers.x-a"
            ]
        );
    }
}
