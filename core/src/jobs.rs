//! Background jobs on cron ticks (SPEC §8): schedules, and which tick to run when.
//!
//! A schedule is a 6-field `cron` expression (seconds first), evaluated in UTC. Every tick of a
//! job runs once across a cluster: an instance runs a tick only after claiming its row of
//! `job_runs` (see [`crate::store::jobs`]). The work of every job is state-driven — the
//! Aggregator recomputes the hours marked dirty, Retention deletes what is older than the
//! retention *now* — so a run covers everything missed before it: a failed run is made good by
//! the next tick, and a process that was down needs only the last tick it missed, if that is
//! recent enough ([`catch_up`]), not every one.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

/// A parsed cron schedule, in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    inner: cron::Schedule,
}

/// Why a schedule expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

impl Schedule {
    /// Parses a 6-field expression (`sec min hour day-of-month month day-of-week`), e.g.
    /// `"0 0 * * * *"` for every hour at :00. The `cron` crate also takes a 7th field (year);
    /// 5-field crontab lines are refused with a hint, as they would silently mean something else.
    pub fn parse(expression: &str) -> Result<Self, ScheduleError> {
        let fields = expression.split_whitespace().count();
        if fields == 5 {
            return Err(ScheduleError(format!(
                "{expression:?} has 5 fields; observe's schedules start with seconds: \"0 {expression}\""
            )));
        }
        if !(6..=7).contains(&fields) {
            return Err(ScheduleError(format!(
                "{expression:?} must have 6 fields: sec min hour day-of-month month day-of-week"
            )));
        }
        cron::Schedule::from_str(expression)
            .map(|inner| Self { inner })
            .map_err(|e| ScheduleError(format!("{expression:?}: {e}")))
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.inner.after(&t).next()
    }

    /// The last tick at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds: one second later, "strictly before" includes `t` itself.
        self.inner.after(&(t + Duration::seconds(1))).next_back()
    }

    pub fn expression(&self) -> &str {
        self.inner.source()
    }
}

/// The tick to run at start, if any: the last tick due by `now`, when it is no older than
/// `bound` and no instance has run or claimed it (`already_ran`).
pub fn catch_up(
    schedule: &Schedule,
    now: DateTime<Utc>,
    bound: Duration,
    already_ran: impl FnOnce(DateTime<Utc>) -> bool,
) -> Option<DateTime<Utc>> {
    let last = schedule.last_at_or_before(now)?;
    if now - last > bound || already_ran(last) {
        return None;
    }
    Some(last)
}

/// What a run reports for the job log: rows it touched (written, deleted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ran {
    pub rows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, h, m, s).single().unwrap()
    }

    #[test]
    fn schedules_have_six_fields_and_five_get_a_hint() {
        assert!(Schedule::parse("0 0 * * * *").is_ok());
        assert!(Schedule::parse("0 30 * * * *").is_ok());
        let err = Schedule::parse("0 * * * *").unwrap_err();
        assert!(err.0.contains("start with seconds"), "{err}");
        assert!(Schedule::parse("nonsense").is_err());
        assert!(Schedule::parse("0 61 * * * *").is_err());
    }

    #[test]
    fn ticks_after_and_at_or_before() {
        let hourly = Schedule::parse("0 0 * * * *").unwrap();
        assert_eq!(hourly.next_after(at(10, 0, 0)), Some(at(11, 0, 0)));
        assert_eq!(hourly.next_after(at(10, 59, 59)), Some(at(11, 0, 0)));
        assert_eq!(hourly.last_at_or_before(at(10, 0, 0)), Some(at(10, 0, 0)));
        assert_eq!(hourly.last_at_or_before(at(10, 59, 59)), Some(at(10, 0, 0)));
        let half = Schedule::parse("0 30 * * * *").unwrap();
        assert_eq!(half.last_at_or_before(at(10, 15, 0)), Some(at(9, 30, 0)));
        let daily = Schedule::parse("0 0 2 * * *").unwrap();
        assert_eq!(
            daily.next_after(at(2, 0, 0)),
            Some(at(2, 0, 0) + Duration::days(1))
        );
    }

    #[test]
    fn the_last_missed_tick_is_caught_up_if_recent_and_unclaimed() {
        let hourly = Schedule::parse("0 0 * * * *").unwrap();
        let bound = Duration::hours(6);
        assert_eq!(
            catch_up(&hourly, at(10, 20, 0), bound, |_| false),
            Some(at(10, 0, 0))
        );
        assert_eq!(
            catch_up(&hourly, at(10, 20, 0), bound, |t| t == at(10, 0, 0)),
            None,
            "somebody ran it"
        );
        let daily = Schedule::parse("0 0 2 * * *").unwrap();
        assert_eq!(
            catch_up(&daily, at(10, 0, 0), bound, |_| false),
            None,
            "02:00 is more than 6 hours ago"
        );
        assert_eq!(
            catch_up(&daily, at(7, 0, 0), bound, |_| false),
            Some(at(2, 0, 0))
        );
    }
}
