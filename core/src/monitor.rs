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

    pub fn parse(s: &str) -> Option<Self> {
        [
            FailureKind::Dns,
            FailureKind::Connect,
            FailureKind::Tls,
            FailureKind::Timeout,
            FailureKind::Status,
            FailureKind::Keyword,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
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
}
