//! Retention as plain values: which tables it covers, where each tier's data ends, which
//! partitions lie wholly past it, and how much one run may still do. The database side is
//! [`crate::store::retention`]; nothing here touches it, so the rules are tested on their own.
//!
//! The rules (SPEC §5, §8; issue 11 item 4): an organisation's data is kept for its tier's
//! `retention_days` (configuration, through [`TierPolicy`]). Daily partitions wholly older than
//! the *longest* retention of any tier hold nothing anyone keeps, so they are dropped whole
//! (pg_partman's retention does the same: it drops the children whose upper bound is older than
//! the retention interval). Younger partitions hold several tiers' rows, so the rows of the
//! tiers with a shorter retention are deleted from them in bounded batches. The tiers are read
//! afresh on every run: a tier change applies from the next run.

use chrono::{DateTime, Duration, Utc};

use crate::tiers::{Tier, TierPolicy};

/// Every tier, for the questions asked of each.
const TIERS: [Tier; 3] = [Tier::Hobby, Tier::Pro, Tier::Team];

/// A table retention deletes from: its rows carry `project_id` and a time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub time_column: &'static str,
    /// The time one row covers from its time column on, in seconds: 0 for raw rows, 3600 for
    /// hourly rollups. A row goes only once all of it is past the retention, so a rollup is
    /// kept at least as long as the raw rows it sums.
    pub span_secs: i64,
}

/// The raw tables, each partitioned by day on its time column with a DEFAULT partition
/// (migrations 0003, 0004; [`crate::store::partitions::PARTITIONED`]).
pub const RAW_TABLES: [Table; 5] = [
    Table::raw("events", "ts"),
    Table::raw("errors", "ts"),
    Table::raw("requests", "ts"),
    Table::raw("metrics", "ts"),
    Table::raw("monitor_checks", "started_at"),
];

/// The rollup tables, kept for as long as the raw data: the hook for the Aggregator's tables.
/// Add each one here with its time column and the span of one row (`3600` for an hourly
/// rollup); retention then covers it like the raw tables, partitioned by day or not (an
/// unpartitioned table has its old rows deleted in batches). Each must carry `project_id` and
/// should have an index starting with `(project_id, <time column>)`.
pub const ROLLUP_TABLES: &[Table] = &[
    Table::hourly("rollup_events"),
    Table::hourly("rollup_event_values"),
    Table::hourly("rollup_requests"),
    Table::hourly("rollup_metrics"),
    // Blocks span up to a day (migration 0012): kept until all of their longest is past.
    Table {
        name: "rollup_event_blocks",
        time_column: "block_start",
        span_secs: 86_400,
    },
    Table {
        name: "rollup_event_value_blocks",
        time_column: "block_start",
        span_secs: 86_400,
    },
    Table {
        name: "rollup_request_blocks",
        time_column: "block_start",
        span_secs: 86_400,
    },
];

impl Table {
    const fn raw(name: &'static str, time_column: &'static str) -> Self {
        Self {
            name,
            time_column,
            span_secs: 0,
        }
    }

    /// An hourly rollup of migration 0011: one row covers the hour from its `hour` on.
    const fn hourly(name: &'static str) -> Self {
        Self {
            name,
            time_column: "hour",
            span_secs: 3600,
        }
    }

    /// Before when this table's rows are past a retention that ends at `cutoff`.
    pub fn cutoff(&self, cutoff: DateTime<Utc>) -> DateTime<Utc> {
        cutoff - Duration::seconds(self.span_secs)
    }
}

/// Every table retention covers: the raw ones, then the rollups.
pub fn tables() -> impl Iterator<Item = Table> {
    RAW_TABLES.into_iter().chain(ROLLUP_TABLES.iter().copied())
}

/// The tiers that share one retention, and the instant their data older than which is past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    pub days: u32,
    pub tiers: Vec<Tier>,
    /// `now - days`: rows before it go.
    pub cutoff: DateTime<Utc>,
}

impl Horizon {
    /// The tiers' names as `organisations.tier` holds them.
    pub fn tier_names(&self) -> Vec<&'static str> {
        self.tiers.iter().map(|t| t.as_str()).collect()
    }
}

/// The horizons of one run, from the tiers as configured and the time the run measures from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizons {
    /// The longest retention: partitions wholly before it are dropped.
    pub longest: Horizon,
    /// The shorter ones, shortest first: their tiers' rows are deleted row by row.
    pub shorter: Vec<Horizon>,
}

impl Horizons {
    pub fn new(policy: &TierPolicy, now: DateTime<Utc>) -> Self {
        let mut by_days: Vec<Horizon> = Vec::new();
        for tier in TIERS {
            let days = policy.retention_days(tier);
            match by_days.iter_mut().find(|h| h.days == days) {
                Some(h) => h.tiers.push(tier),
                None => by_days.push(Horizon {
                    days,
                    tiers: vec![tier],
                    cutoff: now - Duration::days(i64::from(days)),
                }),
            }
        }
        by_days.sort_by_key(|h| h.days);
        // Three tiers make at least one horizon.
        let longest = by_days.pop().unwrap_or_else(|| Horizon {
            days: 0,
            tiers: Vec::new(),
            cutoff: now,
        });
        Self {
            longest,
            shorter: by_days,
        }
    }

    /// Every horizon, shortest first.
    pub fn all(&self) -> impl Iterator<Item = &Horizon> {
        self.shorter.iter().chain(std::iter::once(&self.longest))
    }
}

/// The range of times a partition holds; both `None` for a DEFAULT partition or a table that
/// is not partitioned (it may hold any time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
}

impl Bounds {
    /// Whether every row the partition can hold is before `cutoff`: it may be dropped whole.
    pub fn wholly_before(&self, cutoff: DateTime<Utc>) -> bool {
        self.to.is_some_and(|to| to <= cutoff)
    }

    /// Whether the partition can hold a row before `cutoff` at all.
    pub fn reaches_before(&self, cutoff: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| from < cutoff)
    }

    /// Whether its rows past the longest retention are deleted row by row: only where no
    /// partition will ever take them away whole (DEFAULT, a table not partitioned). A day's
    /// partition that straddles the cutoff keeps them until its whole day is past, so the
    /// longest tier's rows may live a day longer than its retention, never mass-deleted.
    pub fn swept_for_longest(&self) -> bool {
        self.from.is_none()
    }
}

/// What one run may still do to one table. Ory Hydra's `janitor` bounds its cleanup the same
/// way (`--limit` rows per run, deleted `--batch-size` at a time), so a run after a long pause
/// cannot hold the job, or the database, for hours: the next run goes on from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    batch: i64,
    rows_left: i64,
    partitions_left: u32,
}

impl Budget {
    pub fn new(batch: i64, max_rows: i64, max_partitions: u32) -> Self {
        Self {
            batch: batch.max(1),
            rows_left: max_rows.max(0),
            partitions_left: max_partitions,
        }
    }

    /// The size of the next batch, `None` once the rows of this run are spent.
    pub fn next_batch(&self) -> Option<i64> {
        (self.rows_left > 0).then(|| self.batch.min(self.rows_left))
    }

    /// Counts `n` rows deleted.
    pub fn spend_rows(&mut self, n: u64) {
        self.rows_left = self
            .rows_left
            .saturating_sub(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Takes one partition drop, if any is left.
    pub fn take_partition(&mut self) -> bool {
        if self.partitions_left == 0 {
            return false;
        }
        self.partitions_left -= 1;
        true
    }
}

/// Whether a batch asked for `asked` rows and deleted `deleted` says the rows are all gone.
pub fn batch_finished(asked: i64, deleted: u64) -> bool {
    i64::try_from(deleted).unwrap_or(i64::MAX) < asked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn policy(hobby: u32, pro: u32, team: u32) -> TierPolicy {
        let mut tiers = Settings::load_from(|_| None).unwrap().tiers;
        tiers.hobby.retention_days = hobby;
        tiers.pro.retention_days = pro;
        tiers.team.retention_days = team;
        TierPolicy::new(tiers)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_longest_retention_drops_partitions_and_the_shorter_ones_delete_rows() {
        let now = at("2026-12-10T02:00:00Z");
        let h = Horizons::new(&policy(7, 90, 365), now);
        assert_eq!(h.longest.days, 365);
        assert_eq!(h.longest.tiers, vec![Tier::Team]);
        assert_eq!(h.longest.cutoff, at("2025-12-10T02:00:00Z"));
        let shorter: Vec<_> = h
            .shorter
            .iter()
            .map(|h| (h.days, h.tiers.clone()))
            .collect();
        assert_eq!(shorter, vec![(7, vec![Tier::Hobby]), (90, vec![Tier::Pro])]);
        assert_eq!(h.shorter[0].cutoff, at("2026-12-03T02:00:00Z"));
        let all: Vec<u32> = h.all().map(|h| h.days).collect();
        assert_eq!(all, vec![7, 90, 365]);
    }

    #[test]
    fn tiers_with_one_retention_share_a_horizon() {
        let now = at("2026-12-10T02:00:00Z");
        let h = Horizons::new(&policy(30, 30, 30), now);
        assert_eq!(h.longest.tiers, vec![Tier::Hobby, Tier::Pro, Tier::Team]);
        assert!(h.shorter.is_empty(), "nothing is deleted row by row");
        let h = Horizons::new(&policy(7, 365, 365), now);
        assert_eq!(h.longest.tier_names(), vec!["pro", "team"]);
        assert_eq!(h.shorter.len(), 1);
        assert_eq!(h.shorter[0].tier_names(), vec!["hobby"]);
    }

    #[test]
    fn a_partition_goes_whole_only_once_its_end_is_past_the_cutoff() {
        let day = |d: &str| Bounds {
            from: Some(at(&format!("{d}T00:00:00Z"))),
            to: Some(at(&format!("{d}T00:00:00Z")) + Duration::days(1)),
        };
        let cutoff = at("2025-12-10T02:00:00Z");
        assert!(day("2025-12-09").wholly_before(cutoff));
        // The day of the cutoff still holds rows after it: kept (the longest tier's rows live
        // at most a day past their retention).
        assert!(!day("2025-12-10").wholly_before(cutoff));
        assert!(day("2025-12-10").reaches_before(cutoff));
        assert!(!day("2025-12-11").reaches_before(cutoff));
        // A partition that ends exactly at the cutoff holds nothing at or after it.
        let exact = Bounds {
            from: Some(cutoff - Duration::days(1)),
            to: Some(cutoff),
        };
        assert!(exact.wholly_before(cutoff));
        assert!(!day("2025-12-10").swept_for_longest());
        // DEFAULT (or an unpartitioned table) may hold anything: never dropped, always swept.
        let default = Bounds::default();
        assert!(!default.wholly_before(cutoff));
        assert!(default.reaches_before(cutoff));
        assert!(default.swept_for_longest());
    }

    #[test]
    fn rollups_go_only_once_their_whole_span_is_past() {
        let hourly = Table {
            name: "rollup",
            time_column: "hour",
            span_secs: 3600,
        };
        let cutoff = at("2026-12-03T02:30:00Z");
        // The 01:00 hour holds rows up to 02:00, all past: it goes (01:00 < 01:30)...
        assert!(at("2026-12-03T01:00:00Z") < hourly.cutoff(cutoff));
        // ...the 02:00 hour still sums rows from after 02:30: it stays.
        assert!(at("2026-12-03T02:00:00Z") >= hourly.cutoff(cutoff));
        assert_eq!(RAW_TABLES[0].cutoff(cutoff), cutoff);
    }

    #[test]
    fn the_raw_tables_are_the_partitioned_and_purged_ones() {
        let names: Vec<&str> = RAW_TABLES.iter().map(|t| t.name).collect();
        assert_eq!(names, crate::store::partitions::PARTITIONED.to_vec());
        assert_eq!(names, crate::store::purge::PROJECT_TABLES.to_vec());
        assert_eq!(tables().count(), RAW_TABLES.len() + ROLLUP_TABLES.len());
    }

    #[test]
    fn a_budget_hands_out_batches_until_its_rows_are_spent() {
        let mut b = Budget::new(4, 10, 1);
        assert_eq!(b.next_batch(), Some(4));
        b.spend_rows(4);
        b.spend_rows(4);
        // Two rows left: the last batch asks for no more.
        assert_eq!(b.next_batch(), Some(2));
        b.spend_rows(2);
        assert_eq!(b.next_batch(), None);
        assert!(b.take_partition());
        assert!(!b.take_partition());
        assert!(batch_finished(4, 3));
        assert!(!batch_finished(4, 4));
        assert_eq!(Budget::new(0, 0, 0).next_batch(), None);
    }
}
