//! PostgreSQL access, one module per kind of row. Functions take any client (pooled connection
//! or transaction) so a route can group several calls in one transaction; every query that
//! reads tenant data is scoped by organisation in its `WHERE` clause.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

pub mod accounts;
pub mod admin;
pub mod api_keys;
pub mod billing;
pub mod error_groups;
pub mod ingest;
pub mod jobs;
pub mod monitor_runs;
pub mod monitors;
pub mod partitions;
pub mod projects;
pub mod purge;
pub mod raw_rows;
pub mod retention;
pub mod rollups;
pub mod series;
pub mod sessions;
pub mod stats;
pub mod tokens;

pub use deadpool_postgres::GenericClient;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused the row; names the constraint.
    #[error("conflict on {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if db.code() == &SqlState::UNIQUE_VIOLATION => {
                StoreError::Conflict(db.constraint().unwrap_or("unique").to_string())
            }
            // The server is shutting down, restarting or out of resources: storage trouble.
            Some(db) if ["08", "53", "57"].contains(&&db.code().code()[..2]) => {
                StoreError::Unavailable(db.message().to_string())
            }
            Some(_) => StoreError::Db(e),
            // No server answer because the connection is gone or never came up: storage
            // trouble, worth a retry. Anything else (a row count, a conversion) is a bug.
            None if e.is_closed() || connection_trouble(&e) => {
                StoreError::Unavailable(e.to_string())
            }
            None => StoreError::Db(e),
        }
    }
}

/// Why PostgreSQL refused what a statement carried: the same data can never succeed, so
/// retrying it is pointless (and holding others back while retrying it is harmful).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// SQLSTATE class 22 (data exception) or 54 (program limit exceeded): the values
    /// themselves cannot be stored.
    Data,
    /// SQLSTATE class 23: an integrity constraint refused the row.
    Constraint,
}

impl StoreError {
    /// The refusal this error is, with its SQLSTATE, if it is one; `None` for trouble worth a
    /// retry (connection, server state) and for anything else.
    pub fn refusal(&self) -> Option<(Refusal, String)> {
        let db = match self {
            StoreError::Db(e) => e.as_db_error()?,
            StoreError::Conflict(_) => return Some((Refusal::Constraint, "23505".into())),
            StoreError::Unavailable(_) => return None,
        };
        let code = db.code().code();
        match &code[..2] {
            "22" | "54" => Some((Refusal::Data, code.to_string())),
            "23" => Some((Refusal::Constraint, code.to_string())),
            _ => None,
        }
    }
}

/// Whether an error without a server answer came from the network (I/O, timeout).
fn connection_trouble(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("timeout") || e.to_string().contains("connection")
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// A position in a list ordered by `(created_at, id)`: opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.created_at.to_rfc3339(), self.id))
    }

    /// `None` for anything that is not a cursor this server made.
    pub fn decode(s: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (at, id) = text.split_once('|')?;
        Some(Self {
            created_at: DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
            id: id.parse().ok()?,
        })
    }
}

/// A page of `items` plus the cursor of the next page, if there is one. Queries fetch
/// `limit + 1` rows to know.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: usize,
    cursor_of: impl Fn(&T) -> Cursor,
) -> (Vec<T>, Option<String>) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|r| cursor_of(r).encode());
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_at: Utc::now(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not-a-cursor"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("x|y")), None);
    }

    #[test]
    fn pages_know_whether_more_follow() {
        let cursor = |n: &i32| Cursor {
            created_at: DateTime::from_timestamp(i64::from(*n), 0).unwrap(),
            id: Uuid::nil(),
        };
        let (items, next) = page(vec![1, 2, 3], 2, cursor);
        assert_eq!(items, vec![1, 2]);
        assert_eq!(Cursor::decode(&next.unwrap()), Some(cursor(&2)));
        let (items, next) = page(vec![1, 2], 2, cursor);
        assert_eq!(items, vec![1, 2]);
        assert!(next.is_none());
    }
}
