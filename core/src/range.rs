//! Time ranges of the read API: `from`, `to`, `tz` and `group_by` query parameters turned into
//! one checked [`TimeRange`], and the bucket starts of a range in its time zone.
//!
//! - `from` and `to` are RFC 3339 instants (`2026-03-08T00:00:00Z`, `…+01:00`), dates
//!   (`2026-03-08`: the start of that day in `tz`), `now`, or durations before now: `90m`,
//!   `24h`, `7d`, `2w` (fixed lengths: a day is 24 hours, as in Grafana's and Prometheus's
//!   relative ranges). `from` is inclusive, `to` exclusive. Defaults: `to` now, `from` 24 hours
//!   before `to`. An empty value counts as absent.
//! - `tz` is an IANA zone name (`Africa/Lagos`, `America/New_York`); default `UTC`. It decides
//!   where days (and, in zones whose offset is not whole hours, hours) begin.
//! - `group_by` is `hour` or `day`.
//! - `from` after `to`, and every value that does not parse, is refused, naming the parameter.
//! - The range is capped at the organisation's retention: a `from` older than that is moved up
//!   to it (the data before it is gone, or about to be). A `to` later than
//!   [`FUTURE_HORIZON`] from now is moved back to it: no item is stored with a later time (they
//!   are clamped to 5 minutes after receipt), and the cap bounds every bucket list.
//!
//! Buckets follow the wall clock of the zone, as PostgreSQL's `date_trunc(…, zone)` and
//! Plausible's time zones do: a day starts at the first instant whose local time is at or
//! after midnight (so a New York day is 23 or 25 hours long across a DST change, and a day
//! whose midnight a DST change skips starts when the clock jumps), and an hour starts whenever
//! the local clock reads a whole hour or jumps into a new hour (so the repeated hour of a
//! fall-back is two buckets of one hour each, and a skipped hour has no bucket).
//!
//! Plain code: no clock of its own (`now` is an argument), no database.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Duration, DurationRound, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone,
    Timelike, Utc,
};
pub use chrono_tz::Tz;

/// How far after now a range may reach; later `to`s are moved back to it. Two days: enough
/// for "today" and "tomorrow" in any zone (a local day ends at most 25 hours after now).
pub const FUTURE_HORIZON: Duration = Duration::days(2);

/// The default length of a range without `from`.
pub const DEFAULT_SPAN: Duration = Duration::hours(24);

/// The size of one bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Hour,
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Hour => "hour",
            GroupBy::Day => "day",
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hour" => Ok(GroupBy::Hour),
            "day" => Ok(GroupBy::Day),
            _ => Err("must be `hour` or `day`".into()),
        }
    }
}

/// The raw query parameters of a range, as the client sent them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeInput<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub tz: Option<&'a str>,
    pub group_by: Option<&'a str>,
}

/// One refused parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The query parameter: `from`, `to`, `tz` or `group_by`.
    pub param: &'static str,
    pub reason: String,
}

/// Every refused parameter of a range, so one answer can name them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid range: {}", .0.iter().map(|p| format!("{}: {}", p.param, p.reason)).collect::<Vec<_>>().join("; "))]
pub struct InvalidRange(pub Vec<Problem>);

/// A checked range: `[from, to)` in UTC, the zone its days are counted in, and the bucket size
/// the client asked for, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive.
    pub from: DateTime<Utc>,
    /// Exclusive; never before `from`.
    pub to: DateTime<Utc>,
    pub tz: Tz,
    pub group_by: Option<GroupBy>,
    /// Whether `from` was moved up to the retention limit.
    pub capped: bool,
    /// The retention limit: the earliest instant the range may start at.
    pub oldest: DateTime<Utc>,
}

impl TimeRange {
    /// Parses `input` as of `now`, for an organisation that keeps data `retention_days` days.
    pub fn parse(
        input: &RangeInput<'_>,
        now: DateTime<Utc>,
        retention_days: u32,
    ) -> Result<Self, InvalidRange> {
        let mut problems = Vec::new();

        let tz = match given(input.tz) {
            None => Tz::UTC,
            Some(name) => match parse_tz(name) {
                Some(tz) => tz,
                None => {
                    problems.push(Problem {
                        param: "tz",
                        reason: "must be an IANA time zone name like `Africa/Lagos` or `America/New_York`".into(),
                    });
                    Tz::UTC
                }
            },
        };
        let mut instant = |param: &'static str, value: Option<&str>| -> Option<DateTime<Utc>> {
            let value = given(value)?;
            match parse_instant(value, now, tz) {
                Ok(at) => Some(at),
                Err(reason) => {
                    problems.push(Problem { param, reason });
                    None
                }
            }
        };
        let from = instant("from", input.from);
        let to = instant("to", input.to);
        let group_by = match given(input.group_by).map(str::parse::<GroupBy>) {
            None => None,
            Some(Ok(g)) => Some(g),
            Some(Err(reason)) => {
                problems.push(Problem {
                    param: "group_by",
                    reason,
                });
                None
            }
        };
        let to = to.unwrap_or(now);
        let from = from.unwrap_or_else(|| to.checked_sub_signed(DEFAULT_SPAN).unwrap_or(to));
        if problems.is_empty() && from > to {
            problems.push(Problem {
                param: "from",
                reason: format!(
                    "must not be after `to` ({} is after {})",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                ),
            });
        }
        if !problems.is_empty() {
            return Err(InvalidRange(problems));
        }

        let oldest = now
            .checked_sub_signed(Duration::days(i64::from(retention_days)))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let latest = now.checked_add_signed(FUTURE_HORIZON).unwrap_or(now);
        let capped = from < oldest;
        let to = to.min(latest).max(oldest);
        let from = from.max(oldest).min(to);
        Ok(Self {
            from,
            to,
            tz,
            group_by,
            capped,
            oldest,
        })
    }

    /// The same range from `from` on, within the same limits: a page cursor keeps the start of
    /// the range its first page resolved, so a relative `from` does not slide while paging.
    pub fn starting_at(self, from: DateTime<Utc>) -> Self {
        Self {
            from: from.max(self.oldest).min(self.to),
            capped: self.capped || from < self.oldest,
            ..self
        }
    }

    /// For reads of hourly rollups (`/stats`, `/api-stats`): a start given relative to now
    /// (`24h`, `30d`), or left to its default, begins at the start of its hour, so the range
    /// is whole stored hours plus the live current one. A partial first hour would be computed
    /// from raw rows, which are cold for a range's oldest hour: `make bench-queries` measured
    /// it as most of a 30-day read (~50 ms of ~70). Should the hour's start fall before the
    /// retention limit, the range starts at the next hour instead. An absolute `from` is kept.
    pub fn whole_hours(self, from_input: Option<&str>) -> Self {
        let relative = match given(from_input) {
            None => true,
            Some(value) => matches!(parse_relative(value), Ok(Some(_))),
        };
        if !relative {
            return self;
        }
        let floor = self
            .from
            .duration_trunc(Duration::hours(1))
            .unwrap_or(self.from);
        let from = if floor >= self.oldest {
            floor
        } else {
            floor + Duration::hours(1)
        };
        Self {
            from: from.min(self.to),
            ..self
        }
    }

    /// Whether the range holds no instant at all.
    pub fn is_empty(&self) -> bool {
        self.from >= self.to
    }

    /// The starts of the `by` buckets that cover the range, in order: the first is the start
    /// of the bucket holding `from` (at or before it), the last the start of the bucket holding
    /// the last instant before `to`. Empty for an empty range. A bucket ends where the next
    /// begins (the last one where its successor would), so the first and last may reach
    /// outside the range: count only what lies inside it.
    pub fn buckets(&self, by: GroupBy) -> Vec<DateTime<Utc>> {
        buckets(self.tz, by, self.from, self.to)
    }

    /// The buckets' starts followed by the end of the last bucket: the boundaries to sort
    /// instants into buckets with (`width_bucket(ts, boundaries)` in PostgreSQL).
    pub fn boundaries(&self, by: GroupBy) -> Vec<DateTime<Utc>> {
        let mut starts = self.buckets(by);
        if let Some(&last) = starts.last() {
            starts.push(next_start(self.tz, by, last));
        }
        starts
    }
}

/// A parameter's value, trimmed; `None` when absent or empty.
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// A zone by its IANA name (`Africa/Lagos`), exactly as the tz database spells it; `UTC` too.
pub fn parse_tz(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

/// One `from` or `to` value; see the module documentation for the forms.
pub fn parse_instant(value: &str, now: DateTime<Utc>, tz: Tz) -> Result<DateTime<Utc>, String> {
    if value == "now" {
        return Ok(now);
    }
    if let Some(ago) = parse_relative(value)? {
        // Far enough back to overflow is far before any retention: the cap takes it.
        return Ok(now
            .checked_sub_signed(ago)
            .unwrap_or(DateTime::<Utc>::MIN_UTC));
    }
    if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(start_of_day(tz, date));
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&Utc));
    }
    // An unencoded `+` in a query string arrives as a space: `…T10:00:00 01:00`.
    if let Some((head, offset)) = value.rsplit_once(' ') {
        if offset.len() == 5 && offset.as_bytes()[2] == b':' {
            if let Ok(at) = DateTime::parse_from_rfc3339(&format!("{head}+{offset}")) {
                return Ok(at.with_timezone(&Utc));
            }
        }
    }
    Err("must be an RFC 3339 time (2026-03-08T14:00:00Z), a date (2026-03-08), `now`, or a duration before now like `90m`, `24h`, `7d`, `2w`".into())
}

/// `90m`, `24h`, `7d`, `2w` as a duration; `Ok(None)` for anything not of that shape.
fn parse_relative(value: &str) -> Result<Option<Duration>, String> {
    let Some(unit) = value.chars().last() else {
        return Ok(None);
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let minutes_per_unit: i64 = match unit {
        'm' => 1,
        'h' => 60,
        'd' => 24 * 60,
        'w' => 7 * 24 * 60,
        _ => return Ok(None),
    };
    // More digits than any retention needs: saturate instead of failing on overflow.
    let n: i64 = digits.parse().unwrap_or(i64::MAX);
    let minutes = n.saturating_mul(minutes_per_unit);
    Ok(Some(
        Duration::try_minutes(minutes).unwrap_or(Duration::MAX),
    ))
}

/// The local wall-clock time of `at` in `tz`.
fn local(tz: Tz, at: DateTime<Utc>) -> NaiveDateTime {
    at.with_timezone(&tz).naive_local()
}

/// The first instant whose local time in `tz` is `wall` (the earlier one when the clock shows
/// it twice), or, when a DST change skips `wall`, the instant the clock jumps past it.
pub fn first_instant_at(tz: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    if let Some(at) = tz.from_local_datetime(&wall).earliest() {
        return at.with_timezone(&Utc);
    }
    // In a gap: the first valid wall time after it is the jump's end. Gaps are whole minutes
    // since the 1970s (and at most a day long, Samoa 2011); step by minutes to find the end.
    let mut probe = wall;
    for _ in 0..(26 * 60) {
        probe += Duration::minutes(1);
        if let Some(at) = tz.from_local_datetime(&probe).earliest() {
            return at.with_timezone(&Utc);
        }
    }
    // Not reachable with the tz database; read the wall time as UTC rather than fail.
    Utc.from_utc_datetime(&wall)
}

/// When local day `date` begins in `tz`: its midnight, or the first instant after it when a
/// DST change skips midnight (Cairo, Santiago).
pub fn start_of_day(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    first_instant_at(tz, date.and_time(NaiveTime::MIN))
}

/// The start of the `by` bucket of `tz` holding `at`.
pub fn bucket_start(tz: Tz, by: GroupBy, at: DateTime<Utc>) -> DateTime<Utc> {
    let wall = local(tz, at);
    let mut candidate = match by {
        GroupBy::Day => wall.date().and_time(NaiveTime::MIN),
        GroupBy::Hour => wall.date().and_time(NaiveTime::MIN) + Duration::hours(wall.hour().into()),
    };
    let step = match by {
        GroupBy::Day => Duration::days(1),
        GroupBy::Hour => Duration::hours(1),
    };
    let mut start = first_instant_at(tz, candidate);
    // A wall time seen again after a fall-back can name an instant after `at`: go back.
    let mut guard = 0;
    while start > at && guard < 48 {
        candidate -= step;
        start = first_instant_at(tz, candidate);
        guard += 1;
    }
    // A later bucket may have begun before `at` (the repeated hour of a fall-back).
    loop {
        let next = next_start(tz, by, start);
        if next > at {
            return start;
        }
        start = next;
    }
}

/// The start of the `by` bucket after the one starting at `start`.
pub fn next_start(tz: Tz, by: GroupBy, start: DateTime<Utc>) -> DateTime<Utc> {
    let wall = local(tz, start);
    let next = match by {
        GroupBy::Day => start_of_day(tz, wall.date() + Duration::days(1)),
        GroupBy::Hour => {
            let hour = wall.date().and_time(NaiveTime::MIN) + Duration::hours(wall.hour().into());
            let by_wall = instant_after(tz, hour + Duration::hours(1), start);
            // One real hour on, when the clock there reads a whole hour: the second pass
            // through a fall-back's repeated hour is a bucket of its own.
            let real = start + Duration::hours(1);
            let real_wall = local(tz, real);
            let mut next = if real < by_wall && real_wall.minute() == 0 && real_wall.second() == 0 {
                real
            } else {
                by_wall
            };
            // A clock change that moves the clock into another hour begins one there
            // (Chatham falls back from 03:45 to 02:45).
            if let Some(change) = clock_change(tz, start, next) {
                let (before, after) = (local(tz, change - Duration::seconds(1)), local(tz, change));
                if after.hour() != before.hour() || after.date() != before.date() {
                    next = change;
                }
            }
            next
        }
    };
    // Always move forward, whatever the zone's history does.
    if next > start {
        next
    } else {
        start + Duration::hours(1)
    }
}

/// The first instant after `after` whose local time is `wall` (or that jumps past it).
fn instant_after(tz: Tz, wall: NaiveDateTime, after: DateTime<Utc>) -> DateTime<Utc> {
    match tz.from_local_datetime(&wall) {
        chrono::LocalResult::Ambiguous(early, late) if early.with_timezone(&Utc) <= after => {
            late.with_timezone(&Utc)
        }
        _ => first_instant_at(tz, wall),
    }
}

/// The instant in `(from, to)` where `tz`'s offset changes, if it does.
fn clock_change(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let offset = |secs: i64| {
        DateTime::from_timestamp(secs, 0).map(|at| at.with_timezone(&tz).offset().fix())
    };
    let (mut lo, mut hi) = (from.timestamp(), to.timestamp() - 1);
    let first = offset(lo);
    if hi <= lo || first == offset(hi) {
        return None;
    }
    // Offsets hold between changes, and changes are months apart: bisect to the second.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset(mid) == first {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// The starts of the `by` buckets of `tz` covering `[from, to)`; see [`TimeRange::buckets`].
pub fn buckets(tz: Tz, by: GroupBy, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    if from >= to {
        return out;
    }
    let mut start = bucket_start(tz, by, from);
    while start < to {
        out.push(start);
        start = next_start(tz, by, start);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        parse_tz(name).unwrap()
    }

    const NOW: &str = "2026-06-15T12:34:56Z";

    fn parse(input: RangeInput<'_>) -> Result<TimeRange, InvalidRange> {
        TimeRange::parse(&input, utc(NOW), 365)
    }

    fn params(err: InvalidRange) -> Vec<&'static str> {
        err.0.iter().map(|p| p.param).collect()
    }

    #[test]
    fn defaults_to_the_last_24_hours_in_utc() {
        let r = parse(RangeInput::default()).unwrap();
        assert_eq!(r.to, utc(NOW));
        assert_eq!(r.from, utc("2026-06-14T12:34:56Z"));
        assert_eq!(r.tz, Tz::UTC);
        assert_eq!(r.group_by, None);
        assert!(!r.capped);
        // Empty values count as absent.
        let r = parse(RangeInput {
            from: Some(""),
            to: Some(" "),
            tz: Some(""),
            group_by: Some(""),
        })
        .unwrap();
        assert_eq!((r.from, r.to), (utc("2026-06-14T12:34:56Z"), utc(NOW)));
    }

    #[test]
    fn relative_values_count_back_from_now() {
        for (value, back) in [
            ("90m", Duration::minutes(90)),
            ("24h", Duration::hours(24)),
            ("7d", Duration::days(7)),
            ("30d", Duration::days(30)),
            ("2w", Duration::weeks(2)),
            ("0h", Duration::zero()),
        ] {
            let r = parse(RangeInput {
                from: Some(value),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(r.from, utc(NOW) - back, "{value}");
            assert_eq!(r.to, utc(NOW), "{value}");
        }
        let r = parse(RangeInput {
            from: Some("7d"),
            to: Some("1d"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.to, utc(NOW) - Duration::days(1));
        let r = parse(RangeInput {
            from: Some("2h"),
            to: Some("now"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.to, utc(NOW));
    }

    #[test]
    fn only_to_given_means_the_24_hours_before_it() {
        let r = parse(RangeInput {
            to: Some("2026-06-10T00:00:00Z"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.from, utc("2026-06-09T00:00:00Z"));
    }

    #[test]
    fn rfc3339_with_offsets_and_an_unencoded_plus() {
        let r = parse(RangeInput {
            from: Some("2026-06-10T10:00:00+01:00"),
            to: Some("2026-06-11T10:00:00 01:00"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.from, utc("2026-06-10T09:00:00Z"));
        assert_eq!(r.to, utc("2026-06-11T09:00:00Z"));
    }

    #[test]
    fn dates_are_midnights_in_the_zone() {
        let r = parse(RangeInput {
            from: Some("2026-06-10"),
            to: Some("2026-06-11"),
            tz: Some("Africa/Lagos"),
            ..Default::default()
        })
        .unwrap();
        // Lagos is UTC+1 all year: its days begin at 23:00 UTC.
        assert_eq!(r.from, utc("2026-06-09T23:00:00Z"));
        assert_eq!(r.to, utc("2026-06-10T23:00:00Z"));
    }

    #[test]
    fn every_bad_value_is_refused_by_name() {
        for (input, expected) in [
            (
                RangeInput {
                    from: Some("yesterday"),
                    ..Default::default()
                },
                vec!["from"],
            ),
            (
                RangeInput {
                    to: Some("2026-13-01"),
                    ..Default::default()
                },
                vec!["to"],
            ),
            (
                RangeInput {
                    tz: Some("Mars/Olympus_Mons"),
                    ..Default::default()
                },
                vec!["tz"],
            ),
            (
                RangeInput {
                    tz: Some("america/new_york"),
                    ..Default::default()
                },
                vec!["tz"],
            ),
            (
                RangeInput {
                    group_by: Some("week"),
                    ..Default::default()
                },
                vec!["group_by"],
            ),
            (
                RangeInput {
                    from: Some("-5h"),
                    to: Some("5x"),
                    tz: Some("Nowhere"),
                    group_by: Some("minute"),
                },
                vec!["tz", "from", "to", "group_by"],
            ),
            (
                RangeInput {
                    from: Some("1d"),
                    to: Some("2d"),
                    ..Default::default()
                },
                vec!["from"],
            ),
            (
                RangeInput {
                    from: Some("2026-06-12T00:00:00Z"),
                    to: Some("2026-06-11T00:00:00Z"),
                    ..Default::default()
                },
                vec!["from"],
            ),
        ] {
            let err = parse(input).unwrap_err();
            assert_eq!(params(err.clone()), expected, "{err}");
        }
        let err = parse(RangeInput {
            from: Some("2026-06-12T00:00:00Z"),
            to: Some("2026-06-11T00:00:00Z"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.0[0].reason.contains("after `to`"), "{err}");
    }

    #[test]
    fn from_equal_to_is_an_empty_range() {
        let r = parse(RangeInput {
            from: Some("2026-06-12T00:00:00Z"),
            to: Some("2026-06-12T00:00:00Z"),
            ..Default::default()
        })
        .unwrap();
        assert!(r.is_empty());
        assert!(r.buckets(GroupBy::Hour).is_empty());
    }

    #[test]
    fn ranges_are_capped_at_the_retention() {
        let now = utc(NOW);
        let r = TimeRange::parse(
            &RangeInput {
                from: Some("30d"),
                ..Default::default()
            },
            now,
            7,
        )
        .unwrap();
        assert_eq!(r.from, now - Duration::days(7));
        assert_eq!(r.to, now);
        assert!(r.capped);
        // A range wholly before the retention is empty, not an error.
        let r = TimeRange::parse(
            &RangeInput {
                from: Some("30d"),
                to: Some("20d"),
                ..Default::default()
            },
            now,
            7,
        )
        .unwrap();
        assert!(r.is_empty());
        assert_eq!(r.from, now - Duration::days(7));
        // Absurd lengths saturate into the cap rather than failing.
        let r = TimeRange::parse(
            &RangeInput {
                from: Some("99999999999999999999w"),
                ..Default::default()
            },
            now,
            90,
        )
        .unwrap();
        assert_eq!(r.from, now - Duration::days(90));
        // Within the retention nothing moves.
        let r = TimeRange::parse(
            &RangeInput {
                from: Some("6d"),
                ..Default::default()
            },
            now,
            7,
        )
        .unwrap();
        assert!(!r.capped);
        assert_eq!(r.from, now - Duration::days(6));
    }

    #[test]
    fn relative_starts_of_rollup_reads_take_whole_hours() {
        let now = utc("2026-06-20T09:41:07Z");
        let range = |from: Option<&str>, retention: u32| {
            TimeRange::parse(
                &RangeInput {
                    from,
                    ..Default::default()
                },
                now,
                retention,
            )
            .unwrap()
            .whole_hours(from)
        };
        assert_eq!(range(Some("24h"), 7).from, utc("2026-06-19T09:00:00Z"));
        assert_eq!(
            range(None, 7).from,
            utc("2026-06-19T09:00:00Z"),
            "the default"
        );
        assert_eq!(range(Some("30d"), 90).from, utc("2026-05-21T09:00:00Z"));
        // Capped at a 7-day retention: the hour's start would be before it, so the next hour.
        assert_eq!(range(Some("30d"), 7).from, utc("2026-06-13T10:00:00Z"));
        // An absolute start is the caller's.
        let at = "2026-06-19T09:30:00Z";
        assert_eq!(range(Some(at), 7).from, utc(at));
        assert_eq!(
            range(Some("2026-06-19"), 7).from,
            utc("2026-06-19T00:00:00Z")
        );
    }

    #[test]
    fn a_pinned_start_stays_within_the_limits() {
        let now = utc(NOW);
        let r = TimeRange::parse(
            &RangeInput {
                from: Some("1h"),
                ..Default::default()
            },
            now,
            7,
        )
        .unwrap();
        assert_eq!(
            r.starting_at(now - Duration::hours(3)).from,
            now - Duration::hours(3)
        );
        let capped = r.starting_at(now - Duration::days(30));
        assert_eq!(capped.from, now - Duration::days(7));
        assert!(capped.capped);
        assert_eq!(r.starting_at(now + Duration::hours(1)).from, now);
    }

    #[test]
    fn the_future_is_capped_at_the_horizon() {
        let now = utc(NOW);
        let r = parse(RangeInput {
            from: Some("2026-06-15"),
            to: Some("2030-01-01"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.to, now + FUTURE_HORIZON);
        // Today in a zone, to tomorrow's midnight, is left whole.
        let r = parse(RangeInput {
            from: Some("2026-06-15"),
            to: Some("2026-06-16"),
            tz: Some("Pacific/Kiritimati"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.to - r.from, Duration::hours(24));
    }

    #[test]
    fn lagos_days_begin_at_23_utc_all_year() {
        let lagos = tz("Africa/Lagos");
        // Across the dates New York and Europe change their clocks: Lagos does not.
        for (from, to) in [
            ("2026-03-06T12:00:00Z", "2026-03-10T12:00:00Z"),
            ("2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"),
            ("2026-10-30T12:00:00Z", "2026-11-03T12:00:00Z"),
        ] {
            let days = buckets(lagos, GroupBy::Day, utc(from), utc(to));
            assert_eq!(days.len(), 5, "{from}");
            for pair in days.windows(2) {
                assert_eq!(pair[1] - pair[0], Duration::hours(24));
            }
            for d in &days {
                assert_eq!(d.format("%H:%M").to_string(), "23:00");
            }
        }
        let days = buckets(
            lagos,
            GroupBy::Day,
            utc("2026-03-08T22:59:59Z"),
            utc("2026-03-08T23:00:01Z"),
        );
        assert_eq!(
            days,
            vec![utc("2026-03-07T23:00:00Z"), utc("2026-03-08T23:00:00Z")]
        );
    }

    #[test]
    fn new_york_days_are_23_and_25_hours_across_dst() {
        let ny = tz("America/New_York");
        let r = parse(RangeInput {
            from: Some("2026-03-07"),
            to: Some("2026-03-10"),
            tz: Some("America/New_York"),
            group_by: Some("day"),
        })
        .unwrap();
        assert_eq!(r.group_by, Some(GroupBy::Day));
        assert_eq!(
            r.buckets(GroupBy::Day),
            vec![
                utc("2026-03-07T05:00:00Z"), // EST, UTC-5
                utc("2026-03-08T05:00:00Z"), // clocks spring forward at 02:00 this day
                utc("2026-03-09T04:00:00Z"), // EDT, UTC-4
            ]
        );
        assert_eq!(
            r.boundaries(GroupBy::Day).last(),
            Some(&utc("2026-03-10T04:00:00Z"))
        );
        let fall = buckets(
            ny,
            GroupBy::Day,
            utc("2026-10-31T04:00:00Z"),
            utc("2026-11-03T05:00:00Z"),
        );
        assert_eq!(
            fall,
            vec![
                utc("2026-10-31T04:00:00Z"),
                utc("2026-11-01T04:00:00Z"), // back to EST at 02:00: 25 hours
                utc("2026-11-02T05:00:00Z"),
            ]
        );
        assert_eq!(fall[2] - fall[1], Duration::hours(25));
    }

    #[test]
    fn new_york_hours_across_dst() {
        let ny = tz("America/New_York");
        let spring = buckets(
            ny,
            GroupBy::Hour,
            start_of_day(ny, NaiveDate::from_ymd_opt(2026, 3, 8).unwrap()),
            start_of_day(ny, NaiveDate::from_ymd_opt(2026, 3, 9).unwrap()),
        );
        assert_eq!(spring.len(), 23, "02:00 does not exist that day");
        let walls: Vec<String> = spring[..4]
            .iter()
            .map(|b| b.with_timezone(&ny).format("%H:%M%z").to_string())
            .collect();
        assert_eq!(
            walls,
            ["00:00-0500", "01:00-0500", "03:00-0400", "04:00-0400"]
        );
        let fall = buckets(
            ny,
            GroupBy::Hour,
            start_of_day(ny, NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()),
            start_of_day(ny, NaiveDate::from_ymd_opt(2026, 11, 2).unwrap()),
        );
        assert_eq!(fall.len(), 25, "01:00 happens twice that day");
        let walls: Vec<String> = fall[..4]
            .iter()
            .map(|b| b.with_timezone(&ny).format("%H:%M%z").to_string())
            .collect();
        assert_eq!(
            walls,
            ["00:00-0400", "01:00-0400", "01:00-0500", "02:00-0500"]
        );
        for pair in fall.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::hours(1));
        }
        // An instant in the second 01:00 hour belongs to the second bucket.
        assert_eq!(
            bucket_start(ny, GroupBy::Hour, utc("2026-11-01T06:30:00Z")),
            utc("2026-11-01T06:00:00Z")
        );
        assert_eq!(
            bucket_start(ny, GroupBy::Hour, utc("2026-11-01T05:59:59Z")),
            utc("2026-11-01T05:00:00Z")
        );
    }

    #[test]
    fn half_hour_zones_and_skipped_midnights() {
        // India is UTC+5:30: its hours begin at half past in UTC.
        let kolkata = tz("Asia/Kolkata");
        let hours = buckets(
            kolkata,
            GroupBy::Hour,
            utc("2026-06-15T10:00:00Z"),
            utc("2026-06-15T12:00:00Z"),
        );
        assert_eq!(
            hours,
            vec![
                utc("2026-06-15T09:30:00Z"),
                utc("2026-06-15T10:30:00Z"),
                utc("2026-06-15T11:30:00Z"),
            ]
        );
        // Chile springs forward at midnight (00:00 → 01:00) on 2026-09-06: that day starts
        // at 01:00 local, when the clock jumps.
        let santiago = tz("America/Santiago");
        let day = start_of_day(santiago, NaiveDate::from_ymd_opt(2026, 9, 6).unwrap());
        assert_eq!(
            day.with_timezone(&santiago).format("%d %H:%M").to_string(),
            "06 01:00"
        );
        assert_eq!(day, utc("2026-09-06T04:00:00Z"));
    }

    const ZONES: &[&str] = &[
        "UTC",
        "Africa/Lagos",
        "America/New_York",
        "Europe/London",
        "Australia/Lord_Howe", // half-hour DST shift
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "America/Santiago", // DST at midnight
        "Africa/Cairo",
        "Asia/Beirut", // falls back at midnight
        "Pacific/Chatham",
        "America/St_Johns",
    ];

    /// Bucket starts found by walking the clock minute by minute: an hour begins where the
    /// local clock reads a whole hour or shows a new hour, a day where the local date first
    /// passes every date seen before.
    fn walked(tz: Tz, by: GroupBy, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let lead = match by {
            GroupBy::Hour => Duration::hours(3),
            GroupBy::Day => Duration::days(2),
        };
        let mut at = (from - lead).duration_trunc_minute();
        let mut prev = local(tz, at);
        let mut latest_date = prev.date();
        let mut starts = Vec::new();
        while at < to {
            at += Duration::minutes(1);
            let wall = local(tz, at);
            let begins = match by {
                GroupBy::Hour => wall.minute() == 0 || wall.hour() != prev.hour(),
                GroupBy::Day => wall.date() > latest_date,
            };
            if begins && at < to {
                starts.push(at);
            }
            latest_date = latest_date.max(wall.date());
            prev = wall;
        }
        // The bucket holding `from`, then those that begin inside the range.
        let first = starts.iter().rposition(|s| *s <= from).unwrap();
        starts.split_off(first)
    }

    trait TruncMinute {
        fn duration_trunc_minute(self) -> Self;
    }

    impl TruncMinute for DateTime<Utc> {
        fn duration_trunc_minute(self) -> Self {
            self.duration_trunc(Duration::minutes(1)).unwrap()
        }
    }

    /// Every DST change of 2024–2027 in each zone, checked against the walked clock (random
    /// windows below rarely land on one).
    #[test]
    fn buckets_match_the_wall_clock_at_every_transition() {
        let mut checked = 0;
        for name in ZONES {
            let tz = tz(name);
            let mut at = utc("2024-01-01T00:00:00Z");
            let mut offset = at.with_timezone(&tz).offset().fix();
            while at < utc("2028-01-01T00:00:00Z") {
                let next = at + Duration::minutes(15);
                let next_offset = next.with_timezone(&tz).offset().fix();
                if next_offset != offset {
                    for by in [GroupBy::Hour, GroupBy::Day] {
                        let (from, to) = (next - Duration::hours(30), next + Duration::hours(30));
                        assert_eq!(
                            buckets(tz, by, from, to),
                            walked(tz, by, from, to),
                            "{name} {by} {next}"
                        );
                        for shift in [-61, -60, -1, 0, 1, 59, 60, 61] {
                            let t = next + Duration::minutes(shift);
                            let start = bucket_start(tz, by, t);
                            assert!(
                                start <= t && next_start(tz, by, start) > t,
                                "{name} {by} {t}"
                            );
                        }
                    }
                    checked += 1;
                }
                at = next;
                offset = next_offset;
            }
        }
        // Eight of the zones change their clocks twice a year.
        assert!(checked >= 8 * 2 * 4, "{checked}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn buckets_match_the_wall_clock(
            zone in 0..ZONES.len(),
            // 2000-01-01 .. 2037-12-31, whole minutes (every modern transition is on one).
            start_min in 15_778_080i64..35_765_280i64,
            span_min in 1i64..(4 * 24 * 60),
            day in any::<bool>(),
        ) {
            let tz = tz(ZONES[zone]);
            let by = if day { GroupBy::Day } else { GroupBy::Hour };
            let from = DateTime::from_timestamp(start_min * 60, 0).unwrap();
            let to = from + Duration::minutes(span_min);
            let got = buckets(tz, by, from, to);
            prop_assert_eq!(&got, &walked(tz, by, from, to), "{} {} {} {}", ZONES[zone], by, from, to);
            prop_assert!(got[0] <= from);
            for pair in got.windows(2) {
                prop_assert!(pair[0] < pair[1]);
            }
        }

        #[test]
        fn new_york_days_are_23_to_25_hours(start_day in 0i64..(366 * 30)) {
            let ny = tz("America/New_York");
            let date = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + Duration::days(start_day);
            let length = start_of_day(ny, date + Duration::days(1)) - start_of_day(ny, date);
            prop_assert!([23, 24, 25].contains(&length.num_hours()), "{date}: {length}");
            prop_assert_eq!(length.num_seconds() % 3600, 0);
        }

        #[test]
        fn relative_and_absolute_agree(minutes in 0i64..(365 * 24 * 60)) {
            let now = utc(NOW);
            let rel = parse_instant(&format!("{minutes}m"), now, Tz::UTC).unwrap();
            let abs = parse_instant(&(now - Duration::minutes(minutes)).to_rfc3339(), now, Tz::UTC).unwrap();
            prop_assert_eq!(rel, abs);
        }

        #[test]
        fn parsed_ranges_are_ordered_and_within_retention(
            from_h in 0u32..20_000, to_h in 0u32..20_000, retention in 1u32..400,
        ) {
            let now = utc(NOW);
            let (from, to) = (format!("{from_h}h"), format!("{to_h}h"));
            let r = TimeRange::parse(&RangeInput { from: Some(&from), to: Some(&to), ..Default::default() }, now, retention);
            if from_h > to_h {
                let r = r.unwrap();
                prop_assert!(r.from <= r.to);
                prop_assert!(r.from >= now - Duration::days(retention.into()));
                prop_assert_eq!(r.capped, i64::from(from_h) > i64::from(retention) * 24);
            } else if from_h < to_h {
                prop_assert_eq!(params(r.unwrap_err()), vec!["from"]);
            } else {
                prop_assert!(r.unwrap().is_empty());
            }
        }
    }
}
