//! Daily partitions of the partitioned tables, created ahead of time, **one per transaction**.
//!
//! `CREATE TABLE … PARTITION OF` takes an ACCESS EXCLUSIVE lock on the parent (and scans its
//! DEFAULT partition), so every insert into that table waits until the creating transaction
//! ends; and while the creation itself waits for a lock someone else holds (a long report, a
//! migration), every insert queues behind it. Created all in one transaction (as
//! `observe_ensure_partitions` of migrations 0003/0004 does), one busy table held the locks of
//! every table already done until it got its lock, blocking ingestion everywhere. Here each
//! partition commits on its own with a `lock_timeout`: a table that cannot be locked in time is
//! skipped (the caller retries later; the DEFAULT partition takes its rows meanwhile), and no
//! lock is held longer than one partition's creation. This is what pg_partman's
//! `run_maintenance_proc` does (it commits after each partition set) and PostgreSQL's advice for
//! DDL on busy tables (`lock_timeout`, then retry).

use std::time::Duration;

use chrono::NaiveDate;
use deadpool_postgres::Client;
use tokio_postgres::error::SqlState;

use super::StoreError;

/// The tables partitioned by day, each with a DEFAULT partition.
pub const PARTITIONED: [&str; 5] = ["events", "errors", "requests", "metrics", "monitor_checks"];

/// A partition that was not created (or, by retention, dropped) this time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub partition: String,
    /// `lock_timeout` when its table stayed locked, else the server's message.
    pub reason: String,
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Report {
    pub created: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// The partition of `parent` for `day`: `parent_pYYYYMMDD`.
pub fn partition_name(parent: &str, day: NaiveDate) -> String {
    format!("{parent}_p{}", day.format("%Y%m%d"))
}

/// Creates the missing daily partitions of every [`PARTITIONED`] table from today (UTC, by the
/// database's clock) to `days_ahead` days on, each in its own transaction whose lock wait is
/// bounded by `lock_timeout`. A partition that cannot be created is reported in
/// [`Report::skipped`], not as an error; an error means the connection itself failed.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "partitions.ensure", otel.kind = "client", db.system.name = "postgresql"))]
pub async fn ensure(
    client: &mut Client,
    days_ahead: u32,
    lock_timeout: Duration,
) -> Result<Report, StoreError> {
    let today: NaiveDate = client
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::date", &[])
        .await?
        .get(0);
    let mut wanted = Vec::new();
    for parent in PARTITIONED {
        for i in 0..=days_ahead {
            let day = today + chrono::Days::new(u64::from(i));
            wanted.push((parent, day, partition_name(parent, day)));
        }
    }
    let names: Vec<&str> = wanted.iter().map(|(_, _, n)| n.as_str()).collect();
    let missing: Vec<String> = client
        .query(
            "SELECT n FROM unnest($1::text[]) AS n WHERE to_regclass(n) IS NULL",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = Report::default();
    for (parent, day, name) in wanted {
        if !missing.contains(&name) {
            continue;
        }
        let next = day + chrono::Days::new(1);
        // Names and bounds come from constants and dates, never from input.
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS \"{name}\" PARTITION OF \"{parent}\" \
             FOR VALUES FROM ('{day}T00:00:00Z') TO ('{next}T00:00:00Z')"
        );
        match bounded_ddl(client, &ddl, lock_timeout).await? {
            None => report.created.push(name),
            Some(reason) => report.skipped.push(Skipped {
                partition: name,
                reason,
            }),
        }
    }
    Ok(report)
}

/// Runs one partition's DDL (`ddl`, names from constants or the catalog, never from input) in a
/// transaction of its own whose lock waits are bounded by `lock_timeout`. `Some(reason)` when
/// PostgreSQL refused it (`lock_timeout` when its table stayed locked, else the server's
/// message), for the caller to skip that partition and go on; an error without a server answer
/// (the connection failed) is returned as such. Retention drops partitions through it too.
pub(crate) async fn bounded_ddl(
    client: &mut Client,
    ddl: &str,
    lock_timeout: Duration,
) -> Result<Option<String>, StoreError> {
    // Whole milliseconds, at least 1: `lock_timeout = 0` would mean "wait forever".
    let timeout_ms = lock_timeout.as_millis().clamp(1, u128::from(u32::MAX));
    let sql = format!("SET LOCAL lock_timeout = '{timeout_ms}ms'; {ddl}");
    let result = async {
        let tx = client.transaction().await?;
        tx.batch_execute(&sql).await?;
        tx.commit().await
    }
    .await;
    let Err(e) = result else {
        return Ok(None);
    };
    if e.is_closed() {
        return Err(e.into());
    }
    match e.as_db_error() {
        Some(db) if db.code() == &SqlState::LOCK_NOT_AVAILABLE => {
            Ok(Some("lock_timeout".to_string()))
        }
        Some(db) => Ok(Some(db.message().to_string())),
        None => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_day() {
        let day = NaiveDate::from_ymd_opt(2026, 1, 9).unwrap();
        assert_eq!(partition_name("events", day), "events_p20260109");
    }
}
